"""A pipeline's model worker: the MLflow model folder and the serving package of each ``model:NAME`` a step
tags are made here, in a process of its own (``python -m mlops_jupyter.pipeline.model_worker``), started
while the first steps run, so MLflow's imports and a model's signature never hold the runner's GIL. It
writes nothing to the tracking store: the runner hands the model folders to its recording (the one writer).
Fed JSON lines on stdin; a ``{"id": N, "step": ..., "names": [...]}`` request is answered with a
``{"reply": N, "models": {...}}`` or ``{"reply": N, "error": ...}`` line.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
from pathlib import Path


def _first(text: str) -> str:
    return next((ln for ln in str(text).splitlines() if ln.strip()), "")


def _serve(lines) -> None:
    import warnings

    from .. import config
    from ..tracking import models as TM
    from . import models as M

    head = json.loads(next(lines))
    settings = config.resolve(head["root"])
    with warnings.catch_warnings():  # mlflow's import of tqdm.auto warns without ipywidgets
        warnings.simplefilter("ignore")
        TM.warm_up()
    for line in lines:
        req = json.loads(line)
        try:
            done = M.build_and_package(Path(head["folder"]), req["step"], req["names"], Path(head["root"]), settings,
                                       Path(head["blobs"]), req.get("run_id"))
            reply = {"reply": req["id"], "models": done}
        except Exception as exc:  # noqa: BLE001 - the step fails with this one line; the run goes on
            text = str(exc) if isinstance(exc, M.PipelineError) else f"{type(exc).__name__}: {_first(exc)[:300]}"
            reply = {"reply": req["id"], "error": text}
        print(json.dumps(reply), flush=True)


def main() -> None:
    try:
        _serve(iter(sys.stdin.readline, ""))
    except Exception as exc:  # noqa: BLE001 - reported by the runner as one line
        print(json.dumps({"error": f"{type(exc).__name__}: {_first(exc)[:300]}"}), flush=True)
    sys.stderr.flush()
    os._exit(0)  # nothing is pending: skip the interpreter's teardown (MLflow's atexit handlers, thread pools)


class ModelWorker:
    """The runner's side: start the worker early, ask it for a step's models, stop it at the end."""

    def __init__(self, head: dict):
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._waiting: dict = {}  # request id -> [threading.Event, reply]
        self._last, self._stderr = "", []
        self.proc = subprocess.Popen([sys.executable, "-m", "mlops_jupyter.pipeline.model_worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._readers = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for t in self._readers:
            t.start()
        self.send(head)

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if isinstance(msg, dict) and "reply" in msg:
                with self._lock:
                    slot = self._waiting.get(msg["reply"])
                if slot:
                    slot[1] = msg
                    slot[0].set()
            else:
                self._last = line
        with self._lock:  # the process is gone: nobody waits for an answer that cannot come
            for slot in self._waiting.values():
                slot[0].set()

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            if line.strip():
                self._stderr = (self._stderr + [line.strip()])[-5:]

    def send(self, event: dict) -> None:
        with self._lock:
            try:
                self.proc.stdin.write(json.dumps(event, default=str) + "\n")
                self.proc.stdin.flush()
            except (OSError, ValueError):
                pass  # it ended early: its error line says why

    def request(self, step: str, names: list, run_id: str | None, timeout: float = 900) -> dict:
        """Step ``step``'s models built and packaged: the reply, or {"error": why there is none}."""
        slot = [threading.Event(), None]
        with self._lock:
            rid = next(self._ids)
            self._waiting[rid] = slot
        self.send({"id": rid, "step": step, "names": names, "run_id": run_id})
        answered = slot[0].wait(timeout)
        with self._lock:
            self._waiting.pop(rid, None)
        if slot[1] is not None:
            return slot[1]
        if not answered:
            return {"error": f"the model worker did not answer within {timeout:.0f}s"}
        return {"error": f"the model worker ended ({self._ended()})"}

    def _ended(self) -> str:
        try:
            return json.loads(self._last).get("error") or "no reason given"
        except ValueError:
            return (self._stderr or ["no reason given"])[-1]

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


if __name__ == "__main__":
    main()
