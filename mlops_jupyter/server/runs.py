"""Pipeline runs the server starts: ``mlops pipeline run`` as a subprocess, its output in a log file.

A subprocess, not a thread: a run takes minutes, starts kernels, and must not share the server's
process (a crash or an interrupt there would take the server with it). One run per folder at a time.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

from .. import config

LOG_LINES = 40  # lines of the run's output GET pipeline shows


class PipelineRuns:
    def __init__(self):
        self._runs: dict[str, dict] = {}  # folder -> {proc, log, started, ended, ok}
        self._lock = threading.Lock()

    def start(self, folder: Path, params: list, force: bool, from_step: str | None, settings) -> int | None:
        """Start the run; returns when it started (ms since the epoch), or None when this server's
        previous run on the folder is still going."""
        cmd = [sys.executable, "-m", "mlops_jupyter.cli", "pipeline", "run", str(folder)]
        for pair in params:
            cmd += ["-p", pair]
        if force:
            cmd.append("--force")
        if from_step:
            cmd += ["--from", from_step]
        logs = config.ensure_state_dir(settings.project_root) / "server"
        logs.mkdir(exist_ok=True)
        log_path = logs / f"pipeline-{folder.name}-{hashlib.sha1(str(folder).encode()).hexdigest()[:8]}.log"
        with self._lock:  # checked and started under one lock: two clicks make one run
            old = self._runs.get(str(folder))
            if old is not None and old["proc"].poll() is None:
                return None
            started = int(time.time() * 1000)
            with open(log_path, "wb") as log:
                env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # lines reach the log as they happen
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        cwd=str(folder), env=env, start_new_session=True)
            run = {"proc": proc, "log": log_path, "started": started, "ended": None, "ok": None}
            self._runs[str(folder)] = run
        threading.Thread(target=self._wait, args=(run,), daemon=True, name="mlops-pipeline-run").start()
        return started

    @staticmethod
    def _wait(run: dict) -> None:
        code = run["proc"].wait()
        run["ended"], run["ok"] = int(time.time() * 1000), code == 0

    def state(self, folder: Path) -> dict | None:
        """{running, started, ended, ok, log: [last lines], summary} of the folder's last run here."""
        with self._lock:
            run = self._runs.get(str(folder))
        if run is None:
            return None
        try:
            with open(run["log"], errors="replace") as fh:
                lines = [line.rstrip("\n") for line in deque(fh, LOG_LINES)]
        except OSError:
            lines = []
        ended = run["ended"]
        return {"running": ended is None, "started": run["started"], "ended": ended, "ok": run["ok"],
                "log": lines, "summary": lines[-1] if ended is not None and lines else None}
