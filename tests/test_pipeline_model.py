"""model:NAME during export: the tagged model logged to MLflow (signature, input example) in its step's child
run and turned into a FastAPI serving package at <pipeline>/serving/NAME, served by real uvicorn; clear errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from harness import all_runs, client, notebook, stop_group, wait_for
from test_serving import free_port, start_server

from mlops_jupyter import pipeline
from mlops_jupyter.pipeline.tags import PipelineError

PY = sys.executable
CELLS = [
    ("import pandas as pd\nfrom sklearn.datasets import load_iris\nfrom sklearn.ensemble import RandomForestClassifier",
     ["imports"]),
    ("trees = 10", ["parameters"]),
    ("X, y = load_iris(return_X_y=True, as_frame=True)", ["step:load"]),
    ("clf = RandomForestClassifier(n_estimators=trees, random_state=0)\nclf.fit(X, y)", ["step:train", "model:clf"]),
    ("acc = clf.score(X, y)", ["step:evaluate"]),
    ("acc", ["metrics"]),
]


def ran(result) -> set:
    return {s.name for s in result.steps if s.status == "ran"}


def test_a_tagged_model_is_logged_and_served(project):
    nb = notebook(project / "m.ipynb", CELLS)
    out = subprocess.run([PY, "-m", "mlops_jupyter.cli", "export", "m.ipynb", "--out", "pipe"], capture_output=True,
                         text=True, cwd=project)
    folder, package = project / "pipe", project / "pipe" / "serving" / "clf"
    assert out.returncode == 0 and f"logs model clf (step train) to MLflow and writes its serving package: {package}" \
        in out.stdout, out.stdout + out.stderr
    pipe = pipeline.export(nb, "pipe")
    train = pipe.step("train")
    assert train["models"] == ["clf"] and train["model_examples"] == {"clf": "X"}
    stage = yaml.safe_load((folder / "dvc.yaml").read_text())["stages"]["train"]
    assert {"serving/clf": {"cache": False}} in stage["outs"] and "pipeline.models . train" in stage["cmd"]
    assert "serving/clf" in (folder / "README.md").read_text()

    lines = []
    result = pipeline.run(folder, echo=lines.append)
    assert result.ok and ran(result) == {"load", "train", "evaluate"}, "\n".join(lines)
    assert any("serving package serving/clf" in ln for ln in lines)
    assert (package / "pyproject.toml").is_file() and (package / "Dockerfile").is_file()

    # logged in the train step's child run, with a signature and the first rows of X as input example
    runs = all_runs(project)
    child = [r for r in runs if r.info.run_name == "train" and r.data.tags.get("mlflow.parentRunId") == result.mlflow_run]
    spec = json.loads((package / "clf_serving" / "serving.json").read_text())
    assert len(child) == 1 and spec["run_id"] == child[0].info.run_id and spec["loader"] == "skops"
    mlmodel = yaml.safe_load((package / "clf_serving" / "mlflow_model" / "MLmodel").read_text())
    columns = [c["name"] for c in json.loads(mlmodel["signature"]["inputs"])]
    assert columns == ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
    example = json.loads((package / "clf_serving" / "mlflow_model" / "input_example.json").read_text())
    assert len(example["data"]) == 5 and example["columns"] == columns
    # the reference profile of X (for drift checks): in the package, and with the step's run
    reference = json.loads((package / "clf_serving" / "reference.json").read_text())
    assert set(reference["columns"]) == {*columns, "prediction"} and reference["rows"] == 150
    wait_for(lambda: [a.path for a in client(project).list_artifacts(child[0].info.run_id, "reference")]
             == ["reference/clf.json"], timeout=60, what="the step run's reference artifact")

    # the package under uvicorn answers with the model's own predictions
    import joblib

    model = joblib.load(folder / "artifacts" / "train" / "clf.joblib")
    rows = [dict(zip(columns, r)) for r in example["data"]]
    import pandas as pd

    expected = model.predict(pd.DataFrame(example["data"], columns=columns)).tolist()
    port = free_port()
    proc = start_server([PY, "-m", "mlops_jupyter.cli", "serve", "run", str(package), "--port", str(port)], port,
                        project / "serve.log")
    try:
        r = httpx.post(f"http://127.0.0.1:{port}/predict", json={"rows": rows}, timeout=30)
        assert r.status_code == 200 and r.json() == {"predictions": expected}
    finally:
        stop_group(proc)

    # the package is an output of the step: unchanged, nothing runs; gone, its step runs again
    again = pipeline.run(folder, echo=lines.append)
    assert again.ok and again.count("skipped") == 3
    shutil.rmtree(package)
    status = {n: (st, why) for n, st, why in pipeline.status(folder)}
    assert status["train"] == ("stale", "its serving package serving/clf is missing or changed")
    fixed = pipeline.run(folder, echo=lines.append)
    assert "train" in ran(fixed) and (package / "pyproject.toml").is_file()
    assert all(st == "fresh" for _, st, _ in pipeline.status(folder))


@pytest.mark.parametrize("cells, message", [
    ([("a = 1", ["step:one"]), ("b = a + 1", ["step:two", "model:clf"])],
     r"cell 1 \('b = a \+ 1'\) has the tag model:clf, but step 'two' never assigns clf;"),
    ([("clf = 1", ["step:one"]), ("b = clf", ["step:two", "model:clf"])],
     r"never assigns clf \(step 'one' does: tag a cell of that step\)"),
    ([("import numpy as np\nclf = np.ones(3)", ["step:one", "model:clf"])], r"cell 0 .* never fits it"),
    ([("clf = 1", ["step:one", "model:my-model"])], r"has the tag model:'my-model'; model:NAME names the variable"),
    ([("import numpy as np", ["imports", "model:np"]), ("a = 1", ["step:one"])], r"tagged imports and model:np"),
    ([("m = f(1)", ["step:one", "model:m"]), ("m = f(2)", ["step:two", "model:m"])], r"cell 1 .* and so has cell 0"),
])
def test_model_tag_errors_name_the_cell(project, cells, message):
    nb = notebook(project / "bad.ipynb", cells)
    with pytest.raises(PipelineError, match=message):
        pipeline.export(nb, "pipe")
    out = subprocess.run([PY, "-m", "mlops_jupyter.cli", "export", "bad.ipynb", "--out", "pipe"],
                         capture_output=True, text=True, cwd=project)
    assert out.returncode == 2 and "mlops export:" in out.stderr and "Traceback" not in out.stderr


def test_a_model_that_cannot_be_logged_fails_its_step(project):
    nb = notebook(project / "b.ipynb", [
        ("class Mean:\n    def fit(self, X, y):\n        self.m = sum(y) / len(y)\n        return self\n\n"
         "    def predict(self, X):\n        return [self.m] * len(X)", ["functions"]),
        ("X, y = [[1.0, 2.0], [3.0, 4.0]], [0, 1]\nm = Mean().fit(X, y)", ["step:fit", "model:m"]),
        ("print(m.predict(X))", ["step:use"]),
    ])
    pipeline.export(nb, "pipe")
    cli = [PY, "-m", "mlops_jupyter.cli", "pipeline", "run", "pipe"]
    out = subprocess.run(cli, capture_output=True, text=True, cwd=project)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "model:m of step 'fit' is a __main__.Mean, which cannot be logged" in out.stdout
    assert "not run: fit did not finish" in out.stdout and "Traceback" not in out.stdout + out.stderr
    status = dict((n, st) for n, st, _ in pipeline.status(project / "pipe"))
    assert status["fit"] == "failed" and not (project / "pipe" / "serving" / "m").exists()


def test_dvc_repro_writes_the_serving_package(project):
    subprocess.run([PY, "-m", "dvc", "init", "-q"], cwd=project, check=True)
    pipeline.export(notebook(project / "m.ipynb", CELLS), "pipe")
    env = {**os.environ, "PATH": f"{Path(PY).parent}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run([PY, "-m", "dvc", "repro"], cwd=project / "pipe", capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    package = project / "pipe" / "serving" / "clf"
    spec = json.loads((package / "clf_serving" / "serving.json").read_text())
    run = [r for r in all_runs(project) if r.info.run_id == spec["run_id"]][0]
    assert run.info.run_name == "train (dvc repro)" and run.info.status == "FINISHED"
    status = subprocess.run([PY, "-m", "dvc", "status"], cwd=project / "pipe", capture_output=True, text=True,
                            env=env)
    assert "changed outs" not in status.stdout and "deleted" not in status.stdout, status.stdout


def test_pipeline_run_register_makes_a_version_of_each_model_fitted_anew(project):
    notebook(project / "m.ipynb", CELLS)
    pipeline.export(project / "m.ipynb", "pipe")
    out = subprocess.run([PY, "-m", "mlops_jupyter.cli", "pipeline", "run", "pipe", "--register"], capture_output=True,
                         text=True, cwd=project, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "registered clf version 1 in dev (lineage " in out.stdout, out.stdout
    assert "serving package tests 10 passed" in out.stdout, out.stdout
    again = subprocess.run([PY, "-m", "mlops_jupyter.cli", "pipeline", "run", "pipe", "--register"],
                           capture_output=True, text=True, cwd=project, timeout=900)
    assert again.returncode == 0 and "registered" not in again.stdout, again.stdout  # nothing fitted anew
    versions = client(project).search_model_versions("name = 'clf'")
    (step,) = [r for r in all_runs(project) if r.info.run_name == "train"]
    assert [v.run_id for v in versions] == [step.info.run_id]
