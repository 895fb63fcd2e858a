"""Long commands the server starts: ``mlops pipeline run``, ``mlops retrain`` and ``mlops serve build``, each a subprocess
with its output in a log file.

A subprocess, not a thread: a run or a build takes minutes, starts kernels or an image builder, and must
not share the server's process (a crash or an interrupt there would take the server with it). One job per
folder and kind at a time.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

from .. import config

LOG_LINES = 40  # lines of a job's output the GET routes show
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # colour and cursor codes: text in a browser, not a terminal


def pipeline_command(folder: Path, params: list, force: bool, from_step: str | None,
                     address: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "mlops_jupyter.cli", "pipeline", "run", str(folder)]
    if address:  # the steps as Ray tasks on that cluster
        cmd += ["--address", address]
    for pair in params:
        cmd += ["-p", pair]
    if force:
        cmd.append("--force")
    if from_step:
        cmd += ["--from", from_step]
    return cmd


def retrain_command(folder: Path, promote_to: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "mlops_jupyter.cli", "retrain", str(folder)]
    return cmd + ["--promote-to", promote_to] if promote_to else cmd


def build_command(folder: Path, tag: str | None, base: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "mlops_jupyter.cli", "serve", "build", str(folder)]
    if tag:
        cmd += ["--tag", tag]
    if base:
        cmd += ["--base", base]
    return cmd


class Jobs:
    def __init__(self):
        self._jobs: dict[tuple[str, str], dict] = {}  # (kind, folder) -> {proc, log, started, ended, ok}
        self._lock = threading.Lock()

    def start(self, kind: str, folder: Path, cmd: list[str], settings) -> int | None:
        """Start ``cmd`` in ``folder``; returns when it started (ms since the epoch), or None when this
        server's previous job of that kind on the folder is still going."""
        logs = config.ensure_state_dir(settings.project_root) / "server"
        logs.mkdir(exist_ok=True)
        log_path = logs / f"{kind}-{folder.name}-{hashlib.sha1(str(folder).encode()).hexdigest()[:8]}.log"
        with self._lock:  # checked and started under one lock: two clicks make one job
            old = self._jobs.get((kind, str(folder)))
            if old is not None and old["proc"].poll() is None:
                return None
            started = int(time.time() * 1000)
            with open(log_path, "wb") as log:
                env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # lines reach the log as they happen
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        cwd=str(folder), env=env, start_new_session=True)
            job = {"proc": proc, "log": log_path, "started": started, "ended": None, "ok": None}
            self._jobs[(kind, str(folder))] = job
        threading.Thread(target=self._wait, args=(job,), daemon=True, name=f"mlops-{kind}").start()
        return started

    @staticmethod
    def _wait(job: dict) -> None:
        code = job["proc"].wait()
        job["ended"], job["ok"] = int(time.time() * 1000), code == 0

    def state(self, kind: str, folder: Path) -> dict | None:
        """{running, started, ended, ok, log: [last lines], summary} of the folder's last job of that kind."""
        with self._lock:
            job = self._jobs.get((kind, str(folder)))
        if job is None:
            return None
        try:
            with open(job["log"], errors="replace") as fh:
                lines = [ANSI.sub("", line.rstrip("\n")) for line in deque(fh, LOG_LINES)]
        except OSError:
            lines = []
        ended = job["ended"]
        return {"running": ended is None, "started": job["started"], "ended": ended, "ok": job["ok"],
                "log": lines, "summary": lines[-1] if ended is not None and lines else None}
