"""Tracking in real kernels: JupyterLab-style sessions, papermill, SIGKILL, a store that is down."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from harness import (all_runs, artifacts, finished_runs, free_port, kernel, mlflow_server, niceness, notebook,
                     read_artifact, recorder_pids, store_uri, text_of, wait_for)


def test_lab_session_records_notebook_cell_parameters_and_figure(project):
    nb = notebook(project / "train.ipynb", [("lr = 0.05\nepochs = 3", ["parameters"]), "x"])
    import nbformat

    params_id = nbformat.read(nb, as_version=4).cells[0].id
    with kernel(project, env={"JPY_SESSION_NAME": str(nb)}) as k:
        reply, _ = k.run("%load_ext mlops_jupyter\n%mlops init")
        assert reply["status"] == "ok"
        assert k.run("lr = 0.05\nepochs = 3", cell_id=params_id)[0]["status"] == "ok"
        # the summary line comes after everything the cell printed (its streams are flushed ahead of it), once
        reply, msgs = k.run("%%mlops run\nimport sys\nprint('first')\nprint('epoch ' * 2000, file=sys.stderr)\n"
                            "print('last')")
        kinds = [(m["msg_type"], m["content"].get("name") or "mlops-run-line" in str(m["content"].get("data")))
                 for m in msgs if m["msg_type"] in ("stream", "display_data")]
        assert kinds[-1] == ("display_data", True) and kinds.count(("display_data", True)) == 1, kinds
        assert "last" in "".join(m["content"]["text"] for m in msgs if m["msg_type"] == "stream")
        reply, msgs = k.run("%%mlops run --metrics acc\nimport matplotlib.pyplot as plt\n"
                            "plt.plot([1, 2, 3])\nacc = 0.91\nprint('fit')", cell_id="cell-fit")
        assert reply["status"] == "ok"
        (line,) = [m for m in msgs if m["msg_type"] == "display_data" and "mlops-run-line" in str(m["content"]["data"])]
        line_id = line["content"]["transient"]["display_id"]
        (run,) = [r for r in finished_runs(project, 2) if r.data.tags.get("mlops.cell_id") == "cell-fit"]
        later = []  # the line is completed in place when the recorder has written the run
        wait_for(lambda: later.extend(k.drain_iopub(0.5)) or run.info.run_id[:8] in text_of(msgs + later),
                 timeout=60, what="the summary line to show the run id")
    assert run.data.tags["mlops.notebook"] == str(nb)
    assert run.data.tags["mlops.cell_id"] == "cell-fit"
    assert run.data.tags["mlops.execution_count"] == str(reply["execution_count"])  # the cell's In[n]
    assert run.data.tags["mlflow.source.name"] == str(nb)
    assert run.data.params == {"lr": "0.05", "epochs": "3"}
    assert run.data.metrics == {"acc": pytest.approx(0.91)}
    assert any(p.endswith(".png") for p in artifacts(project, run.info.run_id, "cell/outputs"))
    # one summary line under the cell, completed in place once the recorder has written the run
    updates = [m["content"]["data"]["text/plain"] for m in later if m["msg_type"] == "update_display_data"
               and m["content"]["transient"]["display_id"] == line_id]
    assert updates and f"run {run.info.run_id[:8]} FINISHED" in updates[-1]
    shown = text_of(msgs + later)
    assert f"mlops: run {run.info.run_id[:8]} FINISHED · acc=0.91" in shown
    html = [m["content"]["data"]["text/html"] for m in msgs + later if "mlops-run-line" in
            m["content"].get("data", {}).get("text/html", "")][-1]
    assert run.info.run_id in html and "mlflow ui --backend-store-uri" in html  # the full id, how to open the UI


def test_papermill_run_records_injected_parameters(project):
    nb = notebook(project / "pm.ipynb", [
        "%load_ext mlops_jupyter\n%mlops init",
        ("lr = 0.1\nlayers = [8, 4]", ["parameters"]),
        "%%mlops run --metrics score\nscore = lr * 10\nscore",
        "%%mlops run --name wait\nimport time\ntime.sleep(3)  # the first cell's line is completed meanwhile\n'x'",
    ])
    subprocess.run([sys.executable, "-m", "papermill", str(nb), str(project / "out.ipynb"), "-p", "lr", "0.3",
                    "--log-level", "WARNING"], cwd=project, check=True, timeout=300)
    run, second = finished_runs(project, 2)
    assert run.data.params == {"lr": "0.3", "layers": "[8, 4]"}
    assert run.data.metrics == {"score": pytest.approx(3.0)}
    assert run.data.tags["mlops.notebook"] == str(nb)
    import nbformat

    # papermill sends no cell ids: the run still names its cell, found by source in the notebook
    assert run.data.tags["mlops.cell_id"] == nbformat.read(nb, as_version=4).cells[2].id
    # the summary line of a cell is never recorded as one of the cell's own outputs
    for r in (run, second):
        assert "mlops: run" not in read_artifact(project, r.info.run_id, "cell/outputs.json")


def test_a_notebooks_recorder_leaves_the_cpu_to_its_cells(project):
    """The kernel's recorder runs niced, its session's group too: it writes in the time the notebook's cells (and
    a Ray starting as the extension loads) leave free, rather than take a core from them; the run is written whole."""
    with kernel(project) as k:
        k.run("%load_ext mlops_jupyter\n%mlops init")
        reply, msgs = k.run("%%mlops run --name busy --metrics acc\nacc = sum(i * i for i in range(10**6)) % 7")
        assert reply["status"] == "ok", text_of(msgs)
        reply, msgs = k.run("print(get_ipython()._mlops_magics.tracker.link.proc.pid)")
        recorder = int(text_of(msgs).strip())
        wait_for(lambda: niceness(recorder) == {10}, timeout=10, interval=0.01,
                 what="the recorder and its group at nice 10")
        assert k.run("assert get_ipython()._mlops_magics.tracker.flush(60) == 0", timeout=90)[0]["status"] == "ok"
    (run,) = finished_runs(project, 1)
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.runName"] == "busy"
    assert run.data.metrics["acc"] == sum(i * i for i in range(10**6)) % 7


@pytest.mark.parametrize("recorder_dies_too", [False, True])
def test_sigkilled_kernel_leaves_no_run_running(project, recorder_dies_too):
    with kernel(project) as k:
        k.run("%load_ext mlops_jupyter\n%mlops init")
        reply, msgs = k.run("print(get_ipython()._mlops_magics.tracker.link.proc.pid)")
        recorder = int(text_of(msgs).strip())
        k.run("%%mlops run --name long\nimport time\ntime.sleep(120)", wait=False)
        wait_for(lambda: [r for r in all_runs(project) if r.info.status == "RUNNING"], timeout=60,
                 what="the long cell's run to start")
        if recorder_dies_too:
            os.kill(recorder, signal.SIGKILL)
        os.kill(k.pid, signal.SIGKILL)
        wait_for(lambda: not k.km.is_alive(), timeout=10, what="the kernel to die")
    if recorder_dies_too:
        time.sleep(1)
        assert [r.info.status for r in all_runs(project)] == ["RUNNING"]
        with kernel(project) as k2:  # the next %load_ext in the project finds the orphan
            k2.run("%load_ext mlops_jupyter")
            wait_for(lambda: all_runs(project)[0].info.status == "KILLED", timeout=60, what="KILLED")
    else:
        wait_for(lambda: all_runs(project)[0].info.status == "KILLED", timeout=60, what="KILLED")
    (run,) = all_runs(project)
    assert run.data.tags["mlops.end_reason"].startswith("the kernel exited")
    assert not list((project / ".mlops" / "journal").glob("*.jsonl"))


def test_unreachable_server_then_back_records_arrive_after_kernel_exit(project, tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    env = {"MLOPS_TRACKING_URI": uri, "MLOPS_RECORDER_EXIT_GRACE_S": "1"}
    with kernel(project, env=env) as k:
        k.run("%load_ext mlops_jupyter\n%mlops init")
        reply, msgs = k.run("%%mlops run --metrics acc\nacc = 0.7\nprint('still works')")
        assert reply["status"] == "ok" and "still works" in text_of(msgs)
        shown = text_of(msgs + k.drain_iopub(8.0))
        assert "not answering" in shown and ".mlops/journal/" in shown
    wait_for(lambda: not recorder_pids(str(project)), timeout=30, what="the recorder to give up for now")
    assert list((project / ".mlops" / "journal").glob("*.jsonl")), "records must wait in the journal"

    with mlflow_server(tmp_path / "late", port=port):
        with kernel(project, env=env) as k:
            k.run("%load_ext mlops_jupyter")  # finds the orphan journal and finishes it
            (run,) = finished_runs(project, 1, uri=uri)
        assert run.info.status == "FINISHED" and run.data.metrics == {"acc": pytest.approx(0.7)}
        wait_for(lambda: not list((project / ".mlops" / "journal").glob("*.jsonl")), timeout=30,
                 what="the journal to be emptied")


def test_locked_store_cell_runs_and_records_arrive_when_released(ip, project, capsys):
    ip.run_cell("%%mlops run\nfirst = 1")  # creates the store
    assert ip._mlops_magics.tracker.flush(60) == 0
    con = sqlite3.connect(store_uri(project)[len("sqlite:///"):], isolation_level=None)
    con.execute("BEGIN EXCLUSIVE")
    try:
        result = ip.run_cell("%%mlops run --metrics acc\nacc = 0.5")
        assert result.success
        wait_for(lambda: ip._mlops_magics.tracker.degraded, timeout=15, what="the warning")
    finally:
        con.execute("ROLLBACK")
        con.close()
    runs = finished_runs(project, 2)
    assert runs[-1].data.metrics == {"acc": 0.5}
    out = capsys.readouterr().out
    assert "not answering" in out and "waits in" in out
