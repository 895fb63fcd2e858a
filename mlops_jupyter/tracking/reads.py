"""Which snapshotted data a tracked cell actually reads: an audit hook on the ``open`` event
(``sys.addaudithook``), so a run is linked to the data it opened rather than to every snapshot the
project holds. Python's own ``open`` (pandas, numpy, csv, pickle ...) is seen; a library that opens
files in native code (pyarrow's reader) is not.

Hooks cannot be removed, so one is installed per process, on the first tracked cell, and serves the watch
started last (a reloaded extension makes a new one); outside a tracked cell it does nothing, and for any
other event it costs one comparison.

Stdlib only: this module loads with ``%load_ext``.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

WRITE_ONLY = os.O_WRONLY
ACCESS_MODE = os.O_ACCMODE if hasattr(os, "O_ACCMODE") else 3
_SERVED: list = []  # [the watch the process's one hook reports to], once it is installed


def _hook(event, args) -> None:
    if event == "open" and _SERVED:
        _SERVED[0].opened(args)


class ReadWatch:
    def __init__(self):
        self.files: dict[str, str] = {}  # absolute path of a snapshotted file -> its snapshot path
        self.dirs: tuple = ()  # (absolute folder path + separator, its snapshot path) of snapshotted folders
        self.hits: set | None = None  # snapshot paths read; a set only while a tracked cell runs
        self._paused = 0

    def watch(self, snapshots: dict[str, str], folders: dict[str, str]) -> None:
        """What to look for: {absolute path: snapshot path} of snapshotted files and of folders."""
        self.files = dict(snapshots)
        self.dirs = tuple((path.rstrip(os.sep) + os.sep, rel) for path, rel in folders.items())

    def start(self) -> None:
        if not _SERVED:
            sys.addaudithook(_hook)
            _SERVED.append(self)
        _SERVED[0] = self
        self.hits = set()

    def stop(self) -> list[str]:
        hits, self.hits = self.hits, None
        return sorted(hits or ())

    @contextmanager
    def paused(self):
        """Our own data operations (hashing for a snapshot, checking before a restore) are not the cell's reads."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def opened(self, args) -> None:
        """The ``open`` audit event's (path, mode, flags)."""
        hits = self.hits  # read once: the cell may end on another thread meanwhile
        if hits is None or self._paused:
            return
        try:
            path, _mode, flags = args
            if isinstance(path, int) or (flags is not None and flags & ACCESS_MODE == WRITE_ONLY):
                return  # an open file descriptor, or a write: not a read of data
            path = os.path.abspath(os.fsdecode(path))
            rel = self.files.get(path)
            if rel is None:
                rel = next((r for prefix, r in self.dirs if path.startswith(prefix)), None)
            if rel is not None:
                hits.add(rel)
        except Exception:  # noqa: BLE001 - an exception here would fail the cell's own open()
            pass
