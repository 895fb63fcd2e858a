"""%%mlops sweep through Ray Client (`--address ray://host:port`) on a head started with `ray start`."""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
from harness import all_runs, wait_for
from test_sweep import flush


def head_logs(temp: str) -> str:
    """The tails of the head's Ray Client server logs: what a failed connection says on the cluster side."""
    logs = sorted(Path(temp).glob("session_latest/logs/ray_client_server*"))
    return "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:]) for p in logs)


def test_a_sweep_through_ray_client_on_a_cli_started_head(ip, project, monkeypatch):
    """`--address ray://host:port`: a head started with `ray start`, reached through Ray Client."""

    def free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    temp = tempfile.mkdtemp(prefix="rc-", dir="/tmp")  # Ray's socket paths must stay short
    gcs, client = free_port(), free_port()
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    # Ray 2.60's CLI clusters use token auth, and clients must too: this head's own token, so the test needs
    # no ~/.ray/auth_token left by an earlier Ray
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    token = secrets.token_hex(32)
    monkeypatch.setenv("RAY_AUTH_TOKEN", token)
    subprocess.run([ray, "start", "--head", f"--port={gcs}", f"--ray-client-server-port={client}",
                    "--num-cpus=2", "--object-store-memory=200000000", "--include-dashboard=false",
                    f"--temp-dir={temp}", "--disable-usage-stats"],
                   check=True, capture_output=True, timeout=120)
    try:
        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", client)) == 0

        # `ray start` returns before its Ray Client server listens: on a busy machine, longer than a client's
        # ~30 s of connection attempts. Wait for the head as its user would
        wait_for(listening, timeout=180, what="the head's Ray Client server to listen")
        ip.run_cell("base = 10")
        cell = (f'%%mlops sweep --space "x=grid(1, 2, 3)" --address ray://127.0.0.1:{client} '
                "--metric score --mode max\nscore = base + x")
        # a wrong token: Ray Client only sees a server that never answers, so the error names the token too
        monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
        result = ip.run_cell(cell)
        assert not result.success and "the head's own RAY_AUTH_TOKEN" in str(result.error_in_exec)
        assert not all_runs(project)  # nothing recorded for a sweep that never ran
        # the right one, set in the same kernel after Ray has read the wrong one (%env RAY_AUTH_TOKEN=...)
        monkeypatch.setenv("RAY_AUTH_TOKEN", token)
        result = ip.run_cell(cell)
        assert result.success, f"{result.error_in_exec}\n{head_logs(temp)}"
        assert ip.user_ns["best_params"] == {"x": 3}
        flush(ip)
        (parent,) = [r for r in all_runs(project) if "mlflow.parentRunId" not in r.data.tags]
        kids = [r for r in all_runs(project) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert sorted(r.data.metrics["score"] for r in kids) == [11, 12, 13]
    finally:
        import ray as ray_mod

        from mlops_jupyter.sweep.runner import _fresh_token

        ray_mod.shutdown()  # the client connection
        # this process's Ray as it was: its environment, and the auth mode and token Ray read from it (it keeps
        # them per process; a later test's in-process cluster would send this head's token to its own GCS)
        monkeypatch.undo()
        _fresh_token()
        # stop exactly the processes of this head (never `ray stop`: it would stop every Ray on the machine)
        mine = [p for p in psutil.process_iter(["cmdline"]) if any(temp in a or f"={gcs}" in a
                                                                  for a in p.info["cmdline"] or [])]
        for p in mine:
            p.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(mine, timeout=15)
        for p in alive:
            p.kill()
        wait_for(lambda: not [p for p in psutil.process_iter(["cmdline"])
                              if any(temp in a for a in p.info["cmdline"] or [])], timeout=30,
                 what="the head's Ray processes to exit")
        shutil.rmtree(temp, ignore_errors=True)
