"""The Models routes the sidebar calls: every environment's models and alias holders, who may move which alias,
a model's history, promotion through the gates (each gate's result back, a refusal as 409 with the gates) and
rollback; real registries (the dev store and a staging store of its own), real tracked runs."""

from __future__ import annotations


import pytest
from harness import CLEAN_VARS, call
from mlflow_seed import seed_models

NB = "models.ipynb"


@pytest.fixture(scope="module")
def registry_project(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        for var in CLEAN_VARS:
            mp.delenv(var, raising=False)
        mp.setenv("MLFLOW_TRACKING_USERNAME", "alice")
        yield seed_models(tmp_path_factory.mktemp("models") / "proj")


@pytest.fixture
def jp_root_dir(registry_project):
    return registry_project


@pytest.fixture
def jp_server_config():
    return {"ServerApp": {"jpserver_extensions": {"mlops_jupyter": True}}}


@pytest.fixture(autouse=True)
def as_alice(monkeypatch):
    for var in CLEAN_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")




async def test_promote_shows_gates_then_rollback_and_history(jp_fetch, registry_project):
    code, listed = await call(jp_fetch, "models", path=NB)
    assert code == 200, listed
    assert {e["name"]: e["may_move"] for e in listed["environments"]} == {"dev": True, "staging": True, "prod": False}
    dev = next(m for m in listed["models"] if m["env"] == "dev")
    assert dev["name"] == "iris" and dev["versions"] == ["1", "2"] and dev["aliases"] == {}

    code, moved = await call(jp_fetch, "models/promote", {"path": NB, "ref": "iris/1", "to": "staging"})
    assert code == 200 and "@staging in staging is version 1" in moved["summary"], moved
    assert {g["gate"]: g["status"] for g in moved["gates"]} == {"signature": "passed", "metric": "skipped",
                                                                "tests": "passed", "lineage": "passed"}
    # the staging store (SQLite) keeps the model's files beside its database, not in ./mlruns of the server's folder
    assert list((registry_project / "staging-artifacts").rglob("MLmodel")), list(registry_project.iterdir())
    code, moved = await call(jp_fetch, "models/promote", {"path": NB, "ref": "iris/2", "to": "staging"})
    assert code == 200 and "was version 1" in moved["summary"], moved
    code, again = await call(jp_fetch, "models/promote", {"path": NB, "ref": "iris@staging", "to": "staging"})
    assert code == 400 and "already holds @staging" in again["message"], again

    code, refused = await call(jp_fetch, "models/promote", {"path": NB, "ref": "iris/2", "to": "prod"})
    assert code == 403 and refused["error"] == "access_denied" and "alice may not move @prod" in refused["message"]

    code, back = await call(jp_fetch, "models/rollback", {"path": NB, "name": "iris", "env": "staging"})
    assert code == 200 and "@staging in staging is version 1" in back["summary"], back
    code, listed = await call(jp_fetch, "models", path=NB, name="iris")
    staging = next(m for m in listed["models"] if m["env"] == "staging")
    assert staging["aliases"] == {"staging": "1"}
    actions = [(r["action"], r["env"], r["version"]) for r in listed["history"]["records"]]
    assert actions[-3:] == [("promote", "staging", "1"), ("promote", "staging", "2"), ("rollback", "staging", "1")]
    assert listed["history"]["holders"] == {"staging": "1"}


@pytest.mark.parametrize("endpoint, body, status, words", [
    ("models/promote", {"path": NB, "to": "staging"}, 400, "`ref` is required"),
    ("models/promote", {"path": NB, "ref": "iris/2"}, 400, "`to` is required"),
    ("models/promote", {"path": NB, "ref": "iris", "to": "staging"}, 400, "does not name a model version"),
    ("models/promote", {"path": NB, "ref": "iris/9", "to": "staging"}, 404, "iris has no version 9 in dev"),
    ("models/promote", {"path": NB, "ref": "iris/1", "to": "qa"}, 400, "there is no environment 'qa'"),
    ("models/promote", {"path": NB, "ref": 3, "to": "staging"}, 400, "`ref` must be a string"),
    ("models/rollback", {"path": NB, "name": "iris"}, 400, "`env` is required"),
    ("models/rollback", {"path": NB, "name": "nosuch", "env": "staging"}, 404, "no registered model 'nosuch'"),
])
async def test_bad_model_requests(jp_fetch, endpoint, body, status, words):
    code, reply = await call(jp_fetch, endpoint, body)
    assert code == status and words in reply["message"], reply


async def test_bad_model_name_and_unknown_model_history(jp_fetch):
    code, reply = await call(jp_fetch, "models", path=NB, name="no/such")
    assert code == 400 and "`name` must be a registered model's name" in reply["message"]
    code, reply = await call(jp_fetch, "models", path=NB, name="nosuch")
    assert code == 404 and "no registered model 'nosuch'" in reply["message"], reply


def test_a_package_generated_from_prod_says_which_version_environment_and_run(registry_project, tmp_path):
    import os
    import subprocess
    import sys

    import httpx
    from harness import stop_group
    from test_serving import free_port, start_server

    def mlops(*args, user="alice"):
        return subprocess.run([sys.executable, "-m", "mlops_jupyter.cli", *args], cwd=registry_project, text=True,
                              capture_output=True, timeout=600,
                              env={**os.environ, "MLFLOW_TRACKING_USERNAME": user})

    promoted = mlops("promote", "iris/2", "--to", "prod", user="nobody")  # prod's one promoter
    assert promoted.returncode == 0, promoted.stderr
    made = mlops("serve", "generate", "models:/iris@prod", "--env", "prod", "--out", str(tmp_path / "pkg"))
    assert made.returncode == 0, made.stderr
    wrong = mlops("serve", "generate", "models:/iris@prod", "--out", str(tmp_path / "nope"))  # dev has no @prod
    assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr
    port = free_port()
    proc = start_server([sys.executable, "-m", "mlops_jupyter.cli", "serve", "run", str(tmp_path / "pkg"), "--port",
                         str(port)], port, tmp_path / "pkg.log")
    try:
        said = httpx.get(f"http://127.0.0.1:{port}/version", timeout=10).json()
    finally:
        stop_group(proc)
    from mlflow import MlflowClient

    trained = MlflowClient(f"sqlite:///{registry_project / '.mlops' / 'mlflow.db'}").get_model_version("iris", "2")
    assert said["registered"] == {"model": "iris", "version": "1", "alias": "prod", "environment": "prod",
                                  "run_id": trained.run_id}, said
    assert said["version"] == "1" and said["model_uri"] == "models:/iris@prod"
