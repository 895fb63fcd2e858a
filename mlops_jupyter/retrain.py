"""``mlops retrain``: new data -> the exported pipeline (only its stale steps) -> a challenger version of each model
it fits -> the promotion gates against the champion (the target environment's alias holder) -> promoted, or the
champion kept with the reason. One MLflow run records the loop: its trigger, the data versions, both scores and
the decision (through tracking's one writer).

    retrain(settings, "pipe", promote_to="staging")   # -> Outcome
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from . import config
from .errors import GateFailed, PipelineError


@dataclass
class Decision:
    """What happened to one model the pipeline fits."""
    model: str
    decision: str  # promoted | kept | unchanged
    reason: str
    challenger: str | None = None  # the version registered from this run
    champion: str | None = None  # the version the alias held before
    scores: dict = field(default_factory=dict)  # {"metric", "challenger", "champion"} when a metric is configured
    gates: list = field(default_factory=list)


@dataclass
class Outcome:
    pipeline: str
    target: str  # the environment whose alias the challengers aim at
    trigger: str
    data: list = field(default_factory=list)  # [{path, md5, new}]
    ran: list = field(default_factory=list)  # the steps that ran
    decisions: list = field(default_factory=list)
    run_id: str | None = None  # the retrain's MLflow run
    note: str = ""  # e.g. "no drift": why nothing ran

    def summary(self) -> str:
        if self.note:
            return f"retrain {self.pipeline}: {self.note}"
        new = [d["path"] for d in self.data if d["new"]]
        head = f"retrain {self.pipeline}: " + (f"new data in {', '.join(new)}; " if new else "no new data; ")
        head += f"{len(self.ran)} steps ran" if self.ran else "every step was fresh"
        said = [f"{d.model}: {d.decision}" + (f" v{d.challenger}" if d.challenger else "") + f" ({d.reason})"
                for d in self.decisions]
        where = f" · mlflow run {self.run_id}" if self.run_id else ""
        return head + (" · " + " · ".join(said) if said else "") + where


def _target(settings: config.Settings, promote_to: str | None, registry_env: str) -> str:
    """Where a challenger aims: ``promote_to``, else the environment configured after the registry's (dev ->
    staging), else the registry's own."""
    if promote_to:
        config.environment(settings, promote_to)  # an unknown name: a typed error naming the known ones
        return promote_to
    names = list(config.environments(settings))
    i = names.index(registry_env)
    return names[i + 1] if i + 1 < len(names) else registry_env


def drift_log(settings: config.Settings, ref: str, log: str | None) -> str:
    """The prediction log ``--if-drift NAME@ALIAS`` reads: ``log``, else ``log`` in the alias environment's
    ``serving`` table (relative to the project root)."""
    from .errors import InvalidInput
    from .registry import parse_ref

    _, _, alias = parse_ref(ref)
    if not alias:
        raise InvalidInput(f"--if-drift {ref!r} names no alias; give the deployed version as NAME@ALIAS, e.g. "
                           "iris@prod, whose served traffic is checked.", what="if-drift", value=ref)
    if log:
        return log
    envs = config.environments(settings)
    where = envs[alias].serving.get("log") if alias in envs else None
    if not where:
        raise InvalidInput(f"--if-drift {ref} needs the prediction log that @{alias} serves into: give it with --log "
                           f"(a serving package or its log folder), or set log = \"PATH\" in "
                           f"[tool.mlops.environments.{alias}.serving].", what="if-drift", value=ref)
    return str(Path(settings.project_root) / where)


def retrain(settings: config.Settings, folder: os.PathLike, data: list | None = None, promote_to: str | None = None,
            env: str | None = None, trigger: str = "manual", echo=print, if_drift: str | None = None,
            log: str | None = None) -> Outcome:
    """Snapshot the newest data (``data``, default: the DVC-tracked files the steps read), run the pipeline in
    ``folder`` incrementally, register each model a step fitted anew in ``env``'s registry, and promote it to
    ``promote_to`` when the gates pass (the metric gate re-scores challenger and champion on the same data).
    With ``if_drift`` (NAME@ALIAS), first check the traffic that version served (``log``, see ``drift_log``) and do
    nothing unless it drifted."""
    from . import data as snapshots
    from . import pipeline, registry
    from .registry.lookup import holder

    pipe = pipeline.load(folder)
    fitted = [(s["name"], m) for s in pipe.steps for m in s.get("models", [])]
    if not fitted:
        raise PipelineError(f"pipeline {pipe.name} in {pipe.folder} fits no model (no cell is tagged model:NAME), so "
                            "there is nothing to retrain; tag the cell that fits the model `model:NAME` (NAME: its "
                            "variable) and export again.", pipeline=pipe.name)
    source = config.environment(settings, env)
    target = _target(settings, promote_to, source.name)
    if if_drift:
        from . import monitor

        found = monitor.check(settings, drift_log(settings, if_drift, log), model=if_drift)
        if not found.drift:
            return Outcome(pipe.name, target, "drift check", note=f"{found.summary()} in what {if_drift} served: "
                                                                   "nothing retrained")
        trigger = f"drift in {if_drift}: {', '.join(found.drifted)}"
        echo(f"{found.summary()}: retraining")
    out = Outcome(pipe.name, target, trigger)
    for path in [Path(p) for p in data] if data else pipeline.tracked_inputs(folder):
        snap = snapshots.snapshot(path, message="retrain: newest data", root=settings.project_root)
        out.data.append({"path": snap.path, "md5": snap.md5, "new": not snap.unchanged})
    result = pipeline.run(folder, echo=echo)
    out.ran = [s.name for s in result.steps if s.status == "ran"]
    if not result.ok:
        failed = next(s for s in result.steps if s.status == "failed")
        raise PipelineError(f"retrain {pipe.name}: step {failed.name} failed ({failed.error}); nothing was registered. "
                            "Fix it and retrain again: the finished steps are kept.", pipeline=pipe.name,
                            step=failed.name)
    steps = {(step, name): run for step, name, run in pipeline.fitted(folder, result)}
    for step, name in fitted:
        if (step, name) not in steps:
            out.decisions.append(Decision(name, "unchanged", f"step {step} was fresh: no new model"))
            continue
        champion = holder(settings, name, target)
        moved = registry.register(settings, steps[(step, name)], name, env=source.name)
        decision = Decision(name, "kept", "", challenger=moved.version, champion=champion)
        try:
            promoted = registry.promote(settings, f"{name}/{moved.version}", target, env=source.name)
        except GateFailed as exc:
            decision.gates = exc.fields.get("gates", [])
            decision.reason = "the champion stays: " + "; ".join(
                f"{g['gate']}: {g['detail']}" for g in decision.gates if g["gate"] in exc.fields.get("failed", []))
        else:
            decision.decision, decision.gates = "promoted", promoted.gates
            decision.reason = f"@{target} is version {promoted.version}" + (f" (was {champion})" if champion else "")
        # both models as the metric gate scored them, on the same evaluation data (none without a champion)
        decision.scores = next((g["scores"] for g in decision.gates if g.get("scores")), {})
        out.decisions.append(decision)
    out.run_id = _record(settings, pipe, out)
    return out


def _record(settings: config.Settings, pipe, out: Outcome) -> str | None:
    """The loop as one MLflow run: trigger, data versions (tags, as any run of the project's code), each model's
    decision, challenger and champion, and both scores."""
    from .tracking.records import Recording

    rec = Recording(settings, settings.experiment or f"pipeline-{pipe.name}")
    tags = {"mlops.kind": "retrain", "mlops.pipeline": pipe.name, "mlops.retrain.trigger": out.trigger,
            "mlops.retrain.target": out.target, "mlops.retrain.ran": ",".join(out.ran)}
    metrics = {}
    for d in out.decisions:
        tags.update({f"mlops.retrain.{d.model}.decision": d.decision, f"mlops.retrain.{d.model}.reason": d.reason[:5000],
                     f"mlops.retrain.{d.model}.challenger": d.challenger or "",
                     f"mlops.retrain.{d.model}.champion": d.champion or ""})
        metric = d.scores.get("metric")
        for role in ("challenger", "champion"):
            if metric and role in d.scores:
                metrics[f"{d.model}.{role}.{metric}"] = d.scores[role]
    key = rec.start_run(f"retrain {pipe.name}", tags=tags, code=settings.project_root,
                        params={"promote_to": out.target, "new_data": ",".join(d["path"] for d in out.data if d["new"])})
    if metrics:
        rec.log(key, metrics=metrics)
    rec.end_run(key)
    if all(d.decision == "unchanged" for d in out.decisions):
        rec.link.close()  # nothing moved: the recorder writes it after we are gone (`mlops runs` waits for it)
        return None
    return rec.close().run_ids.get(key)


def last_decision(settings: config.Settings, pipeline_name: str) -> dict | None:
    """The newest retrain of pipeline ``pipeline_name``: {run_id, start_time, trigger, decisions: [{model, decision,
    reason, challenger, champion}]}; None before the first."""
    from . import tracking

    found = [r for r in tracking.runs_tagged(settings, "mlops.pipeline", pipeline_name) if r.get("kind") == "retrain"]
    if not found:
        return None
    (run,) = tracking.get_runs(settings, [found[0]["run_id"]])
    tags, prefix = run.data.tags, "mlops.retrain."
    models = sorted({k[len(prefix):].rsplit(".", 1)[0] for k in tags if k.startswith(prefix) and k.endswith(".decision")})
    return {"run_id": run.info.run_id, "start_time": run.info.start_time, "trigger": tags.get(prefix + "trigger"),
            "decisions": [{"model": m, **{f: tags.get(f"{prefix}{m}.{f}") or None
                                          for f in ("decision", "reason", "challenger", "champion")}} for m in models]}
