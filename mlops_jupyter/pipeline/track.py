"""The pipeline's MLflow run: one parent run, a child run per executed step (params, metrics, the executed
notebook). Runs as a child process of ``mlops pipeline run`` (``python -m mlops_jupyter.pipeline.track``)
fed JSON lines on stdin, so MLflow's import and store writes use another core and never hold the
runner's GIL; its last stdout line is ``{"run_id": ...}`` or ``{"error": ...}``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _serve(lines) -> dict:
    import logging
    import warnings

    from .. import config

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
    name = settings.experiment or f"pipeline-{head['pipeline']}"
    exp = client.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp else client.create_experiment(name, artifact_location=settings.artifact_location)
    parent = client.create_run(exp_id, start_time=head["start_ms"], run_name=f"pipeline {head['pipeline']}", tags={
        "mlops.kind": "pipeline", "mlops.pipeline": head["pipeline"], "mlops.pipeline.folder": head["folder"]})
    run_id = parent.info.run_id
    client.log_batch(run_id, params=[Param(k, _text(v)) for k, v in head["params"].items()])
    status = "FINISHED"
    for line in lines:
        ev = json.loads(line)
        if "end" in ev:
            status = ev["end"]
            if ev.get("skipped"):
                client.set_tag(run_id, "mlops.pipeline.skipped", ",".join(ev["skipped"]))
            break
        child = client.create_run(exp_id, start_time=ev["start_ms"], run_name=ev["step"], tags={
            "mlflow.parentRunId": run_id, "mlops.kind": "pipeline-step", "mlops.pipeline": head["pipeline"],
            "mlops.step": ev["step"]})
        cid = child.info.run_id
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
        first = next((ln for ln in str(exc).splitlines() if ln.strip()), "")
        out = {"error": f"{type(exc).__name__}: {first[:300]}"}
    print(json.dumps(out), flush=True)


class Tracking:
    """The runner's side: start the child process early, send it events, collect the run id at the end."""

    def __init__(self, head: dict):
        self.run_id, self.error = None, None
        self._lock = threading.Lock()
        # niced: it works in the gaps the kernels leave, and catches up while the last step runs
        self.proc = subprocess.Popen([sys.executable, "-m", "mlops_jupyter.pipeline.track"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     preexec_fn=(lambda: os.nice(10)) if hasattr(os, "nice") else None)
        self.send(head)

    def send(self, event: dict) -> None:
        with self._lock:
            try:
                self.proc.stdin.write(json.dumps(event, default=str) + "\n")
                self.proc.stdin.flush()
            except (OSError, ValueError):
                pass  # it ended early: its error line says why

    def finish(self, event: dict, timeout: float = 300) -> None:
        self.send(event)
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.error = f"MLflow did not answer within {timeout:.0f}s"
            return
        last = (out.strip().splitlines() or [""])[-1]
        try:
            result = json.loads(last)
        except ValueError:
            result = {"error": (err.strip().splitlines() or ["the tracking process ended without a result"])[-1]}
        self.run_id, self.error = result.get("run_id"), result.get("error")


if __name__ == "__main__":
    main()
