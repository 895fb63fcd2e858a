"""The CI workflow export writes works on a runner's terms: run step by step in a fresh clone of the repository
(where DVC-tracked data is absent and no store exists), it pulls the data from the project's DVC remote, runs the
pipeline and writes the pull-request report; actionlint (the real one, built to WebAssembly) finds nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from harness import git, notebook

from mlops_jupyter import pipeline

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ACTIONLINT = REPO / "ui-tests" / "node_modules" / "@tktco" / "node-actionlint" / "bin" / "node-actionlint.js"


def test_the_exported_workflow_runs_in_a_fresh_clone(project, tmp_path):
    from mlops_jupyter.data import snapshot

    data = "x,y\n" + "".join(f"{i},{i % 3}\n" for i in range(30))
    (project / "data").mkdir()
    (project / "data" / "train.csv").write_text(data)
    snapshot("data/train.csv", message="v1")
    nb = notebook(project / "fit.ipynb", [
        ("import pandas as pd", ["imports"]),
        ("df = pd.read_csv('data/train.csv')", ["step:load"]),
        ("rows = len(df)\nmean = df.y.mean()", ["step:fit", "after:load"]),
        ("rows, mean", ["metrics"]),
    ])
    unpullable = pipeline.export(nb, "pipe")
    assert any("no default DVC remote" in w and "../data/train.csv.dvc" in w for w in unpullable.warnings)

    dvc = [str(BIN / "dvc")]
    subprocess.run([*dvc, "remote", "add", "-d", "team", str(tmp_path / "dvc-remote")], cwd=project, check=True)
    subprocess.run([*dvc, "push", "-q"], cwd=project, check=True)
    assert not pipeline.export(nb, "pipe").warnings
    git(project, "add", "-A")
    git(project, "commit", "-qm", "pipeline, with the team's DVC remote")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True)
    assert not (clone / "data" / "train.csv").exists() and not (clone / ".mlops").exists()

    flow = yaml.safe_load((clone / "pipe" / ".github" / "workflows" / "pipeline-fit.yml").read_text())
    job = flow["jobs"]["run"]
    where = clone / job["defaults"]["run"]["working-directory"]
    unset = {k: "" for k in flow["env"]}  # GitHub gives an unset secret as an empty string
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "MLFLOW_"))}
    ran = []
    for step in job["steps"]:
        if "run" not in step or step.get("name") == "Install":  # `uses:` steps are GitHub's; this venv is installed
            continue
        env = {**base, **unset, **{k: "" for k in step.get("env", {})}, "PATH": f"{BIN}:{os.environ['PATH']}"}
        command = step["run"].replace("--comment", "--comment --dry-run")  # no GitHub to post to here
        out = subprocess.run(["bash", "-e", "-c", command], cwd=where, env=env, capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == 0, f"{step.get('name')}: {out.stdout[-2000:]}{out.stderr[-3000:]}"
        ran.append(step["name"])
    assert ran == ["Pull the pipeline's data (DVC)", "Run the pipeline", "Report on the pull request"]
    assert (clone / "data" / "train.csv").read_text() == data  # the data arrived
    assert list((clone / "pipe" / "runs").glob("*/fit.ipynb")) and (clone / "pipe" / "metrics" / "fit.json").is_file()
    report = (clone / "pipe" / "report" / "report.md").read_text()
    assert "| `fit.rows` | - | 30 | new |" in report, report
    assert (clone / "pipe" / "report" / "report.comment.md").is_file() and (clone / ".mlops" / "mlflow.db").is_file()


def test_the_exported_workflows_pass_actionlint(project):
    """The pipeline's workflow, and for a pipeline that fits a model the scheduled retrain-if-drift one."""
    nb = notebook(project / "fit.ipynb", [
        ("from sklearn.tree import DecisionTreeClassifier\nX = [[0, 1], [1, 0], [1, 1], [0, 0]]\n"
         "clf = DecisionTreeClassifier().fit(X, [0, 1, 1, 0])", ["step:one", "model:clf"]),
        ("y = clf.score(X, [0, 1, 1, 0])", ["step:two"]), ("y", ["metrics"])])
    pipeline.export(nb, "pipe")
    flows = project / "pipe" / ".github" / "workflows"
    assert sorted(p.name for p in flows.iterdir()) == ["pipeline-fit.yml", "retrain-fit.yml"]
    for flow in flows.iterdir():
        out = subprocess.run(["node", str(ACTIONLINT), str(flow)], cwd=project, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, flow.name + out.stdout + out.stderr
    retrain = yaml.safe_load((flows / "retrain-fit.yml").read_text())
    assert retrain[True] == {"schedule": [{"cron": "17 5 * * *"}], "workflow_dispatch": None}  # YAML's `on`
    steps = {s.get("name"): s for s in retrain["jobs"]["run"]["steps"]}
    assert steps["Retrain if its traffic drifted"]["run"] == 'mlops retrain . --if-drift "$MONITORED" --log prediction-log'
    assert retrain["jobs"]["run"]["if"] == "vars.MLOPS_MONITORED != ''"
