"""Every /mlops/ route on real engines: a real SQLite store, a real git + DVC repo, a real exported
pipeline run by papermill, real logged models; plus the security rules every route shares."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from harness import CLEAN_VARS, call, make_git_project, notebook, wait_for
from mlflow_seed import seed_runs, write_notebook
from tornado.httpclient import HTTPClientError

from mlops_jupyter.server.handlers import ROUTES

PY = sys.executable
HTTP_METHODS = ("get", "post")
BAD_XSRF = "deadbeef" * 4
OPENAPI = Path(__file__).parents[1] / "mlops_jupyter" / "server" / "openapi.yaml"


def methods(handler) -> list[str]:
    """The HTTP methods our classes give a handler (inherited from GetRoute / PostRoute included)."""
    ours = [c for c in handler.__mro__ if c.__module__.startswith("mlops_jupyter")]
    return [m for m in HTTP_METHODS if any(m in vars(c) for c in ours)]


@pytest.fixture(scope="module")
def proj(tmp_path_factory):
    """A git project with two snapshots of data/train.csv, runs that used each, a sweep with two trials,
    a run with a metric history, and a tagged pipeline notebook."""
    from mlflow import MlflowClient

    from mlops_jupyter import data

    mp = pytest.MonkeyPatch()
    for var in (*CLEAN_VARS, "MLOPS_UI_URL"):
        mp.delenv(var, raising=False)
    root = make_git_project(tmp_path_factory.mktemp("routes") / "proj")
    nb = write_notebook(root / "analysis" / "train.ipynb")
    csv = root / "data" / "train.csv"
    csv.parent.mkdir()
    csv.write_bytes(b"x,y\n1,2\n")
    v1 = data.snapshot(csv, "first version", root=root)
    csv.write_bytes(b"x,y\n1,2\n3,4\n")
    v2 = data.snapshot(csv, "second version", root=root)
    ids = seed_runs(root, nb, [
        {"name": "v1", "start": 1_700_000_000_000, "params": {"lr": "0.1"}, "metrics": {"acc": 0.81}},
        {"name": "v2", "start": 1_700_000_060_000, "params": {"lr": "0.01"}, "metrics": {"acc": 0.93}},
        {"name": "sweep", "start": 1_700_000_120_000, "params": {"metric": "acc", "mode": "max", "samples": "2"}},
    ])
    client = MlflowClient("sqlite:///" + (root / ".mlops" / "mlflow.db").as_posix())
    for run_id, version in ((ids[0], v1), (ids[1], v2)):  # each had its version in scope, and read it
        client.set_tag(run_id, "mlops.data.data/train.csv", version.md5)
        client.set_tag(run_id, "mlops.read.data/train.csv", version.md5)
    for step, loss in enumerate([0.9, 0.5, 0.2]):
        client.log_metric(ids[1], "loss", loss, step=step)
    client.set_tag(ids[2], "mlops.kind", "sweep")
    exp = client.get_run(ids[2]).info.experiment_id
    for n, (lr, acc) in enumerate([("0.1", 0.7), ("0.01", 0.9)], start=1):
        child = client.create_run(exp, run_name=f"trial-{n}", start_time=1_700_000_120_000 + n, tags={
            "mlflow.parentRunId": ids[2], "mlops.node": f"node{n}"})
        client.log_param(child.info.run_id, "lr", lr)
        client.log_metric(child.info.run_id, "acc", acc)
        client.set_terminated(child.info.run_id, "FINISHED")
    notebook(root / "analysis" / "pipe.ipynb", [
        ("n = 3", ["parameters"]),
        ("xs = list(range(n))", ["step:prep"]),
        ("total = sum(xs)", ["step:train", "after:prep"]),
        ("total", ["metrics"]),
    ])
    notebook(root / "analysis" / "modelled.ipynb", [
        ("from sklearn.tree import DecisionTreeClassifier\nX, y = [[0.0], [1.0]], [0, 1]\n"
         "clf = DecisionTreeClassifier().fit(X, y)", ["step:fit", "model:clf"])])
    yield {"root": root, "nb": nb, "ids": ids, "v1": v1, "v2": v2, "csv": csv}
    mp.undo()


@pytest.fixture
def jp_root_dir(proj):
    return proj["root"]


@pytest.fixture
def jp_server_config():
    return {"ServerApp": {"jpserver_extensions": {"mlops_jupyter": True}}}


@pytest.fixture(autouse=True)
def clean_store_env(monkeypatch):
    for var in (*CLEAN_VARS, "MLOPS_UI_URL"):
        monkeypatch.delenv(var, raising=False)




# ---- security ------------------------------------------------------------------------------------
@pytest.mark.parametrize("endpoint, method", [(e, m) for e, h in ROUTES for m in methods(h)])
async def test_every_route_refuses_unauthenticated_requests(http_server_client, jp_base_url, endpoint, method):
    resp = await http_server_client.fetch(f"{jp_base_url}mlops/{endpoint}?path=analysis/train.ipynb",
                                          method=method.upper(), body="{}" if method == "post" else None,
                                          raise_error=False, follow_redirects=False)
    assert resp.code in (401, 403), resp.code
    assert json.loads(resp.body)["code"] == resp.code


async def login_cookie(jp_fetch) -> str:
    """The login cookie jupyter_server sets on a token-authenticated request (what a browser holds)."""
    resp = await jp_fetch("mlops", "status", params={"path": "analysis/train.ipynb"})
    cookies = [c.split(";")[0] for c in resp.headers.get_list("Set-Cookie")]
    login = [c for c in cookies if c.startswith("username-")]
    assert login, cookies
    return login[0]


@pytest.mark.parametrize("endpoint", [e for e, h in ROUTES if "post" in methods(h)])
async def test_every_post_refuses_a_cookie_request_without_xsrf_token(http_server_client, jp_base_url, jp_fetch,
                                                                      endpoint):
    cookie = await login_cookie(jp_fetch)
    url = f"{jp_base_url}mlops/{endpoint}"
    resp = await http_server_client.fetch(url, method="POST", body="{}", headers={"Cookie": cookie},
                                          raise_error=False)
    assert resp.code == 403 and "_xsrf" in json.loads(resp.body)["message"]
    # the same cookie with a matching XSRF cookie + header passes the check (and reaches the handler's 400)
    resp = await http_server_client.fetch(url, method="POST", body="[]", raise_error=False, headers={
        "Cookie": f"{cookie}; _xsrf={BAD_XSRF}", "X-XSRFToken": BAD_XSRF})
    assert resp.code == 400, resp.body


TRAVERSALS = ["../x.ipynb", "analysis/../../x.ipynb", "/etc/passwd"]
PATH_CASES = [("GET", e, {"path": p}) for e, h in ROUTES if "get" in methods(h) for p in TRAVERSALS] + [
    ("GET", "pipeline", {"path": "analysis/pipe.ipynb", "out": "../elsewhere"}),
    ("POST", "restore", {"path": "../x.ipynb", "target": "data/train.csv", "rev": "HEAD"}),
    ("POST", "restore", {"path": "analysis/train.ipynb", "target": "../../etc/passwd", "rev": "HEAD"}),
    ("POST", "pipeline/export", {"path": "/etc/x.ipynb"}),
    ("POST", "pipeline/export", {"path": "analysis/pipe.ipynb", "out": "../../tmp/p"}),
    ("POST", "pipeline/run", {"path": "analysis/pipe.ipynb", "out": "/tmp/p"}),
    ("POST", "serving/generate", {"path": "analysis/train.ipynb", "run_id": "x", "out": "../served"}),
    ("POST", "serving/generate", {"path": "../nb.ipynb", "run_id": "x", "out": "served"}),
    ("GET", "serving", {"path": "analysis/train.ipynb", "out": "../served"}),
    ("POST", "serving/build", {"path": "analysis/train.ipynb", "out": "/tmp/served"}),
    ("GET", "monitor", {"path": "analysis/train.ipynb", "source": "../../served"}),
]


@pytest.mark.parametrize("method, endpoint, args", PATH_CASES)
async def test_paths_outside_the_root_are_refused_on_every_route(jp_fetch, method, endpoint, args):
    if method == "GET":
        code, body = await call(jp_fetch, endpoint, **args)
    else:
        code, body = await call(jp_fetch, endpoint, body=args)
    assert code == 403 and "outside the server root" in body["message"], body


def test_every_route_is_in_the_openapi_description():
    spec = yaml.safe_load(OPENAPI.read_text())
    for endpoint, handler in ROUTES:
        assert f"/{endpoint}" in spec["paths"], f"route {endpoint!r} is missing from openapi.yaml"
        for method in methods(handler):
            assert method in spec["paths"][f"/{endpoint}"], f"{method.upper()} {endpoint} is missing from openapi.yaml"


@pytest.mark.parametrize("endpoint, body", [
    ("restore", "not json"), ("restore", "[1]"), ("pipeline/export", '"x"'), ("pipeline/validate", "{"),
])
async def test_bodies_that_are_not_json_objects_are_400(jp_fetch, endpoint, body):
    with pytest.raises(HTTPClientError) as err:
        await jp_fetch("mlops", *endpoint.split("/"), method="POST", body=body)
    assert err.value.code == 400 and "JSON" in json.loads(err.value.response.body)["message"]


# ---- status and runs -----------------------------------------------------------------------------
async def test_status_names_the_project_store_and_capabilities(jp_fetch, proj):
    code, body = await call(jp_fetch, "status", path="analysis/train.ipynb")
    assert code == 200 and body["project"] == str(proj["root"])
    assert body["tracking_uri"].endswith("/.mlops/mlflow.db") and body["ui"].startswith("mlflow ui")
    assert body["ui_url"] is None  # a local store: no UI is serving it
    assert body["capabilities"] == {"tracking": True, "data": True, "sweep": True, "pipeline": True, "serving": True}


async def test_runs_carry_kind_and_a_ui_link_when_a_ui_url_is_configured(jp_fetch, proj, monkeypatch):
    code, body = await call(jp_fetch, "runs", path="analysis/train.ipynb")
    assert code == 200 and [r["run_name"] for r in body["runs"]] == ["sweep", "v2", "v1"]  # no trials
    assert [r["kind"] for r in body["runs"]] == ["sweep", None, None]
    assert all(r["ui_url"] is None for r in body["runs"])
    monkeypatch.setenv("MLOPS_UI_URL", "http://mlflow.example:5000/")
    code, body = await call(jp_fetch, "runs", path="analysis/train.ipynb")
    run = body["runs"][1]
    assert body["ui_url"] == "http://mlflow.example:5000"
    assert run["ui_url"] == f"http://mlflow.example:5000/#/experiments/{run['experiment_id']}/runs/{run['run_id']}"


async def test_bad_ui_url_is_400(jp_fetch, monkeypatch):
    monkeypatch.setenv("MLOPS_UI_URL", "mlflow.example:5000")
    code, body = await call(jp_fetch, "runs", path="analysis/train.ipynb")
    assert code == 400 and "not a web address" in body["message"]


async def test_runs_etag_gives_304_until_the_store_changes(jp_fetch, proj):
    from mlflow import MlflowClient

    first = await jp_fetch("mlops", "runs", params={"path": "analysis/train.ipynb"})
    etag = first.headers["Etag"]
    with pytest.raises(HTTPClientError) as err:
        await jp_fetch("mlops", "runs", params={"path": "analysis/train.ipynb"}, headers={"If-None-Match": etag})
    assert err.value.code == 304
    # a write by anyone else (here: another client) is seen at once: no stale answer from the cache
    MlflowClient("sqlite:///" + (proj["root"] / ".mlops" / "mlflow.db").as_posix()).log_metric(
        proj["ids"][0], "f1", 0.5)
    fresh = await jp_fetch("mlops", "runs", params={"path": "analysis/train.ipynb"}, headers={"If-None-Match": etag})
    assert fresh.code == 200 and fresh.headers["Etag"] != etag
    assert json.loads(fresh.body)["runs"][2]["metrics"] == {"acc": 0.81, "f1": 0.5}


# ---- compare -------------------------------------------------------------------------------------
async def test_compare_gives_tables_differences_and_history(jp_fetch, proj):
    v1, v2 = proj["ids"][:2]
    code, body = await call(jp_fetch, "compare", path="analysis/train.ipynb", ids=f"{v1[:8]},{v2}")
    assert code == 200 and [r["run_id"] for r in body["runs"]] == [v1, v2]
    assert body["params"]["lr"] == ["0.1", "0.01"] and "lr" in body["differs"]["params"]
    assert body["metrics"]["loss"] == [None, 0.2]
    assert body["history"] == {"loss": {v1: [], v2: [[0, 0.9], [1, 0.5], [2, 0.2]]}}


@pytest.mark.parametrize("ids, status, words", [
    ("", 400, "two or more"), ("abc", 400, "two or more"), ("0000dead,ffff0000", 404, "no run"),
])
async def test_bad_compare_ids(jp_fetch, proj, ids, status, words):
    code, body = await call(jp_fetch, "compare", path="analysis/train.ipynb", ids=ids)
    assert code == status and words in body["message"]


# ---- data ----------------------------------------------------------------------------------------
async def test_snapshots_list_versions_with_their_runs_and_the_current_one(jp_fetch, proj):
    code, body = await call(jp_fetch, "snapshots", path="analysis/train.ipynb")
    assert code == 200 and body["project"] == str(proj["root"])
    (entry,) = body["paths"]
    assert entry["path"] == "data/train.csv"
    new, old = entry["versions"]
    assert (new["md5"], old["md5"]) == (proj["v2"].md5, proj["v1"].md5)
    assert (new["message"], new["current"], old["current"]) == ("second version", True, False)
    assert [r["run_name"] for r in old["runs"]] == ["v1"] and [r["run_name"] for r in new["runs"]] == ["v2"]
    assert new["size"] == 12 and isinstance(new["time"], int) and len(new["rev"]) == 40


async def test_a_project_without_dvc_has_no_snapshots(jp_fetch, proj):
    lone = make_git_project(proj["root"] / "sub")
    write_notebook(lone / "nb.ipynb")
    code, body = await call(jp_fetch, "snapshots", path="sub/nb.ipynb")
    assert code == 200 and body == {"project": str(lone), "paths": []}


async def test_restore_by_run_and_by_rev_and_refusal_of_unsnapshotted_changes(jp_fetch, proj):
    csv = proj["csv"]
    code, body = await call(jp_fetch, "restore", body={"path": "analysis/train.ipynb", "target": "data/train.csv",
                                                       "run_id": proj["ids"][0][:8]})
    assert code == 200 and csv.read_bytes() == b"x,y\n1,2\n" and body["md5"] == proj["v1"].md5
    code, body = await call(jp_fetch, "snapshots", path="analysis/train.ipynb")
    assert [v["current"] for v in body["paths"][0]["versions"]] == [False, True]
    csv.write_bytes(b"unsaved work\n")
    args = {"path": "analysis/train.ipynb", "target": "data/train.csv", "rev": proj["v2"].rev}
    code, body = await call(jp_fetch, "restore", body=args)
    assert code == 409 and "not in any snapshot" in body["message"] and "force" in body["message"]
    assert body["error"] == "unsnapshotted_changes"
    assert csv.read_bytes() == b"unsaved work\n"
    code, body = await call(jp_fetch, "restore", body={**args, "force": True})
    assert code == 200 and csv.read_bytes() == b"x,y\n1,2\n3,4\n" and body["rev"] == proj["v2"].rev


@pytest.mark.parametrize("body, status, words", [
    ({"target": "data/train.csv", "rev": "HEAD"}, 400, "`path` is required"),
    ({"path": "analysis/train.ipynb", "rev": "HEAD"}, 400, "`target` is required"),
    ({"path": "analysis/train.ipynb", "target": "data/train.csv"}, 400, "exactly one"),
    ({"path": "analysis/train.ipynb", "target": "data/train.csv", "rev": "HEAD", "run_id": "x"}, 400, "exactly one"),
    ({"path": "analysis/train.ipynb", "target": "data/train.csv", "rev": 3}, 400, "`rev` must be a string"),
    ({"path": "analysis/train.ipynb", "target": "data/train.csv", "rev": "HEAD", "force": "yes"}, 400,
     "`force` must be a bool"),
    ({"path": "analysis/train.ipynb", "target": "data/train.csv", "run_id": "0123abcd"}, 404, "no run"),
    ({"path": "analysis/train.ipynb", "target": "data/train.csv", "rev": "0" * 40}, 404, "holds no snapshot"),
    ({"path": "analysis/train.ipynb", "target": "data/train.csv", "run_id": "sweep"}, 404, "used no snapshot"),
])
async def test_bad_restore_requests(jp_fetch, proj, body, status, words):
    code, reply = await call(jp_fetch, "restore", body=body)
    assert code == status and words in reply["message"], reply


# ---- sweeps --------------------------------------------------------------------------------------
async def test_sweeps_come_from_mlflow_with_their_trials_and_best(jp_fetch, proj):
    code, body = await call(jp_fetch, "sweeps", path="analysis/train.ipynb")
    assert code == 200
    (sweep,) = body["sweeps"]
    assert sweep["run_id"] == proj["ids"][2] and not sweep["live"] and sweep["status"] == "FINISHED"
    assert (sweep["metric"], sweep["mode"], sweep["samples"]) == ("acc", "max", 2)
    assert [(t["number"], t["params"], t["metrics"], t["node"]) for t in sweep["trials"]] == [
        (1, {"lr": "0.1"}, {"acc": 0.7}, "node1"), (2, {"lr": "0.01"}, {"acc": 0.9}, "node2")]
    assert sweep["best"] == {"trial": 2, "params": {"lr": "0.01"}, "metrics": {"acc": 0.9}}


async def test_an_ended_sweeps_table_is_kept_until_mlflow_has_every_trial(jp_fetch, proj):
    from mlops_jupyter.sweep import live
    from mlops_jupyter.sweep.runner import SweepResult, SweepSpec, TrialState

    # the kernel never heard its run's id (slow store); the file still finds its run by the record key
    trials = [TrialState(n, str(n), {"lr": lr}, "FINISHED", {"acc": acc}) for n, lr, acc in
              [(1, 0.1, 0.7), (2, 0.01, 0.9), (3, 0.05, 0.95)]]
    table = live.ProgressFile(proj["root"] / ".mlops", "rec-sweep", str(proj["nb"]), "sweep", "acc", "max", 3)
    try:
        table.finish(SweepResult(SweepSpec("", {}, "acc", "max"), trials, []))
        code, body = await call(jp_fetch, "sweeps", path="analysis/train.ipynb")
        (sweep,) = body["sweeps"]
        assert sweep["run_id"] == proj["ids"][2] and not sweep["live"]
        assert [t["number"] for t in sweep["trials"]] == [1, 2, 3]  # the third is not in MLflow yet
        assert sweep["best"]["trial"] == 3
    finally:
        table.path.unlink()


# a kernel running a sweep: it writes its live table, holds the lock, and is then killed mid-sweep
LIVE_KERNEL = r"""
import sys, time
from pathlib import Path
from mlops_jupyter.sweep import live
from mlops_jupyter.sweep.runner import SweepResult, SweepSpec, TrialState
spec = SweepSpec("acc = lr", {}, "acc", "max")
result = SweepResult(spec, [TrialState(1, "a", {"lr": 0.5}, "FINISHED", {"acc": 0.5}, node="n1"),
                            TrialState(2, "b", {"lr": 0.9})], [])
table = live.ProgressFile(Path(sys.argv[1]), "rec-live", sys.argv[2], "live sweep", "acc", "max", 4)
table.update(result, run_id=None, force=True)
print("ready", flush=True)
time.sleep(600)
"""


async def test_a_running_sweep_shows_live_and_a_killed_kernel_never_stays_live(jp_fetch, proj):
    state = proj["root"] / ".mlops"
    proc = subprocess.Popen([PY, "-c", LIVE_KERNEL, str(state), str(proj["nb"])], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        code, body = await call(jp_fetch, "sweeps", path="analysis/train.ipynb")
        live = body["sweeps"][0]
        assert (live["live"], live["status"], live["run_name"], live["samples"]) == (True, "RUNNING", "live sweep", 4)
        assert [(t["number"], t["status"]) for t in live["trials"]] == [(1, "FINISHED"), (2, "RUNNING")]
        assert live["best"] == {"trial": 1, "params": {"lr": 0.5}, "metrics": {"acc": 0.5}}
    finally:
        proc.kill()
        proc.wait()
    code, body = await call(jp_fetch, "sweeps", path="analysis/train.ipynb")
    assert [s["run_name"] for s in body["sweeps"]] == ["sweep"]  # a dead kernel's table is not shown as live
    for leftover in (state / "sweeps").glob("rec-live.*"):
        leftover.unlink()


# ---- pipelines -----------------------------------------------------------------------------------
async def test_validate_uses_the_export_parser(jp_fetch):
    cells = [{"id": "a", "index": 0, "tags": ["parameters"], "source": "n = 3"},
             {"id": "b", "index": 2, "tags": ["step:prep"]},
             {"id": "c", "index": 3, "tags": ["block:train", "prev:prep"]}]
    code, body = await call(jp_fetch, "pipeline/validate", body={"cells": cells})
    assert code == 200 and body == {"ok": True, "steps": ["prep", "train"], "errors": []}


@pytest.mark.parametrize("cells, cell_id, words", [
    ([{"id": "a", "index": 0, "tags": ["step:prep"]}, {"id": "b", "index": 1, "tags": ["step:fit", "after:nope"]}],
     "b", "no cell is tagged step:nope"),
    ([{"id": "a", "index": 0, "tags": ["step:x", "after:y"]}, {"id": "b", "index": 4, "tags": ["step:y", "after:x"]}],
     "b", "cycle"),
    ([{"id": "a", "index": 0, "tags": ["step:bad name"]}], "a", "a step name is letters"),
    ([{"id": "a", "index": 0, "tags": ["parameters"], "source": "n = 1"},
      {"id": "b", "index": 1, "tags": ["parameters"], "source": "n = 2"}], "b", "defined twice"),
])
async def test_validate_names_the_cell_at_fault(jp_fetch, cells, cell_id, words):
    code, body = await call(jp_fetch, "pipeline/validate", body={"cells": cells})
    assert code == 200 and body["ok"] is False and body["steps"] == []
    (error,) = body["errors"]
    assert error["cell_id"] == cell_id and words in error["message"], error


@pytest.mark.parametrize("body, words", [
    ({}, "`cells` is required"), ({"cells": "x"}, "`cells` must be a list"),
    ({"cells": [{"id": "a", "tags": []}]}, "cells[0] must be"),
    ({"cells": [{"id": "a", "index": 0, "tags": "step:x"}]}, "cells[0] must be"),
    ({"cells": [{"id": "a", "index": 0}, {"id": "b", "index": 0}]}, "same `index`"),
])
async def test_bad_validate_bodies_are_400(jp_fetch, body, words):
    code, reply = await call(jp_fetch, "pipeline/validate", body=body)
    assert code == 400 and words in reply["message"], reply


async def test_export_status_run_and_one_run_per_folder(jp_fetch, proj):
    code, body = await call(jp_fetch, "pipeline", path="analysis/pipe.ipynb")
    assert code == 200 and body == {"folder": "analysis/pipe-pipeline", "exported": False, "outdated": False,
                                    "steps": [], "models": [], "run": None}
    code, body = await call(jp_fetch, "pipeline/run", body={"path": "analysis/pipe.ipynb"})
    assert code == 404 and "not an exported pipeline" in body["message"] and body["error"] == "not_found"

    code, body = await call(jp_fetch, "pipeline/export", body={"path": "analysis/pipe.ipynb"})
    assert code == 200 and body == {"folder": "analysis/pipe-pipeline", "steps": ["prep", "train"], "models": [],
                                   "warnings": []}
    code, body = await call(jp_fetch, "pipeline", path="analysis/pipe.ipynb")
    assert body["exported"] and not body["outdated"]
    assert [(s["name"], s["state"]) for s in body["steps"]] == [("prep", "never"), ("train", "never")]
    assert 'data-step="prep" data-state="never run"' in body["picture"] and body["steps"][0]["notebook"] is None

    code, body = await call(jp_fetch, "pipeline/run", body={"path": "analysis/pipe.ipynb", "params": {"n": 5}})
    assert code == 202 and body["folder"] == "analysis/pipe-pipeline" and body["started"] > 0
    code, again = await call(jp_fetch, "pipeline/run", body={"path": "analysis/pipe.ipynb"})
    assert code == 409 and "already" in again["message"]

    async def state():
        return (await call(jp_fetch, "pipeline", path="analysis/pipe.ipynb"))[1]

    final = None
    for _ in range(1800):  # the run's kernels take seconds each on this machine
        final = await state()
        if not final["run"]["running"]:
            break
        await asyncio.sleep(0.1)
    run = final["run"]
    assert run["ok"] is True and run["ended"] >= run["started"], run["log"]
    assert any("prep" in line for line in run["log"]) and run["summary"]
    assert [(s["name"], s["state"]) for s in final["steps"]] == [("prep", "stale"), ("train", "stale")]  # n=5 ran
    # the picture as the run left it, and each step's executed notebook for the sidebar to open
    assert 'data-step="train" data-state="fresh"' in final["picture"]
    for step in final["steps"]:
        assert step["notebook"].startswith("analysis/pipe-pipeline/runs/") and step["notebook"].endswith(
            f"/{step['name']}.ipynb") and (proj["root"] / step["notebook"]).is_file()
    metrics = json.loads((proj["root"] / "analysis" / "pipe-pipeline" / "metrics" / "train.json").read_text())
    assert metrics["total"] == 10

    nb_path = proj["root"] / "analysis" / "pipe.ipynb"
    nb = json.loads(nb_path.read_text())
    nb["cells"][2]["source"] = "total = sum(xs) + 1"
    nb_path.write_text(json.dumps(nb))
    assert (await state())["outdated"] is True
    assert all(step["node"] is None and step["resources"] == {} for step in final["steps"])  # this machine

    # a cluster address the run cannot reach: the job says so, and nothing ran
    code, body = await call(jp_fetch, "pipeline/run", body={"path": "analysis/pipe.ipynb",
                                                             "address": "127.0.0.1:1"})
    assert code == 202, body
    for _ in range(600):
        final = await state()
        if not final["run"]["running"]:
            break
        await asyncio.sleep(0.1)
    assert final["run"]["ok"] is False and "127.0.0.1:1" in "\n".join(final["run"]["log"]), final["run"]


async def test_export_into_a_chosen_folder_lists_the_tagged_models(jp_fetch, proj):
    args = {"path": "analysis/modelled.ipynb", "out": "pipes/modelled"}
    code, body = await call(jp_fetch, "pipeline/export", body=args)
    assert code == 200 and body == {"folder": "pipes/modelled", "steps": ["fit"],
                                    "models": [{"name": "clf", "step": "fit"}], "warnings": []}
    code, body = await call(jp_fetch, "pipeline", path=args["path"], out=args["out"])
    assert body["exported"] and body["models"] == [{"name": "clf", "step": "fit"}] and body["run"] is None


@pytest.mark.parametrize("body, status, words", [
    ({"path": "analysis/pipe.ipynb", "params": {"bad key": 1}}, 400, "`params` maps parameter names"),
    ({"path": "analysis/pipe.ipynb", "params": {"n": [1]}}, 400, "`params` maps parameter names"),
    ({"path": "analysis/pipe.ipynb", "params": [1]}, 400, "`params` must be a dict"),
    ({"path": "analysis/pipe.ipynb", "address": 6379}, 400, "`address` must be a string"),
    ({"path": "analysis/pipe.ipynb", "out": "analysis/nowhere"}, 404, "not an exported pipeline"),
])
async def test_bad_pipeline_run_requests(jp_fetch, body, status, words):
    code, reply = await call(jp_fetch, "pipeline/run", body=body)
    assert code == status and words in reply["message"], reply


async def test_export_tag_errors_are_400_naming_the_cell(jp_fetch, proj):
    notebook(proj["root"] / "analysis" / "broken.ipynb", [("x = 1", ["step:a", "after:ghost"])])
    code, body = await call(jp_fetch, "pipeline/export", body={"path": "analysis/broken.ipynb"})
    assert code == 400 and "cell 0" in body["message"] and "step:ghost" in body["message"]
    code, body = await call(jp_fetch, "pipeline/export", body={"path": "analysis/missing.ipynb"})
    assert code == 404 and "does not exist" in body["message"]


# ---- serving -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(proj):
    """The run test_serving logs (models "model", "nosig", "fragile"), logged into this project's store."""
    from test_serving import LOG_MODELS, SAMPLES

    env = {k: v for k, v in os.environ.items() if k not in CLEAN_VARS}
    out = subprocess.run([PY, "-c", LOG_MODELS, json.dumps(SAMPLES)], cwd=proj["root"], capture_output=True,
                         text=True, env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])["run_id"]


async def test_generate_from_a_model_uri_and_refusals_with_the_fix(jp_fetch, proj, models):
    base = {"path": "analysis/train.ipynb"}
    code, body = await call(jp_fetch, "serving/generate", body={**base, "run_id": models, "out": "served-a"})
    assert code == 400 and "logged 3 models" in body["message"] and f"runs:/{models}/fragile" in body["message"]
    code, body = await call(jp_fetch, "serving/generate", body={**base, "model_uri": f"runs:/{models}/nosig",
                                                                "out": "served-b"})
    assert code == 400 and "signature" in body["message"] and "input_example" in body["message"]
    code, body = await call(jp_fetch, "serving/generate", body={**base, "run_id": proj["ids"][0], "out": "served-c"})
    assert code == 404 and "logged no model" in body["message"]
    code, body = await call(jp_fetch, "serving/generate", body={**base, "model_uri": f"runs:/{models}/model",
                                                                "out": "served", "name": "iris"})
    assert code == 200 and body == {"folder": "served", "model_uri": f"runs:/{models}/model", "name": "iris-serving"}
    assert (proj["root"] / "served" / "Dockerfile").is_file()
    code, body = await call(jp_fetch, "serving/generate", body={**base, "model_uri": f"runs:/{models}/model",
                                                                "out": "served"})
    assert code == 409 and "not an empty folder" in body["message"] and body["error"] == "conflict"


@pytest.fixture(scope="module")
def package(proj, models):
    """A serving package of the logged model, at pkg/ in the project."""
    from mlops_jupyter import config
    from mlops_jupyter.serving import generate_package

    return generate_package(f"runs:/{models}/model", proj["root"] / "pkg", settings=config.resolve(proj["root"]))


async def test_a_package_shows_its_state_and_a_build_that_fails_its_tests_says_so(jp_fetch, proj, models):
    base = {"path": "analysis/train.ipynb"}
    code, body = await call(jp_fetch, "serving", out="analysis", **base)
    assert code == 200 and (body["package"], body["image"], body["build"]) == (False, None, None), body
    code, body = await call(jp_fetch, "serving/generate", body={**base, "model_uri": f"runs:/{models}/model",
                                                                "out": "built"})
    assert code == 200, body
    code, body = await call(jp_fetch, "serving", out="built", **base)
    assert code == 200 and body["package"] and body["name"] == "model-serving" and body["image"] is None, body
    # a package whose own tests fail gets no image, and the sidebar is told why
    tests = next((proj["root"] / "built").rglob("test_app.py")).parent
    (tests / "test_broken.py").write_text("def test_broken():\n    assert False\n")
    code, body = await call(jp_fetch, "serving/build", body={**base, "out": "built"})
    assert code == 202 and body["folder"] == "built", body
    code, body = await call(jp_fetch, "serving/build", body={**base, "out": "built"})
    assert code == 409 and "already going on built" in body["message"], body

    async def ended():
        return (await call(jp_fetch, "serving", out="built", **base))[1]

    for _ in range(600):
        state = await ended()
        if not state["build"]["running"]:
            break
        await asyncio.sleep(0.5)
    build = state["build"]
    assert build["ok"] is False and "tests failed (1 failed" in build["summary"] and "no image was built" in \
        build["summary"], build
    assert state["image"] is None and not (proj["root"] / "built" / "build.json").exists()


@pytest.mark.parametrize("body, code, words", [
    ({"path": "analysis/train.ipynb"}, 400, "`out` is required"),
    ({"path": "analysis/train.ipynb", "out": "analysis"}, 404, "not a generated serving package"),
    ({"path": "analysis/train.ipynb", "out": "pkg", "tag": "Two Words"}, 400, "not an image reference"),
    ({"path": "analysis/train.ipynb", "out": "pkg", "base": "a b"}, 400, "not an image reference"),
    ({"path": "analysis/train.ipynb", "out": "pkg", "tag": 3}, 400, "`tag` must be a string"),
    ({"path": "analysis/train.ipynb", "out": "../elsewhere"}, 403, "outside the server root"),
])
async def test_bad_build_requests_are_refused_before_anything_runs(jp_fetch, package, body, code, words):
    got, reply = await call(jp_fetch, "serving/build", body=body)
    assert got == code and words in reply["message"], reply


@pytest.mark.parametrize("body, words", [
    ({"path": "analysis/train.ipynb", "out": "s"}, "give `run_id`"),
    ({"path": "analysis/train.ipynb", "run_id": "x"}, "`out` is required"),
    ({"path": "analysis/train.ipynb", "model_uri": "/tmp/model", "out": "s"}, "not a runs:/ or models:/ URI"),
    ({"path": "analysis/train.ipynb", "run_id": 7, "out": "s"}, "`run_id` must be a string"),
])
async def test_bad_generate_requests_are_400(jp_fetch, body, words):
    code, reply = await call(jp_fetch, "serving/generate", body=body)
    assert code == 400 and words in reply["message"], reply


def test_no_route_module_imports_an_engine():
    code = ("import sys, mlops_jupyter.server.handlers, mlops_jupyter.server.runs, mlops_jupyter.sweep.live; "
            "bad = [m for m in ('mlflow', 'dvc', 'ray', 'papermill') if m in sys.modules]; assert not bad, bad")
    subprocess.run([PY, "-c", code], check=True)


def test_route_names_are_the_contract():
    assert [e for e, _ in ROUTES] == ["status", "runs", "compare", "snapshots", "restore", "sweeps", "pipeline",
                                      "pipeline/validate", "pipeline/export", "pipeline/run", "pipeline/retrain", "pipeline/report",
                                      "serving", "serving/generate",
                                      "serving/build", "models", "models/promote", "models/rollback", "monitor"]
    assert all(re.fullmatch(r"[a-z/]+", e) for e, _ in ROUTES)
