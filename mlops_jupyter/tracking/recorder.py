"""The recorder: a process per kernel that applies the kernel's journal to the MLflow store.

It runs beside the kernel (``--follow``: woken through stdin, reporting on stdout) so that no
MLflow write ever sits on a cell's critical path or competes with it for the GIL, and it outlives
the kernel: when stdin closes (kernel exit or SIGKILL) it writes what is left, ends any run whose
cell never finished as KILLED, and removes the journal. If the store is down it retries with
backoff; whatever it cannot write stays in the journal for the next recorder.

Every MLflow record the product makes comes through here (the one writer): cells ("start"/"end",
"dataset"), and runs of any other writer (sweeps, pipelines, models, reproductions) as generic ops:
"run" (create, optionally under a parent), "log" (params, metrics, tags), "files", "text", "model" (an
MLflow model folder becomes a logged model of the run) and "finish"; and the registry's: "register" (a model
version), "copy" (a version into another registry) and "alias" (an alias moved, with its audit record). Each op names its run by the
writer's key; creating a run is idempotent on that key (tag ``mlops.record``), and an op's steps that
already succeeded are not repeated, so a replay never duplicates anything.

    python -m mlops_jupyter.tracking.recorder JOURNAL [--follow]
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from .. import data
from ..errors import StoreBroken
from . import capture, store
from . import tags as T
from .journal import blob_dir, dumps, side_file, try_lock

EXIT_GRACE_S = float(os.environ.get("MLOPS_RECORDER_EXIT_GRACE_S", "20"))  # retrying a failing store after the kernel is gone
# an op slower than this has its store asked whether it answers (store.answers), and is reported as "store not
# answering" only when it does not: a busy machine's own slowness (2 cores, several kernels) is not a store down
SLOW_OP_S = float(os.environ.get("MLOPS_RECORDER_SLOW_S", "8"))
COMPACT_BYTES = int(os.environ.get("MLOPS_JOURNAL_COMPACT_BYTES", 8 << 20))
PERMANENT = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST",
             "INVALID_STATE", "BAD_REQUEST", "PERMISSION_DENIED", "UNAUTHENTICATED"}
MIME_FILES = {"image/png": "png", "image/jpeg": "jpg", "image/svg+xml": "svg", "text/html": "html",
              "text/markdown": "md", "application/json": "json", "text/plain": "txt"}


def _parse(raw: bytes) -> dict:
    try:
        op = json.loads(raw)
    except ValueError:
        return {"op": "corrupt"}
    return op if isinstance(op, dict) else {"op": "corrupt"}


def _code_state(root: str, snapshots: list | None = None) -> tuple[dict, list]:
    """The project's git state and the DVC snapshots in its scope (``snapshots`` when already known)."""
    return capture.git_state(root), data.in_scope(root) if snapshots is None else snapshots


def _code_tags(root: str, git: dict, snapshots: list) -> dict:
    """A run's tags for the code and data it used: commit and dirtiness, each snapshot's md5, the projects."""
    tags = {data.tag_key(d["path"]): d["md5"] for d in snapshots}
    if git:
        tags.update({T.GIT_COMMIT: git["commit"], "mlflow.source.git.commit": git["commit"],
                     T.GIT_DIRTY: str(git["dirty"]).lower()})
    tags[T.PROJECTS] = capture.projects(root, git, snapshots)
    return tags


class StoreDown(Exception):
    pass


class Unwritable(Exception):
    """A record that can never be written (what it refers to is gone): skipped with a warning."""

    error_code = "INVALID_PARAMETER_VALUE"  # treated like MLflow's own permanent refusals


class Recorder:
    def __init__(self, journal: Path, follow: bool, on_event=None, grace: float = EXIT_GRACE_S):
        self.journal = journal
        self.follow = follow
        self.grace = grace  # how long a failing store is retried once no writer is left
        self.on_event = on_event  # in the writer's own process (an inline link): its events go straight to it
        self.state_path = side_file(journal, ".state")
        self.state = {"offset": 0, "step": 0, "attempting": None, "runs": {}, "open": {},
                      "env_run": None, "models": {}}
        if self.state_path.exists():
            self.state.update(json.loads(self.state_path.read_text()))
        self.clients, self.experiments, self.artifact_uris = {}, {}, {}
        self._code: dict = {}  # (project root, run key) -> the code tags a run was made with, for its children
        self.wake, self.eof = threading.Event(), threading.Event()
        self.degraded = False
        self._initializing = False
        self._watch: threading.Event | None = None  # set when the running op ends: its slowness watch stops
        self._asked: str | None = None  # the store last asked for: the one a slow op waits on
        self.events = None
        if follow:
            # events go to the writer through a private copy of stdout; sys.stdout itself goes to the log, so
            # nothing MLflow prints (e.g. "View run ... at" for a tracking server) can hit a pipe whose reader
            # has exited and fail a store write with BrokenPipeError
            self.events = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8")
            sys.stdout = sys.stderr

    # ---- talking to the writer (a kernel, a pipeline run, ...) -----------------------------
    def emit(self, **event) -> None:
        if self.on_event is not None:
            self.on_event(event)
        if self.events is None:
            return
        try:
            self.events.write(json.dumps(event, default=str) + "\n")
            self.events.flush()
        except (BrokenPipeError, OSError, ValueError):
            self.events = None  # the writer is gone; the journal still holds everything

    def _read_stdin(self) -> None:
        try:
            while os.read(sys.stdin.fileno(), 4096):
                self.wake.set()
        except OSError:
            pass
        self.eof.set()
        self.wake.set()

    # ---- main loop -------------------------------------------------------------------------
    def run(self) -> int:
        lock = try_lock(side_file(self.journal, ".recorder.lock"))
        if lock is None:
            return 0  # another recorder owns this journal
        if self.follow:
            threading.Thread(target=self._read_stdin, daemon=True).start()
        deadline = None
        while True:
            if (self.eof.is_set() or not self.follow) and deadline is None:
                deadline = time.monotonic() + self.grace
            caught_up = self.drain(deadline)
            if deadline is not None:
                if caught_up and self.finish(deadline):
                    self.cleanup()
                lock.close()
                return 0
            self.wake.wait(timeout=1.0)
            self.wake.clear()

    def drain(self, deadline) -> bool:
        """Apply every complete line past the saved offset; False if the store stopped us."""
        with open(self.journal, "rb") as fh:
            fh.seek(self.state["offset"])
            data = fh.read()
        lines = data.splitlines(keepends=True)
        i = 0
        while i < len(lines) and lines[i].endswith(b"\n"):  # an unterminated line is one still being written
            op, size = _parse(lines[i]), len(lines[i])
            if op.get("op") == "start" and i + 1 < len(lines) and lines[i + 1].endswith(b"\n"):
                end = _parse(lines[i + 1])
                if end.get("op") == "end" and end.get("key") == op.get("key"):  # a quick cell: both at once
                    op, size, i = {"op": "cell", "start": op, "end": end}, size + len(lines[i + 1]), i + 1
            if not self.retrying(self.apply, op, deadline):
                return False
            self.state.update(offset=self.state["offset"] + size, step=0, attempting=None)
            self.save()
            i += 1
        if self.state["offset"] >= COMPACT_BYTES:
            self.compact()
        return True

    def compact(self) -> None:
        """Empty a fully applied journal, so a kernel that runs for days keeps a small one."""
        with open(self.journal, "r+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                if os.fstat(fh.fileno()).st_size == self.state["offset"]:
                    self.state["offset"] = 0
                    self.save()  # first: a crash in between re-applies (idempotently), never skips
                    fh.truncate(0)
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def retrying(self, fn, op, deadline) -> bool:
        delay = 0.25
        while True:
            self._arm()
            try:
                fn(op)
            except (StoreDown, StoreBroken) as exc:
                self._report_down(exc)
            except Exception as exc:  # noqa: BLE001 - classify below, never die on a store error
                if getattr(exc, "error_code", None) in PERMANENT:
                    said = str(exc) if isinstance(exc, Unwritable) else f"{type(exc).__name__}: {exc}"
                    self.emit(event="warning", key=op.get("key"), message=said, code=exc.error_code)
                    print(f"mlops recorder: skipped part of {op.get('op')}: {exc}", file=sys.stderr)
                    return True
                self._report_down(exc)
            else:
                if self.degraded:
                    self.degraded = False
                    self.emit(event="recovered")
                return True
            finally:
                self._watch.set()
            if deadline is not None:
                if time.monotonic() + delay > deadline:
                    return False
                time.sleep(delay)
            elif self.eof.wait(timeout=delay):
                return False  # kernel gone: the main loop retries under the exit deadline
            delay = min(delay * 2, 5.0)

    def _report_down(self, exc) -> None:
        print(f"mlops recorder: store error: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        if not self.degraded:
            self.degraded = True
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            self.emit(event="degraded", error=first, journal=str(self.journal))

    def _arm(self) -> None:
        """(Re)start the op's slowness watch: as an op starts, and once its own slow work (a model built) is
        done and the store's part begins."""
        if self._watch is not None:
            self._watch.set()
        self._watch = threading.Event()
        threading.Thread(target=self._watch_op, args=(self._watch,), daemon=True).start()

    def _watch_op(self, done: threading.Event) -> None:
        """Every SLOW_OP_S that the op runs on, ask its store whether it answers, and report it as not answering
        the first time it does not. Time alone misleads: a kernel's first op imports IPython and reads git and the
        environment, which took over 8 s with six kernels starting together on two busy cores."""
        while not done.wait(SLOW_OP_S):
            if self.degraded:
                return
            uri = self._asked
            if self._initializing or uri is None or store.answers(uri):  # creating a new store is slow, not down
                continue
            if not done.is_set():
                self.degraded = True
                self.emit(event="degraded", error="the tracking store is not answering", journal=str(self.journal))
            return

    def save(self) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(dumps(self.state))
        os.replace(tmp, self.state_path)

    def steps(self, *fns) -> None:
        """Run an op's steps, skipping those a previous attempt finished (ops are not all idempotent)."""
        for i, fn in enumerate(fns):
            if i < self.state["step"]:
                continue
            fn()
            self.state["step"] = max(self.state["step"], i + 1)  # a step may mark later ones done
            if i + 1 < len(fns):  # after the last, the op's end is saved with the journal offset
                self.save()

    # ---- MLflow ----------------------------------------------------------------------------
    def client(self, uri: str):
        self._asked = uri
        if uri not in self.clients:
            self._initializing = True  # creating a new store (or waiting for another process to) is slow, not down
            try:
                self.clients[uri] = store.client(uri)
            finally:
                self._initializing = False
        return self.clients[uri]

    def experiment_id(self, uri: str, name: str, artifact_location: str | None) -> str:
        if (uri, name) in self.experiments:
            return self.experiments[(uri, name)]
        client = self.client(uri)
        exp = client.get_experiment_by_name(name)
        if exp is None:
            try:
                exp_id = client.create_experiment(name, artifact_location=artifact_location)
            except Exception as exc:  # noqa: BLE001 - another kernel created it first
                if getattr(exc, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
                    raise
                exp_id = client.get_experiment_by_name(name).experiment_id
        else:
            exp_id = exp.experiment_id
            if exp.lifecycle_stage == "deleted":
                client.restore_experiment(exp_id)
                self.emit(event="warning", message=f"experiment {name!r} was deleted; restored it to record runs")
        self.experiments[(uri, name)] = exp_id
        return exp_id

    def apply(self, op: dict) -> None:
        kind = op.get("op")
        handler = getattr(self, f"op_{kind}", None) if isinstance(kind, str) else None
        if handler is not None:
            handler(op)
        elif kind == "experiment":
            self.experiment_id(op["tracking_uri"], op["experiment"], op.get("artifact_location"))
            self.emit(event="experiment", experiment=op["experiment"])

    def _create_run(self, key: str, uri: str, exp_id: str, **create) -> str:
        """Create the run for journal key ``key`` once: a retry or replay finds the run an earlier attempt
        made (by its ``mlops.record`` tag) instead of making a second one."""
        if key in self.state["runs"]:
            return self.state["runs"][key]
        client = self.client(uri)
        # a replay of a journal (no live writer) may hold records an earlier recorder already wrote; a live
        # writer's records are new, unless an attempt at this very record was cut off
        if not self.follow or self.state["attempting"] == self.state["offset"]:
            found = client.search_runs([exp_id], filter_string=f"tags.`{T.RECORD}` = '{key}'", max_results=1)
            if found:
                self.state["runs"][key] = found[0].info.run_id
                self.artifact_uris[found[0].info.run_id] = found[0].info.artifact_uri
                return found[0].info.run_id
        self.state["attempting"] = self.state["offset"]
        self.save()
        create["tags"] = {**{k: str(v) for k, v in create.get("tags", {}).items()}, T.RECORD: key}  # a server wants strings
        run = client.create_run(exp_id, **create)
        self.state["runs"][key] = run.info.run_id
        self.artifact_uris[run.info.run_id] = run.info.artifact_uri
        self.emit(event="run", key=key, run_id=run.info.run_id, experiment_id=exp_id)
        return run.info.run_id

    def _run_of(self, op: dict) -> str | None:
        """The run an op is about: a run made through the journal (its key), or an existing run by id."""
        return op.get("run_id") or self.state["runs"].get(op.get("key"))

    # ---- generic ops: any writer's runs (sweeps, pipelines, models, reproductions) ---------
    def op_run(self, op: dict) -> None:
        uri, key = op["tracking_uri"], op["key"]
        parent = op.get("parent")
        if parent is not None and parent not in self.state["runs"]:
            return  # its parent was skipped as permanently invalid

        def create():
            from mlflow.entities import Param

            exp_id = self.experiment_id(uri, op["experiment"], op.get("artifact_location"))
            tags = dict(op.get("tags", {}))
            root = op.get("project_root")
            if root:  # a run of the project's code (a pipeline): its commit and data versions, read once per run
                code = self._code.get((root, parent)) or _code_tags(root, *_code_state(root))  # a step: its run's
                self._code[(root, key)] = code
                tags.update(code)
            if parent is not None:
                tags[T.PARENT] = self.state["runs"][parent]
            run_id = self._create_run(key, uri, exp_id, start_time=op["t"], tags=tags, run_name=op.get("run_name"))
            self.state["open"][key] = {"uri": uri}
            if op.get("params"):
                self.client(uri).log_batch(run_id, params=[Param(k, str(v)) for k, v in op["params"].items()])

        self.steps(create)

    def op_log(self, op: dict) -> None:
        from mlflow.entities import Metric, Param, RunTag

        run_id = self._run_of(op)
        if run_id is None:
            return
        client, t = self.client(op["tracking_uri"]), op.get("t") or int(time.time() * 1000)
        existing = client.get_run(run_id).data.params if op.get("params") else {}
        params = [Param(k, str(v)) for k, v in op.get("params", {}).items() if k not in existing]
        metrics = [Metric(k, float(v), t, int(op.get("step", 0))) for k, v in op.get("metrics", {}).items()]
        tags = [RunTag(k, str(v)) for k, v in op.get("tags", {}).items()]
        client.log_batch(run_id, metrics=metrics, params=params, tags=tags)

    def op_files(self, op: dict) -> None:
        """Files or folders as artifacts of the run (``[{"src", "dest"}]``); a source that is gone by now is
        noted on the run rather than failing the whole record."""
        run_id = self._run_of(op)
        if run_id is None:
            return
        client, missing = self.client(op["tracking_uri"]), []
        for item in op.get("files", []):
            src = Path(item["src"])
            if src.is_dir():
                client.log_artifacts(run_id, str(src), item.get("dest"))
            elif src.is_file():
                client.log_artifact(run_id, str(src), item.get("dest"))
            else:
                missing.append(str(src))
        if missing:
            client.set_tag(run_id, "mlops.missing_artifacts", ", ".join(missing)[:5000])

    def op_text(self, op: dict) -> None:
        run_id = self._run_of(op)
        if run_id is not None:
            client = self.client(op["tracking_uri"])
            for path, text in op.get("texts", {}).items():
                client.log_text(run_id, text, path)

    def op_model(self, op: dict) -> None:
        """An MLflow model folder (``dir``, written by the producer with ``save_model``) becomes a logged model
        of the run, as ``log_model`` makes one: ``runs:/RUN/NAME`` and ``models:/m-...`` resolve to it."""
        run_id = self._run_of(op)
        if run_id is None:
            return
        from ..monitor import kept_at
        from . import models

        client, key, name = self.client(op["tracking_uri"]), f"{op['key']}/{op['name']}", op["name"]
        source = Path(op["dir"]) if op.get("dir") else Path(op["staged"]) / "mlflow-model"

        def create():
            from mlflow.entities import LoggedModelStatus

            if key in self.state["models"]:
                return
            run = client.get_run(run_id)
            replay = not self.follow or self.state["attempting"] == self.state["offset"]
            found = [m for m in client.search_logged_models(experiment_ids=[run.info.experiment_id],
                                                            filter_string=f"source_run_id = '{run_id}'")
                     if m.tags.get(T.RECORD) == key] if replay else []
            if found and found[0].status == LoggedModelStatus.READY:
                self.state["models"][key] = found[0].model_id
                self.state["step"] = 3  # written before: nothing left to do
                return
            if op.get("staged") and Path(op["staged"], "model.pkl").is_file():
                self._build(op["staged"], name, run_id)
            if not source.is_dir():
                raise Unwritable(f"the model folder {source} is gone, so model {name!r} of run {run_id} cannot be "
                                 "logged")
            self.state["attempting"] = self.state["offset"]
            self.save()
            model = found[0] if found else client.create_logged_model(
                run.info.experiment_id, name=name, source_run_id=run_id, tags={T.RECORD: key, **op.get("tags", {})},
                params={k: v[:6000] for k, v in run.data.params.items()})
            self.state["models"][key] = model.model_id

        def upload():
            from mlflow.entities import LoggedModelOutput

            model = client.get_logged_model(self.state["models"][key])
            client.log_outputs(run_id, models=[LoggedModelOutput(model.model_id, step=0)])
            with tempfile.TemporaryDirectory() as tmp:
                folder = models.stamp_copy(source, Path(tmp) / name, run_id, model.model_id, model.artifact_location)
                client.log_model_artifacts(model.model_id, str(folder))
            # the drift checks' reference, beside the run's records: in the staged folder, or beside the model's
            profile = kept_at(op["staged"] if op.get("staged") else Path(op["dir"]).parent, name)
            if profile.is_file():
                client.log_artifact(run_id, str(profile), "reference")

        def ready():
            from mlflow.entities import LoggedModelStatus

            client.finalize_logged_model(self.state["models"][key], LoggedModelStatus.READY)
            self.emit(event="model", key=op["key"], name=name, model_id=self.state["models"][key],
                      uri=f"runs:/{run_id}/{name}")

        self.steps(create, upload, ready)

    def _build(self, staged: str, name: str, run_id: str) -> None:
        """A model a kernel kept (tracking.models.stage) as an MLflow model folder: slow work, not the store's."""
        from ..errors import InvalidInput
        from . import models

        self._initializing = True  # building takes seconds: the store is not slow because of it
        try:
            try:
                models.save_staged(Path(staged), name, run_id)
            except InvalidInput as exc:
                raise Unwritable(str(exc)) from None
            except Exception as exc:  # noqa: BLE001 - e.g. the model's class cannot be imported here
                raise Unwritable(f"model {name!r} could not be made an MLflow model ({type(exc).__name__}: "
                                 f"{str(exc)[:300]})") from None
            try:
                models.staged_reference(Path(staged), name, run_id)
            except Exception as exc:  # noqa: BLE001 - the model is logged all the same; only drift checks lack it
                self.emit(event="warning", message=f"model {name!r} of run {run_id} has no reference profile for "
                                                   f"drift checks ({type(exc).__name__}: {str(exc)[:300]})")
        finally:
            self._initializing = False
            self._arm()  # the store's part of the op gets its own SLOW_OP_S

    def op_finish(self, op: dict) -> None:
        run_id = self._run_of(op)
        if run_id is None:
            return
        self.client(op["tracking_uri"]).set_terminated(run_id, op["status"], end_time=op.get("t"))
        self.state["open"].pop(op.get("key"), None)
        self.emit(event="done", key=op.get("key"), run_id=run_id, status=op["status"], counts={})

    # ---- registry ops: versions, copies between registries, aliases and their audit records --------------
    def _version_of(self, client, name: str, key: str):
        """The version of ``name`` an earlier attempt at record ``key`` made, if any (replays make none twice)."""
        for mv in client.search_model_versions(f"name = '{name}'"):
            if mv.tags.get(T.RECORD) == key:
                return mv
        return None

    def _ensure_model(self, client, name: str) -> None:
        try:
            client.create_registered_model(name)
        except Exception as exc:  # noqa: BLE001 - it exists already: the common case
            if getattr(exc, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
                raise

    def op_register(self, op: dict) -> None:
        """A model version of registered model ``name`` from ``source`` (a logged model of run ``run_id``)."""
        client, key, name = self.client(op["tracking_uri"]), op["key"], op["name"]

        def create():
            self._ensure_model(client, name)
            mv = self._version_of(client, name, key) or client.create_model_version(
                name, op["source"], run_id=op.get("run_id"), tags={**op.get("tags", {}), T.RECORD: key},
                model_id=op.get("model_id"))
            self.state.setdefault("versions", {})[key] = str(mv.version)

        self.steps(create, lambda: self._audit(client, name, self.state["versions"][key], op.get("audit")))
        self.emit(event="version", key=key, name=name, version=str(self.state["versions"][key]))

    def op_copy(self, op: dict) -> None:
        """Version ``version`` of ``name`` in registry ``src_uri`` copied into this op's registry, artifacts
        included: a run of experiment ``experiment`` holds them there (the version's source)."""
        client, key, name = self.client(op["tracking_uri"]), op["key"], op["name"]

        def copy():
            self._ensure_model(client, name)
            mv = self._version_of(client, name, key)
            if mv is None:
                exp_id = self.experiment_id(op["tracking_uri"], op["experiment"], op.get("artifact_location"))
                run_id = self._create_run(key, op["tracking_uri"], exp_id, run_name=f"{name} v{op['version']}",
                                          tags={"mlops.copied_from": f"{op['src_uri']}#{name}/{op['version']}"})
                self._initializing = True  # moving a model's files takes seconds: the store is not slow because of it
                try:
                    with tempfile.TemporaryDirectory() as tmp:
                        from mlflow.artifacts import download_artifacts

                        where = self.client(op["src_uri"]).get_model_version_download_uri(name, op["version"])
                        folder = download_artifacts(where, dst_path=tmp, tracking_uri=op["src_uri"])
                        client.log_artifacts(run_id, folder, "model")
                finally:
                    self._initializing = False
                source = client.get_run(run_id).info.artifact_uri.rstrip("/") + "/model"
                mv = client.create_model_version(name, source, run_id=run_id,
                                                 tags={**op.get("tags", {}), T.RECORD: key})
                client.set_terminated(run_id, "FINISHED")
            self.state.setdefault("versions", {})[key] = str(mv.version)

        self.steps(copy)
        self.emit(event="version", key=key, name=name, version=str(self.state["versions"][key]))

    def op_alias(self, op: dict) -> None:
        """The audit record first (on the version and in the model's log), then the alias moves: an alias is
        never where no record says it went, and a replay finishes whichever step was cut off."""
        client, name, version = self.client(op["tracking_uri"]), op["name"], op["version"]
        if version is None:  # a version made by an earlier op of this journal (a copy), named by its key
            version = self.state.get("versions", {}).get(op.get("version_key"))
            if version is None:
                return  # that op was skipped as permanently invalid
        self.steps(lambda: self._audit(client, name, version, op.get("audit")),
                   lambda: client.set_registered_model_alias(name, op["alias"], str(version)))
        self.emit(event="alias", key=op.get("key"), name=name, alias=op["alias"], version=str(version))

    def _audit(self, client, name: str, version, audit: dict | None) -> None:
        if not audit:
            return
        record = json.dumps({**audit, "version": str(version)}, sort_keys=True)[:5000]
        client.set_model_version_tag(name, str(version), audit["key"], record)
        client.set_registered_model_tag(name, audit["key"], record)

    # ---- tracked cells: "start" and "end", or both at once ("cell", a cell that ended before its run was made)
    def _begun(self, op: dict) -> tuple[str, dict, list, dict]:
        """What a cell's start record stands for: (project root, git state, snapshots, params)."""
        root = op.get("project_root") or os.getcwd()
        git, snapshots = _code_state(root, op.get("snapshots"))  # the snapshots held as the cell started
        params = {}
        for src in op.get("param_sources", []):
            params.update(capture.literal_assignments(src))
        params.update(capture.literal_assignments(op.get("source", "")))
        skip = set(op.get("metric_names", []))  # a literal metric (acc = 0.9) is a metric, not a param
        params = {k: capture.param_value(v) for k, v in params.items() if k not in skip}
        params.update({k: str(v) for k, v in op.get("params", {}).items()})
        return root, git, snapshots, params

    def _create_cell_run(self, op: dict, begun: tuple) -> str:
        key, uri = op["key"], op["tracking_uri"]
        root, git, snapshots, params = begun
        exp_id = self.experiment_id(uri, op["experiment"], op.get("artifact_location"))
        notebook = op.get("notebook") or ""
        tags = {
            T.KERNEL: op.get("kernel", ""), T.HOST: socket.gethostname(),
            T.CELL_KEY: op.get("cell_key", ""), T.SOURCE_HASH: capture.source_hash(op.get("source", "")),
            "mlflow.user": op.get("user", ""), "mlflow.source.type": "NOTEBOOK",
            "mlflow.note.content": f"Cell [{op.get('execution_count')}] of `{notebook or 'an unsaved notebook'}`"
                                   f"\n\n```python\n{op.get('source', '')}\n```",
        }
        if notebook:
            tags.update({T.NOTEBOOK: notebook, "mlflow.source.name": notebook})
        if op.get("cell_id"):
            tags[T.CELL_ID] = op["cell_id"]
        if op.get("execution_count") is not None:
            tags[T.EXECUTION_COUNT] = str(op["execution_count"])
        tags.update(_code_tags(root, git, snapshots))
        if self.state["env_run"] is not None:  # the first run of this journal holds the environment's files
            tags[T.ENVIRONMENT] = f"runs:/{self.state['env_run']}/environment"
        tags.update(op.get("tags", {}))
        run_id = self._create_run(key, uri, exp_id, start_time=op["t"], tags=tags, run_name=op.get("run_name"))
        self.state["open"][key] = {"params": params, "git_diff": git.get("diff"), "uri": uri,
                                   "source": op.get("source", ""), "order": op.get("execution_order")}
        return run_id

    def _started_files(self, folder: Path, info: dict) -> bool:
        """A cell's source, execution order and git diff into ``folder``, and the environment's files when no run
        of this journal holds them yet; True if it added those."""
        Path(folder, "cell").mkdir(exist_ok=True)
        Path(folder, "cell", "source.py").write_text(info.get("source", ""))
        if info.get("order") is not None:  # the cells this kernel ran up to this one: hidden state
            Path(folder, "cell", "execution_order.json").write_text(json.dumps(info["order"], indent=1))
        if info.get("git_diff"):
            Path(folder, "git").mkdir()
            Path(folder, "git", "diff.patch").write_text(info["git_diff"])
        if self.state["env_run"] is not None:
            return False
        env = capture.environment()
        Path(folder, "environment").mkdir()
        Path(folder, "environment", "requirements.txt").write_text(env["requirements"])
        Path(folder, "environment", "python.json").write_text(json.dumps(env["python"], indent=2))
        return True

    def _log_folder(self, client, run_id: str, folder: Path) -> int:
        """Every file under ``folder`` as the run's artifacts (into the location its creation returned, without
        asking the store again); how many."""
        n = sum(1 for p in Path(folder).rglob("*") if p.is_file())
        if n:
            uri = self.artifact_uris.get(run_id)
            if uri is None:
                client.log_artifacts(run_id, str(folder))
            else:
                from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

                get_artifact_repository(uri, tracking_uri=client.tracking_uri).log_artifacts(str(folder))
        return n

    def _environment_held(self, client, run_id: str) -> None:
        self.state["env_run"] = run_id
        client.set_tag(run_id, T.ENVIRONMENT, f"runs:/{run_id}/environment")

    def op_start(self, op: dict) -> None:
        key, client = op["key"], self.client(op["tracking_uri"])
        begun = self._begun(op)

        def files():
            run_id, info = self.state["runs"][key], self.state["open"].get(key, {})
            with tempfile.TemporaryDirectory() as tmp:
                env = self._started_files(Path(tmp), info)
                info["files"] = self._log_folder(client, run_id, Path(tmp))
            if env:
                self._environment_held(client, run_id)

        self.steps(lambda: self._create_cell_run(op, begun), files,
                   lambda: self.log_datasets(client, self.state["runs"][key], begun[2], begun[0]))

    def op_cell(self, op: dict) -> None:
        """A cell whose end was journalled before its start was applied (most cells: the recorder is woken by
        the end): one run made with all it holds, its files in one upload, and no reads of it back."""
        start, end = op["start"], op["end"]
        key, client = start["key"], self.client(start["tracking_uri"])
        begun, counts = self._begun(start), {}

        def values():
            info = self.state["open"].get(key, {})
            counts.update(self._log_end_values(client, self.state["runs"][key], info, end, {}, {
                data.tag_key(d["path"]): d["md5"] for d in begun[2]}))

        def files():
            run_id, info = self.state["runs"][key], self.state["open"].get(key, {})
            with tempfile.TemporaryDirectory() as tmp:
                env = self._started_files(Path(tmp), info)
                self._output_files(Path(tmp), end)
                counts["artifacts"] = self._log_folder(client, run_id, Path(tmp))
            if env:
                self._environment_held(client, run_id)

        self.steps(lambda: self._create_cell_run(start, begun), values, files,
                   lambda: self.log_datasets(client, self.state["runs"][key], begun[2], begun[0]),
                   lambda: self._terminate(client, key, end, counts))

    def log_datasets(self, client, run_id: str, snapshots: list[dict], root: str) -> None:
        """Snapshots as MLflow dataset inputs: digest = the DVC md5, source = path (+ remote)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        if not snapshots:
            return
        inputs = [DatasetInput(Dataset(name=d["path"], digest=d["md5"], source_type="dvc",
                                       source=json.dumps({"path": d["path"], "project": d.get("root") or root,
                                                          "remote": d.get("remote")})),
                               tags=[InputTag("mlflow.data.context", "snapshot")]) for d in snapshots]
        client.log_inputs(run_id, datasets=inputs)

    def op_dataset(self, op: dict) -> None:
        """A snapshot taken while a tracked cell runs joins that cell's run."""
        run_id = self.state["runs"].get(op["key"])
        if run_id is None:
            return
        client = self.client(op["tracking_uri"])
        snap = {"path": op["path"], "md5": op["md5"], "remote": op.get("remote")}
        client.set_tag(run_id, data.tag_key(op["path"]), op["md5"])
        client.set_tag(run_id, data.read_key(op["path"]), op["md5"])  # the run made this version: it used it
        if op.get("root"):
            tags = client.get_run(run_id).data.tags
            client.set_tag(run_id, T.PROJECTS, capture.add_project(tags.get(T.PROJECTS), op["root"], op["path"]))
        self.log_datasets(client, run_id, [snap], op.get("project_root", ""))

    def op_end(self, op: dict) -> None:
        key = op["key"]
        run_id = self.state["runs"].get(key)
        if run_id is None:
            return  # its start was skipped as permanently invalid
        info = self.state["open"].get(key, {"uri": op.get("tracking_uri")})
        client = self.client(info["uri"])
        counts = {}

        def values():
            existing = client.get_run(run_id).data  # a snapshot taken in the cell added its tag meanwhile
            counts.update(self._log_end_values(client, run_id, info, op, existing.params, existing.tags))
            counts["metrics"] = len(set(existing.metrics) | set(op.get("metrics", {})))

        def files():
            with tempfile.TemporaryDirectory() as tmp:
                self._output_files(Path(tmp), op)
                counts["artifacts"] = info.get("files", 0) + self._log_folder(client, run_id, Path(tmp))

        self.steps(values, files, lambda: self._terminate(client, key, op, counts))

    def _log_end_values(self, client, run_id: str, info: dict, op: dict, existing: dict, data_tags: dict) -> dict:
        """A cell's params (its literals and given ones), metrics and end tags in one batch; their counts."""
        from mlflow.entities import Metric, Param, RunTag

        params = {**info.get("params", {}), **op.get("params", {})}
        params = {k: v for k, v in params.items() if k not in existing}
        metrics = [Metric(k, float(v), op["t"], 0) for k, v in op.get("metrics", {}).items()]
        # the snapshotted paths the cell read, at the version the run started with
        reads = [RunTag(data.read_key(rel), data_tags[data.tag_key(rel)]) for rel in op.get("reads", [])
                 if data.tag_key(rel) in data_tags]
        tags = reads + [RunTag(k, v) for k, v in op.get("tags", {}).items()]  # e.g. hidden state
        client.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()], tags=tags)
        return {"params": len(existing) + len(params), "metrics": len(metrics)}

    def _terminate(self, client, key: str, op: dict, counts: dict) -> None:
        run_id = self.state["runs"][key]
        client.set_terminated(run_id, op["status"], end_time=op["t"])
        self.state["open"].pop(key, None)
        self.state["runs"].pop(key)  # no record names an ended cell: the state stays small in a long session
        self.artifact_uris.pop(run_id, None)
        self.emit(event="done", key=key, run_id=run_id, status=op["status"], counts=counts)

    def op_child(self, op: dict) -> None:
        """A finished child run in one record (a sweep trial): run, values, texts, end."""
        parent = self.state["runs"].get(op["parent"])
        if parent is None:
            return  # the parent's start was skipped as permanently invalid
        key, uri = op["key"], op["tracking_uri"]

        def create():
            from mlflow.entities import Metric, Param

            exp_id = self.experiment_id(uri, op["experiment"], op.get("artifact_location"))
            tags = {**op.get("tags", {}), T.PARENT: parent}
            run_id = self._create_run(key, uri, exp_id, start_time=op["t"], tags=tags, run_name=op.get("run_name"))
            self.client(uri).log_batch(run_id, metrics=[Metric(k, v, op["end_t"], 0) for k, v in op["metrics"].items()],
                                       params=[Param(k, v) for k, v in op["params"].items()])

        self.steps(create, lambda: self.op_text(op),
                   lambda: self.client(uri).set_terminated(self.state["runs"][key], op["status"], end_time=op["end_t"]))

    @staticmethod
    def _output_files(folder: Path, op: dict) -> None:
        """A cell's streams, traceback and displayed outputs (one file per rich output) into ``folder``/cell."""
        cell = folder / "cell"
        cell.mkdir(exist_ok=True)
        for name in ("stdout", "stderr", "traceback"):
            if op.get(name):
                (cell / f"{name}.txt").write_text(op[name])
        outputs = op.get("outputs", [])
        if outputs:
            (cell / "outputs.json").write_text(json.dumps(outputs, indent=1, default=str))
            out_dir = cell / "outputs"
            out_dir.mkdir()
            for i, out in enumerate(outputs):
                for mime, value in out.get("data", {}).items():
                    ext = MIME_FILES.get(mime)
                    if ext is None or (mime == "text/plain" and len(out["data"]) > 1):
                        continue  # text/plain beside a richer form is only its fallback
                    path = out_dir / f"{i:03d}.{ext}"
                    if mime in ("image/png", "image/jpeg"):
                        path.write_bytes(base64.b64decode(value))
                    else:
                        path.write_text(value if isinstance(value, str) else json.dumps(value))
    def finish(self, deadline) -> bool:
        """Runs whose cell never reported back (kernel died mid-cell) end KILLED."""
        for key in list(self.state["open"]):
            run_id = self.state["runs"][key]
            info = self.state["open"][key]

            def kill(_op, run_id=run_id, info=info):
                client = self.client(info["uri"])
                why = "the kernel exited before the cell finished" if "source" in info else \
                    "the process that made this run exited before ending it"
                client.set_tag(run_id, "mlops.end_reason", why)
                client.set_terminated(run_id, "KILLED")

            if not self.retrying(kill, {"op": "kill", "key": key}, deadline):
                return False
            self.state["open"].pop(key)
            self.save()
        return True

    def cleanup(self) -> None:
        shutil.rmtree(blob_dir(self.journal), ignore_errors=True)
        for suffix in (".jsonl", ".state", ".lock", ".log", ".recorder.lock"):
            try:
                side_file(self.journal, suffix).unlink()
            except FileNotFoundError:
                pass


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    follow = "--follow" in args
    journal = Path([a for a in args if a != "--follow"][0])
    import mlflow  # noqa: F401 - seconds of import, paid before any op's slowness watchdog is armed

    return Recorder(journal, follow).run()


if __name__ == "__main__":
    sys.exit(main())
