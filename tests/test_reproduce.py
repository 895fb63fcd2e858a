"""`mlops reproduce`: a seeded scikit-learn run re-executed from its recorded code, data and params."""

import os
import subprocess
import sys

import pytest
from harness import all_runs, git, notebook, wait_for

TRAIN = """%%mlops run --name fit --metrics accuracy
import pandas as pd
from sklearn.ensemble import RandomForestClassifier
df = pd.read_csv('data/iris.csv')
X, y = df.drop(columns='target'), df['target']
model = RandomForestClassifier(n_estimators=n_estimators, random_state=seed).fit(X[::2], y[::2])
accuracy = model.score(X[1::2], y[1::2])"""


def mlops(root, *args):
    return subprocess.run([sys.executable, "-m", "mlops_jupyter.cli", *args], cwd=root, capture_output=True,
                          text=True, timeout=600)


def runs_listing(root, run_id):
    """The run as the sidebar's listing gives it (GET runs' rows)."""
    from mlops_jupyter.config import resolve
    from mlops_jupyter.tracking.query import list_runs

    rows = list_runs(resolve(root))
    return next((r for r in rows if r["run_id"] == run_id), {})


def test_reproduce_a_seeded_run_gives_the_same_metric(project):
    from sklearn.datasets import load_iris

    (project / "data").mkdir()
    load_iris(as_frame=True).frame.to_csv(project / "data" / "iris.csv", index=False)
    assert mlops(project, "snapshot", "data/iris.csv").returncode == 0
    notebook(project / "train.ipynb", ["%load_ext mlops_jupyter\n%mlops init",
                                       ("n_estimators = 5\nseed = 0", ["parameters"]), TRAIN,
                                       "raise RuntimeError('reproduce stops at the run\\'s cell')"])
    git(project, "add", "train.ipynb")
    git(project, "commit", "-q", "-m", "notebook")
    subprocess.run([sys.executable, "-m", "papermill", "train.ipynb", "out.ipynb", "-p", "n_estimators", "7",
                    "--log-level", "ERROR"], cwd=project, timeout=300)  # the last cell fails on purpose
    (run,) = wait_for(lambda: [r for r in all_runs(project) if r.info.status == "FINISHED"], timeout=60,
                      what="the tracked run")
    assert run.data.params["n_estimators"] == "7"
    # afterwards the data and the code both move on; reproduce must use what the run used
    (project / "data" / "iris.csv").write_text("sepal length (cm),target\n1.0,0\n")
    assert mlops(project, "snapshot", "data/iris.csv").returncode == 0
    (project / "train.ipynb").write_text((project / "train.ipynb").read_text().replace("seed = 0", "seed = 99"))
    git(project, "commit", "-q", "-am", "code moved on")

    out = mlops(project, "reproduce", run.info.run_id[:8])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "verdict: match" in out.stdout and "accuracy" in out.stdout
    runs = {r.info.run_id: r for r in all_runs(project)}
    (new,) = [r for r in runs.values() if r.data.tags.get("mlops.reproduces") == run.info.run_id]
    assert new.data.metrics["accuracy"] == pytest.approx(run.data.metrics["accuracy"], abs=0)
    assert new.data.params["n_estimators"] == "7"
    assert not git(project, "worktree", "list").strip().count("\n")  # the scratch worktree is gone
    # the original run carries the verdict (the sidebar's "replayed" badge), and the listing shows it
    replayed = wait_for(lambda: runs_listing(project, run.info.run_id).get("replayed"), timeout=60,
                        what="the replayed tag")
    assert replayed == f"match · replayed by run {new.info.run_id}"


def test_reproduce_a_run_without_a_notebook_is_a_clear_error(ip, project):
    ip.run_cell("%%mlops run\nx = 1")
    assert ip._mlops_magics.tracker.flush(60) == 0
    (run,) = all_runs(project)
    out = mlops(project, "reproduce", run.info.run_id)
    assert out.returncode == 2 and "has no notebook path" in out.stderr


def test_reproduce_of_an_out_of_order_run_says_where_the_difference_comes_from(project):
    import nbformat
    from harness import finished_runs, kernel

    nb = project / "order.ipynb"
    cells = [("setup", "%load_ext mlops_jupyter\n%mlops init"), ("a", "x = 1\nz = 1"),
             ("b", "%%mlops run --name sum --metrics y\ny = x + z"), ("c", "z = 10")]
    doc = nbformat.v4.new_notebook()
    doc.cells = [nbformat.v4.new_code_cell(src, id=cid) for cid, src in cells]
    doc.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(doc, nb)
    git(project, "add", "order.ipynb")
    git(project, "commit", "-q", "-m", "notebook")
    with kernel(project, env={"JPY_SESSION_NAME": str(nb)}) as k:
        for cid in ("setup", "a", "c", "b"):  # c, below the tracked cell, ran before it
            reply, _ = k.run(dict(cells)[cid], cell_id=cid)
            assert reply["status"] == "ok"
        k.run("get_ipython()._mlops_magics.tracker.flush(60)", timeout=90)
    (run,) = finished_runs(project, 1)
    assert run.data.metrics["y"] == 11 and "run out of order: [3]" in run.data.tags["mlops.hidden_state"]
    out = mlops(project, "reproduce", run.info.run_id[:8], "--clean")
    assert out.returncode == 1, out.stdout + out.stderr  # in order, y = 2
    assert "verdict: differ" in out.stdout
    assert "depends on a cell below it, run out of order: [3]" in out.stdout
    assert "cell/execution_order.json" in out.stdout and "the difference comes from there" in out.stdout
    row = wait_for(lambda: (lambda r: r if r.get("replayed") else None)(runs_listing(project, run.info.run_id)),
                   timeout=60, what="the replayed tag")
    assert row["replayed"].startswith("differ: y by 9") and "run out of order: [3]" in row["hidden_state"]


def test_reproduce_a_run_whose_data_came_from_another_project(project):
    """The notebook's repository holds the code; it changes into a second git/DVC project for its data (as
    example_notebooks/02_data_versioning.ipynb does). Both are recorded; reproduce restores the data where
    the notebook reads it and puts it back after, or says in one line why it cannot."""
    import json
    import shutil

    from harness import make_git_project
    from sklearn.datasets import load_iris

    data_proj = make_git_project(project.parent / "dataproj")
    csv = data_proj / "data" / "iris.csv"
    csv.parent.mkdir()
    load_iris(as_frame=True).frame.to_csv(csv, index=False)
    assert mlops(data_proj, "snapshot", "data/iris.csv").returncode == 0
    notebook(project / "train.ipynb", ["%load_ext mlops_jupyter\n%mlops init",
                                       ("n_estimators = 5\nseed = 0", ["parameters"]), f"%cd {data_proj}", TRAIN,
                                       "raise RuntimeError('reproduce stops at the run\\'s cell')"])
    git(project, "add", "train.ipynb")
    git(project, "commit", "-q", "-m", "notebook")
    subprocess.run([sys.executable, "-m", "papermill", "train.ipynb", "out.ipynb", "--log-level", "ERROR"], cwd=project,
                   timeout=300)
    (run,) = wait_for(lambda: [r for r in all_runs(project) if r.info.status == "FINISHED"], timeout=60,
                      what="the tracked run")
    tags = run.data.tags
    projects = json.loads(tags["mlops.projects"])
    assert [(p["root"], p["commit"], p["paths"]) for p in projects] == [
        (str(project), git(project, "rev-parse", "HEAD").strip(), []),
        (str(data_proj), git(data_proj, "rev-parse", "HEAD").strip(), ["data/iris.csv"])]
    assert tags["mlops.read.data/iris.csv"] == tags["mlops.data.data/iris.csv"]

    csv.write_text("sepal length (cm),target\n1.0,0\n")  # the data moves on in its own project
    assert mlops(data_proj, "snapshot", "data/iris.csv").returncode == 0
    moved = (data_proj / "data" / "iris.csv.dvc").read_text()
    out = mlops(project, "reproduce", run.info.run_id[:8])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "verdict: match" in out.stdout and f"restored data/iris.csv (md5 {tags['mlops.data.data/iris.csv'][:8]}) " \
        f"in project {data_proj}" in out.stdout
    assert (data_proj / "data" / "iris.csv.dvc").read_text() == moved  # put back as it was
    assert csv.read_text() == "sepal length (cm),target\n1.0,0\n"
    assert not git(data_proj, "status", "--porcelain").strip()

    csv.write_text("edited, never snapshotted\n")  # never overwritten: one line, nothing executed
    out = mlops(project, "reproduce", run.info.run_id)
    assert out.returncode == 2 and "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "not in any snapshot" in out.stderr and "Nothing was executed" in out.stderr, out.stderr
    assert csv.read_text() == "edited, never snapshotted\n"

    shutil.rmtree(data_proj)  # e.g. a scratch folder since removed
    out = mlops(project, "reproduce", run.info.run_id)
    assert out.returncode == 2 and "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert f"its project {data_proj} no longer exists" in out.stderr, out.stderr
    assert len([r for r in all_runs(project) if r.data.tags.get("mlops.reproduces")]) == 1


def test_reproduce_the_demo_notebooks_fewer_rows_run(project):
    """example_notebooks/02_data_versioning.ipynb as `make demo` runs it: its data lives in a scratch project it
    makes and changes into, its code in this repository."""
    import shutil
    from pathlib import Path

    demo = Path(__file__).resolve().parents[1] / "example_notebooks" / "02_data_versioning.ipynb"
    (project / "example_notebooks").mkdir()
    shutil.copy(demo, project / "example_notebooks")
    git(project, "add", "example_notebooks")
    git(project, "commit", "-q", "-m", "the demo notebook")
    out = subprocess.run([sys.executable, "-m", "papermill", "--cwd", "example_notebooks", "--log-level", "ERROR",
                          "example_notebooks/02_data_versioning.ipynb", "out.ipynb"], cwd=project, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "PWD": str(project)})  # as a shell there sets it
    assert out.returncode == 0, out.stderr[-2000:]
    wait_for(lambda: len([r for r in all_runs(project) if r.info.status == "FINISHED"]) == 2, timeout=60,
             what="the demo's two runs")
    out = mlops(project, "reproduce", "fewer-rows")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stdout + out.stderr
    assert "verdict: match" in out.stdout and "in project /" in out.stdout


def test_reproduce_a_run_whose_code_commit_is_gone_says_so_in_one_line(ip, project):
    """A run recorded in a history since rewritten (or another clone): one line, no worktree, no traceback."""
    import json

    from mlflow import MlflowClient

    ip.run_cell("%%mlops run\nx = 1")
    assert ip._mlops_magics.tracker.flush(60) == 0
    (run,) = all_runs(project)
    client = MlflowClient("sqlite:///" + (project / ".mlops" / "mlflow.db").as_posix())
    client.set_tag(run.info.run_id, "mlops.notebook", str(project / "train.ipynb"))
    client.set_tag(run.info.run_id, "mlops.projects", json.dumps([{"root": str(project), "commit": "1" * 40}]))
    out = mlops(project, "reproduce", run.info.run_id)
    assert out.returncode == 2 and "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "the code commit 11111111 it used is not in the history" in out.stderr, out.stderr
    assert not git(project, "worktree", "list").strip().count("\n")
