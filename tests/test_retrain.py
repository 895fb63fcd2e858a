"""`mlops retrain`: new data -> the pipeline's stale steps -> a challenger registered -> the gates (the metric gate
re-scores challenger and champion on the same evaluation data) -> promoted, or the champion kept with the reason;
one MLflow run records each loop. Real git, DVC, papermill kernels and registries (dev + a staging store)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from harness import CLEAN_VARS, all_runs, call, notebook, recorder_pids, wait_for
from mlflow_seed import retrain_project

from mlops_jupyter import config, pipeline
from mlops_jupyter.errors import PipelineError

PY = sys.executable


def mlops(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "mlops_jupyter.cli", *args], cwd=root, capture_output=True, text=True,
                          timeout=900)


def train_on(root: Path, how: str) -> None:
    """Rewrite data/train.csv: the even rows (`good`), or the same rows with their labels rolled (`noise`)."""
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True, as_frame=True)
    frame = X.assign(target=y).iloc[::2]
    if how == "noise":
        frame = frame.assign(target=frame.target.sample(frac=1.0, random_state=3).to_numpy())
    frame.to_csv(root / "data" / "train.csv", index=False)


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    """A project whose pipeline fits `clf` on the DVC-tracked data/train.csv, a staging store, and the accuracy
    on eval.csv as the promotion metric (tests/mlflow_seed.retrain_project)."""
    with pytest.MonkeyPatch.context() as mp:
        for var in CLEAN_VARS:
            mp.delenv(var, raising=False)
        root = tmp_path_factory.mktemp("retrain") / "proj"
        retrain_project(root)
        mp.chdir(root)
        yield root
        wait_for(lambda: not recorder_pids(str(root)), timeout=30, what="recorder processes to exit")


def test_retrain_promotes_a_better_challenger_keeps_a_worse_one_and_skips_when_nothing_is_new(loop):
    first = mlops(loop, "retrain", "pipe")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "clf: promoted v1 (@staging is version 1)" in first.stdout, first.stdout

    train_on(loop, "noise")
    worse = mlops(loop, "retrain", "pipe", "--data", "data/train.csv")
    assert worse.returncode == 0, worse.stderr[-3000:]
    assert "new data in data/train.csv" in worse.stdout and "clf: kept v2 (the champion stays: metric:" in worse.stdout
    assert "for version 1, worse than allowed" in worse.stdout, worse.stdout

    train_on(loop, "good")
    better = mlops(loop, "retrain", "pipe")
    assert "clf: promoted v3 (@staging is version 2 (was 1))" in better.stdout, better.stdout + better.stderr[-2000:]

    idle = mlops(loop, "retrain", "pipe")
    assert "no new data; every step was fresh" in idle.stdout and "clf: unchanged" in idle.stdout, idle.stdout

    listed = mlops(loop, "runs", "--kind", "retrain")  # waits for the idle loop's record, written after it returned
    assert listed.stdout.count("retrain fit") == 4, listed.stdout
    retrains = sorted((r for r in all_runs(loop) if r.data.tags.get("mlops.kind") == "retrain"),
                      key=lambda r: r.info.start_time)
    assert [r.data.tags["mlops.retrain.clf.decision"] for r in retrains] == ["promoted", "kept", "promoted",
                                                                             "unchanged"]
    kept = retrains[1]
    assert kept.data.metrics["clf.challenger.accuracy"] < kept.data.metrics["clf.champion.accuracy"]
    assert kept.data.tags["mlops.retrain.clf.reason"].startswith("the champion stays: metric:")
    assert kept.data.params["new_data"] == "data/train.csv" and kept.data.tags["mlops.data.data/train.csv"]


def test_a_pipeline_without_a_model_is_refused_with_the_fix(loop):
    nb = notebook(loop / "plain.ipynb", [("x = 1", ["step:one"]), ("x", ["metrics"])])
    pipeline.export(nb, "plainpipe")
    out = mlops(loop, "retrain", "plainpipe")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "fits no model" in out.stderr and "tag the cell that fits the model `model:NAME`" in out.stderr


def test_a_failed_retrain_goes_on_from_the_finished_steps_next_time(loop, tmp_path):
    from mlops_jupyter import retrain

    nb = notebook(loop / "flaky.ipynb", [
        ("import os\nimport pandas as pd\nfrom sklearn.tree import DecisionTreeClassifier", ["imports"]),
        ("df = pd.read_csv('data/train.csv')", ["step:load"]),
        (f"assert os.path.exists({str(tmp_path / 'ready')!r}), 'not ready'\n"
         "clf = DecisionTreeClassifier(random_state=0).fit(df.drop(columns=['target']), df['target'])",
         ["step:fit", "after:load", "model:clf"]),
    ])
    pipeline.export(nb, "flakypipe")
    settings = config.resolve(loop)
    with pytest.raises(PipelineError, match="step fit failed .* Fix it and retrain again: the finished steps are kept"):
        retrain.retrain(settings, loop / "flakypipe", promote_to="dev", echo=lambda *a: None)
    (tmp_path / "ready").write_text("")
    outcome = retrain.retrain(settings, loop / "flakypipe", promote_to="dev", echo=lambda *a: None)
    assert outcome.ran == ["fit"], outcome.ran  # load finished the first time
    assert outcome.decisions[0].decision in ("promoted", "kept"), outcome.summary()


def test_retrain_if_drift_runs_only_once_the_served_traffic_drifts(loop):
    """Serve @staging, send it unchanged traffic: nothing runs. Shifted traffic and new data: the loop snapshots
    the data, re-runs the stale steps, and the challenger becomes @staging; the retrain run names the drift."""
    import httpx
    from sklearn.datasets import load_iris
    from test_monitor import logged_rows, send
    from test_serving import free_port, start_server

    from harness import git, stop_group

    out = mlops(loop, "retrain", "pipe", "--if-drift", "clf@staging")
    assert out.returncode == 2 and "give it with --log" in out.stderr, out.stderr  # where does @staging log?
    out = mlops(loop, "serve", "generate", "models:/clf@staging", "--env", "staging", "--out", "served")
    assert out.returncode == 0, out.stderr
    assert next((loop / "served").glob("*_serving/reference.json")).is_file()  # from the run in the dev store
    port = free_port()
    proc = start_server([PY, "-m", "mlops_jupyter.cli", "serve", "run", "served", "--port", str(port)], port,
                        loop / "served.log", {"SERVE_LOG_FLUSH_S": "0.3", "SERVE_LOG_GROUP_S": "0.1"})
    try:
        X = load_iris(as_frame=True).frame.drop(columns="target").iloc[1::2].reset_index(drop=True)
        send(port, X)
        wait_for(lambda: logged_rows(loop / "served" / "prediction-log") >= len(X), timeout=30, what="the log")
        before = len([r for r in all_runs(loop) if r.data.tags.get("mlops.kind") == "retrain"])
        quiet = mlops(loop, "retrain", "pipe", "--if-drift", "clf@staging", "--log", "served")
        assert quiet.returncode == 0 and "no drift in 5 columns" in quiet.stdout, quiet.stdout + quiet.stderr
        assert "nothing retrained" in quiet.stdout and len(quiet.stdout.strip().splitlines()) == 1

        send(port, X, {"petal length (cm)": 3.0})
        wait_for(lambda: logged_rows(loop / "served" / "prediction-log") >= 2 * len(X), timeout=30, what="the log")
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
    finally:
        stop_group(proc)
    # new data arrives (every row), and the alias environment says where it serves into
    from sklearn.datasets import load_iris as iris

    frame = iris(as_frame=True).frame
    frame.to_csv(loop / "data" / "train.csv", index=False)
    with (loop / "pyproject.toml").open("a") as toml:
        toml.write('\n[tool.mlops.environments.staging.serving]\nlog = "served"\n')
    git(loop, "add", "-A")  # the configuration and the package, committed: the lineage gate wants a clean tree
    git(loop, "commit", "-qm", "serve @staging")
    loud = mlops(loop, "retrain", "pipe", "--if-drift", "clf@staging")
    assert loud.returncode == 0, loud.stderr[-3000:]
    # the shifted feature, and so the predictions (more virginica)
    assert "DRIFT in 2 of 5 columns: petal length (cm), prediction" in loud.stderr
    assert "new data in data/train.csv" in loud.stdout
    assert "clf: promoted" in loud.stdout and "@staging is version" in loud.stdout, loud.stdout
    retrains = sorted((r for r in all_runs(loop) if r.data.tags.get("mlops.kind") == "retrain"),
                      key=lambda r: r.info.start_time)
    assert len(retrains) == before + 1
    assert retrains[-1].data.tags["mlops.retrain.trigger"] == "drift in clf@staging: petal length (cm), prediction"
    assert retrains[-1].data.tags["mlops.retrain.ran"] == "load,fit"


# ---- the sidebar's routes: Retrain (a job, its decision in GET pipeline) and Report (written into the folder) ----
@pytest.fixture
def jp_root_dir(loop):
    return loop


@pytest.fixture
def jp_server_config():
    return {"ServerApp": {"jpserver_extensions": {"mlops_jupyter": True}}}




async def test_the_sidebar_retrains_shows_the_decision_and_writes_the_report(jp_fetch, loop):
    import asyncio

    train_on(loop, "noise")
    code, started = await call(jp_fetch, "pipeline/retrain", {"path": "fit.ipynb", "out": "pipe"})
    assert code == 202, started
    for _ in range(600):
        code, state = await call(jp_fetch, "pipeline", path="fit.ipynb", out="pipe")
        if state["retrain"] and not state["retrain"]["running"]:
            break
        await asyncio.sleep(0.5)
    assert state["retrain"]["ok"], state["retrain"]["log"]
    (decision,) = state["last_retrain"]["decisions"]
    assert decision["model"] == "clf" and decision["decision"] == "kept", decision
    assert decision["reason"].startswith("the champion stays: metric:")

    code, written = await call(jp_fetch, "pipeline/report", {"path": "fit.ipynb", "out": "pipe"})
    assert code == 200 and written["report"] == "pipe/report/report.md" and written["plots"] >= 1, written
    assert written["baseline"].startswith("branch master at ")
    assert "| `fit.acc` |" in (loop / "pipe" / "report" / "report.md").read_text()


@pytest.mark.parametrize("endpoint, body, status, words", [
    ("pipeline/retrain", {"path": "fit.ipynb", "out": "plainpipe"}, 400, "fits no model"),
    ("pipeline/retrain", {"path": "fit.ipynb", "out": "pipe", "promote_to": "qa"}, 400, "no environment 'qa'"),
    ("pipeline/retrain", {"path": "fit.ipynb", "out": "nowhere"}, 404, "holds no pipeline.json"),
    ("pipeline/report", {"path": "fit.ipynb", "out": "pipe", "baseline": "nosuch"}, 404,
     "'nosuch' is neither a branch"),
    ("pipeline/retrain", {"path": "../x.ipynb", "out": "pipe"}, 403, "outside the server root"),
    ("pipeline/report", {"path": "fit.ipynb", "out": "../../elsewhere"}, 403, "outside the server root"),
])
async def test_bad_retrain_and_report_requests(jp_fetch, loop, endpoint, body, status, words):
    code, reply = await call(jp_fetch, endpoint, body)
    assert code == status and words in reply["message"], reply
