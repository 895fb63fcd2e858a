"""Reading runs back from the store: the one code path behind ``%mlops runs``, ``mlops runs``,
``%mlops compare`` and the server's /mlops/runs route."""

from __future__ import annotations

import os

from ..config import Settings
from ..errors import MlopsError, StoreError
from . import tags as T


def _client(settings: Settings):
    import warnings

    with warnings.catch_warnings():  # mlflow's import of tqdm.auto warns in kernels without ipywidgets
        warnings.simplefilter("ignore")
        from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=settings.tracking_uri)


def _summary(run) -> dict:
    tags = run.data.tags
    return {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "status": run.info.status,
        "start_time": run.info.start_time,
        "end_time": run.info.end_time,
        "experiment_id": run.info.experiment_id,
        "notebook": tags.get(T.NOTEBOOK),
        "cell_id": tags.get(T.CELL_ID),
        "cell_key": tags.get(T.CELL_KEY),
        "execution_count": int(tags[T.EXECUTION_COUNT]) if tags.get(T.EXECUTION_COUNT, "").isdigit() else None,
        "params": dict(run.data.params),
        "metrics": dict(run.data.metrics),
    }


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _reading(fn):
    """A store that cannot be read becomes one clear StoreError, not a traceback from deep in MLflow."""
    def wrapper(settings: Settings, *args, **kwargs):
        try:
            return fn(settings, *args, **kwargs)
        except MlopsError:
            raise
        except Exception as exc:  # noqa: BLE001 - MLflow, SQLAlchemy and HTTP errors alike
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise StoreError(f"the tracking store {settings.tracking_uri} could not be read ({first}); check that "
                             "it is running and reachable, or point MLOPS_TRACKING_URI at the right one.") from None
    wrapper.__doc__, wrapper.__name__ = fn.__doc__, fn.__name__
    return wrapper


@_reading
def list_runs(settings: Settings, notebook: str | os.PathLike | None = None, last: int | None = None) -> list[dict]:
    """Tracked runs, newest first: those of ``notebook`` (an absolute path) or all tracked runs."""
    if last is not None and last < 1:
        raise MlopsError(f"--last must be a positive number of runs, got {last}.")
    if not store_ready(settings.tracking_uri):
        return []
    client = _client(settings)
    ids = [e.experiment_id for e in client.search_experiments()]
    if not ids:
        return []
    flt = f"tags.`{T.NOTEBOOK}` = '{_quote(os.fspath(notebook))}'" if notebook else f"tags.`{T.RECORD}` != ''"
    runs, token = [], None
    while True:
        page = client.search_runs(ids, filter_string=flt, order_by=["attributes.start_time DESC"],
                                  max_results=1000 if notebook is None else min(1000, last or 1000),
                                  page_token=token)
        # sweep trials and pipeline steps show under their parent run, not beside it
        runs.extend(_summary(r) for r in page if "mlflow.parentRunId" not in r.data.tags)
        token = page.token
        if not token or (last and len(runs) >= last):
            return runs[:last] if last else runs


@_reading
def runs_with_tags(settings: Settings, keys: list[str]) -> list[dict]:
    """Runs (any experiment) carrying any of the tag ``keys``: [{run_id, run_name, start_time, tags}]."""
    if not keys or not store_ready(settings.tracking_uri):
        return []
    client = _client(settings)
    ids = [e.experiment_id for e in client.search_experiments()]
    found = {}
    for key in keys:
        for run in client.search_runs(ids, filter_string=f"tags.`{key}` != ''", max_results=5000):
            found[run.info.run_id] = {"run_id": run.info.run_id, "run_name": run.info.run_name,
                                      "start_time": run.info.start_time,
                                      "tags": {k: v for k, v in run.data.tags.items() if k in keys}}
    return sorted(found.values(), key=lambda r: r["start_time"] or 0, reverse=True)


@_reading
def get_runs(settings: Settings, run_ids: list[str]) -> list:
    """MLflow Run objects for ``run_ids`` (full ids, or the unique prefixes the tables show);
    a clear error names any id the store lacks."""
    from mlflow.exceptions import MlflowException

    if not store_ready(settings.tracking_uri):  # never create (or race the creation of) a store to read it
        raise MlopsError(f"no run {run_ids[0]!r}: the tracking store {settings.tracking_uri} holds no runs yet.")
    client, runs, known = _client(settings), [], None
    for rid in run_ids:
        if len(rid) < 32:  # a prefix of a run id, or a run's name
            known = known if known is not None else list_runs(settings)
            matches = [k["run_id"] for k in known if k["run_id"].startswith(rid.lower())] \
                or [k["run_id"] for k in known if k["run_name"] == rid][:1]  # a name: its newest run
            if len(matches) > 1:
                raise MlopsError(f"{rid!r} names {len(matches)} runs ({', '.join(m[:8] for m in matches[:5])}); "
                                 "give a longer run id prefix.")
            rid = matches[0] if matches else rid
        try:
            runs.append(client.get_run(rid))
        except MlflowException:
            raise MlopsError(f"no run {rid!r} in the tracking store {settings.tracking_uri}; "
                             "`%mlops runs` lists the run ids of this notebook.") from None
    return runs


def compare_runs(settings: Settings, run_ids: list[str]) -> dict:
    """Params and metrics of several runs side by side; ``differs`` lists keys whose values differ."""
    if len(run_ids) < 2:
        raise MlopsError("compare needs two or more runs: give their ids (the 8-character prefixes `%mlops runs` shows will do), e.g. `%mlops compare 3f2a9c81 81be07aa`, or `%mlops compare --last 2`.")
    runs = get_runs(settings, run_ids)

    def table(kind):
        keys = sorted(set().union(*(getattr(r.data, kind).keys() for r in runs)))
        rows = {k: [getattr(r.data, kind).get(k) for r in runs] for k in keys}
        return rows, [k for k, vals in rows.items() if len({repr(v) for v in vals}) > 1]

    params, pdiff = table("params")
    metrics, mdiff = table("metrics")
    return {
        "runs": [_summary(r) for r in runs],
        "params": params,
        "metrics": metrics,
        "differs": {"params": pdiff, "metrics": mdiff},
    }


def store_ready(tracking_uri: str) -> bool:
    """False for a local SQLite store that does not exist yet or is still being created (by a
    recorder, say): opening it then would start a second schema migration on the same file."""
    if not tracking_uri.startswith("sqlite:///"):
        return True
    path = tracking_uri[len("sqlite:///"):].split("?")[0]
    if not os.path.exists(path):
        return False
    import sqlite3

    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as con:
            # MLflow creates the Default experiment after its last migration
            return con.execute("SELECT count(*) FROM experiments").fetchone()[0] > 0
    except sqlite3.Error:
        return False
