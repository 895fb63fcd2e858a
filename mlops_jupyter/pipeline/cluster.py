"""Pipeline steps as Ray tasks: ``mlops pipeline run DIR --address ray://head:10001 | host:6379 | auto``.

The driver is the local runner with one thing swapped: a step's notebook runs in a Ray task (``run_step``,
papermill inside the worker) instead of a kernel started here. Everything else stays in the driver: the
DAG (a step starts when its parents finish, independent steps at once), the fingerprints and state, ``-p``,
the MLflow records through tracking's journal, the models. A run where nothing is stale never imports Ray.

The hand-off goes through storage every node reaches: by default the pipeline folder itself (a shared file
system), else ``storage`` (a folder or an fsspec URI such as s3://bucket/run): the driver puts a step's
inputs there, the worker reads them into a folder of its own and puts the step's outputs, metrics and
executed notebook back, and the driver copies those into the pipeline folder. Either way the project (the
notebook's folder: local modules, data files) must be at the same path on every node.

Speed: a worker forks its steps' kernels from a fork server of its own (``kernels``, ``forkserver``: ipykernel
and the run's first step's imports loaded), and starts the next step's kernel while a step runs, so on the
cluster, as on the local runner, a step after a worker's first pays neither for a kernel's start nor for its
imports. A driver that stays connected (a notebook, a kept driver: ``driver``) keeps its job's workers, and its
next run's first step too takes a kernel parked by the run before. The driver never imports papermill: a cell's
error comes back as plain values (``CellError``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

from ..errors import InvalidInput, PipelineError
from .execute import CellError, _first_line, _Runner

CANCEL_WAIT_S = 10.0  # after Ctrl-C, how long cancelled steps get to stop their kernels before being killed
# how long a step waits once no node of the cluster can take it any more (its node died), and how often that
# is looked at
WAIT_ENV, WAIT_S, NODE_POLL_S = "MLOPS_RAY_NODE_WAIT_S", 300.0, 2.0
# how long a worker keeps its kernels (the parked one, the fork server) once it serves no step: a driver that
# stays connected (a notebook) keeps its job's workers after the run
IDLE_ENV, IDLE_S = "MLOPS_RAY_IDLE_S", 60.0
# a kept driver (``driver``) stays connected after each run: KEEP_CONNECTED, and the address it connected to
KEEP_CONNECTED = False
_connected: list = []
_connecting = threading.Lock()  # one connection for the runs a kept driver serves at once


def resolve_address(address: str | None, root: Path) -> str | None:
    """The cluster to run on: ``address``, else RAY_ADDRESS, else [tool.mlops] ray-address; None: this machine."""
    if address:
        return address.strip()
    from .. import config

    return config.resolve(root).ray_address


def _storage(storage: str | None, folder: Path) -> str | None:
    """The hand-off location as an absolute folder or a URI; None when it is the pipeline folder itself."""
    if storage is None:
        return None
    if not storage.strip():
        raise InvalidInput("the hand-off storage is empty; give a folder every node reaches or an fsspec URI such "
                           "as s3://bucket/pipeline (or leave it out to hand off through the pipeline folder).",
                           what="storage", storage=storage)
    if "://" in storage:
        return storage.rstrip("/")
    path = Path(storage).resolve()
    return None if path == folder.resolve() else str(path)


def _seconds(env: str, default: float, meaning: str) -> float:
    """A number of seconds >= 0 from variable ``env`` (``default`` when unset); ``meaning`` says what it sets."""
    raw = os.environ.get(env, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise InvalidInput(f"{env}={raw!r} is not a number of seconds; give {meaning}, e.g. {default:g} (the default), "
                           "or unset it.", what=env, value=raw)
    return value


# ---- the hand-off through storage (fsspec) ---------------------------------------------------------
def _fs(uri: str, rel: str):
    from fsspec.core import url_to_fs

    fs, base = url_to_fs(uri)
    return fs, f"{base.rstrip('/')}/{rel}"


def put(local: Path, uri: str, rel: str) -> None:
    """Copy a local file or folder to ``uri/rel``, replacing what is there (nothing when ``local`` is absent)."""
    fs, target = _fs(uri, rel)
    if fs.exists(target):
        fs.rm(target, recursive=True)
    files = sorted(p for p in local.rglob("*") if p.is_file()) if local.is_dir() else [local] * local.is_file()
    for file in files:
        dest = target if file == local else f"{target}/{file.relative_to(local).as_posix()}"
        fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(file), dest)


def get(uri: str, rel: str, local: Path) -> None:
    """Replace ``local`` with the file or folder at ``uri/rel`` (nothing when that is absent)."""
    fs, src = _fs(uri, rel)
    if not fs.exists(src):
        return
    if local.is_dir():
        shutil.rmtree(local)
    elif local.exists():
        local.unlink()
    pairs = [(p, local / p[len(src):].lstrip("/")) for p in fs.find(src)] if fs.isdir(src) else [(src, local)]
    for path, dest in pairs:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(path, str(dest))


def _outputs(step: str, out: str) -> list:
    """What a step hands back, relative to the pipeline folder: its hand-off, its metrics, its notebook."""
    return [f"artifacts/{step}", f"metrics/{step}.json", out]


# ---- in the Ray worker -----------------------------------------------------------------------------
def _local_copy(job: dict, work: Path) -> Path:
    """The step notebook in ``work``, its inputs beside it: the hand-off read from storage, not the pipeline
    folder (which this node may not have)."""
    for producer in job["inputs"]:
        get(job["storage"], f"artifacts/{producer}", work / "artifacts" / producer)
    nb = json.loads(job["source"])
    for cell in nb["cells"]:
        if cell.get("id") == f"{job['step']}-setup":
            text = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            cell["source"] = "\n".join(f"_mlops_dir = {str(work)!r}" if ln.startswith("_mlops_dir =") else ln
                                       for ln in text.splitlines())
    path = work / Path(job["notebook"]).name
    path.write_text(json.dumps(nb))
    return path


# A kernel this worker process started for its next step: (what it was started for, its manager). Ray hands a
# node's next task to the worker that went idle last, which is the one that just ran a step (or warmed up), so
# the step that follows finds its kernel started, as the local runner's steps do.
_parked: list = []
# what a fork server loads (``forks``: the kernel, the project, the imports) -> this worker's ``Kernels`` for
# it: its fork server (see ``kernels``) outlives a step, so a step's kernel is forked from a process that has
# ipykernel and the run's imports loaded, as on the local runner. A worker of a driver that stays connected (a
# notebook, a kept driver) serves later runs too: they fork from the same server, and take a kernel it parked,
# while the server says that nothing it loaded has changed on disk (a package upgraded, a file edited); an
# imports cell changed is another ``forks``. One at a time.
_templates: dict = {}
_checked: dict = {}  # forks -> the run its server was last found fresh for
# run -> the socket that tells this node's other workers that this one gets ready for the run's steps (_claim)
_claimed: dict = {}


def _claim(job: dict) -> bool:
    """Whether this worker is the first of the run on its node to get ready for steps: a name in Linux's
    abstract socket namespace, held until the worker serves a later run or exits (the name goes with the
    process: nothing is left behind). Elsewhere every worker counts as first."""
    import socket
    import sys

    if job["run"] in _claimed or not sys.platform.startswith("linux"):
        return True
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(f"\0mlops-ray-{job['run']}-{os.environ['MLOPS_RAY_NODE']}")
    except OSError:
        sock.close()
        return False
    _claimed[job["run"]] = sock
    return True


def _kernels(job: dict):
    """This worker's ``Kernels`` for the job's run, its fork server started (it imports while papermill does):
    an earlier run's, once asked whether it is still fresh, where that run's imports were the same."""
    from .kernels import Kernels

    key, run = job["forks"], job["run"]
    kept = _templates.get(key)
    if kept is not None and _checked.get(key) != run:
        if not kept.fresh():
            kept = None
        _checked[key] = run
    if kept is None:
        _release(keep=run)
        kept = _templates[key] = Kernels(job["kernel"], Path(job["root"]))
        kept.start_fork_server(job["preload"], job["later"])
        _checked[key] = run
    return kept


def _fit(job: dict) -> tuple:
    """What a parked kernel must match: what it was forked from, and this task's environment (Ray sets some
    variables per task, CUDA_VISIBLE_DEVICES among them, and a kernel keeps the environment it started with)."""
    return job["forks"], tuple(sorted(os.environ.items()))


def _park(job: dict) -> None:
    """Start a kernel for this worker's next step, without waiting: it gets ready while the worker works or
    idles. A failure leaves the fork server alone (a step may be running in a kernel it forked): the next
    step's ``Kernels.start`` finds out and falls back. A parked kernel that suits the job is kept."""
    kernels = _kernels(job)
    if _parked and _parked[0][0] == _fit(job) and _alive(_parked[0][1]):
        return
    _unpark()
    km = kernels.manager()
    try:
        kernels.launch(km, job["root"])
    except Exception:  # noqa: BLE001 - only a head start: the step starts its own kernel and reports errors
        return
    _parked.append((_fit(job), km))


def _alive(km) -> bool:
    from jupyter_core.utils import run_sync

    try:
        return bool(run_sync(km.is_alive)())
    except Exception:  # noqa: BLE001 - gone
        return False


def _take(job: dict):
    """The parked kernel, if it suits this step and still runs; else a new one (forked where it can be)."""
    kernels = _kernels(job)  # first: a server found stale takes its parked kernel with it
    if _parked and _parked[0][0] == _fit(job):
        km = _parked.pop()[1]
        if _alive(km):
            return km
        from .kernels import Kernels

        Kernels.stop(km)
    _unpark()
    return kernels.start(job["root"])


def _unpark() -> None:
    from .kernels import Kernels

    while _parked:
        Kernels.stop(_parked.pop()[1])


def _release(keep: str | None = None) -> None:
    """Close this worker's fork servers (each kills the kernels it forked, a parked one too, and exits) and give
    up its runs' claims, but ``keep``'s claim."""
    _unpark()
    for old in _templates.values():
        old.close(wait=False)
    _templates.clear()
    _checked.clear()
    for run in [r for r in _claimed if r != keep]:
        _claimed.pop(run).close()


class _Serving:
    """Around each task of ours in a worker: once the worker has served none for the run's ``idle_s``, its
    parked kernel is stopped and its fork server closed. A job's workers live as long as its driver: a
    notebook's, connected after the run, would otherwise keep a started kernel and a process holding the run's
    imports on every node it used, until that notebook's kernel goes. A step that comes later starts them
    again."""

    lock = threading.Lock()
    timer: threading.Timer | None = None
    served = 0  # tasks begun: an expiry armed before the latest one began is stale

    def __init__(self, job: dict):
        self.idle_s = job["idle_s"]

    def __enter__(self):
        with _Serving.lock:
            _Serving.served += 1
            if _Serving.timer is not None:
                _Serving.timer.cancel()
                _Serving.timer = None

    def __exit__(self, *exc):
        with _Serving.lock:
            _Serving.timer = threading.Timer(self.idle_s, _Serving._expire, args=(_Serving.served,))
            _Serving.timer.daemon = True
            _Serving.timer.start()

    @staticmethod
    def _expire(served: int) -> None:
        with _Serving.lock:
            if served == _Serving.served:
                _unpark()
                _release()


def _warm(job: dict) -> None:
    """A task per node as the run starts: the idle worker it leaves, which Ray hands the node's next step, has
    papermill (nbclient, jupyter_client) imported, its fork server up and a kernel started. On a node where a
    step of the run already gets ready, that would be the same work again, taking the CPU that step needs."""
    with _Serving(job):
        _warm_up(job)


def _warm_up(job: dict) -> None:
    import ray

    os.environ["MLOPS_RAY_NODE"] = ray.get_runtime_context().get_node_id()
    if not os.path.isdir(job["root"]) or not _claim(job):
        return  # another worker on its node gets ready
    _kernels(job)
    import papermill  # noqa: F401

    _park(job)  # (a worker that is ready already keeps its parked kernel)


def run_step(job: dict) -> dict:
    """A Ray task: papermill on one step notebook. Returns the node it ran on and, when a cell raised,
    papermill's error (never raised: a failing notebook is no reason for Ray to retry)."""
    with _Serving(job):
        return _run_step(job)


def _run_step(job: dict) -> dict:
    import ray

    ctx = ray.get_runtime_context()
    node = {"id": ctx.get_node_id(), "ip": ray.util.get_node_ip_address(), "resources": job["resources"],
            "gpus": ",".join(str(g) for g in ray.get_gpu_ids())}
    os.environ["MLOPS_RAY_NODE"] = node["id"]  # the step's kernel can tell where it runs
    reply: dict = {"node": node}
    if not os.path.isdir(job["root"]):
        reply["failure"] = (f"the project folder {job['root']} is not on node {node['ip']}; every node must see the "
                            "project at the same path (a shared file system, or the same checkout on each node)")
        return reply
    # a GPU step's worker parks no kernel (the next task on it gets other GPUs, or none): the node's warm-up
    # has work to do still. The next step's kernel is parked as this one starts, unless this worker's fork
    # server is new and has hand-off formats' libraries to import once idle: a kernel forked before then
    # would import them again, so it is parked as the step ends
    gpus = bool(ray.get_gpu_ids())
    early = not gpus and not (job["later"] and job["forks"] not in _templates)
    if not gpus:
        _claim(job)
    try:
        _kernels(job)  # a new worker's fork server imports while this one imports papermill
    except Exception:  # noqa: BLE001 - only a head start: _take reports it as the step's failure
        pass
    from papermill.exceptions import PapermillExecutionError

    from .kernels import Kernels, execute

    folder, work, km = Path(job["folder"]), None, None
    try:
        if job["storage"]:
            work = Path(tempfile.mkdtemp(prefix=f"mlops-step-{job['step']}-"))
            src, base = _local_copy(job, work), work
        else:
            src, base = folder / job["notebook"], folder
        (base / job["out"]).parent.mkdir(parents=True, exist_ok=True)
        km = _take(job)
        if early:
            _park(job)
        execute(str(src), str(base / job["out"]), job["params"], job["kernel"], km, cwd=job["root"])
    except PapermillExecutionError as exc:
        reply["error"] = {k: getattr(exc, k) for k in CellError.FIELDS}
    except Exception as exc:  # noqa: BLE001 - kernel death, I/O errors: the driver reports it
        reply["failure"] = f"{type(exc).__name__}: {_first_line(str(exc))}{Kernels.last_words(km)}"
    finally:
        if km is not None:  # papermill leaves a kernel it was handed running (and its GPU memory held); the
            # stop waits ~0.1 s for the process to go: not in the reply's way
            threading.Thread(target=Kernels.stop, args=(km,), daemon=True, name="mlops-stop-kernel").start()
        if work is not None:
            for rel in _outputs(job["step"], job["out"]):
                put(work / rel, job["storage"], rel)
            shutil.rmtree(work, ignore_errors=True)
    if not (gpus or early):
        _park(job)
    return reply


# ---- the driver ------------------------------------------------------------------------------------
def _probe(address: str, timeout: float = 5.0) -> str | None:
    """Why nothing answers at a host:port address (None: something listens, or the address is ``auto``):
    Ray itself would keep trying to reach it for minutes."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return None
    import socket

    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        return f"nothing answers at {host}:{port} ({exc.strerror or type(exc).__name__})"
    return None


def _fits(asks: dict, nodes: list) -> bool:
    """Whether one of the live ``nodes`` (``ray.nodes()``) has ``asks`` (in total: a busy node will free them)."""
    return any(all(n["Resources"].get(k, 0) >= v for k, v in asks.items()) for n in nodes if n.get("Alive"))


def _wanted(asks: dict) -> str:
    return ", ".join(f"{v / 2**30:.3g} GiB memory" if k == "memory" else f"{v:g} {k}" for k, v in asks.items())


def _asks(spec: dict) -> dict:
    """A step's resources as Ray names them: a CPU unless it says otherwise, GPUs and memory when tagged."""
    res = spec.get("resources", {})
    asks = {"CPU": res.get("cpu", 1), "GPU": res.get("gpu", 0), "memory": res.get("memory", 0)}
    return {k: v for k, v in asks.items() if v}


class RayRunner(_Runner):
    """The local runner's scheduler, state and records; each step's notebook runs as a Ray task."""

    local_kernels = False

    def __init__(self, pipe, params: dict, forced: set, echo, on_step, address: str, storage: str | None,
                 max_retries: int):
        if max_retries < 0:
            raise InvalidInput(f"max retries {max_retries}: give a whole number >= 0 (how often Ray runs a step "
                               "again when its node dies).", what="max retries", max_retries=max_retries)
        # as many steps at once as the DAG allows: the cluster's resources decide how many run
        super().__init__(pipe, params, forced, echo, max(1, len(pipe.steps)), on_step)
        self.address, self.max_retries = address, max_retries
        self.wait_s = _seconds(WAIT_ENV, WAIT_S, "how long a step may wait for a node that can take it")
        self.idle_s = _seconds(IDLE_ENV, IDLE_S, "how long a Ray worker keeps its kernels once it serves no step")
        self.storage = _storage(storage, pipe.folder)
        self.refs: dict = {}  # step -> its task while it runs
        self.remote = None  # run_step as a Ray remote function, once connected
        self.template: dict = {}  # the kernel, project and imports every step's job carries (set on connecting)
        self._warmups: list = []  # a warm-up task per node, sent with the first step
        self.shipped: set = set()  # steps whose hand-off is in the storage for this run
        self._shipping: dict = {}  # step -> the lock held while its hand-off is put there
        self.owned = False  # this run connected to Ray (and disconnects at the end)
        self._nodes_lock = threading.Lock()
        self._nodes: tuple = (float("-inf"), [])  # (when, ray.nodes()): one look at the cluster for all waiting steps

    def connect(self, needed: bool = False) -> None:
        """Reach the cluster and check that each step likely to run fits on one of its nodes, before any runs.
        Nothing at all when no step will run (unless ``needed``): an unchanged re-run never contacts the
        cluster."""
        if not (self.likely or needed):
            return
        with _connecting:
            if self.remote is not None:
                return
            import ray

            from .. import sweep

            if ray.is_initialized() and (self.address == "auto" or self.address in _connected or
                                         ray.get_runtime_context().gcs_address == self.address):
                pass  # this process is on that cluster already (a kernel that swept there, a kept driver)
            else:
                if ray.is_initialized():
                    ray.shutdown()
                reason = _probe(self.address) or sweep.init_ray(self.address)
                if reason:
                    raise PipelineError(
                        f"could not reach the Ray cluster at {self.address}: {reason}; nothing was run. A cluster's "
                        "address is ray://head:10001 for Ray Client, host:6379 for a cluster this machine belongs "
                        "to, or auto for the cluster started on this machine.", what="address", address=self.address,
                        reason=reason)
                self.owned = not KEEP_CONNECTED
                _connected[:] = [self.address]
            nodes = sweep.cluster_nodes()
            self._check(nodes, sweep.describe_nodes)
            self.remote = ray.remote(run_step)
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            # what every worker's kernels are forked from: the first step's imports, as on the local runner
            first = next((s for s in self.pipe.steps if s["name"] in self.likely), self.pipe.steps[0])
            self.template = {"run": uuid.uuid4().hex, "kernel": self.pipe.kernel, "root": str(self.root),
                             "preload": self.preload(first), "later": self._format_libs(), "idle_s": self.idle_s}
            loads = [self.template[k] for k in ("kernel", "root", "preload", "later")]
            self.template["forks"] = hashlib.sha256(json.dumps(loads).encode()).hexdigest()[:16]
            # sent after the first step: its worker starts first (a raylet starts a node's workers a few at a
            # time), and a warm-up on its node then sees it and does nothing (_warm). Ray places a task on the
            # driver's own node while it has room, so the first step goes there when it fits: a warm-up there
            # would only start one more worker process (a second of CPU) beside the step's
            local = ray.get_runtime_context().get_node_id()
            if not _fits(_asks(first), [n for n in self._live_nodes() if n["NodeID"] == local]):
                local = None
            warm = ray.remote(num_cpus=0)(_warm)
            self._warmups = [warm.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["id"], soft=True))
                             for node in nodes if node["id"] != local]

    def _live_nodes(self, max_age: float = NODE_POLL_S) -> list:
        """The cluster's nodes as ``ray.nodes()`` lists them, at most ``max_age`` s old: however many steps
        wait, the GCS is asked once per poll."""
        import ray

        with self._nodes_lock:
            if time.monotonic() - self._nodes[0] >= max_age:
                self._nodes = (time.monotonic(), ray.nodes())
            return self._nodes[1]

    def _check(self, nodes: list, describe) -> None:
        """A step must fit on one node, or Ray would wait for such a node forever: fail now, saying why."""
        live = self._live_nodes(max_age=0)
        for spec in self.pipe.steps:
            asks = _asks(spec)
            if spec["name"] not in self.likely or _fits(asks, live):
                continue
            raise PipelineError(f"step {spec['name']!r} asks for {_wanted(asks)}, and no node of the Ray cluster at "
                                f"{self.address} has that much (the cluster has: {describe(nodes)}); nothing was "
                                "run. Lower the step's resources tag, or use a cluster with such a node.",
                                what="resources", step=spec["name"], address=self.address, nodes=nodes)

    def _wait(self, ref, name: str, asks: dict) -> dict:
        """The step's reply. Ray would wait for ever for a node that can take the step once every such node
        has gone (a GPU node lost mid-run): after ``wait_s`` without one (time for an autoscaler to replace
        it), the task is cancelled and the step fails, saying so."""
        import ray

        from .. import sweep

        since = None
        while True:
            done, _ = ray.wait([ref], timeout=NODE_POLL_S)
            if done:
                return ray.get(ref)
            if _fits(asks, self._live_nodes()):
                since = None
                continue
            since = since or time.monotonic()
            if time.monotonic() - since >= self.wait_s:
                ray.cancel(ref, force=True)
                raise PipelineError(
                    f"it asks for {_wanted(asks)}, and no node of the Ray cluster at {self.address} has had that much "
                    f"for {self.wait_s:g} s (the cluster has: {sweep.describe_nodes(sweep.cluster_nodes())}); its "
                    f"task was cancelled. Bring such a node back and run the pipeline again (it resumes here), or "
                    f"lower the step's resources tag; {WAIT_ENV} sets how long a step waits.", step=name,
                    what="resources", address=self.address)

    def _notebook(self, spec: dict, out: Path, km) -> None:
        import ray

        self.connect(needed=True)
        name, folder = spec["name"], self.pipe.folder
        producers = sorted(set(spec["inputs"].values()))
        if self.storage:
            # a producer skipped in this run left its hand-off here only: put once, before any step reads it (a
            # put replaces what is there, under the feet of a sibling reading it)
            for producer in producers:
                with self.cond:
                    lock = self._shipping.setdefault(producer, threading.Lock())
                with lock:
                    if producer not in self.shipped:
                        put(folder / "artifacts" / producer, self.storage, f"artifacts/{producer}")
                        self.shipped.add(producer)
        job = {**self.template, "step": name, "folder": str(folder), "notebook": spec["notebook"],
               "out": out.relative_to(folder).as_posix(), "params": self.params, "inputs": producers,
               "storage": self.storage, "resources": spec.get("resources", {}),
               "source": (folder / spec["notebook"]).read_text() if self.storage else None}
        asks = _asks(spec)
        ref = self.remote.options(name=f"mlops step {name}", num_cpus=asks.get("CPU", 0), num_gpus=asks.get("GPU", 0),
                                  memory=asks.get("memory"), max_retries=self.max_retries,
                                  retry_exceptions=False).remote(job)
        with self.cond:
            self.refs[name] = ref
            stopping = self.stopping
            warmups, self._warmups = self._warmups, []
        if stopping:  # Ctrl-C came while its hand-offs were put (or Ray was reached): stop_all missed it, and a
            # connected driver's job (a notebook's) would let it run to its end
            ray.cancel(ref, force=True)
            warmups = []
        for warm in warmups:
            warm.remote(self.template)
        try:
            reply = self._wait(ref, name, asks)
        except ray.exceptions.TaskCancelledError:
            raise PipelineError(f"step {name} was cancelled", step=name) from None
        except ray.exceptions.RayError as exc:  # its node or worker died more often than max_retries allows
            raise PipelineError(f"its Ray task failed (after up to {self.max_retries} retries): "
                                f"{_first_line(str(exc))}", step=name) from None
        finally:
            with self.cond:
                self.refs.pop(name, None)
        if self.storage:
            for rel in _outputs(name, job["out"]):
                get(self.storage, rel, folder / rel)
            self.shipped.add(name)  # its worker put its hand-off there (its dependents start after this)
        with self.cond:
            self.placed[name] = reply["node"]
        if "error" in reply:
            raise CellError(**reply["error"])
        if "failure" in reply:
            raise PipelineError(reply["failure"], step=name)

    def stop_all(self) -> None:
        """Ctrl-C: cancel the steps' tasks (their workers stop papermill, which stops the kernel), then kill
        what has not stopped; each cancelled step is recorded as failed, so the next run runs it again."""
        with self.cond:
            self.stopping = True
        if self.remote is not None:
            import ray

            for force in (False, True):
                with self.cond:
                    refs = list(self.refs.values())
                for ref in refs:
                    try:
                        ray.cancel(ref, force=force)
                    except Exception:  # noqa: BLE001 - finished meanwhile
                        pass
                for t in self.threads:
                    t.join(CANCEL_WAIT_S / max(1, len(self.threads)))
        super().stop_all()

    def release(self) -> None:
        super().release()
        if self.owned:
            import ray

            ray.shutdown()
            self.owned = False
