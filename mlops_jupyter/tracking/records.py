"""Recording runs from any process that is not a kernel: pipeline runs and their steps, ``dvc repro``
stages, reproductions, and whatever comes next. Everything goes through the journal and the recorder
(the one writer), so a store that is down, locked or being created delays the records and never loses
or duplicates them.

    rec = Recording(settings, experiment="pipeline-train")
    parent = rec.start_run("pipeline train", tags={...}, params={...})
    step = rec.start_run("prepare", parent=parent)
    rec.log(step, metrics={"acc": 0.9}); rec.files(step, [(path, "notebook")]); rec.end_run(step, "FINISHED")
    outcome = rec.close()          # written, or waiting in the journal (outcome.waiting, outcome.journal)

Stdlib only at import time.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .. import config
from .journal import finish_orphans_once
from .link import RecorderLink


@dataclass
class Outcome:
    """What became of a recording when its writer closed it."""
    run_ids: dict = field(default_factory=dict)  # key -> MLflow run id, for the runs written so far
    models: dict = field(default_factory=dict)  # "key/name" -> models:/ URI, for the models logged so far
    waiting: bool = False  # some records are not in the store yet: they wait in ``journal``
    journal: str = ""
    error: str | None = None  # why they wait (the store's error), when known

    def note(self, what: str) -> str | None:
        """One line for the user when records wait, naming where and why; None when all is written."""
        if not self.waiting:
            return None
        why = f" ({self.error})" if self.error else ""
        return (f"{what} is not in the tracking store yet{why}: its records wait in {self.journal} and are written "
                "as soon as the store answers (the next use of mlops-jupyter in this project finishes them).")


class Recording:
    """One writer's records (see the module doc). Keys are the writer's names for its runs; ``run_id(key)``
    gives the MLflow id once the recorder has made the run."""

    def __init__(self, settings: config.Settings, experiment: str | None = None, nice: bool = False,
                 inline: bool = False):
        self.settings, self.experiment = settings, experiment
        self._ids: dict = {}
        self._models: dict = {}
        self._versions: dict = {}
        self.warnings: list = []  # records the store refused for good (the recorder skipped them), in its words
        self.codes: list = []  # the MLflow error code of each of them (PERMISSION_DENIED: a basic-auth refusal)
        self._error: str | None = None
        self._cond = threading.Condition()
        self._exited = False
        state = config.ensure_state_dir(settings.project_root)
        finish_orphans_once(state)
        self.link = RecorderLink(state, self._event, nice=nice, inline=inline)
        if experiment:  # the runs it starts go there (made if new); without one it only adds to existing runs
            self.link.send({"op": "experiment", **self._store()})

    def _store(self) -> dict:
        return {"tracking_uri": self.settings.tracking_uri, "experiment": self.experiment,
                "artifact_location": self.settings.artifact_location}

    def _event(self, event: dict) -> None:
        with self._cond:
            kind = event.get("event")
            if kind == "run":
                self._ids[event["key"]] = event["run_id"]
            elif kind == "model":
                self._models[f"{event['key']}/{event['name']}"] = f"models:/{event['model_id']}"
            elif kind == "warning":
                self.warnings.append(event.get("message") or "a record was refused")
                self.codes.append(event.get("code") or "")
            elif kind == "version":
                self._versions[event["key"]] = event["version"]
            elif kind == "degraded":
                self._error = event.get("error") or "the store is not answering"
            elif kind == "recovered":
                self._error = None
            elif kind == "exited":
                self._exited = True
            self._cond.notify_all()

    # ---- records ----------------------------------------------------------------------------
    def start_run(self, name: str, *, parent: str | None = None, tags: dict | None = None,
                  params: dict | None = None, start_ms: int | None = None, code: os.PathLike | None = None) -> str:
        """A new run (a child of ``parent``'s run when given); returns its key. ``code``: the project root whose
        git commit and data snapshots the run records, as a tracked cell's run does."""
        if not self.experiment:
            raise ValueError("a Recording made without an experiment cannot start runs")
        key = uuid.uuid4().hex
        self.link.send({"op": "run", "key": key, **self._store(), "run_name": name, "parent": parent,
                        "t": start_ms or int(time.time() * 1000), "tags": _strings(tags),
                        "params": _strings(params), **({"project_root": os.fspath(code)} if code else {})})
        return key

    def log(self, key: str | None = None, *, run_id: str | None = None, params: dict | None = None,
            metrics: dict | None = None, tags: dict | None = None, t: int | None = None, step: int = 0) -> None:
        """Params, metrics (at ``step``: a metric logged at several steps has a history) and tags of run ``key``
        (or of an existing run, by ``run_id``)."""
        self.link.send({"op": "log", "key": key, "run_id": run_id, **self._store(), "params": _strings(params),
                        "metrics": {k: float(v) for k, v in (metrics or {}).items()}, "tags": _strings(tags),
                        "t": t or int(time.time() * 1000), "step": step})

    def files(self, key: str | None, paths: list, *, run_id: str | None = None) -> None:
        """Files or folders as artifacts: ``[(local path, artifact folder or None), ...]``. They are logged
        from where they are: a writer that will delete them copies them under ``self.link.blobs`` first."""
        self.link.send({"op": "files", "key": key, "run_id": run_id, **self._store(),
                        "files": [{"src": os.fspath(src), "dest": dest} for src, dest in paths]})

    def texts(self, key: str, texts: dict) -> None:
        self.link.send({"op": "text", "key": key, **self._store(), "texts": texts})

    def model(self, key: str, name: str, folder: Path, tags: dict | None = None) -> None:
        """MLflow model folder ``folder`` (see tracking.models.save) becomes logged model ``name`` of run ``key``."""
        self.link.send({"op": "model", "key": key, **self._store(), "name": name, "dir": os.fspath(folder),
                        "tags": _strings(tags)})

    # ---- the registry ---------------------------------------------------------------------------
    def register(self, key: str, name: str, source: str, *, run_id: str | None = None, model_id: str | None = None,
                 tags: dict | None = None, audit: dict | None = None) -> None:
        """A version of registered model ``name`` (made if new); ``version(key)`` gives its number."""
        self.link.send({"op": "register", "key": key, **self._store(), "name": name, "source": source,
                        "run_id": run_id, "model_id": model_id, "tags": _strings(tags), "audit": audit})

    def copy_version(self, key: str, src_uri: str, name: str, version: str, tags: dict | None = None) -> None:
        """Version ``version`` of ``name`` in the registry at ``src_uri`` copied into this recording's registry."""
        self.link.send({"op": "copy", "key": key, **self._store(), "experiment": "mlops-registry",
                        "src_uri": src_uri, "name": name, "version": version, "tags": _strings(tags)})

    def alias(self, name: str, alias: str, *, version: str | None = None, version_key: str | None = None,
              audit: dict | None = None) -> None:
        """Alias ``alias`` of ``name`` moved to ``version`` (or to the version record ``version_key`` made),
        after its audit record is written."""
        self.link.send({"op": "alias", "key": (audit or {}).get("key"), **self._store(), "name": name,
                        "alias": alias, "version": version, "version_key": version_key, "audit": audit})

    def version(self, key: str, timeout: float = 0.0) -> str | None:
        """The version number record ``key`` made, waiting up to ``timeout`` s while the store answers."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while key not in self._versions and self._error is None and not self._exited:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self._versions.get(key)

    def end_run(self, key: str, status: str = "FINISHED", end_ms: int | None = None) -> None:
        self.link.send({"op": "finish", "key": key, **self._store(), "status": status,
                        "t": end_ms or int(time.time() * 1000)})

    # ---- the end ----------------------------------------------------------------------------
    def run_id(self, key: str, timeout: float = 0.0) -> str | None:
        """The MLflow id of run ``key``, waiting up to ``timeout`` s while the store answers."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while key not in self._ids and self._error is None and not self._exited:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self._ids.get(key)

    def close(self, timeout: float = 120.0) -> Outcome:
        """Hand the rest to the recorder and wait (while the store answers, up to ``timeout`` s) until it has
        written everything; records it could not write stay in the journal for the next process."""
        self.link.close()
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._exited and self._error is None and self.link.failed is None:
                left = deadline - time.monotonic()
                if left <= 0 or not self.link.alive():
                    break
                self._cond.wait(min(left, 0.5))
            waiting = self.link.path.exists()
            return Outcome(dict(self._ids), dict(self._models), waiting, str(self.link.path),
                           self._error or self.link.failed or ("the recorder did not finish in time" if waiting else None))

    def hand_off(self, key: str, timeout: float = 10.0) -> str | None:
        """When the store has answered all along: the id of run ``key`` (waited for up to ``timeout`` s), the
        rest left to the recorder, which finishes it on its own after this process is gone (the records are in
        the journal already). None when the store has not answered: then ``close()`` says where they wait."""
        run_id = self.run_id(key, timeout)
        with self._cond:
            keeping_up = run_id is not None and self._error is None and self.link.failed is None
        if not keeping_up:
            return None
        self.link.close()
        return run_id

    def unnice(self) -> None:
        """Normal priority for the recorder from now on (the writer's heavy work is done)."""
        self.link.unnice()


def _strings(values: dict | None) -> dict:
    return {str(k): v if isinstance(v, str) else json.dumps(v, default=str) for k, v in (values or {}).items()}
