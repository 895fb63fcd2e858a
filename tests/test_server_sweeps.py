"""GET /mlops/sweeps against a real sweep: %%mlops sweep on a real local Ray writes its live table,
trials (other processes) read it while they run, and the route shows the ended sweep from MLflow."""

from __future__ import annotations

import json

import pytest
from harness import all_runs
from mlflow_seed import write_notebook
from test_sweep import shutdown_and_check

# each trial waits past two table writes, then reads the table the way the server does
BODY = """\
import time
from pathlib import Path
from mlops_jupyter.sweep import live
time.sleep(1.2)
seen = [s for s in live.read_progress(Path(state)) if s['live']]
running = max((sum(t['status'] == 'RUNNING' for t in s['trials']) for s in seen), default=0)
acc = len(seen) + running / 10 + x / 1000
"""


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 << 20)
    yield ray
    shutdown_and_check(ray)


@pytest.fixture
def jp_root_dir(project):
    return project


@pytest.fixture
def jp_server_config():
    return {"ServerApp": {"jpserver_extensions": {"mlops_jupyter": True}}}


async def test_the_live_table_is_seen_while_trials_run_and_the_ended_sweep_comes_from_mlflow(
        jp_fetch, ip, project, monkeypatch, local_ray):
    nb = write_notebook(project / "nb.ipynb")
    monkeypatch.setenv("MLOPS_NOTEBOOK", str(nb))  # what JupyterLab's session name tells a kernel
    ip.user_ns["state"] = str(project / ".mlops")
    result = ip.run_cell('%%mlops sweep --space "x=grid(1, 2)" --concurrency 2 --metric acc '
                         f'--mode max --name live-one\n{BODY}')
    assert result.success, result.error_in_exec
    df = ip.user_ns["sweep"]
    # every trial saw one live sweep with at least itself RUNNING in the table
    assert len(df) == 2 and (df["acc"] >= 1.1).all(), df
    assert ip._mlops_magics.tracker.flush(timeout=60) == 0
    (table,) = (project / ".mlops" / "sweeps").glob("*.json")
    body = json.loads(table.read_text())
    assert body["finished"] and body["status"] == "FINISHED" and not table.with_suffix(".lock").exists()

    resp = await jp_fetch("mlops", "sweeps", params={"path": "nb.ipynb"})
    (sweep,) = json.loads(resp.body)["sweeps"]
    (parent,) = [r for r in all_runs(project) if r.info.run_name == "live-one"]
    assert sweep["run_id"] == parent.info.run_id and body["run_id"] in (None, parent.info.run_id)
    assert (sweep["live"], sweep["status"], sweep["metric"], sweep["samples"]) == (False, "FINISHED", "acc", 2)
    assert sorted(t["status"] for t in sweep["trials"]) == ["FINISHED", "FINISHED"]
    assert sorted(t["params"]["x"] for t in sweep["trials"]) == ["1", "2"]  # from MLflow: params are text
    assert sweep["best"]["metrics"]["acc"] == max(df["acc"])
