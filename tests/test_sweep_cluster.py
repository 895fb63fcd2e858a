"""%%mlops sweep on a real 2-node ray.cluster_utils.Cluster (one CPU each, no GPU) through --address."""

import threading

import pytest
from harness import all_runs, wait_for
from IPython.core.error import UsageError
from test_sweep import flush, ray_processes


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 100 << 20})
    worker = c.add_node(num_cpus=1, object_store_memory=100 << 20)
    c.wait_for_nodes()
    session = c.head_node.get_session_dir_path()
    c.worker = worker
    yield c
    ray.shutdown()
    c.shutdown()
    wait_for(lambda: not ray_processes(session), timeout=30, what="the cluster's Ray processes to exit")


def test_gpus_asked_of_a_gpu_less_cluster_fail_listing_its_nodes(ip, project, cluster):
    result = ip.run_cell(f'%%mlops sweep --space "x=choice(1)" --gpus-per-trial 0.5 --address {cluster.address} '
                         "--metric acc --mode max\nacc = x")
    assert isinstance(result.error_in_exec, UsageError)
    msg = str(result.error_in_exec)
    assert "0.5 GPU" in msg and msg.count("1 CPU, 0 GPU") == 2
    assert all_runs(project) == []


def test_trials_run_on_both_nodes(ip, project, cluster):
    # each trial waits (up to 2 min) until two have started; with one CPU per node, two trials can only run at once
    # on both nodes. A fixed sleep was not enough: under load the head's reused actor finished all 4 trials before
    # the worker node's actor had started.
    started = project / "started"
    started.mkdir()
    result = ip.run_cell(f'%%mlops sweep --space "i=grid(1, 2, 3, 4)" --address {cluster.address} '
                         "--metric acc --mode max\nimport pathlib, time\n"
                         f"d = pathlib.Path({str(started)!r})\n(d / str(i)).touch()\nt0 = time.time()\n"
                         "while len(list(d.iterdir())) < 2 and time.time() - t0 < 120:\n    time.sleep(0.05)\nacc = i")
    assert result.success, result.error_in_exec
    df = ip.user_ns["sweep"]
    assert set(df["status"]) == {"FINISHED"} and df["node"].nunique() == 2
    flush(ip)
    kids = [r for r in all_runs(project) if "mlflow.parentRunId" in r.data.tags]
    assert len({k.data.tags["mlops.node"] for k in kids}) == 2


def test_a_node_lost_mid_sweep_has_its_trials_retried_elsewhere(ip, project, cluster):
    # the body tells when trials run on the worker node; then that node goes away
    ip.user_ns["worker_node"] = cluster.worker.node_id
    lost = threading.Event()

    def remove_when_busy():
        wait_for(lambda: (project / "on-worker").exists(), timeout=120, what="a trial on the worker node")
        cluster.remove_node(cluster.worker, allow_graceful=False)
        lost.set()

    remover = threading.Thread(target=remove_when_busy, daemon=True)
    remover.start()
    marker = str(project / "on-worker")
    result = ip.run_cell(f'%%mlops sweep --space "i=grid(1, 2, 3, 4)" --address {cluster.address} '
                         "--metric acc --mode max\nimport time, ray\n"
                         "if ray.get_runtime_context().get_node_id() == worker_node:\n"
                         f"    open({marker!r}, 'w').close()\n"
                         "time.sleep(3.0)\nacc = i")
    assert result.success, result.error_in_exec
    remover.join(60)
    assert lost.is_set()
    df = ip.user_ns["sweep"]
    assert set(df["status"]) == {"FINISHED"} and len(df) == 4
    flush(ip)
    kids = [r for r in all_runs(project) if "mlflow.parentRunId" in r.data.tags]
    restarted = [k for k in kids if int(k.data.tags["mlops.restarts"]) > 0]
    assert restarted and all(k.data.tags["mlops.node"] == cluster.head_node.node_id for k in restarted)
