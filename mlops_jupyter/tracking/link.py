"""A writer's side of the journal: durable appends, and the recorder process that applies them.

Any process that records something (a kernel, a pipeline run, a ``dvc repro`` stage, a reproduction)
holds one ``RecorderLink``: ``send`` appends a record to its journal (microseconds, durable) and wakes the
recorder, started on first use and restarted if it died; the recorder's events (a run's id, the store
going down or coming back) reach ``on_event`` on a background thread. ``close`` lets the recorder finish
on its own: it outlives the writer until every record is written, or leaves them in the journal for the
next process of the project.

Stdlib only: this module loads with ``%load_ext``.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path

from . import journal as J

MAX_RECORDER_STARTS = 5  # per writer: a recorder that cannot even start must not be respawned per record
INLINE_GRACE_S = 2.0  # an inline writer waits this long for a failing store, then leaves its records in the journal
NICE = 10  # a niced recorder's niceness


def _nice_session(pid: int, nice: int) -> None:
    """Nice the scheduling group of ``pid``, a session leader. Where Linux groups processes by session
    (sched(7), autogroup), a process's own niceness only ranks it within its session: a recorder in a session
    of its own would take a whole core from the kernels or Ray workers beside it, however niced."""
    try:
        with open(f"/proc/{pid}/autogroup", "w") as f:
            f.write(str(nice))
    except OSError:  # no autogroups here (then its niceness is what counts), or it has exited
        pass


class RecorderLink:
    def __init__(self, state_dir: Path, on_event=None, nice: bool = False, inline: bool = False):
        self.journal = J.JournalWriter(state_dir)
        self.on_event = on_event or (lambda event: None)
        self.nice = nice
        # inline: a short writer that waits for its records anyway (a registry move) applies its journal itself at
        # close, in its own process, rather than start a recorder that would import MLflow a second time
        self.inline = inline
        self.proc = None
        self.failed: str | None = None  # set when the recorder keeps exiting: the records stay in the journal
        self._restarts = 0
        self._mutex = threading.Lock()

    @property
    def path(self) -> Path:
        return self.journal.path

    @property
    def blobs(self) -> Path:
        """A folder for files the records refer to (removed with the journal once they are logged)."""
        folder = J.blob_dir(self.journal.path)
        folder.mkdir(exist_ok=True)
        return folder

    def send(self, op: dict, wake: bool = True) -> None:
        """``wake=False``: journal it now, leave the recorder asleep until a later record (or ``wake``)."""
        self.journal.append(op)
        if wake:
            self.wake()

    def wake(self) -> None:
        if self.inline:
            return  # applied at close
        with self._mutex:
            proc = self.proc
            if proc is None or proc.poll() is not None:
                if self._restarts >= MAX_RECORDER_STARTS:
                    self.failed = f"the recorder keeps exiting; see {J.side_file(self.journal.path, '.log')}"
                    return  # records stay in the journal; the next process in the project finishes them
                self._restarts += 1
                proc = self._start()
            try:
                proc.stdin.write(b"\n")
                proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                self.proc = None  # restarted on the next record; the journal kept everything

    def _start(self):
        log = open(J.side_file(self.journal.path, ".log"), "ab")
        cmd = J.recorder_command(self.journal.path, follow=True)
        if self.nice:  # it works in the gaps the writer leaves (a notebook's cells, a pipeline's kernels)
            cmd = ["nice", "-n", str(NICE), *cmd]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=J.recorder_env(),
                                start_new_session=True, close_fds=True)  # survives the writer's process group
        log.close()
        if self.nice:
            _nice_session(proc.pid, NICE)
        self.proc = proc
        threading.Thread(target=self._listen, args=(proc,), daemon=True, name="mlops-recorder-events").start()
        return proc

    def _listen(self, proc) -> None:
        for raw in proc.stdout:
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            if isinstance(event, dict):
                self.on_event(event)
        self.on_event({"event": "exited", "pid": proc.pid})

    def unnice(self) -> None:
        """Normal priority for the recorder from now on."""
        proc = self.proc
        if proc is not None and self.nice:
            try:
                os.setpriority(os.PRIO_PROCESS, proc.pid, 0)
            except (AttributeError, OSError):  # not on this system, or not allowed (raising priority needs root)
                pass
            _nice_session(proc.pid, 0)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        """The writer is done: the recorder writes what is left (ending runs never ended as KILLED), then
        removes the journal; the writer need not wait for it."""
        with self._mutex:
            if self.proc is not None:
                try:
                    self.proc.stdin.close()
                except OSError:
                    pass
        self.journal.close()
        if self.inline:  # the same recorder, here: what it cannot write (a store that is down) stays in the journal
            from .recorder import Recorder

            Recorder(self.journal.path, follow=False, on_event=self.on_event, grace=INLINE_GRACE_S).run()
            self.on_event({"event": "exited"})
