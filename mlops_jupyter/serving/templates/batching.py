"""Adaptive batching: concurrent requests share one predict call.

The first request to arrive opens a batch; it closes when it holds ``max_rows`` rows or ``max_wait``
has passed. Predict runs in a worker thread, so while one batch computes the next one fills from
the backlog and starts with no wait at all: under load batches grow by themselves, and a lone
request pays at most ``max_wait``. A failing batch is retried request by request, so one bad
request cannot fail the others merged with it.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable


class Batcher:
    def __init__(self, predict: Callable[[list], list], max_rows: int, max_wait_s: float,
                 observe: Callable[[int, int, float], None] = lambda rows, requests, seconds: None):
        self.predict, self.max_rows, self.max_wait_s, self.observe = predict, max_rows, max_wait_s, observe
        self.queue: asyncio.Queue = asyncio.Queue()
        # one thread: parallel predicts in one process would only fight over the GIL
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict")
        self.task: asyncio.Task | None = None
        self._carry = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.pool.shutdown(wait=False, cancel_futures=True)

    @property
    def alive(self) -> bool:
        return self.task is not None and not self.task.done()

    async def submit(self, rows: list) -> list:
        """Predictions for ``rows`` (one per row, in order), computed in some batch."""
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((rows, future))
        return await future

    async def _next(self, timeout: float | None):
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        if timeout is None:
            return await self.queue.get()
        try:
            return self.queue.get_nowait()
        except asyncio.QueueEmpty:
            if timeout <= 0:
                return None
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except (TimeoutError, asyncio.TimeoutError):
            return None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._next(None)]
            n = len(batch[0][0])
            deadline = loop.time() + self.max_wait_s
            while n < self.max_rows:
                item = await self._next(deadline - loop.time())
                if item is None:
                    break
                if n + len(item[0]) > self.max_rows:
                    self._carry = item  # opens the next batch
                    break
                batch.append(item)
                n += len(item[0])
            batch = [(rows, fut) for rows, fut in batch if not fut.cancelled()]  # clients that hung up
            if batch:
                try:
                    await loop.run_in_executor(self.pool, self._compute, batch, loop)
                except Exception as exc:  # noqa: BLE001 - the loop must outlive any one batch
                    for _, future in batch:
                        _settle(future, exc)

    def _compute(self, batch: list, loop) -> None:
        """In the worker thread: one predict for the whole batch, results split back per request."""
        rows = [row for part, _ in batch for row in part]
        start = time.perf_counter()
        try:
            results = self._predict_checked(rows)
        except Exception:
            results = None
        self.observe(len(rows), len(batch), time.perf_counter() - start)
        offset = 0
        for part, future in batch:
            if results is not None:
                outcome: Any = results[offset:offset + len(part)]
            else:
                try:
                    outcome = self._predict_checked(part)
                except Exception as exc:  # noqa: BLE001 - handed to the request, which answers 500
                    outcome = exc
            offset += len(part)
            loop.call_soon_threadsafe(_settle, future, outcome)

    def _predict_checked(self, rows: list) -> list:
        out = self.predict(rows)
        if len(out) != len(rows):
            raise RuntimeError(f"the model returned {len(out)} predictions for {len(rows)} rows")
        return out


def _settle(future: asyncio.Future, outcome) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
