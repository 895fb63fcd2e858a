"""The on-disk journal between a kernel and its recorder process.

A kernel appends one JSON line per record ("start" / "end" of a tracked cell) to
``.mlops/journal/<kernel>.jsonl``; a recorder process applies them to the MLflow store and keeps
its progress in ``<kernel>.state``. The kernel holds an OS lock on ``<kernel>.lock`` for its whole
life and the recorder one on ``<kernel>.recorder.lock``: when both are free the journal is an
orphan (its kernel died, or its store was down at exit) and the next ``%load_ext`` / ``%mlops init``
in the project starts a recorder that finishes it. This is session liveness, not a heartbeat:
the OS drops a dead process's locks at once, so there is no timeout to tune.

Stdlib only: this module runs inside ``%load_ext``.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

JOURNAL_DIR = "journal"


def journal_dir(state_dir: Path) -> Path:
    return Path(state_dir) / JOURNAL_DIR


def side_file(journal: Path, suffix: str) -> Path:
    return journal.with_name(journal.stem + suffix)


def blob_dir(journal: Path) -> Path:
    """Where a writer puts files its records refer to (e.g. a saved model) until the recorder has logged
    them; removed with the journal."""
    return side_file(journal, ".blobs")


def try_lock(path: Path):
    """An open file holding an exclusive lock on ``path``, or None when someone else holds it."""
    fh = open(path, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        return None
    return fh


class RawJSON(str):
    """A value already encoded as JSON: written into the record as it is (a tracked cell's execution order,
    kept encoded as it grows, is not encoded again per cell)."""


def dumps(op: dict) -> str:
    raw = [(k, v) for k, v in op.items() if type(v) is RawJSON]
    if not raw:
        return json.dumps(op, separators=(",", ":"), default=str)
    text = json.dumps({k: v for k, v in op.items() if type(v) is not RawJSON}, separators=(",", ":"), default=str)
    return text[:-1] + ("," if len(text) > 2 else "") + ",".join(f"{json.dumps(k)}:{v}" for k, v in raw) + "}"


class JournalWriter:
    """Kernel side: durable appends (a SIGKILLed kernel loses nothing it wrote)."""

    def __init__(self, state_dir: Path):
        folder = journal_dir(state_dir)
        folder.mkdir(parents=True, exist_ok=True)
        self.kernel = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.path = folder / f"{self.kernel}.jsonl"
        self._lock = try_lock(side_file(self.path, ".lock"))
        self._fh = open(self.path, "a", encoding="utf-8")
        self._mutex = threading.Lock()

    def append(self, op: dict) -> None:
        line = dumps(op) + "\n"
        with self._mutex:
            fcntl.flock(self._fh, fcntl.LOCK_EX)  # the recorder truncates an applied journal under this lock
            try:
                self._fh.write(line)
                self._fh.flush()
            finally:
                fcntl.flock(self._fh, fcntl.LOCK_UN)

    def close(self) -> None:
        with self._mutex:
            if not self._fh.closed:
                self._fh.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def orphans(state_dir: Path) -> list[Path]:
    """Journals whose kernel and recorder are both gone."""
    folder = journal_dir(state_dir)
    if not folder.is_dir():
        return []
    found = []
    for journal in sorted(folder.glob("*.jsonl")):
        kernel_lock = try_lock(side_file(journal, ".lock"))
        if kernel_lock is None:
            continue
        try:
            recorder_lock = try_lock(side_file(journal, ".recorder.lock"))
            if recorder_lock is not None:
                recorder_lock.close()
                found.append(journal)
        finally:
            kernel_lock.close()
    return found


def pending_records(state_dir: Path) -> int:
    """Records written to the project's journals that no recorder has applied yet."""
    folder = journal_dir(state_dir)
    total = 0
    for journal in folder.glob("*.jsonl") if folder.is_dir() else []:
        try:
            offset = json.loads(side_file(journal, ".state").read_text()).get("offset", 0)
        except (OSError, ValueError):
            offset = 0
        try:
            with open(journal, "rb") as fh:
                fh.seek(offset)
                total += fh.read().count(b"\n")
        except OSError:
            continue
    return total


def settle(state_dir: Path, timeout: float) -> int:
    """Wait (up to ``timeout`` s, and only while recorders make progress) until every record written to the
    project's journals is in the store, so a listing right after a notebook ends sees its runs; returns how
    many are still pending."""
    import time

    finish_orphans(Path(state_dir))
    deadline, last, stalled_since = time.monotonic() + timeout, None, time.monotonic()
    while True:
        left = pending_records(state_dir)
        now = time.monotonic()
        if left != last:
            last, stalled_since = left, now
        if not left or now > deadline or now - stalled_since > 8.0:  # no progress for 8 s: the store is down
            return left
        time.sleep(0.05)


def recorder_command(journal: Path, follow: bool) -> list[str]:
    cmd = [sys.executable, "-m", "mlops_jupyter.tracking.recorder", str(journal)]
    return cmd + (["--follow"] if follow else [])


def recorder_env() -> dict:
    env = dict(os.environ)
    # our own retry loop handles an unreachable server; MLflow's would block each op for minutes
    env.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    env.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    return env


_finished: set = set()


def finish_orphans_once(state_dir: Path) -> None:
    """``finish_orphans`` the first time this process touches the project: any process of ours that reads
    or writes a project's runs picks up the records a dead writer left behind."""
    key = str(state_dir)
    if key not in _finished:
        _finished.add(key)
        try:
            finish_orphans(Path(state_dir))
        except OSError:
            pass


def finish_orphans(state_dir: Path) -> list[Path]:
    """Start a detached recorder for each orphan journal; returns the journals taken up."""
    started = []
    for journal in orphans(state_dir):
        with open(side_file(journal, ".log"), "ab") as log:
            subprocess.Popen(recorder_command(journal, follow=False), stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=log, env=recorder_env(),
                             start_new_session=True, close_fds=True)
        started.append(journal)
    return started
