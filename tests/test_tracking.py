"""Tracked cells in the real IPython shell against the real SQLite MLflow store."""

import subprocess
import sys

import pytest
from harness import all_runs, artifacts, git, read_artifact
from IPython.core.error import UsageError


def flush(ip):
    assert ip._mlops_magics.tracker.flush(timeout=60) == 0


def test_load_ext_imports_no_engine():
    code = ("import sys\nfrom IPython.testing.globalipapp import start_ipython\nip = start_ipython()\n"
            "ip.run_line_magic('load_ext', 'mlops_jupyter')\n"
            "print(sorted(m for m in ('mlflow', 'dvc', 'ray', 'papermill') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("[]")


def test_tracked_cell_records_params_metrics_tags_and_artifacts(ip, project, capsys):
    (project / "dirty.txt").write_text("x")
    git(project, "add", "dirty.txt")  # staged, uncommitted: the run must say dirty and keep the diff
    ip.run_cell("%mlops init --experiment demo")
    result = ip.run_cell("%%mlops run --metrics acc,loss --tag team=vision --param seed=7\n"
                         "lr = 0.1\ndepth, width = 3, 'wide'\nacc = 0.5 + lr\nloss = 1 - acc\n"
                         "print('training done')\nacc")
    assert result.success and result.result == pytest.approx(0.6)
    flush(ip)
    (run,) = all_runs(project)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"lr": "0.1", "depth": "3", "width": "wide", "seed": "7"}
    assert run.data.metrics == {"acc": pytest.approx(0.6), "loss": pytest.approx(0.4)}
    tags = run.data.tags
    assert tags["team"] == "vision"
    assert tags["mlops.git.commit"] == git(project, "rev-parse", "HEAD").strip()
    assert tags["mlops.git.dirty"] == "true"
    assert tags["mlflow.user"] and tags["mlops.source_hash"] and tags["mlops.execution_count"]
    assert tags["mlops.environment"] == f"runs:/{run.info.run_id}/environment"
    files = artifacts(project, run.info.run_id)
    for expected in ("cell/source.py", "cell/stdout.txt", "cell/outputs.json", "git/diff.patch",
                     "environment/requirements.txt", "environment/python.json"):
        assert expected in files
    assert "training done" in read_artifact(project, run.info.run_id, "cell/stdout.txt")
    assert "dirty.txt" in read_artifact(project, run.info.run_id, "git/diff.patch")
    assert "mlflow==" in read_artifact(project, run.info.run_id, "environment/requirements.txt")
    assert "lr = 0.1" in read_artifact(project, run.info.run_id, "cell/source.py")
    out = capsys.readouterr().out
    # one short line, shown at once (the id pending) and completed in place once the run is written
    *_, line = (ln for ln in out.splitlines() if ln.startswith("mlops: run"))
    assert line.startswith(f"mlops: run {run.info.run_id[:8]} FINISHED · acc=0.6 · loss=0.4 · ")
    assert line.endswith(" artifacts") and len(line) < 80
    # the command that opens the MLflow UI is in %mlops runs
    assert "mlflow ui --backend-store-uri" in repr(ip.run_line_magic("mlops", "runs"))
    # .mlops/ never shows up in git
    assert ".mlops" not in git(project, "status", "--porcelain", "--untracked-files=all")


def test_failing_cell_ends_failed_with_traceback_and_reraises(ip, project):
    result = ip.run_cell("%%mlops run\nx = 1\nraise ValueError('boom 42')")
    assert isinstance(result.error_in_exec, ValueError) and str(result.error_in_exec) == "boom 42"
    flush(ip)
    (run,) = all_runs(project)
    assert run.info.status == "FAILED"
    tb = read_artifact(project, run.info.run_id, "cell/traceback.txt")
    assert "ValueError: boom 42" in tb


def test_keyboard_interrupt_ends_killed(ip, project):
    result = ip.run_cell("%%mlops run\nraise KeyboardInterrupt")
    assert isinstance(result.error_in_exec, KeyboardInterrupt)
    flush(ip)
    (run,) = all_runs(project)
    assert run.info.status == "KILLED"


def test_rerun_makes_a_new_run_with_the_same_cell_key(ip, project):
    cell = "%%mlops run --metrics acc\nacc = 0.9"
    assert ip.run_cell(cell).success and ip.run_cell(cell).success
    flush(ip)
    first, second = all_runs(project)
    assert first.info.run_id != second.info.run_id
    assert first.data.tags["mlops.cell_key"] == second.data.tags["mlops.cell_key"]
    assert {first.info.status, second.info.status} == {"FINISHED"}


def test_mlflow_api_inside_the_cell_lands_in_its_run_and_nested_runs_work(ip, project):
    result = ip.run_cell(
        "%%mlops run --name fit\nimport mlflow\nmlflow.log_metric('from_api', 3.5)\nmlflow.log_param('p', 'x')\n"
        "with mlflow.start_run(nested=True) as child:\n    mlflow.log_metric('inner', 1)\n"
        "child_id = child.info.run_id\nactive_inside = mlflow.active_run().info.run_id")
    assert result.success, result.error_in_exec
    flush(ip)
    runs = {r.info.run_id: r for r in all_runs(project)}
    parent = runs[ip.user_ns["active_inside"]]
    child = runs[ip.user_ns["child_id"]]
    assert parent.info.run_name == "fit" and parent.info.status == "FINISHED"
    assert parent.data.metrics["from_api"] == 3.5 and parent.data.params["p"] == "x"
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.info.experiment_id == parent.info.experiment_id
    import mlflow

    assert mlflow.active_run() is None  # nothing left active after the cell


def test_autotrack_tracks_code_cells_and_skips_magics(ip, project):
    ip.run_cell("%mlops autotrack on")
    ip.run_cell("a = 1\nb = a + 1")
    ip.run_cell("%mlops runs")
    ip.run_cell("# only a comment")
    ip.run_cell("%mlops autotrack off")
    ip.run_cell("c = 3")
    flush(ip)
    (run,) = all_runs(project)
    assert run.data.params == {"a": "1"}


def test_runs_table_and_compare_mark_differences(ip, project):
    for lr in (0.1, 0.2):
        ip.run_cell(f"%%mlops run --metrics acc\nlr = {lr}\nepochs = 5\nacc = 1 - lr")
    table = ip.run_line_magic("mlops", "runs --last 5")
    text = repr(table)
    assert text.count("FINISHED") == 2 and "lr=0.2" in text
    ids = [r.info.run_id for r in all_runs(project)]
    cmp = ip.run_line_magic("mlops", f"compare {ids[0]} {ids[1]}")
    lines = repr(cmp).splitlines()
    assert any(line.startswith("≠") and "param lr" in line for line in lines)
    assert any(not line.startswith("≠") and "param epochs" in line for line in lines)
    assert "<table" in cmp._repr_html_()
    # the 8-character prefixes the runs table shows, and "the last N", name the same runs
    assert repr(ip.run_line_magic("mlops", f"compare {ids[0][:8]} {ids[1][:8]}")) == repr(cmp)
    assert repr(ip.run_line_magic("mlops", "compare --last 2")) == repr(cmp)
    # the same from a terminal
    out = subprocess.run([sys.executable, "-m", "mlops_jupyter.cli", "runs", "--last", "1"], cwd=project,
                         capture_output=True, text=True, check=True).stdout
    assert ids[1][:8] in out and ids[0][:8] not in out


@pytest.mark.parametrize("line, names", [
    ("%mlops runs --last x", "--last"),
    ("%mlops runs --last 0", "--last"),
    ("%mlops frobnicate", "frobnicate"),
    ("%mlops", "verb"),
    ("%mlops autotrack maybe", "maybe"),
    ("%mlops compare onlyone", "two or more"),
    ("%mlops compare 0123abcd 4567ef01", "no run"),
    ("%mlops init --tracking-uri not-a-uri", "not a URI"),
    ("%mlops run --name x", "cell magic"),
    ("%mlops init --experiment 'unclosed", "quotes"),
])
def test_bad_line_arguments_raise_a_usage_error_naming_them(ip, project, line, names):
    verb_line = line[len("%mlops"):].strip()
    with pytest.raises(UsageError) as err:
        ip.run_line_magic("mlops", verb_line)
    assert names in str(err.value)


@pytest.mark.parametrize("header, names", [
    ("%%mlops run --metrics 1bad", "--metrics"),
    ("%%mlops run --tag novalue", "--tag"),
    ("%%mlops run --param =3", "--param"),
    ("%%mlops run --bogus", "--bogus"),
])
def test_bad_run_header_reports_and_does_not_run_the_body(ip, project, header, names):
    result = ip.run_cell(f"{header}\nside_effect = 1")
    assert isinstance(result.error_in_exec, UsageError) and names in str(result.error_in_exec)
    assert "side_effect" not in ip.user_ns
    assert "Right form" in str(result.error_in_exec)
    assert all_runs(project) == []


def test_applied_journal_is_compacted_and_nothing_is_lost(ip, project, monkeypatch):
    monkeypatch.setenv("MLOPS_JOURNAL_COMPACT_BYTES", "1")
    for i in range(5):
        assert ip.run_cell(f"%%mlops run --metrics m\nm = {i}").success
    flush(ip)
    assert sorted(r.data.metrics["m"] for r in all_runs(project)) == [0, 1, 2, 3, 4]
    journal = ip._mlops_magics.tracker.journal.path
    assert journal.stat().st_size < 2000  # emptied once applied, instead of growing for the kernel's life


def test_unwritable_state_leaves_the_cell_running(ip, project, capsys):
    (project / ".mlops").mkdir()
    (project / ".mlops" / "journal").write_text("not a folder")
    for i in range(2):
        result = ip.run_cell(f"%%mlops run\nstill_ran = {i}")
        assert result.success and ip.user_ns["still_ran"] == i
        assert "this cell is not tracked" in capsys.readouterr().out
    with pytest.raises(UsageError, match="cannot write the project's tracking state"):
        ip.run_line_magic("mlops", "init")


def test_unwritable_artifact_store_then_fixed_records_arrive(ip, project, capsys):
    (project / ".mlops").mkdir()
    (project / ".mlops" / "artifacts").write_text("a file where the artifact folder should be")
    result = ip.run_cell("%%mlops run --metrics acc\nacc = 0.25\nprint('ran')")
    assert result.success and ip.user_ns["acc"] == 0.25
    tracker = ip._mlops_magics.tracker
    from harness import wait_for

    wait_for(lambda: tracker.degraded, timeout=60, what="the store problem to be reported")
    assert "waits in" in capsys.readouterr().out  # one warning line under the cell says where
    (project / ".mlops" / "artifacts").unlink()
    flush(ip)
    (run,) = all_runs(project)
    assert run.info.status == "FINISHED" and run.data.metrics == {"acc": 0.25}
    assert "ran" in read_artifact(project, run.info.run_id, "cell/stdout.txt")


def test_runs_open_in_the_stock_mlflow_ui(ip, project):
    """The exact command the summary line prints serves the run, its params, metrics and artifacts."""
    import json
    import os
    import shlex
    import signal
    import socket
    import urllib.request

    from harness import wait_for

    ip.run_cell("%%mlops run --name ui-check --metrics acc\nlr = 0.3\nacc = 0.8\nprint('hi')")
    flush(ip)
    (run,) = all_runs(project)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = shlex.split(ip._mlops_magics.tracker.settings.where_to_look())
    assert cmd[:2] == ["mlflow", "ui"]
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", *cmd[1:], "--host", "127.0.0.1", "--port", str(port)],
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"

    def get(path):
        try:
            with urllib.request.urlopen(base + path, timeout=5) as resp:
                return resp.read()
        except OSError:
            return None
    try:
        wait_for(lambda: get("/health"), timeout=90, interval=0.5, what="mlflow ui")
        data = json.loads(get(f"/api/2.0/mlflow/runs/get?run_id={run.info.run_id}"))["run"]["data"]
        assert {"key": "lr", "value": "0.3"} in data["params"]
        assert any(m["key"] == "acc" and m["value"] == 0.8 for m in data["metrics"])
        listed = json.loads(get(f"/api/2.0/mlflow/artifacts/list?run_id={run.info.run_id}&path=cell"))
        assert "cell/source.py" in [f["path"] for f in listed["files"]]
        assert b"lr = 0.3" in get(f"/get-artifact?path=cell/source.py&run_uuid={run.info.run_id}")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_cli_reports_an_unreachable_store_in_one_line(project):
    import os
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    env = {**os.environ, "MLOPS_TRACKING_URI": f"http://127.0.0.1:{port}"}
    out = subprocess.run([sys.executable, "-m", "mlops_jupyter.cli", "runs"], cwd=project, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "could not be read" in out.stderr and "Traceback" not in out.stderr
    bad = subprocess.run([sys.executable, "-m", "mlops_jupyter.cli", "runs", "--last", "zero"], cwd=project,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--last" in bad.stderr


def test_child_runs_and_late_values_recorded_through_the_journal(ip, project):
    """The API sweeps and pipelines use: child runs under the cell's run, values known only at the end."""
    tracker = ip._mlops_magics.tracker
    ip.user_ns["tracker"] = tracker
    result = ip.run_cell(
        "%%mlops run --name parent\n"
        "rec = tracker.current\n"
        "for i in range(3):\n"
        "    tracker.child(rec, f'trial-{i}', {'lr': 0.1 * i}, {'score': i / 10},\n"
        "                  status='FAILED' if i == 2 else 'FINISHED', texts={'trial/log.txt': f'log {i}'})\n"
        "rec.params['best_lr'] = 0.1\nrec.metrics['best_score'] = 0.1")
    assert result.success
    flush(ip)
    runs = {r.info.run_name: r for r in all_runs(project)}
    parent = runs["parent"]
    assert parent.data.params["best_lr"] == "0.1" and parent.data.metrics["best_score"] == 0.1
    for i in range(3):
        child = runs[f"trial-{i}"]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.params == {"lr": str(0.1 * i)} and child.data.metrics == {"score": i / 10}
        assert child.info.status == ("FAILED" if i == 2 else "FINISHED")
        assert read_artifact(project, child.info.run_id, "trial/log.txt") == f"log {i}"


def test_a_run_name_that_starts_another_runs_id_is_ambiguous_and_said_so(project):
    from mlflow_seed import seed_runs, write_notebook

    from mlops_jupyter import config
    from mlops_jupyter.errors import InvalidInput
    from mlops_jupyter.tracking import get_runs

    nb = write_notebook(project / "nb.ipynb")
    (first,) = seed_runs(project, nb, [{"name": "base", "start": 1_700_000_000_000}])
    (named,) = seed_runs(project, nb, [{"name": first[:3], "start": 1_700_000_060_000}])
    settings = config.resolve(project)
    with pytest.raises(InvalidInput, match=f"'{first[:3]}' names 2 runs .* give more of the run id"):
        get_runs(settings, [first[:3]])
    assert [r.info.run_id for r in get_runs(settings, [first[:8], "base"])] == [first, first]
    assert get_runs(settings, [named[:8]])[0].info.run_name == first[:3]
