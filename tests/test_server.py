"""The jupyter_server extension's REST routes, against a real SQLite MLflow store."""

import inspect
import json
import subprocess
import sys

import pytest
import tornado.web
from tornado.httpclient import HTTPClientError

from mlflow_seed import STORE_VARS, make_project, seed_runs, write_notebook


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """One seeded store for the module: creating MLflow's tables costs seconds."""
    root = make_project(tmp_path_factory.mktemp("project"))
    nb = write_notebook(root / "analysis" / "train.ipynb")
    ids = seed_runs(root, nb, [
        {"name": "first", "start": 1_700_000_000_000, "params": {"lr": "0.1"}, "metrics": {"acc": 0.81}},
        {"name": "second", "start": 1_700_000_060_000, "params": {"lr": "0.01"}, "metrics": {"acc": 0.93}},
    ])
    seed_runs(root, write_notebook(root / "other.ipynb"), [{"name": "elsewhere", "start": 1_700_000_120_000}])
    write_notebook(root / "empty.ipynb")
    return {"root": root, "nb": nb, "ids": ids}


@pytest.fixture
def jp_root_dir(seeded):
    return seeded["root"]


@pytest.fixture
def jp_server_config():
    return {"ServerApp": {"jpserver_extensions": {"mlops_jupyter": True}}}


@pytest.fixture(autouse=True)
def default_store(monkeypatch):
    # the store must come from the project root, not from whatever the developer's shell exports
    for var in STORE_VARS:
        monkeypatch.delenv(var, raising=False)


async def get_json(jp_fetch, **params):
    try:
        resp = await jp_fetch("mlops", "runs", params=params)
    except HTTPClientError as err:
        return err.code, json.loads(err.response.body)
    return resp.code, json.loads(resp.body)


async def test_runs_newest_first_with_params_and_metrics(jp_fetch, seeded):
    code, body = await get_json(jp_fetch, path="analysis/train.ipynb")
    assert code == 200
    assert body["notebook"] == str(seeded["nb"])
    assert body["tracking_uri"] == f"sqlite:///{seeded['root'] / '.mlops' / 'mlflow.db'}"
    assert body["ui"].startswith("mlflow ui --backend-store-uri sqlite:///")
    runs = body["runs"]
    assert [r["run_name"] for r in runs] == ["second", "first"]
    assert [r["run_id"] for r in runs] == seeded["ids"][::-1]
    assert runs[0]["params"] == {"lr": "0.01"} and runs[0]["metrics"] == {"acc": 0.93}
    assert runs[0]["status"] == "FINISHED" and runs[0]["execution_count"] == 2
    assert runs[0]["cell_id"] == "cell-2" and runs[0]["notebook"] == str(seeded["nb"])


async def test_last_limits(jp_fetch):
    code, body = await get_json(jp_fetch, path="analysis/train.ipynb", last="1")
    assert code == 200 and [r["run_name"] for r in body["runs"]] == ["second"]


async def test_notebook_without_runs_is_empty(jp_fetch):
    code, body = await get_json(jp_fetch, path="empty.ipynb")
    assert code == 200 and body["runs"] == []


@pytest.mark.parametrize("path", ["../x.ipynb", "analysis/../../x.ipynb", "/etc/passwd", "/tmp/x.ipynb"])
async def test_paths_outside_root_are_refused(jp_fetch, path):
    code, body = await get_json(jp_fetch, path=path)
    assert code == 403 and body["code"] == 403 and "outside the server root" in body["message"]


@pytest.mark.parametrize("params", [{}, {"path": ""}, {"path": "empty.ipynb", "last": "0"},
                                    {"path": "empty.ipynb", "last": "ten"}])
async def test_bad_parameters_are_400(jp_fetch, params):
    code, body = await get_json(jp_fetch, **params)
    assert code == 400 and body["code"] == 400 and body["message"]


async def test_bad_project_config_is_400(jp_fetch, seeded):
    sub = make_project(seeded["root"] / "badcfg")
    (sub / "pyproject.toml").write_text("[tool.mlops]\ncolour = 'blue'\n")
    code, body = await get_json(jp_fetch, path="badcfg/nb.ipynb")
    assert code == 400 and "unknown key 'colour'" in body["message"]


async def test_unexpected_failure_is_500_json(jp_fetch, monkeypatch):
    from mlops_jupyter.tracking import query

    def boom(*args, **kwargs):
        raise RuntimeError("store on fire")

    monkeypatch.setattr(query, "list_runs", boom)
    code, body = await get_json(jp_fetch, path="empty.ipynb")
    assert code == 500 and body == {"code": 500, "message": "RuntimeError: store on fire"}


async def test_unauthenticated_request_is_refused(http_server_client, jp_base_url):
    resp = await http_server_client.fetch(f"{jp_base_url}mlops/runs?path=empty.ipynb",
                                          raise_error=False, follow_redirects=False)
    assert resp.code in (401, 403), resp.code
    assert json.loads(resp.body)["code"] == resp.code


def test_every_handler_method_is_authenticated():
    from mlops_jupyter.server.handlers import ROUTES

    # every function tornado.web.authenticated returns shares one code object
    wrapped_code = tornado.web.authenticated(lambda self: None).__code__
    checked = 0
    for endpoint, handler in ROUTES:
        for cls in inspect.getmro(handler):
            if not cls.__module__.startswith("mlops_jupyter"):
                continue
            for name in ("get", "post", "put", "delete", "patch", "head"):
                if name in vars(cls):
                    checked += 1
                    assert vars(cls)[name].__code__ is wrapped_code, \
                        f"{cls.__name__}.{name} (route {endpoint!r}) lacks @tornado.web.authenticated"
    assert checked, "no handler methods found"


def test_server_extension_imports_no_mlflow():
    code = "import sys, mlops_jupyter.server; assert 'mlflow' not in sys.modules, 'mlflow imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
