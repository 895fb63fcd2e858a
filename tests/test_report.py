"""`mlops report`: a pipeline's (or a run's) results against a baseline branch, alias or run, as Markdown with
its plots beside it (and a pull-request comment), or HTML in a notebook; real git, DVC, papermill and MLflow."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from harness import CLEAN_VARS, all_runs, git, make_git_project, notebook, recorder_pids, wait_for

from mlops_jupyter import pipeline

PY = sys.executable


def write_csv(path: Path, n: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x,y\n" + "".join(f"{i},{i % 2}\n" for i in range(n)))


def mlops(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "mlops_jupyter.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def branches(tmp_path_factory):
    """A pipeline run on master, then on branch `feature` with another parameter and a new data snapshot (made
    once: the tests only read it)."""
    with pytest.MonkeyPatch.context() as mp:
        for var in CLEAN_VARS:
            mp.delenv(var, raising=False)
        project = make_git_project(tmp_path_factory.mktemp("report") / "proj")
        mp.chdir(project)
        yield _two_branches(project)
        wait_for(lambda: not recorder_pids(str(project)), timeout=30, what="recorder processes to exit")


def _two_branches(project: Path) -> Path:
    from mlops_jupyter.data import snapshot

    write_csv(project / "data" / "train.csv", 40)
    snapshot("data/train.csv", message="v1")
    nb = notebook(project / "fit.ipynb", [
        ("import pandas as pd", ["imports"]),
        ("scale = 1.0", ["parameters"]),
        ("df = pd.read_csv('data/train.csv')", ["step:load"]),
        ("rows = len(df)\nscore = scale * df.y.mean()", ["step:fit", "after:load"]),
        ("rows, score", ["metrics"]),
    ])
    pipeline.export(nb, "pipe")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "pipeline")
    assert pipeline.run(project / "pipe", echo=lambda s: None).ok
    git(project, "checkout", "-qb", "feature")
    (project / "pipe" / "params.yaml").write_text("scale: 2.0\n")
    write_csv(project / "data" / "train.csv", 60)
    snapshot("data/train.csv", message="v2")
    git(project, "commit", "-qam", "scale 2, more rows")
    assert pipeline.run(project / "pipe", echo=lambda s: None).ok
    wait_for(lambda: len([r for r in all_runs(project) if r.info.status == "FINISHED"]) == 6, timeout=60,
             what="both pipeline runs written")
    return project


def test_a_pipeline_against_its_base_branch(branches):
    out = mlops("report", "pipe", "--out", "report/report.md", "--comment", "--dry-run", cwd=branches)
    assert out.returncode == 0, out.stderr
    text = (branches / "report" / "report.md").read_text()
    base = git(branches, "rev-parse", "master")[:7]
    assert f"branch master at {base}" in text
    assert re.search(r"\| `fit\.rows` \| 40 \| 60 \| ▲ \+20 \(\+50\.0%\) \|", text), text
    assert re.search(r"\| `fit\.score` \| 0\.5 \| 1 \| ▲ \+0\.5 \(\+100\.0%\) \|", text), text
    assert "| `scale` | `1.0` | `2.0` |" in text
    data = re.search(r"\| `data/train\.csv` \| (\w+) \| (\w+) \|", text)
    assert data and data.group(1) != data.group(2), text
    images = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert images and all((branches / "report" / i).is_file() for i in images), images
    comment = (branches / "report" / "report.comment.md").read_text()
    assert comment.startswith("<!-- mlops-report: Pipeline `fit` -->") and "`metrics.png`" in comment
    assert "![" not in comment  # a comment cannot show the runner's files: it names them


def test_a_run_against_a_run_with_curves_logged_images_and_a_lost_one(ip, project):
    cell = ("%%mlops run --name train --metrics acc\nimport mlflow, matplotlib\nmatplotlib.use('Agg')\n"
            "import matplotlib.pyplot as plt\nfor i in range(5):\n    mlflow.log_metric('loss', {k} / (i + 1), step=i)\n"
            "fig, ax = plt.subplots()\nax.imshow([[5, 1], [2, 4]])\nmlflow.log_figure(fig, 'plots/confusion_matrix.png')\n"
            "mlflow.log_figure(fig, 'plots/residuals.png')\nplt.close(fig)\nacc = {acc}")
    ip.run_cell(cell.format(k=1.0, acc=0.8))
    ip.run_cell(cell.format(k=0.5, acc=0.9))
    ip.run_line_magic("mlops", "runs")  # waits for the records
    first, second = sorted(all_runs(project), key=lambda r: r.info.start_time)
    cut = Path(second.info.artifact_uri.replace("file://", "")) / "plots" / "residuals.png"
    cut.write_bytes(cut.read_bytes()[:0] + b"<html>not an image</html>")  # a logged file the report cannot show
    shown = ip.run_line_magic("mlops", f"report {second.info.run_id} --baseline {first.info.run_id}")
    html = shown._repr_html_()
    assert "acc" in html and "0.8" in html and "0.9" in html
    assert html.count("data:image/png;base64,") == 3, html[:500]  # the bars, the loss curve, the confusion matrix
    assert "loss by step" in html and "confusion_matrix.png" in html
    assert "plot not made: plots/residuals.png: ValueError: the file is not a PNG image" in html


def test_a_model_alias_as_the_baseline(project):
    for depth in (1, 3):
        nb = notebook(project / f"m{depth}.ipynb", [
            "%load_ext mlops_jupyter",
            "%%mlops run --name fit --model clf --metrics acc\nfrom sklearn.datasets import load_iris\n"
            "from sklearn.tree import DecisionTreeClassifier\nX, y = load_iris(return_X_y=True, as_frame=True)\n"
            f"clf = DecisionTreeClassifier(max_depth={depth}, random_state=0).fit(X, y)\nacc = clf.score(X, y)",
        ])
        out = subprocess.run([PY, "-m", "papermill", "--log-level", "ERROR", str(nb), str(project / "out.ipynb")],
                             cwd=project, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
    wait_for(lambda: len(all_runs(project)) == 2, timeout=60, what="both runs")
    older, newer = sorted(all_runs(project), key=lambda r: r.info.start_time)
    assert mlops("register", older.info.run_id, "--model", "iris", cwd=project).returncode == 0
    promoted = mlops("promote", "iris/1", "--to", "dev", "--force", "lineage", "--reason", "uncommitted notebook",
                     cwd=project)
    assert promoted.returncode == 0, promoted.stderr
    out = mlops("report", newer.info.run_id, "--baseline", "iris@dev", cwd=project)
    assert out.returncode == 0, out.stderr
    assert "iris@dev version 1 in dev" in out.stdout
    assert re.search(r"\| `acc` \| 0\.6\d* \| 0\.97\d* \| ▲", out.stdout), out.stdout
    gates = mlops("report", older.info.run_id, "--baseline", "none", cwd=project)  # the run that made iris v1
    assert "### Promotion gates" in gates.stdout and "- `iris` v1 to dev: signature passed" in gates.stdout
    assert "lineage forced (forced: uncommitted notebook)" in gates.stdout, gates.stdout


@pytest.mark.parametrize("args, words", [
    (["report", "pipe", "--baseline", "nope"], ["'nope' is neither a branch", "a run"]),
    (["report"], ["holds no exported pipeline", "give a pipeline folder or a run id"]),
    (["report", "pipe", "--dry-run"], ["--dry-run goes with --comment"]),
    (["report", "pipe", "--comment"], ["--comment needs --out"]),
    (["report", "0123456789abcdef0123456789abcdef"], ["no run '0123456789abcdef0123456789abcdef'"]),
])
def test_bad_input_is_one_line(branches, args, words):
    out = mlops(*args, cwd=branches)
    err = out.stderr.strip()
    assert out.returncode == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert all(w in err for w in words), err


def test_no_baseline_found_says_what_was_searched(branches):
    git(branches, "checkout", "-qb", "empty", "master~1")  # before the pipeline existed: no run there
    git(branches, "checkout", "-q", "feature")
    out = mlops("report", "pipe", "--baseline", "empty", cwd=branches)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "no baseline found" in out.stderr and "commits of branch empty" in out.stderr
    assert "mlops.pipeline=fit" in out.stderr and "--baseline NAME@ALIAS or RUN" in out.stderr
    alone = mlops("report", "pipe", "--baseline", "none", cwd=branches)
    assert alone.returncode == 0 and "no baseline" in alone.stdout and "| `fit.rows` | - | 60 | new |" in alone.stdout


def test_a_drift_summary_from_a_serving_log(branches, tmp_path):
    import numpy as np
    from mlflow_seed import drift_frame, served_package

    from mlops_jupyter.monitor import drift

    rng = np.random.default_rng(9)
    ref = drift.profile(drift_frame(rng, 3000), model={"run_id": "d" * 32, "name": "model"})
    served_package(tmp_path, ref, drift_frame(rng, 1000, new_category=True))
    out = mlops("report", "pipe", "--log", str(tmp_path / "pkg"), "--out", "drifted/report.md", cwd=branches)
    assert out.returncode == 0, out.stderr
    text = (branches / "drifted" / "report.md").read_text()
    assert "### Drift of the served traffic" in text and "DRIFT in 1 of 10 columns: city (1000 rows" in text, text
    assert re.search(r"\| `city` \| jensenshannon \| 0\.\d+ \| 0\.1 \|", text), text
