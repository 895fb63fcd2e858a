"""Ray Client (`--address ray://host:port`) on one head started with `ray start`, shared by this module's tests:
a `%%mlops sweep`, and `mlops pipeline run`. The head's processes are stopped by their own ids at the end."""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from harness import all_runs, notebook, wait_for
from test_sweep import flush

CLI = [sys.executable, "-m", "mlops_jupyter.cli"]


def head_logs(temp: str) -> str:
    """The tails of the head's Ray Client server logs: what a failed connection says on the cluster side."""
    logs = sorted(Path(temp).glob("session_latest/logs/ray_client_server*"))
    return "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:]) for p in logs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head():
    """A head started with `ray start`, its Ray Client server listening; ``address`` is ray://host:port."""
    temp = tempfile.mkdtemp(prefix="rc-", dir="/tmp")  # Ray's socket paths must stay short
    gcs, client = _free_port(), _free_port()
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    # Ray 2.60's CLI clusters use token auth, and clients must too: this head's own token, so the tests need
    # no ~/.ray/auth_token left by an earlier Ray
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    token = secrets.token_hex(32)
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    try:
        subprocess.run([ray, "start", "--head", f"--port={gcs}", f"--ray-client-server-port={client}",
                        "--num-cpus=2", "--object-store-memory=200000000", "--include-dashboard=false",
                        f"--temp-dir={temp}", "--disable-usage-stats"],
                       check=True, capture_output=True, timeout=120)

        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", client)) == 0

        # `ray start` returns before its Ray Client server listens: on a busy machine, longer than a client's
        # ~30 s of connection attempts. Wait for the head as its user would
        wait_for(listening, timeout=180, what="the head's Ray Client server to listen")
        yield SimpleNamespace(address=f"ray://127.0.0.1:{client}", token=token, temp=temp)
    finally:
        import ray as ray_mod

        from mlops_jupyter.sweep.runner import _fresh_token

        ray_mod.shutdown()  # this process's client connection
        # this process's Ray as it was: its environment, and the auth mode and token Ray read from it (it keeps
        # them per process; a later test's in-process cluster would send this head's token to its own GCS)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _fresh_token()
        # stop exactly the processes of this head (never `ray stop`: it would stop every Ray on the machine)
        mine = [p for p in psutil.process_iter(["cmdline"]) if any(temp in a or f"={gcs}" in a
                                                                  for a in p.info["cmdline"] or [])]
        # the GCS last, as `ray stop` does: a raylet that loses its GCS first waits for it past the grace
        def gcs(p) -> bool:
            return "gcs_server" in (p.info["cmdline"] or [""])[0]

        for group in ([p for p in mine if not gcs(p)], [p for p in mine if gcs(p)]):
            for p in group:
                p.send_signal(signal.SIGTERM)
            _, alive = psutil.wait_procs(group, timeout=15)
            for p in alive:
                p.kill()
        wait_for(lambda: not [p for p in psutil.process_iter(["cmdline"])
                              if any(temp in a for a in p.info["cmdline"] or [])], timeout=30,
                 what="the head's Ray processes to exit")
        shutil.rmtree(temp, ignore_errors=True)


def test_a_sweep_through_ray_client_on_a_cli_started_head(ip, project, head, monkeypatch):
    ip.run_cell("base = 10")
    cell = (f'%%mlops sweep --space "x=grid(1, 2, 3)" --address {head.address} '
            "--metric score --mode max\nscore = base + x")
    # a wrong token: Ray Client only sees a server that never answers, so the error names the token too
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    result = ip.run_cell(cell)
    assert not result.success and "the head's own RAY_AUTH_TOKEN" in str(result.error_in_exec)
    assert not all_runs(project)  # nothing recorded for a sweep that never ran
    # the right one, set in the same kernel after Ray has read the wrong one (%env RAY_AUTH_TOKEN=...)
    monkeypatch.setenv("RAY_AUTH_TOKEN", head.token)
    try:
        result = ip.run_cell(cell)
        assert result.success, f"{result.error_in_exec}\n{head_logs(head.temp)}"
        assert ip.user_ns["best_params"] == {"x": 3}
        flush(ip)
        (parent,) = [r for r in all_runs(project) if "mlflow.parentRunId" not in r.data.tags]
        kids = [r for r in all_runs(project) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert sorted(r.data.metrics["score"] for r in kids) == [11, 12, 13]
    finally:
        import ray

        ray.shutdown()  # the kernel's client connection, before the next test's


# a driver connected through the package's way to Ray keeps Ray Client busy, and forks as Ray does when it starts
# its own processes (subprocess with a preexec_fn: a real fork, not a spawn)
FORKS = """
import subprocess, sys, threading
from mlops_jupyter.sweep import runner
assert runner.init_ray(sys.argv[1]) is None
import ray
echo, stop = ray.remote(lambda x: x), threading.Event()
def busy():
    while not stop.is_set():
        ray.get([echo.remote(i) for i in range(5)])
threading.Thread(target=busy, daemon=True).start()
died = sum(subprocess.Popen(["true"], preexec_fn=lambda: None).wait() != 0 for _ in range(600))
stop.set()
print(died)
"""


def test_ray_started_beside_a_busy_ray_client_connection_starts_every_process(head):
    """Where Ray Client's gRPC is busy in a process (a kernel still connected, or retrying a refused token),
    grpcio's fork handlers crashed some children Ray forks there before they exec'd (4-12 of 300 here): a
    local sweep in that kernel then waited 30 s for a GCS that never started. None dies now."""
    env = {k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}  # as a user's kernel has it
    done = subprocess.run([sys.executable, "-c", FORKS, head.address], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-1] == "0", f"children that died before they exec'd: {done.stdout}"


def test_a_pipeline_through_ray_client_on_a_cli_started_head(project, head):
    """`mlops pipeline run --address ray://...`: the steps run on the head (this package reaches its workers
    with the job), hand off through the shared project folder, and the driver records the runs."""
    nb = notebook(project / "p.ipynb", [
        ("n = 3", ["parameters"]),
        ("data = list(range(n))", ["step:prep"]),
        ("import os\ntotal = sum(data)\nprint('on', os.environ['MLOPS_RAY_NODE'])", ["step:train", "after:prep"]),
        ("total", ["metrics"]),
    ])
    subprocess.run([*CLI, "export", str(nb), "--out", "pipe"], cwd=project, check=True, capture_output=True)

    def run(*args) -> subprocess.CompletedProcess:
        return subprocess.run([*CLI, "pipeline", "run", "pipe", "--address", head.address, *args], cwd=project,
                              capture_output=True, text=True, timeout=300)

    done = run("-p", "n=5")
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{head_logs(head.temp)}"
    lines = done.stdout.splitlines()
    assert [ln.split()[1] for ln in lines if ln.strip().startswith("✓")] == ["prep", "train"]
    assert all(" · on node " in ln for ln in lines if ln.strip().startswith("✓")), done.stdout
    assert json.loads((project / "pipe" / "metrics" / "train.json").read_text()) == {"total": 10}
    (parent,) = [r for r in all_runs(project) if "mlflow.parentRunId" not in r.data.tags]
    kids = {r.info.run_name: r for r in all_runs(project)
            if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert parent.info.status == "FINISHED" and parent.data.params == {"n": "5"}
    assert sorted(kids) == ["prep", "train"] and kids["train"].data.metrics == {"total": 10.0}
    node = kids["train"].data.tags["mlops.node"]
    assert node and f"on {node}" in next(Path(project, "pipe", "runs").glob("*/train.ipynb")).read_text()

    again = run("-p", "n=5")  # unchanged: nothing runs, and the cluster is not contacted
    assert again.returncode == 0 and "2 skipped" in again.stdout, again.stdout + again.stderr
    assert len(all_runs(project)) == 3
