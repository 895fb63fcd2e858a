"""Settings resolution: arguments > environment > [tool.mlops] > defaults; project root discovery."""

import pytest

from mlops_jupyter import config
from mlops_jupyter.errors import ConfigError


def write_pyproject(root, body=""):
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text('[project]\nname = "x"\n' + body)
    return root


def test_defaults_put_the_store_under_dot_mlops(tmp_path):
    root = write_pyproject(tmp_path / "p")
    s = config.resolve(root / "notebooks" / "sub", env={})
    assert s.project_root == root
    assert s.tracking_uri == f"sqlite:///{root}/.mlops/mlflow.db"
    assert s.artifact_location == (root / ".mlops" / "artifacts").as_uri()
    assert s.origin["tracking_uri"] == "default"
    assert s.where_to_look() == (f"mlflow ui --backend-store-uri sqlite:///{root}/.mlops/mlflow.db "
                                 f"--default-artifact-root {(root / '.mlops' / 'artifacts').as_uri()}")


def test_precedence_arguments_then_env_then_pyproject(tmp_path):
    root = write_pyproject(tmp_path / "p", '[tool.mlops]\ntracking-uri = "http://from-pyproject:5000"\n'
                                           'experiment = "from-pyproject"\n')
    assert config.resolve(root, env={}).tracking_uri == "http://from-pyproject:5000"
    assert config.resolve(root, env={}).experiment == "from-pyproject"
    env = {"MLFLOW_TRACKING_URI": "http://mlflow-env:5000", "MLOPS_EXPERIMENT": "from-env"}
    assert config.resolve(root, env=env).tracking_uri == "http://mlflow-env:5000"
    env["MLOPS_TRACKING_URI"] = "http://mlops-env:5000"
    s = config.resolve(root, env=env)
    assert (s.tracking_uri, s.experiment, s.origin["tracking_uri"]) == ("http://mlops-env:5000", "from-env",
                                                                        "MLOPS_TRACKING_URI")
    s = config.resolve(root, {"tracking_uri": "http://arg:5000", "experiment": "arg"}, env=env)
    assert (s.tracking_uri, s.experiment, s.origin["experiment"]) == ("http://arg:5000", "arg", "argument")
    assert s.artifact_location is None  # a server decides where its artifacts go
    assert s.where_to_look() == "http://arg:5000"


def test_a_sqlite_store_given_keeps_its_files_beside_its_database(tmp_path, monkeypatch):
    """Not MLflow's ./mlruns, which is under whatever folder the process runs in."""
    root = write_pyproject(tmp_path / "p", f'[tool.mlops]\ntracking-uri = "sqlite:///{tmp_path}/team/runs.db"\n')
    monkeypatch.chdir(tmp_path)
    s = config.resolve(root, env={})
    assert s.artifact_location == (tmp_path / "team" / "runs-artifacts").as_uri()
    assert s.origin["artifact_location"] == "default (beside the database)"
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{root}/.mlops/mlflow.db"}  # the default store, named
    assert config.resolve(root, env=env).artifact_location == (root / ".mlops" / "artifacts").as_uri()
    env["MLOPS_ARTIFACT_LOCATION"] = "s3://bucket/art"
    assert config.resolve(root, env=env).artifact_location == "s3://bucket/art"
    assert config.sqlite_artifacts("sqlite:///rel/x.db?timeout=5") == (tmp_path / "rel" / "x-artifacts").as_uri()


def test_root_is_the_nearest_git_folder_else_the_start(tmp_path):
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    (tmp_path / "repo" / "a" / "b").mkdir(parents=True)
    assert config.find_project_root(tmp_path / "repo" / "a" / "b") == tmp_path / "repo"
    lone = tmp_path / "lone"
    lone.mkdir()
    assert config.find_project_root(lone) == lone


def test_state_dir_keeps_itself_out_of_git(tmp_path):
    s = config.resolve(write_pyproject(tmp_path / "p"), env={})
    state = config.ensure_state_dir(s.project_root)
    assert (state / ".gitignore").read_text().splitlines()[-1] == "*"


@pytest.mark.parametrize("body, names", [
    ('[tool.mlops]\ntraking-uri = "x"\n', "traking-uri"),
    ('[tool.mlops]\nexperiment = 3\n', "experiment"),
    ('[tool.mlops\n', "not valid TOML"),
])
def test_bad_pyproject_settings_are_named(tmp_path, body, names):
    root = write_pyproject(tmp_path / "p", body)
    with pytest.raises(ConfigError) as err:
        config.resolve(root, env={})
    assert names in str(err.value)


def test_a_bare_folder_is_refused_as_tracking_uri(tmp_path):
    with pytest.raises(ConfigError, match="not a URI"):
        config.resolve(write_pyproject(tmp_path / "p"), env={"MLOPS_TRACKING_URI": "./mlruns"})
