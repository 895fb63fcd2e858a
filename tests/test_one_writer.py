"""One writer: every record (cells, pipelines and their steps, sweeps and their trials, models) reaches the
store through the journal, on the scale-out path (a real ``mlflow server``), with a slow store, and with a
store that is down and comes back; replays never duplicate anything."""

from __future__ import annotations

import http.client
import http.server
import os
import shutil
import socketserver
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from harness import (all_runs, artifacts, finished_runs, free_port, mlflow_server, niceness, notebook,
                     recorder_pids, store_uri, wait_for)

from mlops_jupyter import config
from mlops_jupyter.tracking.records import Recording

PY = sys.executable
TRACKED = ["%load_ext mlops_jupyter",
           ("%%mlops run --name fit --metrics acc --tag team=ml\nlr = 0.1\nepochs = 3\nacc = 0.75\n"
            "%matplotlib inline\nimport matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()\nprint('trained')")]


def papermill(project: Path, nb: Path, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "papermill", "--log-level", "ERROR", str(nb), str(project / f"out-{nb.name}")],
                          cwd=project, capture_output=True, text=True, timeout=timeout, env={**os.environ, **env})


def journals(project: Path) -> list:
    folder = project / ".mlops" / "journal"
    return sorted(folder.glob("*.jsonl")) if folder.is_dir() else []


def assert_tracked_cell(run, project: Path, uri: str) -> None:
    assert run.info.status == "FINISHED"
    assert run.data.params == {"lr": "0.1", "epochs": "3"} and run.data.metrics == {"acc": 0.75}
    assert run.data.tags["team"] == "ml"
    kept = artifacts(project, run.info.run_id, uri=uri)
    assert {"cell/source.py", "cell/stdout.txt", "environment/requirements.txt"} <= set(kept)
    assert any(p.startswith("cell/outputs/") and p.endswith(".png") for p in kept), kept


@contextmanager
def store_locked(project: Path):
    """The project's store made, then held under an exclusive lock: nothing can write (as root, a lock is what
    makes a file unwritable)."""
    subprocess.run([PY, "-c", "from mlops_jupyter.tracking import store; import sys; store.client(sys.argv[1])",
                    store_uri(project)], check=True)
    con = sqlite3.connect(store_uri(project)[len("sqlite:///"):], isolation_level=None)
    con.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        con.execute("ROLLBACK")
        con.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as uri:
        yield uri


def test_papermill_against_a_tracking_server_ends_finished(project, server):
    nb = notebook(project / "remote.ipynb", TRACKED)
    out = papermill(project, nb, {"MLOPS_TRACKING_URI": server})
    assert out.returncode == 0, out.stderr
    (run,) = [r for r in finished_runs(project, 1, uri=server) if r.data.tags.get("mlops.notebook") == str(nb)]
    assert_tracked_cell(run, project, server)
    wait_for(lambda: not recorder_pids(str(project)), timeout=30, what="no recorder left behind")
    assert not journals(project)


class _SlowProxy(http.server.BaseHTTPRequestHandler):
    """Forwards every request to the real server and answers ``delay`` seconds late."""
    target: tuple = ("127.0.0.1", 0)
    delay = 1.0

    def _forward(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        time.sleep(self.delay)
        conn = http.client.HTTPConnection(*self.target, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        conn.request(self.command, self.path, body=body or None, headers=headers)
        reply = conn.getresponse()
        data = reply.read()
        self.send_response(reply.status)
        for k, v in reply.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        conn.close()

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _forward

    def log_message(self, *args):
        pass


@contextmanager
def slow_proxy(uri: str, delay: float):
    host, port = uri.removeprefix("http://").split(":")
    handler = type("Slow", (_SlowProxy,), {"target": (host, int(port)), "delay": delay})
    proxy = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    proxy.daemon_threads = True
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{proxy.server_address[1]}"
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_a_slow_tracking_server_loses_nothing(project, server):
    with slow_proxy(server, delay=0.4) as slow:
        nb = notebook(project / "slow.ipynb", TRACKED)
        out = papermill(project, nb, {"MLOPS_TRACKING_URI": slow})
        assert out.returncode == 0, out.stderr
        wait_for(lambda: not recorder_pids(str(project)), timeout=240, what="the recorder to finish")
    (run,) = [r for r in all_runs(project, uri=server) if r.data.tags.get("mlops.notebook") == str(nb)]
    assert_tracked_cell(run, project, server)
    assert not journals(project)


def test_the_store_is_asked_whether_it_answers(project, server):
    """What a slow op's watch asks: a SQLite store that lets a writer in, a server that answers; not a store whose
    write lock another process holds, a server that does not answer in time, nor one that is down."""
    from mlops_jupyter.tracking import store

    with store_locked(project):
        assert not store.answers(store_uri(project), wait=0.5)
    assert store.answers(store_uri(project)) and store.answers(server)
    with slow_proxy(server, delay=5) as hung:
        assert not store.answers(hung, wait=0.5)
    assert not store.answers(f"http://127.0.0.1:{free_port()}")


@pytest.mark.parametrize("where", ["sqlite", "server"])
def test_slow_ops_on_a_store_that_answers_are_not_reported(project, server, where):
    """Every op counts as slow here (MLOPS_RECORDER_SLOW_S), as the first cells of six kernels starting together
    on two cores did in CI: the store answers when asked, so the notebook says nothing about it."""
    uri = server if where == "server" else store_uri(project)
    cells = ["%load_ext mlops_jupyter\n%mlops autotrack on"] + [f"x{i} = {i}\nprint('cell', x{i})" for i in range(4)]
    nb = notebook(project / "busy.ipynb", cells)
    out = papermill(project, nb, {"MLOPS_TRACKING_URI": uri, "MLOPS_RECORDER_SLOW_S": "0.01"})
    assert out.returncode == 0, out.stderr
    runs = [r for r in finished_runs(project, 4, uri=uri) if r.data.tags.get("mlops.notebook") == str(nb)]
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    saved = (project / "out-busy.ipynb").read_text()
    assert "not answering" not in saved and "not answering" not in out.stderr, saved


PIPELINE = [("import json\nfrom sklearn.datasets import load_iris\nfrom sklearn.ensemble import RandomForestClassifier",
             ["imports"]),
            ("trees = 5", ["parameters"]),
            ("X, y = load_iris(return_X_y=True, as_frame=True)", ["step:load"]),
            ("clf = RandomForestClassifier(n_estimators=trees, random_state=0).fit(X, y)", ["step:train", "model:clf"]),
            ("acc = clf.score(X, y)", ["step:evaluate"]),
            ("acc", ["metrics"])]


def pipeline_runs(project: Path, uri: str) -> list:
    return [r for r in all_runs(project, uri=uri) if r.data.tags.get("mlops.kind", "").startswith("pipeline")]


def run_pipeline(project: Path, env: dict) -> subprocess.CompletedProcess:
    notebook(project / "p.ipynb", PIPELINE)
    env = {**os.environ, **env}
    subprocess.run([PY, "-m", "mlops_jupyter.cli", "export", "p.ipynb", "--out", "pipe"], cwd=project, check=True,
                   capture_output=True, env=env)
    return subprocess.run([PY, "-m", "mlops_jupyter.cli", "pipeline", "run", "pipe"], cwd=project, capture_output=True,
                          text=True, env=env, timeout=600)


def keep_journals(project: Path, dest: Path) -> list:
    """Copies of the waiting journals, to replay once they have been written."""
    dest.mkdir()
    return [shutil.copy(j, dest / j.name) for j in journals(project)]


def replay_twice(project: Path, saved: list, env: dict) -> None:
    """Each saved journal put back twice, one after the other: the next process of the project replays it."""
    for n in (1, 2):
        for copy in saved:
            shutil.copy(copy, project / ".mlops" / "journal" / f"{Path(copy).stem}-replay{n}.jsonl")
        subprocess.run([PY, "-m", "mlops_jupyter.cli", "runs"], cwd=project, capture_output=True,
                       env={**os.environ, **env}, check=True)
        wait_for(lambda: not journals(project) and not recorder_pids(str(project)), timeout=180,
                 what=f"replay {n}")


def assert_pipeline_recorded_once(project: Path, uri: str) -> None:
    runs = pipeline_runs(project, uri)
    parents = [r for r in runs if r.data.tags["mlops.kind"] == "pipeline"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", [(r.info.run_name, r.info.status) for r in runs]
    steps = sorted(r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id)
    assert steps == ["evaluate", "load", "train"]
    evaluate = next(r for r in runs if r.info.run_name == "evaluate")
    assert evaluate.data.metrics == {"acc": pytest.approx(1.0, abs=0.1)} and evaluate.info.status == "FINISHED"
    train = next(r for r in runs if r.info.run_name == "train")
    from mlflow import MlflowClient

    models = MlflowClient(uri).search_logged_models(experiment_ids=[train.info.experiment_id],
                                                    filter_string=f"source_run_id = '{train.info.run_id}'")
    assert [m.name for m in models] == ["clf"]


def test_the_cli_returns_with_the_steps_and_runs_then_lists_the_whole_pipeline(project):
    """`mlops pipeline run` leaves the last records to the recorder when the store keeps up; the very next
    `mlops runs` waits for them, so a CI script that runs one after the other sees everything."""
    out = run_pipeline(project, {})
    assert out.returncode == 0 and "wait in" not in out.stderr, out.stdout + out.stderr
    listing = subprocess.run([PY, "-m", "mlops_jupyter.cli", "runs", "--kind", "pipeline"], cwd=project,
                             capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0 and "still being written" not in listing.stderr, listing.stderr
    assert "evaluate" in listing.stdout and "train" in listing.stdout
    assert_pipeline_recorded_once(project, store_uri(project))


def test_pipeline_with_the_server_down_then_up(project, tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    env = {"MLOPS_TRACKING_URI": uri, "MLOPS_RECORDER_EXIT_GRACE_S": "1"}
    out = run_pipeline(project, env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "wait in" in out.stderr and ".mlops/journal/" in out.stderr and "Traceback" not in out.stderr
    assert (project / "pipe" / "serving" / "clf" / "pyproject.toml").is_file()  # served without the store
    wait_for(lambda: not recorder_pids(str(project)), timeout=60, what="the recorder to give up for now")
    saved = keep_journals(project, tmp_path / "saved")
    assert saved
    with mlflow_server(tmp_path / "late", port):
        listing = subprocess.run([PY, "-m", "mlops_jupyter.cli", "runs"], cwd=project, capture_output=True,
                                 text=True, env={**os.environ, **env})
        assert listing.returncode == 0, listing.stderr
        wait_for(lambda: not journals(project) and not recorder_pids(str(project)), timeout=180,
                 what="the waiting records to be written")
        assert_pipeline_recorded_once(project, uri)
        replay_twice(project, saved, env)
        assert_pipeline_recorded_once(project, uri)


def test_pipeline_with_the_store_locked_then_released(project):
    with store_locked(project):
        out = run_pipeline(project, {})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "wait in" in out.stderr, out.stderr
    wait_for(lambda: not journals(project), timeout=180, what="the records once the store is free")
    assert_pipeline_recorded_once(project, store_uri(project))
    assert not list((project / ".mlops").glob("mlflow.db.broken-*")), "a busy store is never set aside"


SWEEP = ["%load_ext mlops_jupyter",
         "%%mlops sweep --space \"a=grid(1, 2, 3)\" --metric score --mode max --samples 1\nscore = a * 2"]


def test_sweep_with_the_server_down_then_up(project, tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    env = {"MLOPS_TRACKING_URI": uri, "MLOPS_RECORDER_EXIT_GRACE_S": "1"}
    out = papermill(project, notebook(project / "sweep.ipynb", SWEEP), env)
    assert out.returncode == 0, out.stderr
    assert "SIGTERM" not in out.stderr  # the kernel that swept ends quietly (Ray's stack dumps stay out)
    wait_for(lambda: not recorder_pids(str(project)), timeout=60, what="the recorder to give up for now")
    saved = keep_journals(project, tmp_path / "saved")
    assert saved

    def recorded_once():
        runs = all_runs(project, uri=uri)
        parents = [r for r in runs if r.data.tags.get("mlops.kind") == "sweep"]
        assert len(parents) == 1 and parents[0].data.metrics["best_score"] == 6.0
        trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
        assert sorted(r.data.params["a"] for r in trials) == ["1", "2", "3"]
        assert {r.info.status for r in runs} == {"FINISHED"}

    with mlflow_server(tmp_path / "late", port):
        subprocess.run([PY, "-m", "mlops_jupyter.cli", "runs"], cwd=project, capture_output=True,
                       env={**os.environ, **env}, check=True)
        wait_for(lambda: not journals(project) and not recorder_pids(str(project)), timeout=180,
                 what="the waiting records")
        recorded_once()
        replay_twice(project, saved, env)
        recorded_once()


def test_a_pipelines_recorder_yields_the_cpu_to_its_steps_then_catches_up(project):
    """A pipeline's recorder works in the gaps its steps leave, niced. Where Linux groups processes by session
    for scheduling (autogroup), its session's group is niced too: the recorder runs in a session of its own, and
    there its niceness alone left it a whole core beside the first steps' Ray workers. Once the steps are done,
    it gets normal priority back (for a root user: raising a priority needs the right to)."""
    rec = Recording(config.resolve(project), "niced", nice=True)
    key = rec.start_run("niced")
    pid = rec.link.proc.pid
    try:
        # `nice -n 10` sets it, then execs the recorder: the first instants after Popen can still read 0
        wait_for(lambda: niceness(pid) == {10}, timeout=10, interval=0.01,
                 what="the recorder and its group at nice 10")
        rec.unnice()
        if os.geteuid() == 0:
            assert niceness(pid) == {0}
    finally:
        rec.end_run(key)
        outcome = rec.close(timeout=60)
    assert outcome.run_ids.get(key) and [r.info.status for r in all_runs(project)] == ["FINISHED"]


def test_a_recorder_killed_mid_replay_and_replayed_again_writes_each_record_once(project):
    settings = config.resolve(project)
    with store_locked(project):
        rec = Recording(settings, "replays")
        for i in range(30):
            key = rec.start_run(f"r{i}", params={"i": i})
            rec.log(key, metrics={"m": i})
            rec.end_run(key)
        rec.close(timeout=3)
        wait_for(lambda: not recorder_pids(str(project)), timeout=60, what="the writer's recorder to stop")
    (journal,) = journals(project)
    cmd = [PY, "-m", "mlops_jupyter.tracking.recorder", str(journal)]
    first = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    wait_for(lambda: len(all_runs(project)) >= 5, timeout=120, interval=0.02, what="some records written")
    first.kill()
    first.wait()
    saved = journal.read_bytes()
    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL, timeout=300)  # the same recorder, started again
    for n in range(2):  # and the whole journal replayed twice more
        copy = journal.with_name(journal.stem + f"-again{n}.jsonl")
        copy.write_bytes(saved)
        subprocess.run([PY, "-m", "mlops_jupyter.tracking.recorder", str(copy)], check=True,
                       stderr=subprocess.DEVNULL, timeout=300)
    runs = all_runs(project)
    assert sorted(r.info.run_name for r in runs) == sorted(f"r{i}" for i in range(30))
    assert {r.info.status for r in runs} == {"FINISHED"}
    from mlflow import MlflowClient

    history = MlflowClient(store_uri(project)).get_metric_history(runs[0].info.run_id, "m")
    assert len(history) == 1 and not list(journal.parent.glob("*.jsonl"))


def test_quick_cells_written_whole_once_after_a_recorder_dies_mid_cell(project):
    """A quick cell's start and end are written as one record ("cell"): a recorder that dies between its steps
    (here: once it has written all but the run's end) leaves the next one just the rest, and whole replays of
    the journal add nothing."""
    from mlops_jupyter.tracking import recorder as recorder_module

    cells = ["%load_ext mlops_jupyter"] + [f"%%mlops run --name c{i} --metrics acc\nlr = {i}\nacc = {i} / 10\n"
                                           f"print('cell', {i})" for i in range(6)]
    with store_locked(project):
        out = papermill(project, notebook(project / "quick.ipynb", cells), {"MLOPS_RECORDER_EXIT_GRACE_S": "1"})
        assert out.returncode == 0, out.stderr[-3000:]
        wait_for(lambda: not recorder_pids(str(project)), timeout=60, what="the kernel's recorder to give up")
    (journal,) = journals(project)
    saved = journal.read_bytes()

    class Died(BaseException):
        pass

    def dies(*_args):
        raise Died

    rec = recorder_module.Recorder(journal, follow=False)
    rec._terminate = dies  # the process dies here, mid-way through the first cell's record
    with pytest.raises(Died):
        rec.drain(None)
    assert [r.info.status for r in all_runs(project)] == ["RUNNING"]
    assert rec.state["step"] == 4  # the cell's start and end as one record: made, values, files, inputs done
    cmd = [PY, "-m", "mlops_jupyter.tracking.recorder"]
    subprocess.run([*cmd, str(journal)], check=True, stderr=subprocess.DEVNULL, timeout=300)
    for n in range(2):
        copy = journal.with_name(journal.stem + f"-again{n}.jsonl")
        copy.write_bytes(saved)
        subprocess.run([*cmd, str(copy)], check=True, stderr=subprocess.DEVNULL, timeout=300)
    runs = {r.info.run_name: r for r in all_runs(project)}
    assert sorted(runs) == [f"c{i}" for i in range(6)] and {r.info.status for r in runs.values()} == {"FINISHED"}
    from mlflow import MlflowClient

    client = MlflowClient(store_uri(project))
    for i in range(6):
        run = runs[f"c{i}"]
        assert run.data.params == {"lr": str(i)} and run.data.metrics == {"acc": i / 10}
        assert len(client.get_metric_history(run.info.run_id, "acc")) == 1
        assert {"cell/source.py", "cell/stdout.txt"} <= set(artifacts(project, run.info.run_id))
    assert "environment/requirements.txt" in artifacts(project, runs["c0"].info.run_id)
    assert {r.data.tags["mlops.environment"] for r in runs.values()} == {f"runs:/{runs['c0'].info.run_id}/environment"}
    assert not list(journal.parent.glob("*.jsonl"))
