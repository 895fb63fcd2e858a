"""Run an exported pipeline: steps in dependency order, independent ones in parallel (threads,
each driving papermill), a step skipped when its fingerprint equals its last success.

Speed: each step gets a kernel process of its own, forked from a template that has imported ipykernel
and the notebook's ``imports`` cell (``kernels``, ``forkserver``), so no step pays for those imports
again; a step's kernel is started and connected while the steps it waits on still run (papermill passes
``km`` through to nbclient, and finds the client ready); the MLflow records go through the journal to a
recorder process (the one writer, tracking.records), models are built by a worker process of their own
(``model_worker``), and kernels are shut down off the critical path. A run where nothing changed starts
no kernel and imports neither papermill nor mlflow.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import config
from ..errors import Busy, InvalidInput
from ..tracking.records import Recording
from . import kernels as K
from . import picture, resources
from . import state as S
from .emit import Pipeline, load_pipeline
from .model_worker import ModelWorker
from .tags import PipelineError

FINAL = ("ran", "skipped", "failed", "blocked")


@dataclass
class StepResult:
    name: str
    status: str                 # ran | skipped | failed | blocked
    seconds: float = 0.0
    why: list = field(default_factory=list)
    notebook: str | None = None
    metrics: dict = field(default_factory=dict)
    error: str | None = None


@dataclass
class RunResult:
    pipeline: str
    steps: list                 # StepResult, in pipeline order
    seconds: float
    runs_dir: str | None
    mlflow_run: str | None = None
    notes: list = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for s in self.steps if s.status == status)

    @property
    def ok(self) -> bool:
        return not any(s.status in ("failed", "blocked") for s in self.steps)

    def summary(self) -> str:
        parts = [f"{self.count(k)} {k if k != 'blocked' else 'not run'}" for k in FINAL if self.count(k)]
        line = f"pipeline {self.pipeline}: {', '.join(parts) or 'no steps'} in {self.seconds:.1f}s"
        if self.mlflow_run:
            line += f" · mlflow run {self.mlflow_run}"
        if self.runs_dir:
            line += f" · executed notebooks in {self.runs_dir}"
        return line


def likely_to_run(pipe: Pipeline, params: dict, forced: set, state) -> set:
    """Steps that will probably execute (stale or forced, or downstream of one): they get kernels early."""
    likely = set()
    for spec in pipe.steps:
        name = spec["name"]
        try:
            stale = bool(S.reasons(pipe, spec, S.fingerprint(pipe, spec, params, state), state))
        except PipelineError:
            stale = True
        if name in forced or stale or likely & set(spec["deps"]):
            likely.add(name)
    return likely


def descendants(pipe: Pipeline, name: str) -> set:
    out, grew = {name}, True
    while grew:
        grew = False
        for s in pipe.steps:
            if s["name"] not in out and out & set(s["deps"]):
                out.add(s["name"])
                grew = True
    return out


class CellError(Exception):
    """A cell of a step notebook raised: papermill's PapermillExecutionError as the runners hand it on (a step
    on Ray brings it back as plain values, so the driver never imports papermill)."""

    FIELDS = ("cell_index", "source", "ename", "evalue")

    def __init__(self, cell_index: int, source: str, ename: str, evalue: str):
        super().__init__(f"{ename}: {evalue}")
        self.cell_index, self.source, self.ename, self.evalue = cell_index, source, ename, evalue

    @classmethod
    def of(cls, exc) -> CellError:
        return cls(*(getattr(exc, k) for k in cls.FIELDS))


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in (text or "").splitlines() if ln.strip()), "")


class _Runner:
    local_kernels = True  # steps run in kernels this process starts (the Ray runner's steps run on the cluster)

    def __init__(self, pipe: Pipeline, params: dict, forced: set, echo, workers: int, on_step=None):
        self.pipe, self.params, self.forced, self.echo_fn, self.on_step = pipe, params, forced, echo, on_step
        self.state = S.State(pipe.folder)
        self.status = {s["name"]: "pending" for s in pipe.steps}
        self.results: dict[str, StepResult] = {}
        self.cond = threading.Condition()
        self.exec_slots = threading.BoundedSemaphore(workers)
        self.ahead_slots = threading.BoundedSemaphore(workers)
        self.live: set = set()  # kernel managers with a running kernel
        self.likely = likely_to_run(pipe, params, forced, self.state)
        self.root = (pipe.folder / pipe.root).resolve()
        self.runs_dir: Path | None = None
        self.recording: Recording | None = None
        self.parent: str | None = None  # the pipeline run's key in the recording
        self.children: dict = {}  # step -> its run's key
        self.worker: ModelWorker | None = None
        self._echo_lock = threading.Lock()
        self.width = max(len(s["name"]) for s in pipe.steps)
        self.kernels = K.Kernels(pipe.kernel, self.root)
        self.stoppers: list = []  # threads shutting kernels down off the steps' critical path
        self.threads: list = []  # one per step
        self.stopping = False  # Ctrl-C: no step starts from now on
        self.cancel: threading.Event | None = None  # set: Ctrl-C from elsewhere (a kept driver's client)
        self.placed: dict = {}  # step -> the cluster node it ran on (Ray runs only; see _placement)
        # pipeline.svg coloured live (running, then fresh or failed): the sidebar draws it while the run goes
        self.drawn = picture.before_run([s["name"] for s in pipe.steps], self.state.steps, self.likely)
        self._draw_lock = threading.Lock()

    def echo(self, mark: str, name: str, text: str) -> None:
        with self._echo_lock:
            self.echo_fn(f"  {mark} {name.ljust(self.width)}  {text}")

    def set(self, name: str, status: str, result: StepResult | None = None) -> None:
        with self.cond:
            self.status[name] = status
            if result is not None:
                self.results[name] = result
            self.cond.notify_all()
        if status in picture.LIVE:
            self._draw(name, picture.LIVE[status])
        if self.on_step is not None and status in ("executing", *FINAL):
            self.on_step(name, status, result)

    def _draw(self, name: str, state: str) -> None:
        with self._draw_lock:
            self.drawn[name] = state
            try:
                picture.write(self.pipe.folder, dict(self.drawn), self.pipe)
            except OSError:
                pass  # a read-only pipeline folder still runs; the picture is a view of it

    # -- the scheduler ------------------------------------------------------------------------
    def run(self) -> None:
        first = next((s for s in self.pipe.steps if s["name"] in self.likely), None)
        # the kernels' template process imports while the scheduler gets going
        if first is not None and self.local_kernels:
            self.kernels.start_fork_server(self.preload(first), self._format_libs())
        with self.cond:
            while not all(v in FINAL for v in self.status.values()):
                for spec in self.pipe.steps:
                    name = spec["name"]
                    # launched once its upstream executes or has (or is starting) its kernel: a step likely to
                    # run starts its kernel meanwhile, up to ``workers`` kernels ahead of the running steps
                    if self.status[name] == "pending" and all(
                            self.status[d] in FINAL + ("executing", "ready", "warming") for d in spec["deps"]):
                        self.status[name] = "launched"
                        t = threading.Thread(target=self._step, args=(spec,), name=f"step-{name}", daemon=True)
                        t.start()
                        self.threads.append(t)
                if self.cancel is not None and self.cancel.is_set():
                    raise KeyboardInterrupt
                self.cond.wait(1.0)
        for t in self.threads:
            t.join()

    def _prepare_runs_dir(self) -> Path:
        with self.cond:
            if self.runs_dir is None:
                stamp = time.strftime("%Y%m%d-%H%M%S")
                path, i = self.pipe.folder / "runs" / stamp, 1
                while path.exists():
                    i += 1
                    path = self.pipe.folder / "runs" / f"{stamp}-{i}"
                path.mkdir(parents=True)
                self.runs_dir = path
                # papermill's import overlaps the first kernel's start-up (steps on Ray run it in their workers:
                # this process never needs it); the recorder and the model worker import MLflow in processes of
                # their own
                if self.local_kernels:
                    threading.Thread(target=_import_papermill, daemon=True).start()
                models = any(s.get("models") for s in self.pipe.steps if s["name"] in self.likely)
                settings = config.resolve(self.root)
                # niced, unless a step will wait for its model: it writes in the gaps the kernels leave
                self.recording = Recording(settings, settings.experiment or f"pipeline-{self.pipe.name}",
                                           nice=not models)
                self.parent = self.recording.start_run(
                    f"pipeline {self.pipe.name}", params=self.params, start_ms=int(time.time() * 1000),
                    tags={"mlops.kind": "pipeline", "mlops.pipeline": self.pipe.name,
                          "mlops.pipeline.folder": str(self.pipe.folder)}, code=self.root)
                if models:
                    self.worker = ModelWorker({"folder": str(self.pipe.folder), "root": str(self.root),
                                               "blobs": str(self.recording.link.blobs)})
            return self.runs_dir

    # -- one step -------------------------------------------------------------------------------
    def _step(self, spec: dict) -> None:
        name, km, ahead = spec["name"], None, False

        def deps_done():
            return all(self.status[d] in FINAL for d in spec["deps"])

        try:
            # a step likely to run starts its kernel (and its imports) while the steps it waits on run;
            # ``ahead_slots`` bounds how many kernels wait like that
            while self.local_kernels and name in self.likely:
                with self.cond:
                    if deps_done():
                        break
                if self.ahead_slots.acquire(timeout=0.1):
                    ahead = True
                    with self.cond:
                        if not deps_done():  # the steps after it may start their kernels too
                            self.status[name] = "warming"
                            self.cond.notify_all()
                    try:
                        km = self._start_kernel()
                    except Exception:  # noqa: BLE001 - started again (and reported) when the step runs
                        km = None
                    else:
                        self._warm(km, spec)
                        with self.cond:
                            if not deps_done():
                                self.status[name] = "ready"
                                self.cond.notify_all()
                    break
            with self.cond:
                self.cond.wait_for(deps_done)
                bad = [d for d in spec["deps"] if self.status[d] in ("failed", "blocked")]
            if bad:
                self.echo("-", name, f"not run: {', '.join(bad)} did not finish")
                self.set(name, "blocked", StepResult(name, "blocked", error=f"{', '.join(bad)} did not finish"))
                return
            fp = S.fingerprint(self.pipe, spec, self.params, self.state)
            why = S.reasons(self.pipe, spec, fp, self.state)
            if name in self.forced:
                why = why or ["forced"]
            if not why:
                self.echo("·", name, "unchanged, skipped")
                self.set(name, "skipped", StepResult(name, "skipped"))
                return
            self.exec_slots.acquire()
            try:
                if self.stopping:  # a slot freed by a step Ctrl-C stopped
                    return
                if ahead:
                    ahead = False
                    self.ahead_slots.release()
                self.set(name, "executing")
                runs = self._prepare_runs_dir()
                self.echo("▶", name, f"running ({'; '.join(why)})")
                if km is None and self.local_kernels:
                    km = self._start_kernel()
                result = self._execute(spec, fp, why, km, runs)
            finally:
                self.exec_slots.release()
            self.set(name, result.status, result)
        except Exception as exc:  # noqa: BLE001 - a step's own failure never takes the others down
            err = f"{type(exc).__name__}: {exc}"
            self.echo("✗", name, f"failed: {err}")
            self._record_failure(name, err, None)
            result = StepResult(name, "failed", error=err)
            self._track(result, time.time())  # its run, if it has one by now, ends FAILED
            self.set(name, "failed", result)
        finally:
            if ahead:
                self.ahead_slots.release()
            if km is not None:
                K.Kernels.disconnect(km)  # here, in the loop it was connected in: it closes with the thread
                stopper = threading.Thread(target=self._stop_kernel, args=(km,), name=f"stop-{name}", daemon=True)
                stopper.start()
                with self.cond:
                    self.stoppers.append(stopper)
            K.close_loop()

    def end_records(self, status: str, wait: bool = True, hand_off: bool = False) -> tuple:
        """End the pipeline's run and hand the rest to the recorder: (its MLflow id, a note when its records
        wait in the journal), waiting for the store only when ``wait``; with ``hand_off``, only while it has
        not kept up."""
        if self.recording is None:
            return None, None
        if self.worker is not None:
            self.worker.close()
        skipped = [n for n, st in self.status.items() if st == "skipped"]
        if skipped:
            self.recording.log(self.parent, tags={"mlops.pipeline.skipped": ",".join(skipped)})
        self.recording.end_run(self.parent, status)
        if not wait:  # an interrupted run: the recorder ends it (and any step still open) on its own, at normal
            # priority (niced, it could wait behind whatever keeps the machine busy for as long as that lasts)
            self.recording.unnice()
            self.recording.link.close()
            return None, None
        self.recording.unnice()  # nothing else runs now
        # a store that has kept up gets the tail written after we return (up to a second or two of the run's
        # time otherwise, measured); `mlops runs` settles what is still on its way
        run_id = self.recording.hand_off(self.parent) if hand_off else None
        if run_id is not None:
            return run_id, None
        outcome = self.recording.close()
        return outcome.run_ids.get(self.parent), outcome.note("the pipeline's MLflow run")

    def stop_all(self) -> None:
        with self.cond:
            self.stopping = True
            live = list(self.live)
        for km in live:
            self._stop_kernel(km)
        self.release()

    def release(self) -> None:
        """Every kernel stopped and the fork server gone."""
        self.kernels.close(wait=False)  # it exits once the kernels it forked are gone (or kills them)
        with self.cond:
            stoppers = list(self.stoppers)
        for t in stoppers:
            t.join()
        self.kernels.close()

    def preload(self, spec: dict) -> list:
        """What the kernels' template process imports first, for a run whose first step is ``spec``."""
        return K.preload_of(self.pipe.folder / spec["notebook"], spec["name"], self.root)

    def _format_libs(self, names=None) -> list:
        """Import statements for the hand-off formats the inputs of steps ``names`` (default: all) were saved in
        by their last run."""
        out = []
        for spec in self.pipe.steps:
            if names is None or spec["name"] in names:
                for src in set(spec["inputs"].values()):
                    for file in (S._outputs_of(self.pipe.folder / "artifacts" / src) or {}).values():
                        lib = K.FORMAT_LIBS.get(file.rsplit(".", 1)[-1])
                        if lib and lib not in out:
                            out.append(lib)
        return out

    def _start_kernel(self):
        try:
            km = self.kernels.start(str(self.root))
            with self.cond:
                self.live.add(km)
        except Exception as exc:  # noqa: BLE001 - e.g. no such kernel
            raise PipelineError(f"kernel {self.pipe.kernel!r} could not start ({_first_line(str(exc))}); register "
                                f"it with `python -m ipykernel install --sys-prefix --name {self.pipe.kernel}`.",
                                kernel=self.pipe.kernel) from None
        return km

    def _warm(self, km, spec: dict) -> None:
        """In a kernel started ahead: connect the client papermill will use and wait until the kernel answers,
        then import (silently, binding no name in the user's namespace) what the step's ``imports`` cell and
        its inputs' formats need and the fork server could not preload, e.g. pyplot, whose hooks need the
        kernel's shell. The user's namespace stays as empty as a new kernel's."""
        from jupyter_core.utils import run_sync

        try:
            sources = K.cell_sources(self.pipe.folder / spec["notebook"], (f"{spec['name']}-imports-",))
            statements = K.import_statements(sources, self.root) + self._format_libs({spec["name"]})
            code = "\n".join(f"try:\n    exec({src!r}, {{}})\nexcept Exception:\n    pass" for src in statements)

            async def warm():
                kc = km.client()
                kc.start_channels()
                await kc.wait_for_ready(timeout=120)
                if code:
                    msg_id = kc.execute(code, silent=True, store_history=False)
                    while (await kc.get_shell_msg(timeout=300))["parent_header"].get("msg_id") != msg_id:
                        pass

            run_sync(warm)()
        except Exception:  # noqa: BLE001 - only a head start: the step itself reports real errors
            pass

    def _stop_kernel(self, km) -> None:
        with self.cond:
            self.live.discard(km)
        self.kernels.stop(km)

    def _notebook(self, spec: dict, out: Path, km) -> None:
        """Execute the step notebook into ``out`` in kernel ``km``; a cell that raised is a ``CellError``,
        papermill's other errors propagate."""
        from papermill.exceptions import PapermillExecutionError

        try:
            K.execute(str(self.pipe.folder / spec["notebook"]), str(out), self.params, self.pipe.kernel, km)
        except PapermillExecutionError as exc:
            raise CellError.of(exc) from None

    def _execute(self, spec: dict, fp: dict, why: list, km, runs: Path) -> StepResult:
        name = spec["name"]
        out = runs / f"{name}.ipynb"
        start = time.time()
        self.children[name] = self.recording.start_run(
            name, parent=self.parent, start_ms=int(start * 1000),
            tags={"mlops.kind": "pipeline-step", "mlops.pipeline": self.pipe.name, "mlops.step": name}, code=self.root)
        try:
            self._notebook(spec, out, km)
        except CellError as exc:
            where = self._cell(out, exc.cell_index, exc.source)
            err = f"{exc.ename}: {_first_line(exc.evalue) or exc.evalue}"
            return self._failed(StepResult(name, "failed", time.time() - start, why, str(out), error=f"{where}: {err}"),
                                start, f"failed in {where}", err)
        except Exception as exc:  # noqa: BLE001 - kernel death, I/O errors, ...
            err = f"{type(exc).__name__}: {_first_line(str(exc))}{K.Kernels.last_words(km)}"
            return self._failed(StepResult(name, "failed", time.time() - start, why, str(out) if out.exists() else None,
                                           error=err), start, f"failed: {err}")
        metrics = {}
        if spec["metrics"]:
            try:
                metrics = json.loads((self.pipe.folder / "metrics" / f"{name}.json").read_text())
            except (OSError, ValueError):
                metrics = {}
        served = []
        if spec.get("models"):  # the step is done once its models are built and their packages written
            run_id = self.recording.run_id(self.children[name], timeout=60)  # made as the step started, unless the store is down
            reply = self.worker.request(name, spec["models"], run_id)
            if "error" in reply:
                return self._failed(StepResult(name, "failed", time.time() - start, why, str(out), metrics,
                                               error=reply["error"]), start, "failed", reply["error"])
            for model, where in reply["models"].items():
                self.recording.model(self.children[name], model, Path(where["dir"]))
            served = [f"serving package {Path(v['package']).relative_to(self.pipe.folder)}"
                      for v in reply["models"].values()]
        res = StepResult(name, "ran", time.time() - start, why, str(out), metrics)
        with self.state.lock:
            entry = self.state.steps.setdefault(name, {})
            entry.pop("failed", None)
        outputs = S.output_hashes(self.pipe, name, self.state)
        packages = {m: S.package_hash(self.pipe, m, self.state) for m in spec.get("models", [])}
        with self.state.lock:
            entry["success"] = {"fingerprint": fp, "digest": S.digest(fp), "outputs": outputs, "packages": packages,
                                "notebook": str(out), "time": time.time(), **self._placement(name)}
        self.state.save()
        shown = " · ".join([f"{k}={v:.4g}" for k, v in list(metrics.items())[:4]] + served
                           + [_where(n) for n in self._placement(name).values()])
        self.echo("✓", name, f"ran in {res.seconds:.1f}s" + (f" · {shown}" if shown else ""))
        self._track(res, start)
        return res

    def _failed(self, res: StepResult, start: float, headline: str, detail: str = "") -> StepResult:
        """Report, record and track a failed step: what failed, why, and where its executed notebook is."""
        pad = "\n" + " " * (self.width + 6)
        self.echo("✗", res.name, headline + (pad + detail if detail else "") +
                  (pad + f"executed notebook: {res.notebook}" if res.notebook else ""))
        self._record_failure(res.name, res.error, res.notebook)
        self._track(res, start)
        return res

    def _cell(self, out: Path, index: int, source: str) -> str:
        """'cell M of the original notebook `first line`' for an error (else the step notebook's cell)."""
        origin = None
        try:  # papermill inserts error-marker cells: find the failed cell by its source
            cells = json.loads(out.read_text())["cells"]
            for c in cells:
                text = "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
                if c.get("cell_type") == "code" and text == source:
                    origin = c.get("metadata", {}).get("mlops", {}).get("source_cell")
                    break
        except (OSError, ValueError, KeyError):
            pass
        if origin is not None:
            text = f"cell {origin} of {Path(self.pipe.source).name or 'the original notebook'}"
        else:
            text = f"cell {index} of the step notebook"
        return f"{text} `{_first_line(source)[:60]}`"

    def _placement(self, name: str) -> dict:
        """``{"node": {"id", "ip", "resources", "gpus"}}`` for a step that ran on a cluster node (the resources
        it asked for, the GPUs it was given), else {}."""
        with self.cond:
            node = self.placed.get(name)
        return {"node": node} if node else {}

    def _record_failure(self, name: str, error: str, notebook: str | None) -> None:
        with self.state.lock:
            self.state.steps.setdefault(name, {})["failed"] = {"error": error, "notebook": notebook,
                                                                "time": time.time(), **self._placement(name)}
        self.state.save()

    def _track(self, res: StepResult, start: float) -> None:
        key = self.children.get(res.name)
        if key is None:
            return
        spec, rec = self.pipe.step(res.name), self.recording
        tags = {"mlops.step.reason": "; ".join(res.why)[:5000]}
        if res.error:
            tags["mlops.error"] = res.error[:5000]
        for node in self._placement(res.name).values():
            tags.update(_node_tags(node))
        rec.log(key, params={k: self.params.get(k) for k in spec["params"]}, metrics=res.metrics, tags=tags)
        if res.notebook and os.path.isfile(res.notebook):
            rec.files(key, [(res.notebook, "notebook")])
        rec.end_run(key, "FINISHED" if res.status == "ran" else "FAILED")


def _node_tags(node: dict) -> dict:
    """The tags a step's run gets for the cluster node it ran on (the sidebar shows them)."""
    tags = {"mlops.node": node["id"], "mlops.node.ip": node["ip"],
            "mlops.resources": ";".join(f"{k}={v:g}" for k, v in node["resources"].items())}
    if node.get("gpus"):
        tags["mlops.gpu_ids"] = node["gpus"]
    return tags


def _where(node: dict) -> str:
    return f"on node {node['ip']} ({node['id'][:8]})" + (f", GPU {node['gpus']}" if node.get("gpus") else "")


def _import_papermill() -> None:
    try:
        import papermill  # noqa: F401
    except Exception:  # noqa: BLE001 - the step's own import reports it
        pass


def _lock(folder: Path):
    """One run at a time per pipeline folder (an OS lock: a crashed run never leaves it held)."""
    path = folder / S.STATE_DIR / "run.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = path.open("a")
    try:
        import fcntl

        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:  # not POSIX: no lock
        pass
    except OSError:
        fh.close()
        raise Busy(f"another run of this pipeline is going on in {folder}; wait for it to finish, then run it again.",
                   what="pipeline", folder=str(folder)) from None
    return fh


def run_pipeline(folder, params=None, from_step=None, force=False, echo=print, workers=None,
                 wait_records=True, on_step=None, address=None, storage=None, max_retries=2,
                 cancel: threading.Event | None = None) -> RunResult:
    """Run the pipeline in ``folder``; ``params``: ["key=value", ...] overrides for this run. ``on_step(name,
    status, result)`` hears each step start executing and end (ran, skipped, failed, blocked), from the
    step's own thread. ``address`` (else RAY_ADDRESS, else [tool.mlops] ray-address): run the steps as Ray
    tasks on that cluster (``cluster``), handing off through ``storage`` (default: the pipeline folder), a
    task run again up to ``max_retries`` times when its node dies. ``cancel`` set: as Ctrl-C (KeyboardInterrupt)."""
    t0 = time.time()
    pipe = load_pipeline(folder)
    values = S.override(S.load_params(pipe), params)
    forced = set()
    if force:
        forced = {s["name"] for s in pipe.steps}
    elif from_step:
        pipe.step(from_step)  # a clear error for an unknown step
        forced = descendants(pipe, from_step)
    workers = workers or max(1, os.cpu_count() or 1)
    from .cluster import resolve_address

    address = resolve_address(address, (pipe.folder / pipe.root).resolve())
    if storage is not None and not address:
        raise InvalidInput(f"a hand-off storage ({storage}) is used only when the steps run on a Ray cluster, and "
                           "no cluster address was given; give one, or leave the storage out.", what="storage",
                           storage=storage)
    lock = _lock(pipe.folder)
    try:
        echo(f"pipeline {pipe.name}: {len(pipe.steps)} steps in {pipe.folder}" + (f" · Ray cluster {address}"
                                                                                   if address else ""))
        if address:
            from .cluster import RayRunner

            runner = RayRunner(pipe, values, forced, echo, on_step, address, storage, max_retries)
            try:
                runner.connect()  # unreachable, or a step no node can take: before anything runs
            except BaseException:
                runner.release()
                raise
        else:
            runner = _Runner(pipe, values, forced, echo, workers, on_step)
            resources.check_local(pipe, runner.likely)  # a step wanting GPUs this machine lacks: before anything runs
        runner.cancel = cancel
        try:
            runner.run()
        except BaseException:
            runner.stop_all()  # no kernel outlives an interrupted run; finished steps stay recorded
            runner.end_records("KILLED", wait=False)
            raise
        notes, run_id = [], None
        try:
            runner.kernels.close(wait=False)  # the kernels stop while MLflow catches up
            failed = any(st in ("failed", "blocked") for st in runner.status.values())
            run_id, note = runner.end_records("FAILED" if failed else "FINISHED", hand_off=not wait_records)
            if note:
                notes.append(note)
        finally:
            runner.release()
            runner.state.save_cache()  # hashes learnt by a run that skipped every step, too
    finally:
        lock.close()
    steps = [runner.results.get(s["name"]) or StepResult(s["name"], "blocked") for s in pipe.steps]
    try:  # the picture shows how this run left each step
        picture.write(pipe.folder, picture.after_run({s.name: s.status for s in steps}, runner.state.steps))
    except OSError:
        pass  # a read-only pipeline folder still ran; the picture is a view of it
    return RunResult(pipe.name, steps, time.time() - t0, str(runner.runs_dir) if runner.runs_dir else None,
                     run_id, notes)
