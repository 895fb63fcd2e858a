"""Production monitoring: reference profiles of a model's training data, and `mlops monitor`'s check of a serving
package's prediction log against them (feature and prediction drift, missing values, unseen categories, latency,
errors, accuracy where labels came back).

A reference is an artifact of the model's run, ``reference/NAME.json`` (see drift.py for what it holds). It is
built when a tracked cell logs a model (from the data the model was fit on), or by ``reference()`` for a model
logged before, from the data snapshot the run read.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

from .. import config
from ..errors import InvalidInput, MlopsError, NoReference, NotFound, OtherModel
from . import drift

REFERENCE_DIR = "reference"
REFERENCE_ROWS = 100_000  # rows of the training data profiled: plenty for quantiles, and a bound on the time
DEFAULT_SINCE, DEFAULT_WINDOW = "24h", "1h"


# ---- building references ----------------------------------------------------------------------------------
def sample(frame, rows: int = REFERENCE_ROWS, seed: int = 0):
    """At most ``rows`` rows of ``frame``, drawn at random (training data is often sorted)."""
    return frame if len(frame) <= rows else frame.sample(n=rows, random_state=seed)


def build(model, frame, info: dict | None = None) -> dict:
    """The reference profile of ``frame`` (the model's input columns) and of ``model``'s predictions on it."""
    import numpy as np

    frame = sample(frame)
    columns = {str(c): frame[c].to_numpy() for c in frame.columns}
    try:
        predicted = np.asarray(model.predict(frame))
    except Exception as exc:  # noqa: BLE001 - the model's own failure, said once
        raise InvalidInput(f"the model fails to predict its reference data ({type(exc).__name__}: "
                           f"{str(exc)[:300]}), so its prediction distribution is unknown.", what="reference") from None
    if predicted.ndim == 1 and len(predicted) == len(frame):
        columns[drift.PREDICTION] = predicted
    return drift.profile(columns, model=info)


def kept_at(folder: Path, name: str) -> Path:
    """Where a writer keeps model ``name``'s profile beside the model it stages in ``folder``, until the recorder
    logs it as the run's ``reference/NAME.json`` (a dot folder: never a model's name)."""
    return Path(folder) / f".{REFERENCE_DIR}" / f"{name}.json"


def write(profile: dict, path: Path) -> Path:
    """The profile as JSON at ``path``, written whole (under a temporary name, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(profile, separators=(",", ":")))
    tmp.rename(path)
    return path


def _read_data(path: Path):
    import pandas as pd

    try:
        if path.suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if path.suffix in (".csv", ".txt", ".tsv"):
            return pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",")
        return pd.read_parquet(path)
    except Exception:  # noqa: BLE001 - not a table: the caller says which files it tried
        return None


def _snapshots_read(settings: config.Settings, run) -> list[tuple[str, Path]]:
    """(snapshotted path, its file in the project's DVC cache) for each single file the run read."""
    from ..data.scope import READ_PREFIX

    root = Path(settings.project_root)
    out = []
    for key, md5 in run.data.tags.items():
        if key.startswith(READ_PREFIX) and re.fullmatch(r"[0-9a-f]{32}", md5 or ""):
            out.append((key[len(READ_PREFIX):], root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]))
    return out


def reference(settings: config.Settings, run: str, model: str | None = None, data: str | None = None) -> dict:
    """Build and store the reference profile of a model logged in ``run`` (``model`` names it among several), from
    ``data`` (a CSV or Parquet file) or else from the data snapshot the run read. Returns {run_id, model, rows,
    columns, source, artifact}."""
    import mlflow.pyfunc

    from ..tracking import get_runs, run_models
    from ..tracking.records import Recording

    (found,) = get_runs(settings, [run])
    run_id = found.info.run_id
    logged = run_models(settings, run_id)
    chosen = [m for m in logged if model in (None, m["name"])]
    if not logged:
        raise NoReference(f"run {run_id} logged no model, so there is nothing to profile a reference for; log the "
                          "model in a tracked cell (it then gets a reference by itself).", run=run_id, model=model or "")
    if len(chosen) != 1:
        names = ", ".join(m["name"] for m in logged)
        raise InvalidInput(f"run {run_id} logged the models {names}; name one of them with --model."
                           if model is None else f"run {run_id} logged no model {model!r}; it logged {names}.",
                           what="model", run=run_id, known=[m["name"] for m in logged])
    entry = chosen[0]
    from ..serving.generate import fetch_model

    with tempfile.TemporaryDirectory() as tmp:
        loaded = mlflow.pyfunc.load_model(str(fetch_model(f"models:/{entry['model_id']}", Path(tmp) / "m", settings)))
    schema = loaded.metadata.get_input_schema()
    names = schema.input_names() if schema is not None else None
    tried, frame, source = [], None, None
    candidates = [(data, Path(data))] if data else _snapshots_read(settings, found)
    for label, path in candidates:
        table = _read_data(path) if path.is_file() else None
        if table is None:
            tried.append(f"{label} ({'not a CSV or Parquet table' if path.is_file() else 'not in the local cache'})")
            continue
        missing = [n for n in names or [] if n not in table.columns]
        if missing:
            tried.append(f"{label} (lacks {', '.join(missing[:5])})")
            continue
        frame, source = (table[names] if names else table), label
        break
    if frame is None:
        what = "; ".join(tried) if tried else "the run read no snapshotted file"
        raise NoReference(f"no training data for model {entry['name']!r} of run {run_id} was found ({what}); give "
                          "the file it was trained on (CSV or Parquet, with the model's input columns) as --data.",
                          run=run_id, model=entry["name"], what="reference data")
    info = {"run_id": run_id, "name": entry["name"], "model_id": entry["model_id"], "data": source}
    profile = build(loaded, frame, info)
    rec = Recording(dataclasses.replace(settings, artifact_location=None), inline=True)
    with tempfile.TemporaryDirectory(dir=rec.link.blobs) as tmp:
        path = write(profile, Path(tmp) / f"{entry['name']}.json")
        rec.files(None, [(path, REFERENCE_DIR)], run_id=run_id)
        outcome = rec.close(timeout=60)
    if outcome.waiting:
        from ..errors import StoreUnavailable

        raise StoreUnavailable(uri=settings.tracking_uri, journal=outcome.journal, reason=outcome.error or "",
                               what="storing the reference")
    return {"run_id": run_id, "model": entry["name"], "rows": profile["rows"],
            "columns": len(profile["columns"]), "source": source, "artifact": f"{REFERENCE_DIR}/{entry['name']}.json"}


def load_reference(settings: config.Settings, run_id: str, name: str | None = None) -> dict:
    """The reference profile stored with run ``run_id`` (for its model ``name``; the only one when None)."""
    from mlflow.artifacts import download_artifacts
    from mlflow.tracking import MlflowClient

    from mlflow.exceptions import MlflowException

    from ..errors import RunNotFound

    client = MlflowClient(settings.tracking_uri)
    try:
        stored = [Path(f.path).stem for f in client.list_artifacts(run_id, REFERENCE_DIR) if f.path.endswith(".json")]
    except MlflowException:
        raise RunNotFound(f"the model's run {run_id} is not in the tracking store {settings.tracking_uri}, so its "
                          "reference cannot be read; point the project at the store the model was logged in.",
                          run=run_id, uri=settings.tracking_uri) from None
    pick = [s for s in stored if name in (None, s)] or (stored if len(stored) == 1 else [])
    if len(pick) != 1:
        raise NoReference(f"model {name or ''} of run {run_id} has no reference profile to compare its traffic with"
                          .replace("model  of", "the model of") + " (models logged before references existed "
                          "have none).", run=run_id, model=name or "")
    with tempfile.TemporaryDirectory() as tmp:
        path = download_artifacts(run_id=run_id, artifact_path=f"{REFERENCE_DIR}/{pick[0]}.json", dst_path=tmp,
                                  tracking_uri=settings.tracking_uri)
        try:
            return drift.check_profile(json.loads(Path(path).read_text()))
        except (ValueError, drift.ProfileError) as exc:
            raise NoReference(f"the reference of model {pick[0]} of run {run_id} cannot be read ({exc}); build it "
                              "again.", run=run_id, model=pick[0]) from None


# ---- the check ---------------------------------------------------------------------------------------------
def parse_span(text: str, what: str) -> timedelta:
    """``90s``, ``15m``, ``24h``, ``7d`` -> a timedelta."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text or "")
    if not m or float(m.group(1)) <= 0:
        raise InvalidInput(f"{what} {text!r} is not a span of time; give a number and a unit, e.g. 90s, 15m, 24h "
                           "or 7d.", what=what, value=text)
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[m.group(2)]
    return timedelta(**{unit: float(m.group(1))})


@dataclasses.dataclass
class Source:
    """Where the log is, and what the serving package (if SOURCE is one) says about its model."""

    log: Path
    package: Path | None = None
    spec: dict | None = None
    reference: dict | None = None  # a reference shipped inside the package


def source_of(path: str) -> Source:
    """A serving package's folder (its prediction-log/ and serving.json), or a prediction-log folder itself."""
    root = Path(path).resolve()
    if not root.is_dir():
        raise NotFound(f"{path} is not a folder; give a serving package's folder (made by serve generate) or the "
                       "folder of its prediction log (SERVE_LOG_DIR).", what="prediction log", path=str(path))
    specs = sorted(root.glob("*/serving.json"))
    if specs:
        spec = json.loads(specs[0].read_text())
        ref_file = specs[0].parent / "reference.json"
        ref = json.loads(ref_file.read_text()) if ref_file.is_file() else None
        return Source(root / "prediction-log", root, spec, ref)
    if any(root.glob("predictions-*.parquet")) or any(root.glob(".predictions-*.partial")):
        return Source(root)
    raise NotFound(f"{path} holds neither a serving package nor prediction-log files (predictions-*.parquet); "
                   "give the package's folder or its log folder.", what="prediction log", path=str(path))


def packages(folder: Path) -> list[Path]:
    """Serving packages (folders with a */serving.json) in ``folder`` or up to two levels below, nearest first."""
    found = []
    for pattern in ("*/serving.json", "*/*/serving.json", "*/*/*/serving.json"):
        for spec in sorted(Path(folder).glob(pattern)):
            root = spec.parent.parent
            parts = root.relative_to(folder).parts
            if root not in found and not any(p.startswith(".") or p == "node_modules" for p in parts):
                found.append(root)
    return found


def _identities(table) -> list[tuple[str, str]]:
    """The distinct (model_uri, model_version) pairs the log's rows name."""
    if table.num_rows == 0 or "model_uri" not in table.column_names:
        return []
    pairs = table.select(["model_uri", "model_version"]).group_by(["model_uri", "model_version"]).aggregate([])
    return sorted(zip(pairs["model_uri"].to_pylist(), pairs["model_version"].to_pylist()))


def _run_of_uri(settings: config.Settings, uri: str, version: str) -> str | None:
    """The run that made the model a log's rows name: by its runs:/ URI, or its registered version (looked up in
    the environment a models:/NAME@ALIAS URI's alias names)."""
    m = re.match(r"runs:/([0-9a-f]{32})/", uri or "")
    if m:
        return m.group(1)
    m = re.match(r"models:/([^/@]+)(?:@([\w-]+))?", uri or "")
    if m and version:
        from ..registry import lookup

        env = m.group(2) if m.group(2) in config.environments(settings) else None
        try:
            return lookup.run_of(settings, f"{m.group(1)}/{version}", env=env)[0]
        except MlopsError:
            return None
    return None


@dataclasses.dataclass
class Check:
    """The outcome of one check; ``as_dict()`` is the --json document."""

    source: str
    log: str
    since: datetime
    until: datetime
    window: timedelta
    reference: dict
    rows: int
    files: int
    skipped: list
    columns: list
    windows: list
    service: dict
    accuracy: dict | None
    served: list

    @property
    def drifted(self) -> list[str]:
        return [c["column"] for c in self.columns if c["drift"]]

    @property
    def drift(self) -> bool:
        return bool(self.drifted)

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.update(since=self.since.isoformat(), until=self.until.isoformat(), window=self.window.total_seconds(),
                   drift=self.drift, drifted=self.drifted)
        out["reference"] = {k: v for k, v in self.reference.get("model", {}).items()} | {"rows": self.reference["rows"]}
        return out

    def summary(self) -> str:
        skipped = f"; skipped {len(self.skipped)} unreadable log file(s)" if self.skipped else ""
        if not self.rows:
            return f"no predictions logged since {self.since:%Y-%m-%d %H:%M} UTC in {self.log}{skipped}"
        verdict = (f"DRIFT in {len(self.drifted)} of {len(self.columns)} columns: {', '.join(self.drifted[:8])}"
                   if self.drift else f"no drift in {len(self.columns)} columns")
        return f"{verdict} ({self.rows} rows since {self.since:%Y-%m-%d %H:%M} UTC){skipped}"


def _service(table) -> dict:
    import numpy as np
    import pyarrow.compute as pc

    if table.num_rows == 0:
        return {"requests": 0}
    requests = table.filter(pc.equal(table["row"], 0)) if "row" in table.column_names else table
    status = np.asarray(requests["status"].to_numpy(zero_copy_only=False), dtype=float)
    latency = np.asarray(requests["latency_ms"].to_numpy(zero_copy_only=False), dtype=float)
    ok = latency[status == 200]
    return {"requests": int(len(status)), "refused_share": float(np.mean((status >= 400) & (status < 500))),
            "error_share": float(np.mean(status >= 500)),
            "latency_ms": {f"p{q}": float(np.percentile(ok, q)) for q in (50, 95, 99)} if len(ok) else {}}


def _accuracy(log, table) -> dict | None:
    import numpy as np
    import pyarrow.compute as pc

    if log.labels is None or table.num_rows == 0:
        return None
    ok = table.filter(pc.equal(table["status"], 200)).select(["request_id", "row", "prediction"])
    labels = log.labels.select(["request_id", "row", "label"]).group_by(["request_id", "row"]).aggregate(
        [("label", "max")]).rename_columns(["request_id", "row", "label"])
    joined = ok.join(labels, ["request_id", "row"], join_type="inner")
    if joined.num_rows == 0:
        return {"labels": 0}
    predicted, truth = joined["prediction"].to_pylist(), joined["label"].to_pylist()
    try:
        p, t = np.asarray(predicted, dtype=float), np.asarray([json.loads(x) if isinstance(x, str) else x
                                                               for x in truth], dtype=float)
        if np.all(p == np.round(p)) and np.all(t == np.round(t)):
            return {"labels": len(t), "accuracy": float(np.mean(p == t))}
        return {"labels": len(t), "mae": float(np.mean(np.abs(p - t)))}
    except (TypeError, ValueError):
        same = [str(a) == str(json.loads(b) if isinstance(b, str) and b[:1] in '"[{' else b)
                for a, b in zip(predicted, truth)]
        return {"labels": len(same), "accuracy": sum(same) / len(same)}


def _windows(ref: dict, current: dict, times, since: datetime, until: datetime, window: timedelta,
             stattest) -> list[dict]:
    """Drift per window of ``current`` (columns) by ``times`` (int64 microseconds), the windows counted back from
    ``until`` (the newest is always a whole one)."""
    import numpy as np

    if not len(times):
        return []
    step = int(window.total_seconds() * 1e6)
    count = min(int(np.ceil((until - since) / window)), 500)
    first = int(until.timestamp() * 1e6) - count * step
    bucket = (times - first) // step
    order = np.argsort(bucket, kind="stable")
    edges = np.searchsorted(bucket[order], np.arange(count + 1))
    out = []
    for i in range(count):
        if edges[i] == edges[i + 1]:
            continue
        rows = order[edges[i]:edges[i + 1]]
        found = drift.compare(ref, {k: v[rows] for k, v in current.items()}, stattest)
        lo = datetime.fromtimestamp((first + i * step) / 1e6, timezone.utc)
        out.append({"start": max(lo, since).isoformat(), "end": (lo + window).isoformat(), "rows": int(len(rows)),
                    "scores": {r["column"]: round(r["score"], 4) for r in found},
                    "drifted": [r["column"] for r in found if r["drift"]]})
    return out


def check(settings: config.Settings, source: str, model: str | None = None, run: str | None = None,
          since: str = DEFAULT_SINCE, window: str = DEFAULT_WINDOW, stattest: str | None = None,
          now: datetime | None = None) -> Check:
    """Compare the predictions logged in ``source`` (a serving package or its log folder) over the last ``since``
    with the reference of the model that served them (``model`` NAME@ALIAS or NAME/VERSION, ``run``, or the
    package's own), overall and per ``window``."""
    from . import logs

    if model and run:
        raise InvalidInput("give the model as --model NAME@ALIAS or as --run RUN, not both.", what="model")
    if stattest is not None and stattest not in drift.TESTS:
        raise InvalidInput(f"{stattest!r} is not a drift test; use one of {', '.join(sorted(drift.TESTS))}.",
                           what="stattest", value=stattest)
    span, step = parse_span(since, "--since"), parse_span(window, "--window")
    until = now or datetime.now(timezone.utc)
    start = until - span
    src = source_of(source)
    log = logs.read(src.log, start)
    expected_run, expected_name, label = _expected(settings, src, model, run)
    shipped = (src.reference or {}).get("model", {}).get("run_id")  # the package's own, if it is that model's
    ref = src.reference if src.reference and expected_run in (None, shipped) else None
    served = [{"model_uri": u, "model_version": v} for u, v in _identities(log.table)]
    if ref is None:
        if expected_run is None:
            expected_run = next((_run_of_uri(settings, s["model_uri"], s["model_version"]) for s in served), None)
        if expected_run is None:
            raise InvalidInput(f"{source} does not say which model served its predictions; name it with --model "
                               "NAME@ALIAS or --run RUN.", what="model")
        ref = load_reference(settings, expected_run, expected_name)
    ref_run = ref.get("model", {}).get("run_id")
    others = [s for s in served if ref_run and _run_of_uri(settings, s["model_uri"], s["model_version"])
              not in (ref_run, None)]
    if others:
        names = ", ".join(f"{s['model_uri']} (version {s['model_version']})" for s in others)
        raise OtherModel(f"the log in {src.log} holds predictions of {names}, not of {label or 'run ' + ref_run}; "
                         "check each version's traffic against its own model (narrow --since to the hours it "
                         "served, or name that version).", expected=label or ref_run,
                         found=[s["model_version"] for s in others])
    service, accuracy, rows, table = _service(log.table), _accuracy(log, log.table), log.rows, logs.answered(log.table)
    log.table = None  # from here on only the answered rows' columns are kept: a million-row log is large
    current, times = logs.current(ref["columns"], table), logs.stamps(table)
    del table
    return Check(source=str(Path(source).resolve()), log=str(src.log), since=start, until=until, window=step,
                 reference=ref, rows=rows, files=log.files,
                 skipped=[{"file": f, "why": why} for f, why in log.skipped],
                 columns=drift.compare(ref, current, stattest, plots=True),
                 windows=_windows(ref, current, times, start, until, step, stattest), service=service,
                 accuracy=accuracy, served=served)


def _expected(settings: config.Settings, src: Source, model: str | None, run: str | None):
    """(run id, model name in the run, words for it) of the model the log should hold, when known."""
    if model:
        from ..registry import lookup

        run_id, how = lookup.run_of(settings, model)
        return run_id, None, how
    if run:
        from ..tracking import get_runs

        (found,) = get_runs(settings, [run])
        return found.info.run_id, None, f"run {found.info.run_id}"
    if src.spec:
        uri = src.spec.get("model_uri", "")
        m = re.match(r"runs:/[0-9a-f]{32}/(.+)", uri)
        return src.spec.get("run_id"), m.group(1) if m else None, f"{uri} (the package's model)"
    return None, None, None


def environment_settings(settings: config.Settings, env: str | None) -> config.Settings:
    """The settings whose store holds ``env``'s registry (the project's own store when None)."""
    if not env:
        return settings
    return dataclasses.replace(settings, tracking_uri=config.environment(settings, env).registry_uri)


def reference_line(made: dict) -> str:
    return (f"reference of model {made['model']} (run {made['run_id'][:8]}): {made['columns']} columns profiled from "
            f"{made['rows']} rows of {made['source']}, stored as {made['artifact']}")
