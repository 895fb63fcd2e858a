"""Kernel side of cell tracking: what a tracked cell observes, written to the journal in
microseconds; the recorder process does the MLflow writes.

Stdlib only at import time: this module loads with ``%load_ext``.
"""

from __future__ import annotations

import atexit
import base64
import getpass
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import traceback
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .. import config
from ..errors import MlopsError
from . import journal as J

PARAM_TAGS = {"parameters", "pipeline-parameters", "injected-parameters"}
MAX_STREAM_CHARS = 1 << 20  # per stream per cell; a chatty training loop should not bloat the journal
MAX_OUTPUT_CHARS = 8 << 20
RUN_ID_WAIT_S = 30.0
MAX_RECORDER_STARTS = 5  # per kernel: a recorder that cannot even start must not be respawned per cell


@dataclass
class RunOptions:
    name: str | None = None
    metrics: list = field(default_factory=list)
    tags: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)


@dataclass
class CellRecord:
    key: str
    opts: RunOptions
    started: float
    stdout: list = field(default_factory=list)
    stderr: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)  # set while the cell runs (e.g. a sweep's best score)
    params: dict = field(default_factory=dict)  # likewise, logged when the cell ends
    run_id: str | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    line: object = None  # the display handle of the cell's summary line
    summary: str = ""


class _Tee:
    """Write-through wrapper of sys.stdout/sys.stderr that keeps a copy for the run."""

    def __init__(self, stream, sink: list):
        self._stream, self._sink, self._size = stream, sink, 0

    def write(self, text):
        if self._size < MAX_STREAM_CHARS and isinstance(text, str):
            self._sink.append(text[: MAX_STREAM_CHARS - self._size])
            self._size += len(text)
        return self._stream.write(text)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def __getattr__(self, name):
        return getattr(self._stream, name)


class _Line:
    """The one-line summary printed under a tracked cell (text for terminals, HTML for Lab)."""

    def __init__(self, text: str, warn: bool = False):
        self.text, self.warn = text, warn

    def __repr__(self):
        return self.text

    def _repr_html_(self):
        import html

        color = "#b45309" if self.warn else "#4b5563"
        return f'<div class="mlops-run-line" style="font-family:monospace;font-size:12px;color:{color}">' \
               f"{html.escape(self.text)}</div>"


class Tracker:
    """One per kernel: turns cells into MLflow runs through the journal and the recorder."""

    def __init__(self, shell):
        self.shell = shell
        self.settings: config.Settings | None = None
        self.experiment: str | None = None
        self.autotrack = False
        self.current: CellRecord | None = None
        self.records: dict[str, CellRecord] = {}
        self.param_sources: dict[str, str] = {}
        self.degraded: str | None = None
        self.journal: J.JournalWriter | None = None
        self._recorder = None
        self._notebook = None
        self._parent_notebook = ...
        self._nb_cache = (None, None)
        self._saved_streams = None
        self._pending = None
        self._mutex = threading.Lock()
        self._local = threading.local()
        self._restarts = 0
        self._snapshots: dict[str, dict] = {}
        self._snapshot_roots: set[Path] = set()
        self._experiment_ready = threading.Event()
        self._rescanning = None

    # ---- set-up ----------------------------------------------------------------------------
    @property
    def configured(self) -> bool:
        return self.settings is not None

    def configure(self, experiment: str | None = None, tracking_uri: str | None = None) -> config.Settings:
        """Resolve settings for this notebook's project and get the recorder going."""
        nb = self.notebook_path()
        start = Path(nb).parent if nb else Path.cwd()
        settings = config.resolve(start, {"tracking_uri": tracking_uri, "experiment": experiment})
        config.ensure_state_dir(settings.project_root)
        if self.journal is None:  # before anything is marked configured: it is what can fail here
            self.journal = J.JournalWriter(settings.state_dir)
            atexit.register(self.close)
        self.settings = settings
        self.experiment = settings.experiment or (Path(nb).stem if nb else settings.project_root.name)
        # the user's own mlflow.* calls go to the same store and experiment
        os.environ["MLFLOW_TRACKING_URI"] = settings.tracking_uri
        os.environ["MLFLOW_EXPERIMENT_NAME"] = self.experiment
        if "mlflow" in sys.modules:
            sys.modules["mlflow"].set_tracking_uri(settings.tracking_uri)
        J.finish_orphans(settings.state_dir)
        self._collect_param_history()
        self.rescan_snapshots()
        self._send({"op": "experiment", **self._store_fields()})
        return settings

    def _store_fields(self) -> dict:
        return {"tracking_uri": self.settings.tracking_uri, "experiment": self.experiment,
                "artifact_location": self.settings.artifact_location}

    def _send(self, op: dict) -> None:
        self.journal.append(op)
        self._wake()

    def _wake(self) -> None:
        proc = self._recorder
        if proc is None or proc.poll() is not None:
            if self._restarts >= MAX_RECORDER_STARTS:
                self.degraded = f"the recorder keeps exiting; see {J.side_file(self.journal.path, '.log')}"
                return  # records stay in the journal; the next %load_ext in the project finishes them
            self._restarts += 1
            proc = self._start_recorder()
        try:
            proc.stdin.write(b"\n")
            proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            self._recorder = None  # restarted on the next record; the journal kept everything

    def _start_recorder(self):
        log = open(J.side_file(self.journal.path, ".log"), "ab")
        proc = subprocess.Popen(J.recorder_command(self.journal.path, follow=True), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=log, env=J.recorder_env(),
                                start_new_session=True, close_fds=True)  # survives the kernel's process group
        log.close()
        self._recorder = proc
        threading.Thread(target=self._listen, args=(proc,), daemon=True, name="mlops-recorder-events").start()
        return proc

    def close(self) -> None:
        """Kernel exit: a cell still in flight ends KILLED; the recorder finishes on its own."""
        if self.current is not None:
            self.finish(None, interrupted=True)
        if self._recorder is not None:
            try:
                self._recorder.stdin.close()
            except OSError:
                pass
        if self.journal is not None:
            self.journal.close()

    # ---- which notebook, which parameters --------------------------------------------------
    def notebook_path(self) -> str | None:
        """The notebook this kernel runs: JupyterLab's session name, papermill's input path, or
        MLOPS_NOTEBOOK; never the kernel's own argv."""
        if self._notebook:
            return self._notebook
        ns = self.shell.user_ns
        for cand in (os.environ.get("MLOPS_NOTEBOOK"), os.environ.get("JPY_SESSION_NAME"),
                     ns.get("__vsc_ipynb_file__"), ns.get("PAPERMILL_INPUT_PATH"), self._papermill_input()):
            if isinstance(cand, str) and cand.endswith(".ipynb"):
                self._notebook = os.path.abspath(cand)
                return self._notebook
        return None

    def _papermill_input(self) -> str | None:
        """papermill starts the kernel itself: its input notebook is on the parent's command line."""
        if self._parent_notebook is ...:
            self._parent_notebook = None
            try:
                import psutil

                parent = psutil.Process(os.getppid())
                argv = parent.cmdline()
                if any(Path(a).name in ("papermill", "papermill.exe") or a == "papermill" for a in argv[:3]):
                    first = next((a for a in argv[1:] if a.endswith(".ipynb")), None)
                    # papermill chdirs to --cwd while it runs: the shell's PWD is where the path started
                    bases = [os.environ.get("PWD"), parent.cwd()]
                    found = [os.path.join(b, first) for b in bases if b and first]
                    self._parent_notebook = next((f for f in found if os.path.isfile(f)), None)
            except Exception:  # noqa: BLE001 - no psutil, no permission: just unknown
                pass
        return self._parent_notebook

    def _notebook_params(self) -> tuple[set, set]:
        """(cell ids, sources) of the cells tagged as parameters in the saved notebook."""
        return self._notebook_index()[:2]

    def cell_id_for(self, raw: str, cell_id: str | None) -> str | None:
        """The cell's id: from the frontend when it sends one (JupyterLab), else by finding the
        source in the saved notebook (papermill and nbclient send none)."""
        return cell_id or self._notebook_index()[2].get(raw)

    def _notebook_index(self) -> tuple[set, set, dict]:
        nb = self.notebook_path()
        try:
            st = os.stat(nb) if nb else None
        except OSError:
            st = None
        if st is None:
            return set(), set(), {}
        stamp = (st.st_mtime_ns, st.st_size)
        if self._nb_cache[0] != stamp:
            ids, sources, by_source = set(), set(), {}
            try:
                with open(nb, encoding="utf-8") as fh:
                    cells = json.load(fh).get("cells", [])
                for cell in cells:
                    src = cell.get("source", "")
                    src = "".join(src) if isinstance(src, list) else src
                    if cell.get("id") and cell.get("cell_type") == "code":
                        by_source.setdefault(src, cell["id"])
                    if PARAM_TAGS & set(cell.get("metadata", {}).get("tags", [])):
                        sources.add(src)
                        if cell.get("id"):
                            ids.add(cell["id"])
            except (OSError, ValueError, AttributeError):
                pass
            self._nb_cache = (stamp, (ids, sources, by_source))
        return self._nb_cache[1]

    def is_parameters_cell(self, raw: str, cell_id: str | None) -> bool:
        if raw.lstrip().startswith("# Parameters"):  # papermill's injected-parameters cell
            return True
        ids, sources = self._notebook_params()
        return (cell_id is not None and cell_id in ids) or raw in sources

    def note_cell(self, raw: str, cell_id: str | None) -> None:
        """Remember the latest source of each parameters cell, in execution order."""
        if self.is_parameters_cell(raw, cell_id):
            key = cell_id or ("injected" if raw.lstrip().startswith("# Parameters") else raw)
            self.param_sources.pop(key, None)
            self.param_sources[key] = raw

    def _collect_param_history(self) -> None:
        for raw in self.shell.user_ns.get("In", [])[1:]:
            if isinstance(raw, str):
                self.note_cell(raw, None)

    # ---- a tracked cell --------------------------------------------------------------------
    def begin(self, source: str, opts: RunOptions, cell_id: str | None = None, magic: str | None = None,
              count: int | None = None) -> CellRecord:
        """Start the run of the cell now executing; ``finish`` (post_run_cell) ends it."""
        if not self.configured:
            self.configure()
        nb = self.notebook_path()
        count = self.shell.execution_count if count is None else count
        key = uuid.uuid4().hex
        rec = CellRecord(key=key, opts=opts, started=time.time())
        cell_key = f"name:{opts.name}" if opts.name else cell_id or "source:" + hashlib.sha1(source.encode()).hexdigest()[:12]
        stem = Path(nb).stem if nb else "notebook"
        self._send({
            "op": "start", "key": key, "t": int(rec.started * 1000), **self._store_fields(),
            "run_name": opts.name or f"{stem} [{count}]", "notebook": nb, "cell_id": cell_id,
            "cell_key": cell_key, "execution_count": count, "source": source, "magic": magic,
            "param_sources": list(self.param_sources.values()), "params": opts.params, "tags": opts.tags,
            "metric_names": opts.metrics,
            "kernel": self.journal.kernel, "user": _user(), "project_root": str(self.settings.project_root),
            "snapshots": self._snapshots_now(),
        })
        with self._mutex:
            self.records[key] = rec
        self.current = rec
        self._saved_streams = (sys.stdout, sys.stderr)
        sys.stdout, sys.stderr = _Tee(sys.stdout, rec.stdout), _Tee(sys.stderr, rec.stderr)
        if "mlflow" in sys.modules or "mlflow" in source:
            self._push_pending(rec, source)
        return rec

    def _snapshots_now(self) -> list[dict]:
        """The snapshots the project holds as this cell starts, from a cache kept fresh off the cell's
        path: a stat per known .dvc file here, a full rescan after each cell (for `dvc add` in a terminal)."""
        from ..data.scope import read_dvc_file

        out = []
        for rel, entry in list(self._snapshots.items()):
            try:
                mtime = os.stat(entry["file"]).st_mtime_ns
            except OSError:
                continue
            if mtime != entry["mtime"]:
                with open(entry["file"]) as fh:
                    entry.update(read_dvc_file(fh.read()) or {}, mtime=mtime)
            out.append({"path": rel, "md5": entry["md5"], "size": entry.get("size")})
        return out

    def rescan_snapshots(self) -> None:
        """Snapshots of the notebook's project, and of any other project this kernel snapshotted in."""
        from ..data import in_scope

        found = {}
        for root in [self.settings.project_root, *self._snapshot_roots]:
            for snap in in_scope(root):
                file = str(root / f"{snap['path']}.dvc")
                try:
                    found[snap["path"]] = {**snap, "file": file, "mtime": os.stat(file).st_mtime_ns}
                except OSError:
                    continue
        self._snapshots = found

    def _rescan_later(self) -> None:
        if self._rescanning is None or not self._rescanning.is_alive():
            self._rescanning = threading.Thread(target=self.rescan_snapshots, daemon=True, name="mlops-snapshots")
            self._rescanning.start()

    def attach_snapshot(self, path: str, md5: str, remote: str | None = None, root: str | None = None) -> bool:
        """Link a snapshot to the cell running now; False when none runs (the next tracked run
        records it anyway, with every snapshot the project holds)."""
        if root and Path(root) != self.settings.project_root:
            self._snapshot_roots.add(Path(root))
        self.rescan_snapshots()
        rec = self.current
        if rec is None or not self.configured:
            return False
        self._send({"op": "dataset", "key": rec.key, "path": path, "md5": md5, "remote": remote,
                    "project_root": str(self.settings.project_root), **self._store_fields()})
        return True

    def child(self, parent: CellRecord, name: str, params: dict, metrics: dict, status: str = "FINISHED",
              start_ms: int | None = None, end_ms: int | None = None, tags: dict | None = None,
              texts: dict | None = None) -> None:
        """Record a finished child run of ``parent`` (a sweep trial, a pipeline step) through the
        journal: durable, written by the recorder, never on the caller's path. ``texts`` maps
        artifact paths to text content (a traceback, a log)."""
        now = int(time.time() * 1000)
        self._send({
            "op": "child", "key": uuid.uuid4().hex, "parent": parent.key, **self._store_fields(),
            "run_name": name, "t": start_ms or now, "end_t": end_ms or now, "status": status,
            "params": {k: str(v) for k, v in params.items()}, "metrics": {k: float(v) for k, v in metrics.items()},
            "tags": {k: str(v) for k, v in (tags or {}).items()}, "texts": texts or {},
        })

    def capture_output(self, output: dict) -> None:
        rec = self.current
        if rec is None or getattr(self._local, "showing", False):
            return  # not a tracked cell, or our own summary line (possibly another cell's, updated late)
        data = {}
        for mime, value in output.get("data", {}).items():
            if isinstance(value, bytes):
                value = base64.b64encode(value).decode("ascii")
            data[mime] = value
        if sum(len(str(v)) for v in data.values()) > MAX_OUTPUT_CHARS:
            data = {"text/plain": f"<output of {sum(len(str(v)) for v in data.values())} chars not kept>"}
        rec.outputs.append({**output, "data": data})

    @contextmanager
    def unrecorded(self):
        """Outputs shown inside are not kept in the cell's run (e.g. a live table updated many times)."""
        self._local.showing = True
        try:
            yield
        finally:
            self._local.showing = False

    def finish(self, result, interrupted: bool = False) -> None:
        rec, self.current = self.current, None
        if rec is None:
            return
        if self._saved_streams is not None:
            if isinstance(sys.stdout, _Tee):
                sys.stdout = self._saved_streams[0]
            if isinstance(sys.stderr, _Tee):
                sys.stderr = self._saved_streams[1]
            self._saved_streams = None
        self._pop_pending()
        err = None if result is None else (result.error_in_exec or result.error_before_exec)
        if interrupted or isinstance(err, KeyboardInterrupt):
            status = "KILLED"
        else:
            status = "FAILED" if err is not None else "FINISHED"
        metrics, problems = dict(rec.metrics), []
        ns = self.shell.user_ns
        for name in rec.opts.metrics:
            if name not in ns:
                problems.append(f"metric {name!r} is not defined after the cell")
                continue
            try:
                metrics[name] = float(ns[name])
            except (TypeError, ValueError):
                problems.append(f"metric {name!r} is a {type(ns[name]).__name__}, not a number")
        shown = " · ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        rec.summary = f"{status}" + (f" · {shown}" if shown else "") + "".join(f" · {p}" for p in problems)
        if result is not None:
            self._show(rec, first=True)  # before the record is sent, so the recorder's reply finds the line
        self._send({
            "op": "end", "key": rec.key, "t": int(time.time() * 1000), "status": status, "metrics": metrics,
            "params": {k: str(v) for k, v in rec.params.items()},
            "stdout": "".join(rec.stdout), "stderr": "".join(rec.stderr), "outputs": rec.outputs,
            "traceback": "".join(traceback.format_exception(type(err), err, err.__traceback__)) if err else None,
        })
        self._rescan_later()

    def _line(self, rec: CellRecord, counts: dict | None = None) -> _Line:
        if self.degraded and counts is None:
            return _Line(f"mlops: the tracking store is not answering ({self.degraded}); this cell's run "
                         f"({rec.summary}) waits in {self.journal.path} and is written when the store is back.",
                         warn=True)
        run = rec.run_id or "(id pending)"
        what = rec.summary
        if counts:
            what += f" · {counts.get('params', 0)} params · {counts.get('metrics', 0)} metrics" \
                    f" · {counts.get('artifacts', 0)} artifacts"
        return _Line(f"mlops: run {run} {what} · see {self.settings.where_to_look()}")

    def _show(self, rec: CellRecord, first: bool = False, counts: dict | None = None) -> None:
        self._local.showing = True
        try:
            if first:
                from IPython.display import display

                rec.line = display(self._line(rec), display_id=True)
            elif rec.line is not None:
                rec.line.update(self._line(rec, counts))
        except Exception:  # noqa: BLE001 - a display problem must never break the cell
            pass
        finally:
            self._local.showing = False

    def flush(self, timeout: float = 15.0) -> int:
        """Wait until the recorder has written every finished cell; returns how many still wait
        (non-zero when the store is down: they stay in the journal)."""
        deadline = time.monotonic() + timeout
        self._experiment_ready.wait(timeout)  # the store exists (and is migrated) once this is set
        while True:
            with self._mutex:
                waiting = sum(1 for r in self.records.values() if r is not self.current)
            if not waiting or time.monotonic() > deadline:
                return waiting
            if self._recorder is None or self._recorder.poll() is not None:
                self._wake()
            time.sleep(0.01)

    # ---- events from the recorder ----------------------------------------------------------
    def _listen(self, proc) -> None:
        for raw in proc.stdout:
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            kind = event.get("event")
            with self._mutex:
                rec = self.records.get(event.get("key"))
            if kind == "run" and rec is not None:
                rec.run_id = event["run_id"]
                rec.ready.set()
                if rec.line is not None:
                    self._show(rec)
            elif kind == "done" and rec is not None:
                rec.run_id = event["run_id"]
                rec.ready.set()
                self._show(rec, counts=event.get("counts", {}))
                with self._mutex:
                    self.records.pop(rec.key, None)
            elif kind == "degraded":
                self.degraded = event.get("error", "unknown error")
                for pending in list(self.records.values()):
                    self._show(pending)
            elif kind == "recovered":
                self.degraded = None
            elif kind == "experiment":
                self._experiment_ready.set()

    def wait_run_id(self, rec: CellRecord) -> str:
        if not rec.ready.wait(RUN_ID_WAIT_S):
            raise MlopsError(
                f"mlops: the tracking store {self.settings.tracking_uri} did not answer within "
                f"{RUN_ID_WAIT_S:.0f} s ({self.degraded or 'no reply'}), so mlflow.* calls inside this tracked cell "
                f"cannot reach its run. The cell's own record waits in {self.journal.path}.")
        return rec.run_id

    # ---- the cell's run as MLflow's active run ---------------------------------------------
    def _push_pending(self, rec: CellRecord, source: str) -> None:
        if "start_run(" in source and "nested" not in source and "parent_run_id" not in source:
            return  # the cell manages its own top-level run
        from mlflow.tracking import fluent

        self._pending = _pending_run_class()(self, rec)
        fluent._active_run_stack.get().append(self._pending)

    def _pop_pending(self) -> None:
        if self._pending is None:
            return
        from mlflow.tracking import fluent

        stack = fluent._active_run_stack.get()
        stack[:] = [r for r in stack if r is not self._pending]
        self._pending = None


_PENDING = None


def _pending_run_class():
    """An mlflow ActiveRun whose id resolves when the recorder has created the run, so that a
    cell that never touches mlflow never waits for it."""
    global _PENDING
    if _PENDING is None:
        from mlflow.tracking import MlflowClient
        from mlflow.tracking.fluent import ActiveRun

        class PendingRun(ActiveRun):
            def __init__(self, tracker, rec):  # noqa: D107 - resolved lazily, see _resolve
                self._tracker, self._rec, self._run = tracker, rec, None

            def _resolve(self):
                if self._run is None:
                    run_id = self._tracker.wait_run_id(self._rec)
                    self._run = MlflowClient(self._tracker.settings.tracking_uri).get_run(run_id)
                return self._run

            info = property(lambda self: self._resolve().info)
            data = property(lambda self: self._resolve().data)
            inputs = property(lambda self: self._resolve().inputs)
            outputs = property(lambda self: self._resolve().outputs)

        _PENDING = PendingRun
    return _PENDING


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        return os.environ.get("USER", "unknown")
