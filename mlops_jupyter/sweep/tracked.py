"""A sweep as tracked runs: the parent run's params, one child run per trial, the live progress file the
sidebar reads, and the best result back into the notebook's namespace and the parent run.

The front door hands in how to record (``begin`` / ``child``: the tracker's journal path) and how to show
progress; this module owns the bookkeeping, so every door that sweeps records a sweep the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import live, view
from .runner import SweepResult, SweepSpec, execute, prepare


@dataclass
class Recording:
    """Where a sweep's records go.

    ``begin(params, tags)`` starts the parent run and returns its record (``key``, ``run_id``, and the
    ``params`` / ``metrics`` dicts still written when the run ends); ``child(record, name, params, metrics,
    status=, start_ms=, end_ms=, tags=, texts=)`` records one ended trial under it; ``place()`` gives (the
    project's state folder, the notebook's path) for the live progress file. Nothing is asked before the
    sweep has been checked, so bad input sets up no store."""

    begin: Callable
    child: Callable
    place: Callable[[], tuple[Path, str | None]]


def parent_params(spec: SweepSpec, total: int) -> dict:
    """The sweep run's own params: the space as written and how it was run."""
    params = {f"space.{k}": t.describe() for k, t in spec.space.items()}
    params.update(samples=spec.num_samples, trials=total, metric=spec.metric, mode=spec.mode,
                  cpus_per_trial=spec.cpus_per_trial, gpus_per_trial=spec.gpus_per_trial,
                  concurrency=spec.concurrency or "auto", scheduler=spec.scheduler or "fifo", retries=spec.retries)
    return params


def run(spec: SweepSpec, namespace: dict, hidden: dict, recording: Recording, name: str | None = None,
        on_progress: Callable | None = None, on_start: Callable | None = None) -> SweepResult:
    """Check, record and run the sweep of ``spec``; ``namespace`` (the notebook's globals) gets ``best_params``
    and ``sweep`` (the trials as a DataFrame), the parent run its ``best.*`` params and ``best_METRIC``.

    Bad input raises SweepError before anything is recorded. ``on_start(total)`` is called once the parent
    run is begun, ``on_progress(result)`` about twice a second while trials run and once at the end. An
    interrupt stops the trials (KILLED) and returns with ``result.interrupted`` set: the caller decides
    what to raise."""
    plan = prepare(spec, namespace, hidden)
    rec = recording.begin(parent_params(spec, plan.total), {"mlops.kind": "sweep", "mlops.ray.nodes": len(plan.nodes)})
    if on_start:
        on_start(plan.total)
    # the sidebar's live trial table (MLflow only hears of a trial when it ends)
    state_dir, notebook = recording.place()
    table = live.ProgressFile(state_dir, rec.key, notebook, name or "sweep", spec.metric, spec.mode, plan.total)

    def update(result: SweepResult) -> None:
        table.update(result, rec.run_id)
        if on_progress:
            on_progress(result)

    def ended(t) -> None:
        texts = {"trial/traceback.txt": t.error, "trial/output.txt": t.output}
        recording.child(rec, f"trial-{t.number}", t.params, t.metrics, status=t.status,
                        start_ms=int(t.start * 1000), end_ms=int((t.end or t.start) * 1000),
                        tags={"mlops.node": t.node, "mlops.gpu_ids": t.gpu_ids, "mlops.attempts": t.attempts,
                              "mlops.restarts": t.restarts, "mlops.stopped_early": t.stopped_early},
                        texts={k: v for k, v in texts.items() if v})

    try:
        result = execute(plan, on_update=update, on_trial_end=ended)
    except BaseException:
        table.finish(status="FAILED")
        raise
    update(result)
    table.finish(result, rec.run_id, status="KILLED" if result.interrupted else "FINISHED")
    best = result.best
    namespace.update(best_params=dict(best.params) if best else {}, sweep=view.frame(result))
    if best:
        rec.params.update({f"best.{k}": v for k, v in best.params.items()})
        rec.metrics[f"best_{spec.metric}"] = best.metrics[spec.metric]
    return result
