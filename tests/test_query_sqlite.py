"""The direct SQLite listing answers exactly what MLflow's search_runs answers on the same store."""

import math
import sqlite3

import pytest

from mlops_jupyter import config
from mlops_jupyter.tracking import query, sqlite_reader
from mlops_jupyter.tracking import tags as T

NB = "/work/nb.ipynb"


def plain(rows):
    """Rows comparable with ==: NaN metrics as a marker."""
    return [(r.run_id, r.run_name, r.status, r.start_time, r.end_time, r.experiment_id, r.tags, r.params,
             {k: "NaN" if math.isnan(v) else v for k, v in r.metrics.items()}) for r in rows]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store with what a listing must get right: deleted runs and experiments, children, NaN and
    multi-step metrics, equal start times, empty and missing tags, runs of another notebook."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    tmp = tmp_path_factory.mktemp("store")
    uri = "sqlite:///" + (tmp / "mlflow.db").as_posix()
    client = MlflowClient(uri)
    live = client.create_experiment("live", artifact_location=(tmp / "a").as_uri())
    gone = client.create_experiment("gone", artifact_location=(tmp / "b").as_uri())
    t0 = 1_700_000_000_000
    ids = []

    def run(exp, i, start, **tags):
        r = client.create_run(exp, run_name=f"r{i}", start_time=start, tags=tags)
        client.log_batch(r.info.run_id, params=[Param("lr", str(i / 10)), Param("long", "x" * 500),
                                                Param("quoted", 'a "b" \\ \u00e9\n{}')],
                         metrics=[Metric("third", i / 3 + 1e-300 * i, t0, 0),
                                  Metric("pi", math.pi * 10.0 ** (i * 37 % 600 - 300), t0, 0),
                                  Metric("acc", i / 100, t0, 0), Metric("acc", i / 50, t0, 3),
                                  Metric("loss", float("nan") if i % 4 == 0 else 1 - i / 100, t0, 0)])
        ids.append(r.info.run_id)
        return r.info.run_id

    for i in range(12):
        rid = run(live, i, t0 + (i // 3) * 1000, **{T.NOTEBOOK: NB, T.RECORD: f"rec-{i}", T.CELL_ID: f"c{i % 3}",
                                                   T.EXECUTION_COUNT: str(i)})
        if i % 5 == 0:
            client.set_terminated(rid, "FINISHED" if i % 2 else "FAILED", end_time=t0 + i * 1000 + 9)
    parent = ids[1]
    client.set_tag(parent, T.KIND, "sweep")
    for i in range(12, 16):
        run(live, i, t0 + i * 1000, **{T.NOTEBOOK: NB, T.RECORD: f"rec-{i}", T.PARENT: parent, "mlops.node": "n"})
    client.delete_run(ids[2])
    run(live, 16, t0, **{T.NOTEBOOK: "/elsewhere.ipynb", T.RECORD: "other"})
    run(live, 17, t0, **{T.NOTEBOOK: NB, T.RECORD: ""})  # an empty record tag is not "tracked"
    run(live, 18, t0, **{T.NOTEBOOK: NB})
    run(gone, 19, t0, **{T.NOTEBOOK: NB, T.RECORD: "rec-gone"})
    client.delete_experiment(gone)
    return {"uri": uri, "settings": config.Settings(project_root=tmp, tracking_uri=uri), "parent": parent, "live": live}


CASES = {
    "a notebook's top-level runs": dict(key=T.NOTEBOOK, value=NB),
    "a notebook's runs, children too, oldest first": dict(key=T.NOTEBOOK, value=NB, top_level=False, order="ASC"),
    "every tracked run": dict(key=T.RECORD, value=None),
    "the newest five": dict(key=T.NOTEBOOK, value=NB, last=5),
    "one record": dict(key=T.RECORD, value="rec-7", last=1, top_level=False),
    "no such notebook": dict(key=T.NOTEBOOK, value="/nowhere.ipynb"),
}


@pytest.mark.parametrize("case", CASES)
def test_direct_listing_equals_mlflow_search_runs(store, case):
    kwargs = CASES[case]
    settings = store["settings"]
    direct = query._search(settings, **kwargs, tag_keys=None)
    through_mlflow = [query._row(r) for r in query._mlflow_search(settings, **kwargs)]
    assert plain(direct) == plain(through_mlflow)
    assert direct or case == "no such notebook"


def test_children_of_a_parent_equal_mlflow_search_runs(store):
    settings, parent = store["settings"], store["parent"]
    args = dict(key=T.PARENT, value=parent, experiment_ids=[store["live"]], top_level=False, order="ASC")
    direct = query._search(settings, **args, tag_keys=None)
    assert len(direct) == 4 and all(r.tags["mlops.node"] == "n" for r in direct)
    assert plain(direct) == plain([query._row(r) for r in query._mlflow_search(settings, **args)])


def test_summary_tags_only_and_the_listing_shows_them(store):
    runs = query.list_runs(store["settings"], notebook=NB)
    assert {r["run_name"] for r in runs[:3]} == {"r9", "r10", "r11"}  # one start time: run id breaks the tie
    assert [r["start_time"] for r in runs] == sorted((r["start_time"] for r in runs), reverse=True)
    assert {r["run_name"] for r in runs}.isdisjoint({"r2", "r12", "r16", "r19"})  # deleted, child, other, gone
    first = next(r for r in runs if r["run_name"] == "r1")
    assert first["kind"] == "sweep" and first["cell_id"] == "c1" and first["execution_count"] == 1
    assert first["metrics"]["acc"] == pytest.approx(0.02)  # the latest step's value


def test_a_schema_it_does_not_know_falls_back_to_mlflow(tmp_path):
    db = tmp_path / "odd.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE runs (run_uuid TEXT)")
    assert sqlite_reader.search(str(db), T.NOTEBOOK, NB, top_level_tag=None) is None
    assert sqlite_reader.search(str(tmp_path / "missing.db"), T.NOTEBOOK, NB, top_level_tag=None) is None
