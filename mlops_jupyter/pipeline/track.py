"""The pipeline's MLflow run: one parent run, a child run per executed step (params, metrics, the executed
notebook, and the models a step tags with model:NAME). Runs as a child process of ``mlops pipeline run``
(``python -m mlops_jupyter.pipeline.track``) fed JSON lines on stdin, so MLflow's import and store writes
use another core and never hold the runner's GIL. A ``{"models": ...}`` request (a step's tagged models, to
log and package before the step counts as done) is answered at once with a ``{"reply": ID, ...}`` line;
the last stdout line is ``{"run_id": ...}`` or ``{"error": ...}``.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
from pathlib import Path


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _first(text: str) -> str:
    return next((ln for ln in str(text).splitlines() if ln.strip()), "")


def _serve(lines) -> dict:
    import logging
    import warnings

    from .. import config
    from . import models as M

    with warnings.catch_warnings():  # mlflow's import of tqdm.auto warns without ipywidgets
        warnings.simplefilter("ignore")
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.tracking import MlflowClient
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "Creating initial MLflow database tables"
    head = json.loads(next(lines))
    settings = config.resolve(head["root"])
    if settings.is_local_sqlite:
        config.ensure_state_dir(settings.project_root)
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    exp_id = M.experiment(client, settings, head["pipeline"])
    parent = client.create_run(exp_id, start_time=head["start_ms"], run_name=f"pipeline {head['pipeline']}", tags={
        "mlops.kind": "pipeline", "mlops.pipeline": head["pipeline"], "mlops.pipeline.folder": head["folder"]})
    run_id = parent.info.run_id
    client.log_batch(run_id, params=[Param(k, _text(v)) for k, v in head["params"].items()])
    if head.get("models"):  # while the steps run, rather than when the first model is ready
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            M.warm_up()
    children: dict = {}  # step -> its child run id

    def child(step: str, start_ms: int) -> str:
        if step not in children:
            children[step] = client.create_run(exp_id, start_time=start_ms, run_name=step, tags={
                "mlflow.parentRunId": run_id, "mlops.kind": "pipeline-step", "mlops.pipeline": head["pipeline"],
                "mlops.step": step}).info.run_id
        return children[step]

    status = "FINISHED"
    for line in lines:
        ev = json.loads(line)
        if "end" in ev:
            status = ev["end"]
            if ev.get("skipped"):
                client.set_tag(run_id, "mlops.pipeline.skipped", ",".join(ev["skipped"]))
            break
        if "models" in ev:
            req = ev["models"]
            try:
                done = M.log_and_package(Path(head["folder"]), req["step"], req["names"],
                                         child(req["step"], req["start_ms"]), Path(head["root"]), settings)
                reply = {"reply": ev["id"], "models": done}
            except Exception as exc:  # noqa: BLE001 - the step fails with this one line; the run goes on
                text = str(exc) if isinstance(exc, M.PipelineError) else f"{type(exc).__name__}: {_first(exc)[:300]}"
                reply = {"reply": ev["id"], "error": text}
            print(json.dumps(reply), flush=True)
            continue
        cid = child(ev["step"], ev["start_ms"])
        tags = [RunTag("mlops.step.reason", "; ".join(ev["why"])[:5000])]
        if ev.get("error"):
            tags.append(RunTag("mlops.error", ev["error"][:5000]))
        client.log_batch(cid, params=[Param(k, _text(v)) for k, v in ev["params"].items()],
                         metrics=[Metric(k, float(v), ev["end_ms"], 0) for k, v in ev["metrics"].items()], tags=tags)
        if ev.get("notebook") and os.path.isfile(ev["notebook"]):
            client.log_artifact(cid, ev["notebook"], "notebook")
        client.set_terminated(cid, "FINISHED" if ev["status"] == "ran" else "FAILED", end_time=ev["end_ms"])
    client.set_terminated(run_id, status)
    return {"run_id": run_id}


def main() -> None:
    try:
        out = _serve(iter(sys.stdin.readline, ""))
    except Exception as exc:  # noqa: BLE001 - reported by the runner as one line; the pipeline's result stands
        out = {"error": f"{type(exc).__name__}: {_first(exc)[:300]}"}
    print(json.dumps(out), flush=True)
    sys.stderr.flush()
    # every store write above is synchronous and done: skip the interpreter's teardown (MLflow's atexit
    # handlers, thread pools), which took about a second here, while the runner waits for this process to end
    os._exit(0)


class Tracking:
    """The runner's side: start the child process early, send it events, ask it to log a step's models,
    collect the run id at the end."""

    def __init__(self, head: dict):
        self.run_id, self.error = None, None
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._waiting: dict = {}  # request id -> [threading.Event, reply]
        self._last, self._stderr = "", []
        # niced: it works in the gaps the kernels leave, and catches up while the last step runs; not when a
        # step will wait for it to log a model
        nice = hasattr(os, "nice") and not head.get("models")
        self.proc = subprocess.Popen([sys.executable, "-m", "mlops_jupyter.pipeline.track"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     preexec_fn=(lambda: os.nice(10)) if nice else None)
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

    def request(self, event: dict, timeout: float = 900) -> dict:
        """Send ``event`` and wait for its reply: the reply, or {"error": why there is none}."""
        slot = [threading.Event(), None]
        with self._lock:
            rid = next(self._ids)
            self._waiting[rid] = slot
        self.send({**event, "id": rid})
        answered = slot[0].wait(timeout)
        with self._lock:
            self._waiting.pop(rid, None)
        if slot[1] is not None:
            return slot[1]
        if not answered:
            return {"error": f"MLflow did not answer within {timeout:.0f}s"}
        last = self._result()
        return {"error": f"the pipeline's MLflow process ended ({last.get('error') or 'no reason given'})"}

    def _result(self) -> dict:
        try:
            return json.loads(self._last)
        except ValueError:
            return {"error": (self._stderr or ["the tracking process ended without a result"])[-1]}

    def finish(self, event: dict, timeout: float = 300) -> None:
        self.send(event)
        try:  # nothing else runs now: normal priority, where the OS lets a process raise it back (root, RLIMIT_NICE)
            os.setpriority(os.PRIO_PROCESS, self.proc.pid, 0)
        except (AttributeError, OSError):
            pass
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self.error = f"MLflow did not answer within {timeout:.0f}s"
            return
        for t in self._readers:
            t.join(timeout=10)
        result = self._result()
        self.run_id, self.error = result.get("run_id"), result.get("error")


if __name__ == "__main__":
    main()
