"""Promotion gates as data: each is a name and one function ``check(candidate, holder, ctx) -> (status,
detail[, what it measured])``, run in order before anything is written. ``status`` is "passed", "failed" or "skipped"; a gate
the user forces shows as "forced" with their reason."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import ConfigError


@dataclass(frozen=True)
class Gate:
    name: str
    what: str  # one line for help texts and error messages
    check: Callable


def _signature(candidate, holder, ctx):
    if holder is None:
        return "passed", f"no version holds @{ctx.alias} yet"
    mine, theirs = candidate.tags.get(SIGNATURE), holder.tags.get(SIGNATURE)
    if not mine or not theirs:
        return "failed", ("the candidate has no signature" if not mine else f"version {holder.version} has no "
                          "signature") + ", so compatibility cannot be checked"
    mine, theirs = json.loads(mine), json.loads(theirs)
    for part in ("inputs", "outputs"):
        if mine.get(part) != theirs.get(part):
            return "failed", (f"its {part} differ from those of version {holder.version} (@{ctx.alias}): "
                              f"{_columns(mine.get(part))} vs {_columns(theirs.get(part))}")
    return "passed", f"same inputs and outputs as version {holder.version}"


def _columns(schema_json) -> str:
    try:
        cols = json.loads(schema_json) if isinstance(schema_json, str) else (schema_json or [])
        return "[" + ", ".join(f"{c.get('name', '?')}:{c.get('type', '?')}" for c in cols) + "]"
    except (TypeError, ValueError, AttributeError):
        return str(schema_json)[:200]


def _metric(candidate, holder, ctx):
    conf = ctx.promotion
    if not conf.metric or not conf.evaluation_data:
        return "skipped", "no evaluation data configured"
    if holder is None:
        return "passed", f"no version holds @{ctx.alias} yet"
    frame, md5 = evaluation_frame(ctx.project_root, conf.evaluation_data)
    if conf.target not in frame.columns:
        raise ConfigError(f"the evaluation data {conf.evaluation_data} has no column {conf.target!r} (the "
                          f"target); its columns are {', '.join(map(str, frame.columns))}.", key="target")
    X, y = frame.drop(columns=[conf.target]), frame[conf.target]
    try:
        new, old = ctx.score(candidate, X, y), ctx.score(holder, X, y)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - a model that cannot score these rows fails the gate, with why
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        return "failed", f"the models could not both be scored on {conf.evaluation_data}: {first}"
    better = new - old if conf.mode == "max" else old - new
    where = f"{conf.metric} on {conf.evaluation_data} (md5 {md5[:8]})"
    scores = {"scores": {"metric": conf.metric, "challenger": new, "champion": old}}  # kept with the result
    if better < conf.min_delta - 1e-12:
        return "failed", (f"{where} is {new:.4g} against {old:.4g} for version {holder.version}, worse than "
                          f"allowed (min-delta {conf.min_delta:g}, mode {conf.mode})"), scores
    return "passed", f"{where}: {new:.4g} against {old:.4g} for version {holder.version}", scores


def _tests(candidate, holder, ctx):
    ok, summary, tail = ctx.package_tests(candidate)
    if ok:
        return "passed", f"the serving package generated for it passes its own tests ({summary})"
    why = next((ln.strip() for ln in reversed(tail) if re.match(r"\s*E\s+\w+(Error|Exception)", ln)), "")
    return "failed", (f"the serving package generated for it fails its own tests ({summary})"
                      + (f": {why.lstrip('E').strip()[:300]}" if why else ""))


def _lineage(candidate, holder, ctx):
    state = candidate.tags.get(LINEAGE, "incomplete: never recorded")
    if state == "complete":
        commit = candidate.tags.get("mlops.git.commit", "")[:8]
        return "passed", f"run from a clean tree at commit {commit}"
    return "failed", f"lineage is {state}"


SIGNATURE, LINEAGE = "mlops.signature", "mlops.lineage"
GATES = [Gate("signature", "the signature matches the current alias holder's", _signature),
         Gate("metric", "the configured metric, re-scored on the evaluation data, is not worse", _metric),
         Gate("tests", "the serving package generated for the candidate passes its own tests", _tests),
         Gate("lineage", "the run had a clean git tree and snapshotted data", _lineage)]
NAMES = tuple(g.name for g in GATES)


def evaluation_frame(root: Path, rel: str):
    """The evaluation data (CSV or Parquet under the project) and its md5, so both models see the same rows."""
    import hashlib

    import pandas as pd

    path = (Path(root) / rel).resolve()
    if not path.is_file():
        raise ConfigError(f"the evaluation data {rel} ([tool.mlops.promotion] evaluation-data) is not a file under "
                          f"{root}; give a CSV or Parquet file of features plus the target column.", key="evaluation_data")
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    return frame, md5


def run(candidate, holder, ctx, forced: dict) -> list[dict]:
    """Every gate's result, in order: [{gate, status, detail}]; a forced gate is not run."""
    out = []
    for gate in GATES:
        if gate.name in forced:
            out.append({"gate": gate.name, "status": "forced", "detail": f"forced: {forced[gate.name]}"})
            continue
        status, detail, *extra = gate.check(candidate, holder, ctx)  # extra: what the gate measured, e.g. scores
        out.append({"gate": gate.name, "status": status, "detail": detail, **(extra[0] if extra else {})})
    return out
