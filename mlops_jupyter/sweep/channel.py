"""Trial events from a sweep's runner to the cell, and the stop request back, in this process (no Ray, no Tune:
a sweep of plain Ray tasks imports neither through it). Over Ray Client the Tuner runs on the cluster:
``_tune.RemoteChannel`` does the same through an actor."""

from __future__ import annotations

import queue
import threading
import uuid

_LIVE: dict = {}


def _channel(token: str):
    return _LIVE[token]


class LocalChannel:
    """Trial events to the cell and the stop request back, when the runner (the pool, or the Tuner) runs in this
    process. The Tuner pickles its callbacks and stopper with its state: unpickled here, the token finds
    this live object again."""

    def __init__(self):
        self.token, self.events, self._stop = uuid.uuid4().hex, queue.Queue(), threading.Event()
        _LIVE[self.token] = self

    def __reduce__(self):
        return _channel, (self.token,)

    def put(self, event) -> None:
        self.events.put(event)

    def drain(self) -> list:
        out = []
        while True:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                return out

    def request_stop(self) -> None:
        self._stop.set()

    def stopped(self) -> bool:
        return self._stop.is_set()

    def close(self) -> None:
        _LIVE.pop(self.token, None)
