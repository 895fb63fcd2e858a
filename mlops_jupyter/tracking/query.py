"""Reading runs back from the store: the one code path behind the runs listings and comparisons of every
front door (the magics, the CLI, the server's /mlops/runs route)."""

from __future__ import annotations

import gc
import os
import threading
from contextlib import contextmanager

from ..config import Settings
from ..errors import InvalidInput, MlopsError, RunNotFound, StoreUnavailable
from . import store
from .journal import finish_orphans_once
from . import tags as T
from .sqlite_reader import RunRow, path_of, search as sqlite_search


def _client(settings: Settings):
    return store.client(settings.tracking_uri)


# the tags a run's summary shows; a listing reads only these
SUMMARY_TAGS = (T.NOTEBOOK, T.CELL_ID, T.CELL_KEY, T.EXECUTION_COUNT, T.KIND, T.HIDDEN_STATE, T.REPLAYED)


def _row(run) -> RunRow:
    """An MLflow Run as the listing's row."""
    info, data = run.info, run.data
    return RunRow(info.run_id, info.run_name, info.status, info.start_time, info.end_time, info.experiment_id,
                  dict(data.tags), dict(data.params), dict(data.metrics))


def _summary(run: RunRow, settings: Settings | None = None) -> dict:
    tags = run.tags
    return {
        "run_id": run.run_id,
        "run_name": run.run_name,
        "status": run.status,
        "start_time": run.start_time,
        "end_time": run.end_time,
        "experiment_id": run.experiment_id,
        "notebook": tags.get(T.NOTEBOOK),
        "cell_id": tags.get(T.CELL_ID),
        "cell_key": tags.get(T.CELL_KEY),
        "execution_count": int(tags[T.EXECUTION_COUNT]) if tags.get(T.EXECUTION_COUNT, "").isdigit() else None,
        "params": dict(run.params),
        "metrics": dict(run.metrics),
        "kind": tags.get(T.KIND),
        "hidden_state": tags.get(T.HIDDEN_STATE),
        "replayed": tags.get(T.REPLAYED),
        "ui_url": settings.run_url(run.experiment_id, run.run_id) if settings else None,
    }


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _reading(fn):
    """A store that cannot be read becomes one clear StoreUnavailable, not a traceback from deep in MLflow."""
    def wrapper(settings: Settings, *args, **kwargs):
        finish_orphans_once(settings.state_dir)  # records a dead writer left behind are written on the way
        try:
            return fn(settings, *args, **kwargs)
        except MlopsError:
            raise
        except Exception as exc:  # noqa: BLE001 - MLflow, SQLAlchemy and HTTP errors alike
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise StoreUnavailable(f"the tracking store {settings.tracking_uri} could not be read ({first}); check "
                                   "that it is running and reachable, or point MLOPS_TRACKING_URI at the right one.",
                                   uri=settings.tracking_uri, reason=first) from None
    wrapper.__doc__, wrapper.__name__ = fn.__doc__, fn.__name__
    return wrapper


# ---- a cache keyed on the store's own change state ----------------------------------------------
_CACHE: dict = {}  # (what, tracking URI, UI base) -> (store state, value)
_CACHE_SIZE = 64
_cache_lock = threading.Lock()
_gc_lock, _gc_pause = threading.Lock(), {"depth": 0, "enabled": True}


def store_state(tracking_uri: str) -> tuple | None:
    """A value that changes with every write a local SQLite store commits, whoever makes it; None for
    stores with no such cheap signal (a tracking server), whose reads are then never cached.

    SQLite bumps the file change counter in its header (bytes 24-27) on every commit in rollback
    mode, so even two commits within one clock tick differ; a WAL file's header and size cover WAL mode."""
    path = path_of(tracking_uri)
    if path is None:
        return None
    state = []
    for suffix, start, end in (("", 24, 28), ("-wal", 0, 32)):
        try:
            with open(path + suffix, "rb") as fh:
                st = os.fstat(fh.fileno())
                fh.seek(start)
                state.append((st.st_ino, st.st_size, st.st_mtime_ns, fh.read(end - start)))
        except FileNotFoundError:
            state.append(None)
    return tuple(state)


def _fresh(settings: Settings, key: tuple) -> tuple:
    """(cache key, the store's state now, the cached value if it is still the store's answer, else None)."""
    full, state = (*key, settings.tracking_uri, settings.ui_base()), store_state(settings.tracking_uri)
    with _cache_lock:
        hit = _CACHE.get(full)
    return full, state, hit[1] if state is not None and hit is not None and hit[0] == state else None


def _cached(settings: Settings, key: tuple, compute):
    """``compute()``, or its last value while the store has not changed since (the state is read before
    computing: a write landing during the read makes the next call read again, never serves it stale)."""
    full, state, value = _fresh(settings, key)
    if value is not None:
        return value
    if state is None:
        return compute()
    value = compute()
    with _cache_lock:
        _CACHE.pop(full, None)
        _CACHE[full] = (state, value)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
    return value


@contextmanager
def _bulk_load():
    """MLflow builds tens of thousands of ORM objects for a thousand runs, and the cyclic garbage
    collector rescanning them all midway costs more than the query itself (about 3x here): it waits
    until the load is done. Counted, so overlapping loads in several threads re-enable it once."""
    with _gc_lock:
        if _gc_pause["depth"] == 0:
            _gc_pause["enabled"] = gc.isenabled()
            gc.disable()
        _gc_pause["depth"] += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pause["depth"] -= 1
            if _gc_pause["depth"] == 0 and _gc_pause["enabled"]:
                gc.enable()


def _search(settings: Settings, key: str, value: str | None, last: int | None = None,
            experiment_ids: list | None = None, top_level: bool = True, order: str = "DESC",
            tag_keys: tuple | None = SUMMARY_TAGS) -> list[RunRow]:
    """Runs whose tag ``key`` is ``value`` (None: set, not empty), by start time; sweep trials and
    pipeline steps (runs with a parent) left out when ``top_level``. ``tag_keys``: the tags wanted
    (None: all). A local SQLite store is read directly; any other store, or a schema this reader
    does not know, through MLflow."""
    db = path_of(settings.tracking_uri)
    if db is not None and store.looks_sound(settings.tracking_uri):
        rows = sqlite_search(db, key, value, experiment_ids=experiment_ids, order=order, limit=last,
                             top_level_tag=T.PARENT if top_level else None, tag_keys=tag_keys)
        if rows is not None:
            return rows
    return [_row(r) for r in _mlflow_search(settings, key, value, last, experiment_ids, top_level, order)]


def _mlflow_search(settings: Settings, key: str, value: str | None, last: int | None = None,
                   experiment_ids: list | None = None, top_level: bool = True, order: str = "DESC") -> list:
    """``_search`` through MLflow's own search_runs: MLflow Run objects, all pages."""
    flt = f"tags.`{key}` = '{_quote(value)}'" if value is not None else f"tags.`{key}` != ''"
    client = _client(settings)
    ids = experiment_ids or [e.experiment_id for e in client.search_experiments()]
    if not ids:
        return []
    runs, token = [], None
    with _bulk_load():
        while True:
            page = client.search_runs(ids, filter_string=flt, order_by=[f"attributes.start_time {order}"],
                                      max_results=min(1000, last or 1000), page_token=token)
            # sweep trials and pipeline steps show under their parent run, not beside it
            runs.extend(r for r in page if not top_level or T.PARENT not in r.data.tags)
            token = page.token
            if not token or (last and len(runs) >= last):
                return runs[:last] if last else runs


KINDS = ("cell", "sweep", "pipeline", "retrain")
PIPELINE_FOLDER = "mlops.pipeline.folder"  # on a pipeline's parent run: the exported folder it ran


def kind_of(run: dict) -> str:
    """A top-level run's kind: "sweep", "pipeline" (a pipeline run, or a step ``dvc repro`` ran on its own),
    or "cell" (a tracked cell, autotracked or not)."""
    kind = run.get("kind")
    if kind in ("pipeline", "pipeline-step"):
        return "pipeline"
    return kind if kind in ("sweep", "retrain") else "cell"


def _newest_first(rows: list[RunRow]) -> list[RunRow]:
    """Rows of several searches as one listing, in MLflow's order (no start time last, run id breaks ties)."""
    unique = {r.run_id: r for r in rows}.values()
    return sorted(unique, key=lambda r: (r.start_time is None, -(r.start_time or 0), r.run_id))


def _pipelines(settings: Settings, notebook: str | None, last: int | None) -> list[RunRow]:
    """Pipeline parent runs: all of them, or those of the pipelines exported from ``notebook``."""
    from .. import pipeline

    rows = _search(settings, T.KIND, "pipeline", last=None if notebook else last,
                   tag_keys=(*SUMMARY_TAGS, PIPELINE_FOLDER))
    if notebook is None:
        return rows
    sources: dict = {}
    for r in rows:
        folder = r.tags.get(PIPELINE_FOLDER)
        if folder not in sources:
            sources[folder] = pipeline.notebook_of(folder) if folder else None
    return [r for r in rows if sources[r.tags.get(PIPELINE_FOLDER)] == notebook]


def _top_level(settings: Settings, notebook: str | None, last: int | None = None) -> list[RunRow]:
    """Tracked cells and sweeps (of ``notebook``, or every tracked one) and pipeline runs, newest first."""
    key, value = (T.NOTEBOOK, notebook) if notebook else (T.RECORD, None)
    rows = _newest_first(_search(settings, key, value, last=last) + _pipelines(settings, notebook, last))
    return rows[:last] if last else rows


@_reading
def list_runs(settings: Settings, notebook: str | os.PathLike | None = None, last: int | None = None,
              kind: str | None = None, children: bool = False) -> list[dict]:
    """Top-level runs, newest first: tracked cells, sweeps and pipeline runs; those of ``notebook`` (an
    absolute path: its cells, its sweeps, the pipelines exported from it) or of the whole store. ``kind``
    keeps one kind (see ``KINDS``); ``children`` adds each sweep's trials and each pipeline's steps as
    ``children`` (oldest first). A local store's answer is cached until the store changes; treat the
    dicts as read-only."""
    if last is not None and last < 1:
        raise InvalidInput(f"the number of runs to list must be positive, got {last}.", last=last)
    if kind is not None and kind not in KINDS:
        raise InvalidInput(f"{kind!r} is not a kind of run; the kinds are: {', '.join(KINDS)}.", kind=kind)
    if not store_ready(settings.tracking_uri):
        return []
    notebook = os.fspath(notebook) if notebook else None
    cache_key = ("runs", notebook)
    if kind is None and last is not None and _fresh(settings, cache_key)[2] is None:
        runs = [_summary(r, settings) for r in _top_level(settings, notebook, last)]
    else:
        runs = list(_cached(settings, cache_key,
                            lambda: [_summary(r, settings) for r in _top_level(settings, notebook)]))
        if kind is not None:
            runs = [r for r in runs if kind_of(r) == kind]
        runs = runs[:last] if last else runs
    if children:
        runs = [{**r, "children": child_runs(settings, r["run_id"], r["experiment_id"])}
                if kind_of(r) != "cell" else r for r in runs]
    return runs


@_reading
def runs_tagged(settings: Settings, key: str, value: str) -> list[dict]:
    """Top-level runs whose tag ``key`` is ``value``, newest first (summaries, as ``list_runs`` gives)."""
    if not store_ready(settings.tracking_uri):
        return []
    return [_summary(r, settings) for r in _search(settings, key, value)]


@_reading
def child_runs(settings: Settings, parent_id: str, experiment_id: str) -> list[dict]:
    """The child runs (sweep trials, pipeline steps) of ``parent_id``, oldest first; each summary also
    carries its ``tags`` (e.g. a trial's mlops.node). Cached like ``list_runs``."""
    def compute():
        found = _search(settings, T.PARENT, parent_id, experiment_ids=[experiment_id], top_level=False, order="ASC",
                        tag_keys=None)
        return [{**_summary(r, settings), "tags": dict(r.tags)} for r in found]

    return list(_cached(settings, ("children", parent_id), compute))


@_reading
def run_for_record(settings: Settings, record: str) -> str | None:
    """The id of the run the recorder wrote for journal record ``record`` (a cell's key), if any yet."""
    if not store_ready(settings.tracking_uri):
        return None

    def compute():
        found = _search(settings, T.RECORD, record, last=1, top_level=False, tag_keys=())
        return [found[0].run_id] if found else []

    return next(iter(_cached(settings, ("record", record), compute)), None)


@_reading
def run_models(settings: Settings, run_id: str) -> list[dict]:
    """The models logged in run ``run_id`` (an id or unique prefix): [{name, model_uri, model_id}]."""
    (run,) = get_runs(settings, [run_id])
    client = _client(settings)
    found = client.search_logged_models(experiment_ids=[run.info.experiment_id],
                                        filter_string=f"source_run_id = '{run.info.run_id}'")
    return sorted(({"name": m.name, "model_uri": f"runs:/{run.info.run_id}/{m.name}", "model_id": m.model_id}
                   for m in found), key=lambda m: m["name"])


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
        raise RunNotFound(f"no run {run_ids[0]!r}: the tracking store {settings.tracking_uri} holds no runs yet.",
                          run=run_ids[0], uri=settings.tracking_uri)
    client, runs, known = _client(settings), [], None
    for rid in run_ids:
        if len(rid) < 32:  # a prefix of a run id, or a run's name
            known = known if known is not None else list_runs(settings)
            by_id = [k["run_id"] for k in known if k["run_id"].startswith(rid.lower())]
            by_name = [k["run_id"] for k in known if k["run_name"] == rid][:1]  # a name: its newest run
            matches = by_id if not by_name else by_name if not by_id or by_id == by_name else by_id + by_name
            if len(matches) > 1:  # a name that is also the start of another run's id (e.g. "f1") says so too
                raise InvalidInput(f"{rid!r} names {len(matches)} runs ({', '.join(m[:8] for m in matches[:5])}); "
                                   "give more of the run id.", what="ambiguous run", run=rid, matches=matches)
            rid = matches[0] if matches else rid
        try:
            runs.append(client.get_run(rid))
        except MlflowException:
            raise RunNotFound(f"no run {rid!r} in the tracking store {settings.tracking_uri}.", run=rid,
                              uri=settings.tracking_uri) from None
    return runs


@_reading
def metric_history(settings: Settings, run_ids: list[str], keys: list[str]) -> dict:
    """{metric: {run_id: [[step, value], ...]}} for the metrics some run logged at more than one step."""
    client, out = _client(settings), {}
    for key in keys:
        for rid in run_ids:
            points = client.get_metric_history(rid, key)
            if len(points) > 1:
                points = sorted(points, key=lambda m: (m.step, m.timestamp))
                out.setdefault(key, {})[rid] = [[m.step, m.value] for m in points]
    return {k: {rid: v.get(rid, []) for rid in run_ids} for k, v in out.items()}


def compare_runs(settings: Settings, run_ids: list[str]) -> dict:
    """Params and metrics of several runs side by side; ``differs`` lists keys whose values differ."""
    if len(run_ids) < 2:
        raise InvalidInput(f"compare needs two or more runs, got {len(run_ids)}: give their ids (the 8-character "
                           "prefixes the runs table shows will do).", what="compare", given=len(run_ids))
    runs = get_runs(settings, run_ids)

    def table(kind):
        keys = sorted(set().union(*(getattr(r.data, kind).keys() for r in runs)))
        rows = {k: [getattr(r.data, kind).get(k) for r in runs] for k in keys}
        return rows, [k for k, vals in rows.items() if len({repr(v) for v in vals}) > 1]

    params, pdiff = table("params")
    metrics, mdiff = table("metrics")
    return {
        "runs": [_summary(_row(r), settings) for r in runs],
        "params": params,
        "metrics": metrics,
        "differs": {"params": pdiff, "metrics": mdiff},
    }


def store_ready(tracking_uri: str) -> bool:
    """False for a local SQLite store that does not exist yet or is still being created (by a
    recorder, say): opening it then would start a second schema migration on the same file."""
    path = path_of(tracking_uri)
    if path is None:
        return True
    if not os.path.exists(path):
        return False
    import sqlite3

    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as con:
            # MLflow creates the Default experiment after its last migration
            return con.execute("SELECT count(*) FROM experiments").fetchone()[0] > 0
    except sqlite3.Error:
        return False
