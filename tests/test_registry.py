"""Models across environments on real engines: dev is the project's SQLite store, staging and prod are real
``mlflow server`` processes on loopback (stopped by their PIDs). Models come from tracked cells run headless
with papermill; every registry move goes through the CLI, as a terminal or CI would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest
from harness import (CLEAN_VARS, SERVERS, finished_runs, free_port, git, make_git_project, mlflow_server, notebook,
                     password_of, wait_for)

PY = sys.executable
DATA = ("from sklearn.datasets import load_iris\n"
        "X, y = load_iris(return_X_y=True, as_frame=True)\nX_train, y_train = X.iloc[::2], y.iloc[::2]")
FOREST = ("from sklearn.ensemble import RandomForestClassifier\n"
          "forest = RandomForestClassifier(n_estimators=20, random_state=0).fit({X}, y_train)")
STUMP = "from sklearn.tree import DecisionTreeClassifier\nforest = DecisionTreeClassifier(max_depth=1).fit(X_train, y_train)"
# a model whose class lives in a module beside the notebook: it scores here, but its serving package cannot load it
HELPERS = ("from sklearn.base import BaseEstimator, ClassifierMixin\n"
           "from sklearn.ensemble import RandomForestClassifier\n\n\n"
           "class Wrapped(ClassifierMixin, BaseEstimator):\n"
           "    def fit(self, X, y):\n"
           "        self.forest_ = RandomForestClassifier(n_estimators=20, random_state=0).fit(X, y)\n"
           "        self.classes_ = self.forest_.classes_\n"
           "        return self\n\n"
           "    def predict(self, X):\n"
           "        return self.forest_.predict(X)\n")
EVAL = ("from sklearn.datasets import load_iris\nX, y = load_iris(return_X_y=True, as_frame=True)\n"
        "X.assign(target=y).iloc[1::2].to_csv('eval.csv', index=False)")


def env(user: str = "alice") -> dict:
    return {**{k: v for k, v in os.environ.items() if k not in CLEAN_VARS}, "MLFLOW_TRACKING_USERNAME": user,
            "MLFLOW_TRACKING_PASSWORD": password_of(user)}  # MLflow's own variables: the basic-auth server reads them


def papermill(project, nb):
    out = subprocess.run([PY, "-m", "papermill", "--log-level", "ERROR", str(nb), str(project / f"out-{nb.name}")],
                         cwd=project, capture_output=True, text=True, timeout=900, env=env())
    assert out.returncode == 0, out.stderr[-3000:]


def mlops(project, *args, ok: bool = True, user: str = "alice") -> subprocess.CompletedProcess:
    out = subprocess.run([PY, "-m", "mlops_jupyter.cli", *args], cwd=project, capture_output=True, text=True,
                         timeout=600, env=env(user))
    assert (out.returncode == 0) == ok, out.stdout + out.stderr
    return out


def one_paragraph(text: str) -> str:
    """The error line a door printed last (a refused promotion prints its gate table above it)."""
    line = text.strip().splitlines()[-1]
    assert "Traceback" not in text and len(line) > 40, text
    return line


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A project with four runs that each logged ``forest`` (a good one, a worse one, one with other inputs, one
    from a dirty tree), evaluation data, staging + prod servers, and `secure`: a basic-auth server where alice and
    bob have MLflow's default permission (READ) on what they did not create."""
    base = tmp_path_factory.mktemp("registry")
    with mlflow_server(base / "staging") as staging, mlflow_server(base / "prod") as prod, \
            mlflow_server(base / "secure", users=["alice", "bob"]) as secure:
        root = make_git_project(base / "proj")
        (root / "pyproject.toml").write_text(
            '[project]\nname = "demo"\nversion = "0"\n\n'
            f'[tool.mlops.environments.staging]\ntracking-uri = "{staging}"\n\n'
            f'[tool.mlops.environments.prod]\ntracking-uri = "{prod}"\npromoters = ["alice"]\n\n'
            f'[tool.mlops.environments.secure]\ntracking-uri = "{secure}"\n\n'
            f'[tool.mlops.environments.down]\ntracking-uri = "http://127.0.0.1:{free_port()}"\n\n'
            '[tool.mlops.promotion]\nmetric = "accuracy"\nmode = "max"\nevaluation-data = "eval.csv"\n')
        (root / "notes.txt").write_text("clean\n")
        (root / "helpers.py").write_text(HELPERS)
        subprocess.run([PY, "-c", EVAL], cwd=root, check=True)
        git(root, "add", "pyproject.toml", "notes.txt", "eval.csv", "helpers.py")
        git(root, "commit", "-q", "-m", "config")
        cells = ["%load_ext mlops_jupyter", DATA,
                 f"%%mlops run --name good --model forest\n{FOREST.format(X='X_train')}",
                 f"%%mlops run --name worse --model forest\n{STUMP}",
                 f"%%mlops run --name narrow --model forest\n{FOREST.format(X='X_train.iloc[:, :2]')}",
                 "%%mlops run --name custom --model forest\nfrom helpers import Wrapped\n"
                 "forest = Wrapped().fit(X_train, y_train)"]
        papermill(root, notebook(root / "m.ipynb", cells))
        finished_runs(root, 4, timeout=120)
        (root / "notes.txt").write_text("changed, not committed\n")
        papermill(root, notebook(root / "d.ipynb", [*cells[:2], f"%%mlops run --name dirty --model forest\n"
                                                                 f"{FOREST.format(X='X_train')}"]))
        finished_runs(root, 5, timeout=120)
        for run in ("good", "worse", "narrow", "dirty", "custom"):
            mlops(root, "register", run, "--model", "iris")
        yield {"root": root, "staging": staging, "prod": prod, "secure": secure}


def test_register_marks_lineage_and_lists_versions(world):
    out = mlops(world["root"], "models")
    assert "dev" in out.stdout and "iris" in out.stdout and "1, 2, 3, 4" in out.stdout, out.stdout
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri="sqlite:///" + str(world["root"] / ".mlops" / "mlflow.db"))
    good, dirty = client.get_model_version("iris", "1"), client.get_model_version("iris", "4")
    assert good.tags["mlops.lineage"] == "complete" and good.tags["mlops.git.commit"]
    assert isinstance(json.loads(good.tags["mlops.metrics"]), dict) and json.loads(good.tags["mlops.data"]) == {}
    assert '"inputs"' in good.tags["mlops.signature"] and good.run_id == good.tags["mlops.run"]
    assert dirty.tags["mlops.lineage"].startswith("incomplete") and "uncommitted" in dirty.tags["mlops.lineage"]
    assert any(k.startswith("mlops.audit.") for k in good.tags)


def test_dev_to_staging_to_prod_then_gates_force_history_and_rollback(world):
    root = world["root"]
    out = mlops(root, "promote", "iris/1", "--to", "staging")
    assert "signature" in out.stdout and "metric" in out.stdout and "lineage" in out.stdout, out.stdout
    assert "passes its own tests" in out.stdout, out.stdout
    assert "@staging in staging is version 1" in out.stdout, out.stdout
    out = mlops(root, "promote", "iris@staging", "--to", "prod")
    assert "@prod in prod is version 1" in out.stdout, out.stdout
    time.sleep(1.1)
    between = datetime.now(timezone.utc)
    time.sleep(1.1)

    # each gate refuses with its own message, and nothing moves
    worse = mlops(root, "promote", "iris/2", "--to", "staging", ok=False).stderr
    assert "metric: accuracy on eval.csv" in one_paragraph(worse) and "worse than allowed" in worse, worse
    narrow = mlops(root, "promote", "iris/3", "--to", "staging", ok=False).stderr
    assert "signature: its inputs differ" in one_paragraph(narrow), narrow
    dirty = mlops(root, "promote", "iris/4", "--to", "staging", ok=False).stderr
    assert "lineage: lineage is incomplete: uncommitted changes" in one_paragraph(dirty), dirty
    assert "--force GATE --reason TEXT" in one_paragraph(dirty)
    custom = mlops(root, "promote", "iris/5", "--to", "staging", ok=False).stderr
    assert "tests: the serving package generated for it fails its own tests" in one_paragraph(custom), custom
    assert "No module named 'helpers'" in one_paragraph(custom), custom
    assert "@staging -> 1" in mlops(root, "models").stdout  # nothing moved

    # forced, with the reason kept in the audit record
    out = mlops(root, "promote", "iris/2", "--to", "staging", "--force", "metric", "--reason", "hotfix for ticket 7")
    assert "forced: hotfix for ticket 7" in out.stdout, out.stdout
    out = mlops(root, "promote", "iris@staging", "--to", "prod", "--force", "metric", "--reason", "same hotfix")
    assert "@prod in prod is version 2 (was version 1)" in out.stdout, out.stdout

    hist = mlops(root, "models", "history", "iris", "--env", "prod", "--at", between.isoformat()).stdout
    assert "at " in hist and "@prod -> version 1" in hist.splitlines()[-1], hist
    hist = mlops(root, "models", "history", "iris", "--env", "prod").stdout
    assert "@prod -> version 2" in hist.splitlines()[-1] and "same hotfix" in hist, hist

    out = mlops(root, "rollback", "iris", "--env", "prod")
    assert "rolled back iris: @prod in prod is version 1 (was version 2)" in out.stdout, out.stdout
    hist = mlops(root, "models", "history", "iris").stdout
    assert "rollback" in hist and "@prod -> version 1" in hist.splitlines()[-1], hist
    assert "(not answering: down)" in hist.splitlines()[-1], hist
    listing = mlops(root, "models").stdout
    assert "@prod -> 1" in listing and "@staging -> 2" in listing, listing


@pytest.mark.parametrize("args, says", [
    (("promote", "iris/1", "--to", "qa"), "there is no environment 'qa'; the configured ones are dev, down, prod, secure, staging"),
    (("register", "good", "--model", "iris", "--env", "qa"), "there is no environment 'qa'"),
    (("promote", "nosuch/1", "--to", "staging"), "there is no registered model 'nosuch' in dev"),
    (("promote", "iris/99", "--to", "staging"), "iris has no version 99 in dev; its versions there are 1, 2, 3, 4, 5"),
    (("promote", "iris", "--to", "staging"), "'iris' does not name a model version; give NAME/VERSION"),
    (("promote", "iris/1", "--to", "prod", "--force", "speed", "--reason", "x"), "there is no gate 'speed'; "
                                                                                  "the gates are signature, metric"),
    (("promote", "iris/1", "--to", "prod", "--force", "metric"), "--force metric needs --reason TEXT"),
    (("rollback", "nosuch", "--env", "prod"), "there is no registered model 'nosuch'"),
    (("models", "history", "iris", "--at", "yesterday"), "'yesterday' is not a time; give an ISO 8601 time"),
    (("models", "history"), "models history needs the model's NAME"),
])
def test_bad_input_gets_one_paragraph(world, args, says):
    out = mlops(world["root"], *args, ok=False)
    assert says in one_paragraph(out.stderr), out.stderr


def test_a_registry_that_does_not_answer_stops_the_promotion(world):
    """A target whose server is down is never read as "no holder, gates pass": the promotion stops, says so."""
    out = mlops(world["root"], "promote", "iris/1", "--to", "down", ok=False)
    assert "is not answering" in one_paragraph(out.stderr) and "gate" not in out.stderr, out.stderr
    listing = mlops(world["root"], "models").stdout
    assert "down" in listing and "not answering" in listing, listing


def test_only_the_promoters_move_prod(world):
    """prod names its promoters (alice): bob is refused before any gate runs, for a promotion and a rollback."""
    for args in (("promote", "iris@staging", "--to", "prod"), ("rollback", "iris", "--env", "prod")):
        out = mlops(world["root"], *args, ok=False, user="bob")
        assert "bob may not move @prod of iris in prod: only its promoters may (alice); nothing was changed" in \
            one_paragraph(out.stderr), out.stderr
        assert "gate" not in out.stderr


def test_unknown_environment_from_mlops_env(project, monkeypatch):
    from mlops_jupyter import config
    from mlops_jupyter.errors import UnknownEnvironment

    settings = config.resolve()
    assert list(config.environments(settings)) == ["dev"]
    assert config.environment(settings).tracking_uri == settings.tracking_uri
    with pytest.raises(UnknownEnvironment) as err:
        config.environment(settings, env={"MLOPS_ENV": "prod"})
    assert err.value.known == ["dev"] and "the configured ones are dev" in str(err.value)


def test_bad_environment_table_is_named(project):
    from mlops_jupyter import config
    from mlops_jupyter.errors import ConfigError

    (project / "pyproject.toml").write_text('[tool.mlops.environments.prod]\ntracking-uri = "nowhere"\n')
    with pytest.raises(ConfigError, match=r"\[tool.mlops.environments.prod\] .* needs tracking-uri"):
        config.environments(config.resolve())


def test_the_magic_door_says_the_same(ip):
    from IPython.core.error import UsageError

    with pytest.raises(UsageError, match="there is no environment 'qa'.*pick one with --env"):
        ip.run_line_magic("mlops", "promote iris/1 --to qa")
    assert "no rows" in repr(ip.run_line_magic("mlops", "models"))


def test_mlflow_permissions_refuse_a_user_in_one_line_and_leave_nothing_half_done(world):
    """On a basic-auth server MLflow's permissions decide: alice creates iris there (so she manages it); bob, with
    the default READ, is refused, named with the environment, the model and the permission he lacks."""
    from mlflow.tracking import MlflowClient

    mlops(world["root"], "promote", "iris/1", "--to", "secure")
    out = mlops(world["root"], "promote", "iris/1", "--to", "secure", "--force", "metric", "--reason", "b", ok=False,
                user="bob")
    line = one_paragraph(out.stderr)
    assert line.startswith("mlops promote: bob may not go on promoting iris: MLflow's permissions on registered model "
                           "iris in secure") and "it takes EDIT" in line and "Nothing was changed" in line, out.stderr
    os.environ.update(MLFLOW_TRACKING_USERNAME="alice", MLFLOW_TRACKING_PASSWORD=password_of("alice"))
    try:
        client = MlflowClient(world["secure"])
        versions = client.search_model_versions("name = 'iris'")
        assert len(versions) == 1 and client.get_registered_model("iris").aliases == {"secure": "1"}
    finally:
        for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(var, None)
    # a wrong password: one line too, naming the user and where credentials come from
    out = subprocess.run([PY, "-m", "mlops_jupyter.cli", "models", "history", "iris", "--env", "secure"],
                         cwd=world["root"], capture_output=True, text=True, timeout=600,
                         env={**env("bob"), "MLFLOW_TRACKING_PASSWORD": "wrong"})
    assert out.returncode == 2 and "MLFLOW_TRACKING_PASSWORD" in one_paragraph(out.stderr), out.stderr


def test_a_registry_stopped_mid_promotion_is_finished_by_the_next_use(world, tmp_path):
    """The target's server dies while the version is being copied into it: the promotion says where its records
    wait; once the server is back, the next use of mlops-jupyter finishes it: one copy, its audit record, the alias."""
    import signal
    import sqlite3

    from mlflow.tracking import MlflowClient

    root, port, folder = world["root"], free_port(), tmp_path / "flaky"
    with (root / "pyproject.toml").open("a") as toml:
        toml.write(f'\n[tool.mlops.environments.flaky]\ntracking-uri = "http://127.0.0.1:{port}"\n')

    def copying() -> bool:  # the run that will hold the copied files exists: the copy has begun
        try:
            with sqlite3.connect(folder / "server.db") as db:
                return bool(db.execute("SELECT count(*) FROM runs WHERE name LIKE 'iris v%'").fetchone()[0])
        except sqlite3.Error:
            return False

    with mlflow_server(folder, port=port) as uri:
        promote = subprocess.Popen([PY, "-m", "mlops_jupyter.cli", "promote", "iris/1", "--to", "flaky"], cwd=root,
                                   env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(copying, timeout=300, interval=0.01, what="the copy into flaky to begin")
        os.killpg(SERVERS[uri].pid, signal.SIGKILL)
        out, err = promote.communicate(timeout=300)
    assert promote.returncode == 2 and "is not answering" in err and "the records wait in" in err, out + err
    with mlflow_server(folder, port=port) as uri:
        client = MlflowClient(uri)
        held = client.get_registered_model("iris").aliases if client.search_registered_models() else {}
        assert "flaky" not in held  # no alias went anywhere while its copy and record were unfinished
        mlops(root, "models")  # the next use takes up the records the promotion left
        wait_for(lambda: client.get_registered_model("iris").aliases.get("flaky"), timeout=120,
                 what="the journal to finish the promotion")
        (version,) = client.search_model_versions("name = 'iris'")
        assert client.get_registered_model("iris").aliases == {"flaky": version.version}
        audits = [k for k in version.tags if k.startswith("mlops.audit")]
        assert len(audits) == 1, version.tags
