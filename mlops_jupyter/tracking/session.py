"""Kernel side of cell tracking: what a tracked cell observes, written to the journal in
microseconds; the recorder process does the MLflow writes (tracking/link.py, recorder.py). Which notebook
the kernel runs is notebook.py's concern, the summary line display.py's.

Stdlib only at import time: this module loads with ``%load_ext``.
"""

from __future__ import annotations

import atexit
import base64
import functools
import getpass
import hashlib
import itertools
import os
import queue
import sys
import threading
import time
import traceback
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .. import config
from ..errors import StoreUnavailable
from . import display
from . import journal as J
from . import order
from .tags import HIDDEN_STATE
from .link import RecorderLink
from .notebook import NotebookInfo
from .reads import ReadWatch

START_WAKE_S = 0.5  # a tracked cell still running after this has its run made at once (else: when it ends)
MAX_STREAM_CHARS = 1 << 20  # per stream per cell; a chatty training loop should not bloat the journal
MAX_OUTPUT_CHARS = 8 << 20
RUN_ID_WAIT_S = 30.0
HEADLESS_WAIT_S = 30.0  # headless: how long a tracked cell waits for its run to be written (while the store answers)


@dataclass
class RunOptions:
    name: str | None = None
    metrics: list = field(default_factory=list)
    tags: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    models: list = field(default_factory=list)  # variables holding fitted models, logged when the cell ends


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
    experiment_id: str | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    line: str | None = None  # the display id of the cell's summary line, once shown
    summary: str = ""
    source: str = ""
    models: list = field(default_factory=list)  # (name, staged folder) of models to log in the run
    done: threading.Event = field(default_factory=threading.Event)  # the recorder has written the whole run
    hidden: list = field(default_factory=list)  # hidden-state warnings: cells it reads that changed or ran out of order
    checked: threading.Event = field(default_factory=threading.Event)  # the checker has worked them out
    to_check: list | None = None  # the executions behind it, until the checker (or the cell's end) takes them
    ended: threading.Event = field(default_factory=threading.Event)


class _Tee:
    """Write-through wrapper of sys.stdout/sys.stderr that keeps a copy for the run. ``write`` is a closure,
    not a method: a cell that prints 200 lines calls it some 1,600 times."""

    __slots__ = ("write", "_stream")

    def __init__(self, stream, sink: list):
        self._stream = stream
        stream_write, keep, size = stream.write, sink.append, 0

        def write(text):
            nonlocal size
            if size < MAX_STREAM_CHARS and isinstance(text, str):
                keep(text if size + len(text) <= MAX_STREAM_CHARS else text[: MAX_STREAM_CHARS - size])
                size += len(text)
            return stream_write(text)

        self.write = write

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def __getattr__(self, name):
        return getattr(self._stream, name)


_ACTIVE: list = []  # the kernel's tracker, once the extension is loaded (for mlops_jupyter.log_model)


def active_tracker():
    return _ACTIVE[-1] if _ACTIVE else None


class Tracker:
    """One per kernel: turns cells into MLflow runs through the journal and the recorder."""

    def __init__(self, shell):
        _ACTIVE[:] = [self]
        self.shell = shell
        self.settings: config.Settings | None = None
        self.experiment: str | None = None
        self.autotrack = False
        self.current: CellRecord | None = None
        self.records: dict[str, CellRecord] = {}
        self.degraded: str | None = None
        self.run_tags: dict = {}
        self.link: RecorderLink | None = None
        self.notebook = NotebookInfo(shell)
        self._saved_streams = None
        self._pending = None
        self._mutex = threading.Lock()
        self._local = threading.local()
        self._snapshots: dict[str, dict] = {}
        self._snapshot_roots: set[Path] = set()
        self.reads = ReadWatch()  # the snapshotted data a tracked cell opens
        self._cwd: str | None = None
        self._experiment_ready = threading.Event()
        self._rescanning: threading.Thread | None = None
        self._rescan_wanted = threading.Event()
        self.history = order.History()  # every cell this kernel executed, for the hidden-state check
        # record keys: unique in the project (a random prefix per kernel) without drawing randomness per cell
        self._key_prefix, self._key_seq = uuid.uuid4().hex[:16], itertools.count()
        self._to_check: queue.SimpleQueue = queue.SimpleQueue()
        self._checker: threading.Thread | None = None
        self._cell_began = threading.Event()
        self._announcer: threading.Thread | None = None
        for count, raw in enumerate(shell.user_ns.get("In", [])[1:], 1):  # those run before %load_ext
            if isinstance(raw, str):
                self.history.note(count, None, raw)

    # ---- set-up ----------------------------------------------------------------------------
    @property
    def configured(self) -> bool:
        return self.settings is not None

    @property
    def journal(self) -> J.JournalWriter | None:
        return self.link.journal if self.link else None

    def configure(self, experiment: str | None = None, tracking_uri: str | None = None) -> config.Settings:
        """Resolve settings for this notebook's project and get the recorder going."""
        nb = self.notebook_path()
        start = Path(nb).parent if nb else Path.cwd()
        settings = config.resolve(start, {"tracking_uri": tracking_uri, "experiment": experiment})
        config.ensure_state_dir(settings.project_root)
        self.run_tags = config.run_tags()
        if self.link is None:  # before anything is marked configured: it is what can fail here
            # niced: the recorder writes in the time the notebook's cells (and its Ray, starting as the extension
            # loads) leave free, not a core taken from them; records wait, none is lost
            self.link = RecorderLink(settings.state_dir, self._on_event, nice=True)
            atexit.register(self.close)
        self.settings = settings
        self.experiment = settings.experiment or (Path(nb).stem if nb else settings.project_root.name)
        # the user's own mlflow.* calls go to the same store and experiment
        os.environ["MLFLOW_TRACKING_URI"] = settings.tracking_uri
        os.environ["MLFLOW_EXPERIMENT_NAME"] = self.experiment
        if "mlflow" in sys.modules:
            sys.modules["mlflow"].set_tracking_uri(settings.tracking_uri)
        J.finish_orphans(settings.state_dir)
        self.notebook.collect_param_history()
        self.rescan_snapshots()
        self._send({"op": "experiment", **self._store_fields()})
        return settings

    def _store_fields(self) -> dict:
        return {"tracking_uri": self.settings.tracking_uri, "experiment": self.experiment,
                "artifact_location": self.settings.artifact_location}

    def _send(self, op: dict, wake: bool = True) -> None:
        self.link.send(op, wake)
        if self.link.failed:
            self.degraded = self.link.failed

    def close(self) -> None:
        """Kernel exit (or the extension unloaded): a cell still in flight ends KILLED; the recorder finishes
        on its own."""
        if active_tracker() is self:
            _ACTIVE.clear()
        if self.current is not None:
            self.finish(None, interrupted=True)
        if self.link is not None:
            self.link.close()

    # ---- which notebook, which parameters (notebook.py) ------------------------------------
    def notebook_path(self) -> str | None:
        return self.notebook.path()

    def cell_id_for(self, raw: str, cell_id: str | None) -> str | None:
        return self.notebook.cell_id_for(raw, cell_id)

    def is_parameters_cell(self, raw: str, cell_id: str | None) -> bool:
        return self.notebook.is_parameters_cell(raw, cell_id)

    def note_cell(self, raw: str, cell_id: str | None) -> None:
        self.notebook.note_cell(raw, cell_id)

    def note_execution(self, count: int | None, cell_id: str | None, raw: str) -> None:
        """Every executed cell, tracked or not: the order a later tracked cell records (microseconds)."""
        self.history.note(count, cell_id, raw)

    def _check_hidden_state(self) -> None:
        """One long-lived thread: works out each tracked cell's hidden-state warnings while the cell runs."""
        while True:
            self._hidden_state_of(self._to_check.get())

    def _announce(self) -> None:
        """One long-lived thread: a cell still running START_WAKE_S after it began gets its run made now (the
        sidebar shows it RUNNING). A quicker cell's whole run is written after it ends: the recorder's writes
        never compete with the cell for the machine."""
        while True:
            self._cell_began.wait()
            self._cell_began.clear()
            rec = self.current
            if rec is None or rec.ended.wait(max(0.0, rec.started + START_WAKE_S - time.time())):
                continue
            if self.current is rec:
                self.link.wake()

    def _hidden_state_of(self, rec: CellRecord) -> None:
        """Whoever comes first does the check: the thread during a long cell, the cell's end when it was quick
        (no waiting for a thread switch)."""
        from .capture import to_python

        with self._mutex:
            cells, rec.to_check = rec.to_check, None
        if cells is None:
            return  # taken by the other side
        try:
            rec.hidden = order.warnings(self.history.dependencies(cells, to_python), cells[-1],
                                        self.notebook.saved_cells())
        except Exception:  # noqa: BLE001 - a check that cannot run says nothing rather than break the cell
            rec.hidden = []
        rec.checked.set()

    # ---- a tracked cell --------------------------------------------------------------------
    def begin(self, source: str, opts: RunOptions, cell_id: str | None = None, magic: str | None = None,
              count: int | None = None) -> CellRecord:
        """Start the run of the cell now executing; ``finish`` (post_run_cell) ends it."""
        if not self.configured:
            self.configure()
        nb = self.notebook_path()
        count = self.shell.execution_count if count is None else count
        key = self._new_key()
        rec = CellRecord(key=key, opts=opts, started=time.time(), source=source)
        cell_key = f"name:{opts.name}" if opts.name else cell_id or "source:" + hashlib.sha1(source.encode()).hexdigest()[:12]
        stem = Path(nb).stem if nb else "notebook"
        self._send({
            "op": "start", "key": key, "t": int(rec.started * 1000), **self._store_fields(),
            "run_name": opts.name or f"{stem} [{count}]", "notebook": nb, "cell_id": cell_id,
            "cell_key": cell_key, "execution_count": count, "source": source, "magic": magic,
            "param_sources": list(self.notebook.param_sources.values()), "params": opts.params,
            "tags": {**self.run_tags, **opts.tags},
            "metric_names": opts.metrics,
            "kernel": self.link.journal.kernel, "user": _user(), "project_root": str(self.settings.project_root),
            "snapshots": self._snapshots_now(), "execution_order": J.RawJSON(self.history.order_json()),
        }, wake=False)  # the recorder writes after the cell, or once it has run START_WAKE_S (_announce)
        if self.history.cells:
            if self._checker is None:
                self._checker = threading.Thread(target=self._check_hidden_state, daemon=True, name="mlops-hidden-state")
                self._checker.start()
            rec.to_check = self.history.cells[:]
            self._to_check.put(rec)
        else:
            rec.checked.set()
        with self._mutex:
            self.records[key] = rec
        self.current = rec
        self._cell_began.set()
        if self._announcer is None:
            self._announcer = threading.Thread(target=self._announce, daemon=True, name="mlops-announce")
            self._announcer.start()
        self.reads.start()
        self._saved_streams = (sys.stdout, sys.stderr)
        sys.stdout, sys.stderr = _Tee(sys.stdout, rec.stdout), _Tee(sys.stderr, rec.stderr)
        if "mlflow" in sys.modules or "mlflow" in source:
            self._push_pending(rec, source)
        return rec

    def _new_key(self) -> str:
        return f"{self._key_prefix}{next(self._key_seq):016x}"

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
            out.append({"path": rel, "md5": entry["md5"], "size": entry.get("size"), "root": entry["root"]})
        return out

    def rescan_snapshots(self) -> None:
        """Snapshots of the notebook's project, and of any other project this kernel snapshotted in."""
        from ..data import in_scope

        found, files, folders = {}, {}, {}
        for root in [self.settings.project_root, *self._snapshot_roots]:
            for snap in in_scope(root):
                file = str(root / f"{snap['path']}.dvc")
                try:
                    found[snap["path"]] = {**snap, "file": file, "mtime": os.stat(file).st_mtime_ns, "root": str(root)}
                except OSError:
                    continue
                (folders if snap["md5"].endswith(".dir") else files)[file[: -len(".dvc")]] = snap["path"]
        self._snapshots = found
        self.reads.watch(files, folders)

    def _rescan_later(self) -> None:
        """Rescan off the cell's path, in one long-lived thread woken per cell (starting a thread per cell
        cost about 0.5 ms, as much as the rest of tracking a trivial cell)."""
        self._rescan_wanted.set()
        if self._rescanning is None or not self._rescanning.is_alive():
            self._rescanning = threading.Thread(target=self._rescan_loop, daemon=True, name="mlops-snapshots")
            self._rescanning.start()

    def _rescan_loop(self) -> None:
        while True:
            self._rescan_wanted.wait()
            self._rescan_wanted.clear()
            try:
                self.rescan_snapshots()
            except Exception:  # noqa: BLE001 - a .dvc file mid-write; the next cell rescans
                continue

    def attach_snapshot(self, path: str, md5: str, remote: str | None = None, root: str | None = None) -> bool:
        """Link a snapshot to the cell running now; False when none runs (the next tracked run
        records it anyway, with every snapshot the project holds)."""
        if root and Path(root) != self.settings.project_root:
            self._snapshot_roots.add(Path(root))
        self.rescan_snapshots()
        rec = self.current
        if rec is None or not self.configured:
            return False
        self._send({"op": "dataset", "key": rec.key, "path": path, "md5": md5, "remote": remote, "root": root,
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
            "op": "child", "key": self._new_key(), "parent": parent.key, **self._store_fields(),
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

    def follow_cwd(self) -> None:
        """A notebook that changes into another project for its data (``%cd``): that project's snapshots are
        in scope from the next cell on. Costs a getcwd per cell; a rescan only on entering a new project."""
        try:
            cwd = os.getcwd()
        except OSError:
            return
        if cwd == self._cwd or not self.configured:
            return
        self._cwd = cwd
        root = config.find_project_root(cwd)
        if root != self.settings.project_root and root not in self._snapshot_roots and (root / ".dvc").is_dir():
            self._snapshot_roots.add(root)
            self.rescan_snapshots()  # now, not later: papermill runs the next cell at once

    def finish(self, result, interrupted: bool = False) -> None:
        self.follow_cwd()
        rec, self.current = self.current, None
        if rec is None:
            return
        rec.ended.set()
        reads = self.reads.stop()
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
        if status == "FINISHED":
            for name in rec.opts.models:
                problems += self._stage_named_model(rec, name)
        self._hidden_state_of(rec)
        rec.checked.wait(1.0)
        rec.summary = display.summary(status, metrics, problems + rec.hidden)
        if result is not None:
            self._show(rec, first=True)  # before the record is sent, so the recorder's reply finds the line
        for name, folder in rec.models:  # before the run ends, so it ends with its models
            self._send({"op": "model", "key": rec.key, **self._store_fields(), "name": name, "staged": str(folder)})
        self._send({
            "op": "end", "key": rec.key, "t": int(time.time() * 1000), "status": status, "metrics": metrics,
            "params": {k: str(v) for k, v in rec.params.items()},
            "tags": {HIDDEN_STATE: "; ".join(rec.hidden)} if rec.hidden else {},
            "stdout": "".join(rec.stdout), "stderr": "".join(rec.stderr), "outputs": rec.outputs,
            "traceback": "".join(traceback.format_exception(type(err), err, err.__traceback__)) if err else None,
            "reads": reads,
        })
        self._rescan_later()
        if result is not None and self.headless:
            # nobody updates a saved notebook later: its summary line names the run and its counts now
            rec.done.wait(HEADLESS_WAIT_S if not self.degraded else 0)

    @property
    def headless(self) -> bool:
        """Run by papermill (or with MLOPS_HEADLESS=1): the saved notebook is the only place the line lives."""
        return os.environ.get("MLOPS_HEADLESS") == "1" or self.notebook.papermill_input() is not None

    # ---- models logged from a cell ---------------------------------------------------------
    def log_model(self, model, data, name: str = "model") -> None:
        """Log ``model``, fitted on ``data``, in the run of the tracked cell now running: a signature and an
        input example from the first rows of ``data``, pinned requirements, the types skops must trust.
        It is copied now (later changes to it are not logged); MLflow writes it off the cell's path."""
        from ..errors import InvalidInput

        if self.current is None:
            raise InvalidInput("mlops_jupyter.log_model(model, X) logs into the run of the tracked cell that calls "
                               "it, and this cell is not tracked: run it as a tracked cell (%%mlops run, or any cell "
                               "with autotrack on).", model=name)
        self._stage(self.current, model, data, name)

    def _stage(self, rec: CellRecord, model, data, name: str) -> None:
        from ..errors import InvalidInput
        from . import models

        if not isinstance(name, str) or not name.isidentifier():
            raise InvalidInput(f"the model's name {name!r} must be a plain name such as 'model' or 'clf': it becomes "
                               "the path of the model in the run (runs:/RUN_ID/NAME).", model=name)
        if any(n == name for n, _ in rec.models):
            raise InvalidInput(f"this cell already logs a model named {name!r}; give each model its own name.",
                               model=name)
        folder = self.link.blobs / rec.key / name
        models.stage(model, models.example_frame(data, model, name), folder, models.reference_frame(data, model, name))
        rec.models.append((name, folder))

    def _stage_named_model(self, rec: CellRecord, name: str) -> list:
        """``--model NAME``: the variable NAME and the data it was fit on in this cell; problems as text."""
        from ..errors import InvalidInput
        from . import capture, models

        ns = self.shell.user_ns
        if name not in ns:
            return [f"model {name!r} is not defined after the cell"]
        expr = models.fit_expression(capture.to_python(rec.source), name)
        if expr is None:
            return [f"model {name!r} is not fit in this cell ({name}.fit(X, y)), so its input example is unknown: "
                    f"call mlops_jupyter.log_model({name}, X) instead"]
        try:
            self._stage(rec, ns[name], eval(expr, ns), name)  # noqa: S307 - the cell's own expression, by its AST
        except InvalidInput as exc:
            return [str(exc)]
        except Exception as exc:  # noqa: BLE001 - the cell ran fine: its run is kept, with the problem said
            return [f"model {name!r} could not be kept ({type(exc).__name__}: {exc})"]
        return []

    def _line(self, rec: CellRecord, counts: dict | None = None) -> display.Line:
        if self.degraded and counts is None:
            return display.waiting_line(self.degraded, rec.summary, self.link.path)
        url = self.settings.run_url(rec.experiment_id, rec.run_id) if rec.run_id and rec.experiment_id else None
        return display.run_line(rec.run_id, rec.summary, self.settings.where_to_look(), counts, url)

    def _show(self, rec: CellRecord, first: bool = False, counts: dict | None = None) -> None:
        self._local.showing = True
        try:
            # the bundle as it is, past IPython's formatters (a dozen lookups per display), under our own id
            from IPython.core.display_functions import publish_display_data

            if first:
                _publish_after_output(self.shell, self._line(rec).bundle(), rec.key)
                rec.line = rec.key
            elif rec.line is not None:
                publish_display_data(self._line(rec, counts).bundle(), transient={"display_id": rec.line}, update=True)
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
            if not self.link.alive():
                self.link.wake()
            time.sleep(0.01)

    # ---- events from the recorder ----------------------------------------------------------
    def _on_event(self, event: dict) -> None:
        kind = event.get("event")
        with self._mutex:
            rec = self.records.get(event.get("key"))
        if kind == "run" and rec is not None:
            rec.run_id, rec.experiment_id = event["run_id"], event.get("experiment_id")
            rec.ready.set()
            if rec.line is not None:
                self._show(rec)
        elif kind == "done" and rec is not None:
            rec.run_id = event["run_id"]
            rec.ready.set()
            self._show(rec, counts=event.get("counts", {}))
            with self._mutex:
                self.records.pop(rec.key, None)
            rec.done.set()
        elif kind == "degraded":
            self.degraded = event.get("error", "unknown error")
            for pending in list(self.records.values()):
                self._show(pending)
                pending.done.set()  # a headless cell waits no longer: its line says where the run waits
        elif kind == "warning" and rec is not None:  # part of the run could not be written (e.g. a model)
            rec.summary += f" · {event.get('message')}"
            self._show(rec)
        elif kind == "recovered":
            self.degraded = None
        elif kind == "experiment":
            self._experiment_ready.set()

    def wait_run_id(self, rec: CellRecord) -> str:
        if not rec.ready.wait(RUN_ID_WAIT_S):
            raise StoreUnavailable(
                f"the tracking store {self.settings.tracking_uri} did not answer within {RUN_ID_WAIT_S:.0f} s "
                f"({self.degraded or 'no reply'}), so mlflow.* calls inside this tracked cell cannot reach its run. "
                f"The cell's own record waits in {self.link.path}.", uri=self.settings.tracking_uri,
                journal=str(self.link.path), reason=self.degraded or "no reply")
        return rec.run_id

    # ---- the cell's run as MLflow's active run (active_run.py) -----------------------------
    def _push_pending(self, rec: CellRecord, source: str) -> None:
        if "start_run(" in source and "nested" not in source and "parent_run_id" not in source:
            return  # the cell manages its own top-level run
        from . import active_run, store

        self._pending = active_run.push(lambda: store.client(self.settings.tracking_uri).get_run(
            self.wait_run_id(rec)))

    def _pop_pending(self) -> None:
        if self._pending is not None:
            from . import active_run

            active_run.remove(self._pending)
            self._pending = None


def _publish_after_output(shell, bundle: dict, display_id: str) -> None:
    """Show ``bundle`` below what the cell printed, without waiting on the kernel's IO thread. ipykernel's
    display flushes stdout and stderr first and waits for its IO thread twice (about 1 ms, a tracked cell's
    largest cost); here one task on that thread flushes both and then queues the message, which keeps the
    order. ipykernel's private names stay in this one function (tests/test_kernels.py holds the order);
    anything else (a terminal, another kernel) takes IPython's public path."""
    from IPython.core.display_functions import publish_display_data

    pub, streams = getattr(shell, "display_pub", None), (sys.stdout, sys.stderr)
    thread = getattr(sys.stdout, "pub_thread", None)
    if (thread is None or not hasattr(thread, "schedule") or not hasattr(pub, "pub_socket")
            or not all(getattr(s, "pub_thread", None) is thread and hasattr(s, "_flush") for s in streams)):
        publish_display_data(bundle, transient={"display_id": display_id})
        return
    msg = pub.session.msg("display_data", {"data": bundle, "metadata": {}, "transient": {"display_id": display_id}},
                          parent=pub.parent_header)
    for hook in getattr(pub, "_hooks", ()):  # an output capture (ipywidgets' Output) takes it, as in display()
        msg = hook(msg)
        if msg is None:
            return

    def flush_then_send():  # on the IO thread: the streams' sends are queued first, then the line's
        for stream in streams:
            stream._flush()
        pub.session.send(pub.pub_socket, msg, ident=pub.topic)

    thread.schedule(flush_then_send)


@functools.cache
def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        return os.environ.get("USER", "unknown")
