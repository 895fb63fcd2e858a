"""`mlops pipeline run DIR --address`: each step a Ray task on a real 2-node ray.cluster_utils.Cluster (the
head with 2 CPUs, a second node with 1 CPU and 1 logical GPU), papermill inside the worker; the driver keeps
the state, the overrides and the MLflow records of a local run."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from harness import all_runs, notebook, wait_for
from test_sweep import ray_processes

from mlops_jupyter import pipeline
from mlops_jupyter.errors import InvalidInput, PipelineError
from mlops_jupyter.pipeline.state import STATE_DIR
from mlops_jupyter.server.handlers import _ran_on

CLI = [sys.executable, "-m", "mlops_jupyter.cli"]
MB = 1 << 20


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "object_store_memory": 80 * MB})
    c.gpu_node = c.add_node(num_cpus=1, num_gpus=1, object_store_memory=80 * MB)
    c.wait_for_nodes()
    session = c.head_node.get_session_dir_path()
    yield c
    ray.shutdown()
    c.shutdown()
    wait_for(lambda: not ray_processes(session), timeout=60, what="the cluster's Ray processes to exit")


def fan_out(project: Path, extra: tuple = ()) -> Path:
    """prep -> (train on a GPU, count, *extra) -> report; train prints the GPUs Ray gave it."""
    return notebook(project / "fan.ipynb", [
        ("n = 3\nrate = 0.5\nfail = False", ["parameters"]),
        ("data = list(range(n))", ["step:prep"]),
        ("import os\nprint('CUDA_VISIBLE_DEVICES=' + os.environ.get('CUDA_VISIBLE_DEVICES', 'unset'))\n"
         "total = sum(data) * rate", ["step:train", "after:prep", "limit:nvidia.com/gpu:1"]),
        ("size = len(data)", ["step:count", "after:prep"]),
        *extra,
        ("final = total + size", ["step:report", "after:train", "after:count"]),
        ("final", ["metrics"]),
    ])


def ran(result) -> set:
    return {s.name for s in result.steps if s.status == "ran"}


def step_runs(project: Path, parent: str) -> dict:
    return {r.info.run_name: r for r in all_runs(project) if r.data.tags.get("mlflow.parentRunId") == parent}


def test_steps_run_on_the_cluster_with_the_records_of_a_local_run(project, cluster, monkeypatch):
    nb = fan_out(project)
    pipeline.export(nb, "local")
    pipeline.export(nb, "pipe")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # the local run's GPU check: this machine has none
    local = pipeline.run("local", echo=lambda s: None)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    lines = []
    remote = pipeline.run("pipe", address=cluster.address, echo=lines.append)
    assert remote.ok and ran(remote) == {"prep", "train", "count", "report"}, "\n".join(lines)
    assert json.loads((project / "pipe" / "metrics" / "report.json").read_text()) == {"final": 4.5}

    # the GPU step landed on the GPU node, with CUDA_VISIBLE_DEVICES set by Ray
    kids = step_runs(project, remote.mlflow_run)
    train = kids["train"].data.tags
    assert train["mlops.node"] == cluster.gpu_node.node_id and train["mlops.gpu_ids"] == "0"
    assert train["mlops.resources"] == "gpu=1"
    assert "CUDA_VISIBLE_DEVICES=0" in (Path(remote.runs_dir) / "train.ipynb").read_text()
    assert all(k.data.tags["mlops.node"] for k in kids.values())
    assert any("train" in ln and f"on node {cluster.gpu_node.node_ip_address}" in ln for ln in lines)
    state = json.loads((project / "pipe" / STATE_DIR / "state.json").read_text())["steps"]
    assert _ran_on(state["train"]) == {"id": cluster.gpu_node.node_id, "ip": cluster.gpu_node.node_ip_address,
                                       "resources": {"gpu": 1}, "gpus": "0"}  # the sidebar's GET pipeline

    # the same runs, params and metrics as the local run's
    local_kids = step_runs(project, local.mlflow_run)
    assert set(kids) == set(local_kids)
    for name, run in kids.items():
        assert run.data.params == local_kids[name].data.params
        assert run.data.metrics == local_kids[name].data.metrics
        assert run.info.status == "FINISHED"
    parents = {r.info.run_id: r for r in all_runs(project)}
    assert parents[remote.mlflow_run].data.params == parents[local.mlflow_run].data.params

    # unchanged: a fresh process never imports Ray, let alone reaches the cluster
    code = (f"import sys; from mlops_jupyter import pipeline; r = pipeline.run('pipe', address={cluster.address!r}, "
            "echo=lambda s: None); assert r.ok and r.count('skipped') == 4, r; assert 'ray' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=project)
    assert done.returncode == 0, done.stderr

    # an override re-runs the steps that read it, on the cluster
    over = pipeline.run("pipe", params=["rate=2.0"], address=cluster.address, echo=lines.append)
    assert ran(over) == {"train", "report"}
    assert json.loads((project / "pipe" / "metrics" / "report.json").read_text()) == {"final": 9.0}
    assert step_runs(project, over.mlflow_run)["train"].data.params == {"rate": "2.0"}


def test_a_failed_step_resumes_through_a_hand_off_storage(project, cluster, tmp_path):
    nb = fan_out(project, extra=[("if fail:\n    raise ValueError('bad batch')\nchecked = True",
                                  ["step:check", "after:prep"]),
                                 ("checked", ["step:publish", "after:check"])])
    pipeline.export(nb, "pipe")
    storage = tmp_path / "handoff"
    first = pipeline.run("pipe", params=["fail=True"], address=cluster.address, storage=str(storage),
                         echo=lambda s: None)
    status = {s.name: s for s in first.steps}
    assert status["check"].status == "failed" and "ValueError: bad batch" in status["check"].error
    assert status["publish"].status == "blocked" and ran(first) == {"prep", "train", "count", "report"}
    assert (storage / "artifacts" / "prep").is_dir()  # the hand-off went through the storage...
    assert (project / "pipe" / "artifacts" / "train").is_dir()  # ...and came back to the pipeline folder
    assert (Path(first.runs_dir) / "check.ipynb").is_file()
    kids = step_runs(project, first.mlflow_run)
    assert kids["check"].info.status == "FAILED" and "bad batch" in kids["check"].data.tags["mlops.error"]

    again = pipeline.run("pipe", address=cluster.address, storage=str(storage), echo=lambda s: None)
    assert again.ok and ran(again) == {"check", "publish"}
    assert again.count("skipped") == 4
    assert all(st == "fresh" for _, st, _ in pipeline.status("pipe"))


def test_siblings_read_their_producers_hand_off_through_the_storage_at_once(project, cluster, tmp_path):
    """Steps that start together and read one producer's hand-off each find it whole: the driver puts it into
    the storage once (it used to put it again for each of them, removing it under the feet of the others)."""
    nb = notebook(project / "sib.ipynb", [("k = 0", ["parameters"]),
                                          ("data = list(range(1000))\nmore = {'a': [1, 2]}", ["step:prep"]),
                                          *[(f"r{j} = sum(data) + len(more) + k", [f"step:d{j}", "after:prep"])
                                            for j in range(5)]])
    pipeline.export(nb, "pipe")
    siblings = {f"d{j}" for j in range(5)}
    # prep runs, then is skipped: its hand-off is put from the pipeline folder
    for params, runs in (([], siblings | {"prep"}), (["k=1"], siblings)):
        result = pipeline.run("pipe", params=params, address=cluster.address, storage=str(tmp_path / "handoff"),
                              echo=lambda s: None)
        assert result.ok and ran(result) == runs, [(s.name, s.error) for s in result.steps]


def test_a_step_whose_kernel_dies_on_a_node_quotes_what_the_kernel_said_last(project, cluster):
    from test_pipeline import DIES

    pipeline.export(notebook(project / "dies.ipynb", [("x = 1", ["step:first"]),
                                                      ("print('before the crash')", ["step:second"]), DIES]), "pipe")
    result = pipeline.run("pipe", address=cluster.address, echo=lambda s: None)
    second = next(s for s in result.steps if s.name == "second")
    assert second.status == "failed" and "killed by SIGABRT; the kernel's last output: native: CUDA error 700" in second.error, second
    assert "before the crash" in Path(second.notebook).read_text()  # what ran before it, back from the node


def test_independent_steps_run_at_once_across_the_nodes(project, cluster):
    """Three independent steps meet at a barrier (each waits until all three have arrived): they can pass only
    by running at the same time, which takes 3 CPUs, so both nodes (2 + 1 CPUs)."""
    meet = ("import pathlib, time\nhere = pathlib.Path('barrier')\nhere.mkdir(exist_ok=True)\n"
            "(here / '{0}').touch()\nuntil = time.time() + 120\n"
            "while len(list(here.iterdir())) < 3 and time.time() < until:\n    time.sleep(0.05)\n"
            "met_{0} = len(list(here.iterdir()))")
    nb = notebook(project / "meet.ipynb", [("start = 0", ["step:start"]),
                                           *[(meet.format(x), [f"step:{x}", "after:start"]) for x in "abc"],
                                           ("met = min(met_a, met_b, met_c)", ["step:report", "after:a", "after:b",
                                                                               "after:c"]),
                                           ("met", ["metrics"])])
    pipeline.export(nb, "pipe")
    result = pipeline.run("pipe", address=cluster.address, echo=lambda s: None)
    assert result.ok, [(s.name, s.error) for s in result.steps]
    kids = step_runs(project, result.mlflow_run)
    assert kids["report"].data.metrics == {"met": 3.0}
    assert {kids[x].data.tags["mlops.node"] for x in "abc"} == {cluster.head_node.node_id,
                                                                 cluster.gpu_node.node_id}


def test_an_unreachable_address_is_named_before_anything_runs(project, ip):
    from IPython.core.error import UsageError

    pipeline.export(fan_out(project), "pipe")
    with pytest.raises(UsageError, match="could not reach .* check --address, RAY_ADDRESS"):
        ip.run_line_magic("mlops", "pipeline run pipe --address 127.0.0.1:1")
    with pytest.raises(PipelineError, match="could not reach the Ray cluster at 127.0.0.1:1") as caught:
        pipeline.run("pipe", address="127.0.0.1:1", echo=lambda s: None)
    assert caught.value.what == "address" and "ray://head:10001" in str(caught.value)
    assert not (project / "pipe" / STATE_DIR / "state.json").exists() and all_runs(project) == []
    done = subprocess.run(CLI + ["pipeline", "run", "pipe", "--address", "127.0.0.1:1"], capture_output=True,
                          text=True)
    assert done.returncode == 2 and "check --address, RAY_ADDRESS" in done.stderr and "Traceback" not in done.stderr
    # the address from [tool.mlops] ray-address when none is given
    (project / "pyproject.toml").write_text('[project]\nname = "demo"\n[tool.mlops]\nray-address = "127.0.0.1:1"\n')
    with pytest.raises(PipelineError, match="could not reach the Ray cluster at 127.0.0.1:1"):
        pipeline.run("pipe", echo=lambda s: None)


def test_a_hand_off_storage_without_a_cluster_is_refused(project):
    pipeline.export(fan_out(project), "pipe")
    with pytest.raises(InvalidInput, match="used only when the steps run on a Ray cluster") as caught:
        pipeline.run("pipe", storage="s3://bucket/x", echo=lambda s: None)
    assert caught.value.what == "storage"
    done = subprocess.run(CLI + ["pipeline", "run", "pipe", "--storage", "s3://bucket/x"], capture_output=True,
                          text=True)
    assert done.returncode == 2 and "--storage goes with --address" in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run(CLI + ["pipeline", "run", "pipe", "--max-retries", "-1"], capture_output=True, text=True)
    assert done.returncode == 2 and "'-1' is not a whole number >= 0" in done.stderr


def test_a_step_wanting_more_gpus_than_any_node_has_is_refused(project, cluster):
    pipeline.export(notebook(project / "big.ipynb", [("x = 1", ["step:prep"]),
                                                     ("y = x", ["step:fit", "after:prep", "resources:gpu=2;cpu=1"])]),
                    "pipe")
    with pytest.raises(PipelineError, match="step 'fit' asks for 1 CPU, 2 GPU") as caught:
        pipeline.run("pipe", address=cluster.address, echo=lambda s: None)
    assert caught.value.what == "resources" and caught.value.step == "fit"
    assert "1 CPU, 1 GPU" in str(caught.value)  # the cluster's nodes are listed
    assert not (project / "pipe" / STATE_DIR / "state.json").exists() and all_runs(project) == []


def test_a_step_whose_node_dies_is_retried_on_another(project, cluster):
    # only a 3-CPU node takes the slow step: the one it starts on is removed, with another one ready
    nb = notebook(project / "slow.ipynb", [
        ("x = 1", ["step:prep"]),
        ("import os, time\nwith open('attempts.txt', 'a') as fh:\n    fh.write(os.environ['MLOPS_RAY_NODE'] + '\\n')\n"
         "time.sleep(8)\ny = x + 1", ["step:slow", "after:prep", "resources:cpu=3"]),
    ])
    pipeline.export(nb, "pipe")
    first = cluster.add_node(num_cpus=3, object_store_memory=80 * MB)
    box = {}
    runner = threading.Thread(target=lambda: box.update(result=pipeline.run("pipe", address=cluster.address,
                                                                             echo=lambda s: None)), daemon=True)
    runner.start()
    spare = None
    try:
        wait_for(lambda: (project / "attempts.txt").exists(), timeout=120, what="the slow step to start")
        spare = cluster.add_node(num_cpus=3, object_store_memory=80 * MB)  # Cluster's nodes change in the main thread
        cluster.remove_node(first, allow_graceful=False)
        runner.join(180)
        result = box["result"]
        assert result.ok and ran(result) == {"prep", "slow"}
        attempts = (project / "attempts.txt").read_text().split()
        assert attempts[0] == first.node_id and attempts[-1] == spare.node_id
        assert step_runs(project, result.mlflow_run)["slow"].data.tags["mlops.node"] == spare.node_id
    finally:
        runner.join(180)
        for node in (first, spare):
            if node is not None and node in cluster.worker_nodes:
                cluster.remove_node(node)


def test_a_step_whose_only_fitting_node_is_gone_fails_after_the_wait(project, cluster, monkeypatch):
    # the one 3-CPU node goes while prep runs: the slow step, which only it could take, must not wait for ever
    nb = notebook(project / "strand.ipynb", [
        ("import time\nopen('prep.started', 'w').close()\ntime.sleep(4)\nx = 1", ["step:prep"]),
        ("y = x + 1", ["step:slow", "after:prep", "resources:cpu=3"]),
    ])
    pipeline.export(nb, "pipe")
    monkeypatch.setenv("MLOPS_RAY_NODE_WAIT_S", "oops")
    with pytest.raises(InvalidInput, match="MLOPS_RAY_NODE_WAIT_S='oops' is not a number of seconds"):
        pipeline.run("pipe", address=cluster.address, echo=lambda s: None)
    monkeypatch.setenv("MLOPS_RAY_NODE_WAIT_S", "3")
    lonely = cluster.add_node(num_cpus=3, object_store_memory=80 * MB)
    box = {}
    runner = threading.Thread(target=lambda: box.update(result=pipeline.run("pipe", address=cluster.address,
                                                                             echo=lambda s: None)), daemon=True)
    runner.start()
    try:
        wait_for(lambda: (project / "prep.started").exists(), timeout=120, what="prep to start")
        cluster.remove_node(lonely, allow_graceful=False)
        runner.join(120)
        assert not runner.is_alive(), "the stranded step is still waiting"
        slow = {s.name: s for s in box["result"].steps}["slow"]
        assert slow.status == "failed" and "asks for 3 CPU, and no node of the Ray cluster" in slow.error
        assert "for 3 s" in slow.error and "MLOPS_RAY_NODE_WAIT_S" in slow.error
        assert step_runs(project, box["result"].mlflow_run)["slow"].info.status == "FAILED"
    finally:
        runner.join(120)
        if lonely in cluster.worker_nodes:
            cluster.remove_node(lonely)


def interrupt(project: Path, args: list, pid_file: Path, env: dict | None = None) -> None:
    """Ctrl-C to `mlops pipeline run ARGS` once the step kernel that writes ``pid_file`` runs: one line, exit
    status 130, and the kernel stopped."""
    import os
    import signal

    import psutil

    proc = subprocess.Popen(CLI + ["pipeline", "run", *args], cwd=project, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), timeout=120, what="the step's kernel"))
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=90)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    wait_for(lambda: not psutil.pid_exists(pid), timeout=60, what="the cancelled step's kernel to stop")


def test_ctrl_c_cancels_the_running_step_and_keeps_what_finished(project, cluster):
    nb = notebook(project / "long.ipynb", [
        ("x = 1", ["step:prep"]),
        ("import os, time\nopen('kernel.pid', 'w').write(str(os.getpid()))\ntime.sleep(300)\ny = x",
         ["step:long", "after:prep"]),
    ])
    pipeline.export(nb, "pipe")
    interrupt(project, ["pipe", "--address", cluster.address], project / "kernel.pid")
    state = json.loads((project / "pipe" / STATE_DIR / "state.json").read_text())["steps"]
    assert "success" in state["prep"] and "success" not in state["long"]
    status = {name: st for name, st, _ in pipeline.status("pipe")}
    assert status == {"prep": "fresh", "long": "failed"}


def test_a_step_submitted_after_ctrl_c_is_cancelled_at_once(project, cluster):
    """Ctrl-C can come while a step's thread is still on its way to the cluster (putting its hand-offs): the
    task it submits then is cancelled at once, also for a driver that stays connected (a notebook's), whose job
    would let it run to its end."""
    import time

    import ray

    from mlops_jupyter.pipeline.cluster import RayRunner
    from mlops_jupyter.pipeline.emit import load_pipeline

    nb = notebook(project / "late.ipynb", [("import time\ntime.sleep(30)\nx = 1", ["step:late"])])
    pipeline.export(nb, "pipe")
    ray.init(address=cluster.address)
    try:
        runner = RayRunner(load_pipeline(project / "pipe"), {}, set(), lambda s: None, None, cluster.address, None, 0)
        runner.connect(needed=True)
        runner.stop_all()  # Ctrl-C, before the step's thread submits its task
        started = time.monotonic()
        with pytest.raises(PipelineError, match="cancelled"):
            runner._notebook(runner.pipe.step("late"), runner.pipe.folder / "runs" / "late.ipynb", None)
        assert time.monotonic() - started < 20
    finally:
        ray.shutdown()


def test_steps_on_the_cluster_run_in_forked_kernels_that_share_nothing(project, cluster, monkeypatch):
    """A Ray worker forks each step's kernel from its own template process (ipykernel and the imports cell
    loaded, as on the local runner), yet a step sees nothing of the one before it; once the run is over, no
    kernel or template process is left: at once when the driver goes (the CLI), after MLOPS_RAY_IDLE_S when it
    stays connected (a notebook)."""
    import psutil

    nb = notebook(project / "iso.ipynb", [
        ("import json\nimport os\nimport time\nimport numpy as np\nimport psutil", ["imports"]),
        ("json.leak = 1\nsecret = 2\nr1 = float(np.random.rand())\npid1 = os.getpid()\n"
         "template1 = psutil.Process().parent().pid", ["step:one"]),
        ("time.sleep(1.5)\nleaked = int(hasattr(json, 'leak') or 'secret' in globals())\n"
         "same_rng = int(r1 == float(np.random.rand()))\n"
         "same_pid = int(os.getpid() == pid1)\n"
         "forked = int('mlops_jupyter.pipeline.forkserver' in psutil.Process().parent().cmdline())\n"
         "template = psutil.Process().parent().pid", ["step:two"]),
        ("leaked, same_rng, same_pid, forked, pid1, template, template1", ["metrics"]),
    ])
    pipeline.export(nb, "pipe")
    # the CLI, which never imports papermill itself: it runs in the workers
    code = ("import sys; from mlops_jupyter.cli import main; code = main(sys.argv[1:]); "
            "assert 'papermill' not in sys.modules, 'the driver imported papermill'; sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code, "pipeline", "run", "pipe", "--address", cluster.address],
                          cwd=project, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    got = json.loads((project / "pipe" / "metrics" / "two.json").read_text())
    assert {k: got[k] for k in ("leaked", "same_rng", "same_pid", "forked")} == {
        "leaked": 0, "same_rng": 0, "same_pid": 0, "forked": 1}

    def templates():
        return [p for p in psutil.process_iter(["cmdline", "cwd"])
                if "mlops_jupyter.pipeline.forkserver" in " ".join(p.info["cmdline"] or [])
                and p.info["cwd"] == str(project)]

    # the job's workers exit with the CLI; their templates follow, killing the kernels they forked
    wait_for(lambda: not templates() and not psutil.pid_exists(int(got["pid1"])), timeout=60,
             what="the steps' kernels and template processes to exit")

    # a driver that stays connected (a notebook that swept there, a kept driver) keeps its workers between runs,
    # and they their templates: a later run forks from the same one while nothing it loaded has changed on disk
    # (test_kernels), and its kernels share nothing all the same; other imports get another template
    import ray

    monkeypatch.setenv("MLOPS_RAY_IDLE_S", "oops")
    with pytest.raises(InvalidInput, match="MLOPS_RAY_IDLE_S='oops' is not a number of seconds; give how long a Ray"):
        pipeline.run("pipe", address=cluster.address, force=True, echo=lambda s: None)
    monkeypatch.delenv("MLOPS_RAY_IDLE_S")
    ray.init(address=cluster.address)
    try:
        seen = []
        for imports in ("", "import decimal\n", ""):  # the imports cell as it was, with one more, unchanged
            if imports:
                source = json.loads(nb.read_text())
                source["cells"][0]["source"] = imports + "".join(source["cells"][0]["source"])
                nb.write_text(json.dumps(source))
                pipeline.export(nb, "pipe")
            if len(seen) == 2:
                monkeypatch.setenv("MLOPS_RAY_IDLE_S", "1")  # step two runs longer, in a kernel forked from it
            assert pipeline.run("pipe", address=cluster.address, force=True, echo=lambda s: None).ok
            got = json.loads((project / "pipe" / "metrics" / "two.json").read_text())
            assert {k: got[k] for k in ("leaked", "same_rng", "same_pid", "forked")} == {
                "leaked": 0, "same_rng": 0, "same_pid": 0, "forked": 1}
            seen.append(got["template1"])  # step one's: the run's first kernel (step two's may be another worker's)
            # a step's kernel ends with its step, though the workers stay for the next run
            wait_for(lambda: not psutil.pid_exists(int(got["pid1"])), timeout=30, what="step one's kernel to stop")
        assert seen[0] != seen[1] == seen[2]
        # idle for 1 s, the workers still there let their templates and parked kernels go
        wait_for(lambda: not templates(), timeout=30, what="the idle workers' templates and kernels to exit")
        assert ray.is_initialized()
    finally:
        ray.shutdown()


def test_one_worker_per_run_and_node_claims_the_warm_up(monkeypatch):
    """The warm-up task does nothing on a node where a worker of the run already gets ready for steps (the first
    step's, sent before it): the claim is a name that lives as long as the worker that holds it (a Linux abstract
    socket name; elsewhere every worker counts as first, and warms up as before)."""
    import uuid

    from mlops_jupyter.pipeline import cluster as C

    run, node = uuid.uuid4().hex, "a" * 56
    code = ("import os, sys; os.environ['MLOPS_RAY_NODE'] = sys.argv[2]; from mlops_jupyter.pipeline import cluster; "
            "print(cluster._claim({'run': sys.argv[1]}), flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code, run, node], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "True"
        monkeypatch.setenv("MLOPS_RAY_NODE", node)
        assert C._claim({"run": run}) is not sys.platform.startswith("linux")  # the holder's
        monkeypatch.setenv("MLOPS_RAY_NODE", "b" * 56)
        assert C._claim({"run": run})  # another node's is free
        C._claimed.pop(run).close()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    monkeypatch.setenv("MLOPS_RAY_NODE", node)
    assert C._claim({"run": run})  # gone with the worker that held it
    C._claimed.pop(run).close()


# ---- a kept driver (MLOPS_RAY_DRIVER_S) ---------------------------------------------------------------
def drivers(mark: str) -> list:
    """The kept drivers whose environment holds MLOPS_TEST_DRIVER=mark (each test's drivers are its own)."""
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "mlops_jupyter.pipeline.driver" in " ".join(p.info["cmdline"] or []) and \
                    p.environ().get("MLOPS_TEST_DRIVER") == mark:
                found.append(p)
        except psutil.Error:
            pass
    return found


@pytest.fixture
def kept():
    """The environment of CLI runs through a kept driver, marked as this test's; its drivers go at the end."""
    import os
    import uuid

    mark = uuid.uuid4().hex
    yield {**os.environ, "MLOPS_RAY_DRIVER_S": "120", "MLOPS_TEST_DRIVER": mark, "PYTHONUNBUFFERED": "1"}
    for p in drivers(mark):
        p.kill()


def cli(project: Path, env: dict, *args) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + ["pipeline", "run", *args], cwd=project, env=env, capture_output=True, text=True,
                          timeout=300)


def test_a_kept_driver_runs_the_next_cli_runs_on_the_workers_and_kernels_it_kept(project, cluster, kept):
    """Two CLI runs starting together on a new project start one driver; the runs after it take the kernels its
    workers parked, forked from the template they kept, with the CLI's output, records, Ctrl-C and errors."""
    import re
    import time

    import psutil

    nb = notebook(project / "kept.ipynb", [
        ("import os\nimport psutil", ["imports"]),
        ("wait = 0", ["parameters"]),
        ("import time\nopen('one.pid', 'w').write(str(os.getpid()))\ntime.sleep(wait)\n"
         "t1 = psutil.Process().parent().pid", ["step:one"]),
        ("t2 = psutil.Process().parent().pid", ["step:two", "after:one"]),
        ("t1, t2", ["metrics"]),
    ])
    pipeline.export(nb, "pipe")
    pipeline.export(nb, "pipe2")
    address = ["--address", cluster.address]
    both = [subprocess.Popen(CLI + ["pipeline", "run", folder, *address], cwd=project, env=kept,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for folder in ("pipe", "pipe2")]
    for proc in both:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and "2 ran" in out, out + err
    (driver,) = drivers(kept["MLOPS_TEST_DRIVER"])
    # the run after a pipeline's first imports what its hand-offs were saved in, once idle: another template
    assert cli(project, kept, "pipe", "--force", *address).returncode == 0
    templates = set(json.loads((project / "pipe" / "metrics" / "two.json").read_text()).values())

    done = cli(project, kept, "pipe", "--force", *address)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(f"pipeline kept: 2 steps in {project / 'pipe'} · Ray cluster {cluster.address}\n")
    assert re.search(r"✓ one +ran in .* · on node ", done.stdout) and "2 ran in" in done.stdout
    assert drivers(kept["MLOPS_TEST_DRIVER"]) == [driver]
    again = json.loads((project / "pipe" / "metrics" / "two.json").read_text())
    assert again["t1"] in templates  # the first step's kernel came from a template kept from the run before
    parent = re.search(r"mlflow run ([0-9a-f]{32})", done.stdout).group(1)
    wait_for(lambda: {n: r.info.status for n, r in step_runs(project, parent).items()} ==
             {"one": "FINISHED", "two": "FINISHED"}, timeout=60, what="the run's step records")

    # Ctrl-C in the CLI stops the run in the driver, which stays for the next one: it resumes
    (project / "one.pid").unlink()
    interrupt(project, ["pipe", "--force", "-p", "wait=300", *address], project / "one.pid", env=kept)
    # and so does the CLI's going away
    (project / "one.pid").unlink()
    proc = subprocess.Popen(CLI + ["pipeline", "run", "pipe", "-p", "wait=300", *address], cwd=project, env=kept,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid = int(wait_for(lambda: (project / "one.pid").exists() and (project / "one.pid").read_text(), timeout=120,
                       what="step one's kernel"))
    proc.kill()
    proc.wait()
    wait_for(lambda: not psutil.pid_exists(pid), timeout=60, what="the step's kernel to stop with its CLI gone")
    assert {name: st for name, st, _ in pipeline.status("pipe")} == {"one": "failed", "two": "stale"}
    done = cli(project, kept, "pipe", *address)
    assert done.returncode == 0 and "▶ one  running (last run failed)" in done.stdout, done.stdout + done.stderr
    assert drivers(kept["MLOPS_TEST_DRIVER"]) == [driver]

    # its errors are the CLI's, word for word
    plain = {k: v for k, v in kept.items() if k != "MLOPS_RAY_DRIVER_S"}
    for args in (["-p", "nosuch=1"], ["--storage", " "]):
        through, alone = cli(project, kept, "pipe", *args, *address), cli(project, plain, "pipe", *args, *address)
        assert through.returncode == alone.returncode == 2 and through.stderr == alone.stderr != ""
    started = time.monotonic()
    done = cli(project, {**kept, "MLOPS_RAY_DRIVER_S": "soon"}, "pipe", *address)
    assert done.returncode == 2 and "MLOPS_RAY_DRIVER_S='soon' is not a number of seconds; give how long a kept " \
        "Ray driver stays connected after its last run" in done.stderr, done.stderr
    assert time.monotonic() - started < 60


def test_a_kept_driver_leaves_when_idle_and_when_its_cluster_goes(project, kept):
    from ray.cluster_utils import Cluster

    pipeline.export(notebook(project / "small.ipynb", [("x = 1", ["step:one"])]), "pipe")
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 80 * MB})
    try:
        mark = kept["MLOPS_TEST_DRIVER"]
        done = cli(project, {**kept, "MLOPS_RAY_DRIVER_S": "1"}, "pipe", "--address", c.address)
        assert done.returncode == 0 and "1 ran" in done.stdout, done.stdout + done.stderr
        wait_for(lambda: not drivers(mark), timeout=60, what="the idle driver to leave")
        done = cli(project, kept, "pipe", "--force", "--address", c.address)
        assert done.returncode == 0 and "1 ran" in done.stdout, done.stdout + done.stderr
        assert drivers(mark)
    finally:
        c.shutdown()
    wait_for(lambda: not drivers(mark), timeout=60, what="the driver to leave with its cluster")
