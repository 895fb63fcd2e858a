"""A model from a tracked cell (``%%mlops run --model NAME``, ``mlops_jupyter.log_model``) is logged in the
cell's run through the journal, and ``mlops serve generate runs:/RUN/NAME`` serves it; a headless run's saved
notebook names its runs."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import nbformat
import pytest
from harness import finished_runs, notebook, stop_group, store_uri
from test_serving import free_port, start_server

PY = sys.executable
DATA = ("from sklearn.datasets import load_iris\n"
        "X, y = load_iris(return_X_y=True, as_frame=True)\nX_train, y_train = X.iloc[::2], y.iloc[::2]")
MODELS = {
    "forest": ("from sklearn.ensemble import RandomForestClassifier\n"
               "forest = RandomForestClassifier(n_estimators=20, random_state=0).fit(X_train, y_train)"),
    "pipe": ("from sklearn.pipeline import make_pipeline\nfrom sklearn.preprocessing import StandardScaler\n"
             "from sklearn.linear_model import LogisticRegression\n"
             "pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))\npipe.fit(X_train, y_train)"),
}
try:  # an XGBoost model too, where it is installed
    import xgboost  # noqa: F401

    MODELS["booster"] = "from xgboost import XGBClassifier\nbooster = XGBClassifier(n_estimators=5).fit(X_train, y_train)"
except ImportError:
    pass


def papermill(project, nb):
    out = subprocess.run([PY, "-m", "papermill", "--log-level", "ERROR", str(nb), str(project / f"out-{nb.name}")],
                         cwd=project, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return nbformat.read(project / f"out-{nb.name}", as_version=4)


def saved_lines(executed) -> list[str]:
    return ["".join(o.get("data", {}).get("text/plain", "")) for c in executed.cells for o in c.get("outputs", [])
            if "".join(o.get("data", {}).get("text/plain", "")).startswith("mlops: run")]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_model_from_a_cell_is_logged_and_served(project, name):
    cells = ["%load_ext mlops_jupyter", DATA, f"%%mlops run --name train --model {name}\n{MODELS[name]}"]
    executed = papermill(project, notebook(project / "m.ipynb", cells))
    (run,) = finished_runs(project, 1)
    (line,) = saved_lines(executed)
    assert run.info.run_id[:8] in line and "pending" not in line and "artifacts" in line, line  # headless truth
    out = subprocess.run([PY, "-m", "mlops_jupyter.cli", "serve", "generate", f"runs:/{run.info.run_id}/{name}",
                          "--out", "pkg"], cwd=project, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    spec = json.loads(next((project / "pkg").glob("*_serving/serving.json")).read_text())
    assert spec["run_id"] == run.info.run_id
    example = json.loads(next((project / "pkg").glob("*_serving/mlflow_model/input_example.json")).read_text())
    assert len(example["data"]) == 5  # the first rows of X_train
    port = free_port()
    proc = start_server([PY, "-m", "mlops_jupyter.cli", "serve", "run", "pkg", "--port", str(port)], port,
                        project / "serve.log")
    try:
        rows = [dict(zip(example["columns"], r)) for r in example["data"]]
        reply = httpx.post(f"http://127.0.0.1:{port}/predict", json={"rows": rows}, timeout=30)
        assert reply.status_code == 200, reply.text
        check = (f"{DATA}\n{MODELS[name]}\nimport json, pandas as pd\n"
                 f"print(json.dumps({name}.predict(pd.DataFrame({example['data']!r}, "
                 f"columns={example['columns']!r})).tolist()))")
        expected = json.loads(subprocess.run([PY, "-c", check], capture_output=True, text=True, check=True).stdout)
        assert reply.json()["predictions"] == expected
    finally:
        stop_group(proc)


def test_log_model_from_any_code_and_its_bad_inputs(project):
    cells = ["%load_ext mlops_jupyter", DATA,
             # any code: a helper function fits and logs
             ("%%mlops run --name helper\nfrom sklearn.tree import DecisionTreeClassifier\nimport mlops_jupyter\n"
              "def fit_and_log(X, y):\n    m = DecisionTreeClassifier(max_depth=2).fit(X, y)\n"
              "    mlops_jupyter.log_model(m, X, name='tree')\n    return m\ntree = fit_and_log(X_train, y_train)"),
             # not defined / not fit here / not a model sklearn knows
             "%%mlops run --name undefined --model nope\nx = 1",
             "%%mlops run --name elsewhere --model tree\nscore = tree.score(X, y)",
             ("%%mlops run --name odd\nimport mlops_jupyter\nclass Odd:\n    def predict(self, X):\n"
              "        return [0] * len(X)\nmlops_jupyter.log_model(Odd(), X_train, name='odd')"),
             # outside a tracked cell
             ("import mlops_jupyter\ntry:\n    mlops_jupyter.log_model(tree, X_train)\nexcept Exception as exc:\n"
              "    print('refused:', exc)")]
    executed = papermill(project, notebook(project / "b.ipynb", cells))
    runs = {r.info.run_name: r for r in finished_runs(project, 4)}
    assert {"helper", "undefined", "elsewhere", "odd"} <= set(runs)
    assert all(r.info.status == "FINISHED" for r in runs.values())
    from mlops_jupyter.tracking.store import client

    def logged(run):
        return [m.name for m in client(store_uri(project)).search_logged_models(
            experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")]

    assert logged(runs["helper"]) == ["tree"] and logged(runs["odd"]) == [] and logged(runs["undefined"]) == []
    text = "\n".join(saved_lines(executed))
    assert "model 'nope' is not defined after the cell" in text
    assert "model 'tree' is not fit in this cell" in text and "mlops_jupyter.log_model(tree, X)" in text
    assert "Odd, which cannot be logged this way" in text
    printed = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert "refused:" in printed and "this cell is not tracked" in printed
    assert "Traceback" not in printed


def test_runs_listed_right_after_papermill_exits(project):
    cells = ["%load_ext mlops_jupyter"] + [f"%%mlops run --name c{i}\nv = {i}" for i in range(5)]
    nb = notebook(project / "quick.ipynb", cells)
    subprocess.run([PY, "-m", "papermill", "--log-level", "ERROR", str(nb), str(project / "o.ipynb")], cwd=project,
                   check=True, capture_output=True)
    out = subprocess.run([PY, "-m", "mlops_jupyter.cli", "runs", "--json"], cwd=project, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert sorted(r["run_name"] for r in json.loads(out.stdout)) == [f"c{i}" for i in range(5)]
