"""Adaptive batching with a latency budget: concurrent requests share one predict call.

The contract (the rest of the app relies on nothing else):
- ``submit(rows, arrived)`` returns one prediction per row, in order, computed in some batch.
- No predict call ever gets more than ``max_rows`` rows: a request with more is split into chunks of
  at most ``max_rows``, each batched like a request of its own, and the answers are put back together.
- With a budget (``max_latency_s``), a request that the work already queued ahead of it would make
  miss ``arrived + max_latency_s`` is refused at once with ``Overloaded`` (which carries a Retry-After),
  and a queued one whose deadline can no longer be met when its batch forms is refused then, never
  computed late. So the queue holds at most about one budget's worth of work: it cannot grow without
  bound. A request is refused only for work ahead of it: one that finds the batcher idle is served,
  however large (this also keeps a wrong cost estimate from refusing everything for good).
- ``saturated`` is true while new requests would be refused, and for a second after any refusal
  (readiness reports it); ``refusal()`` lets the HTTP layer refuse before it reads a body.
- The budget covers time the batcher cannot see: the event loop's lag (sampled every 10 ms) is taken
  twice from every deadline, and a loop lagging by more than a quarter of the budget refuses new
  requests up front, so a server short of CPU (parsing, not predicting) sheds load too.

How batches form: the first request to arrive opens a batch; it closes when it holds ``max_rows`` rows
or ``max_wait`` has passed. Predict runs in a worker thread, so while one batch computes the next one
fills from the backlog and starts with no wait at all: under load batches grow by themselves, and a
lone request pays at most ``max_wait``. A failing batch is retried request by request, so one bad
request cannot fail the others merged with it. The time a batch takes is learned as it runs (a
decaying least-squares line: seconds = per call + per row), which is what the budget checks use. It is
the batch's wall time while requests wait, not the model's compute time alone: under load the event
loop's own work (reading, validating, answering requests) slows every batch down, and an estimate
without it would admit requests that then finish late.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

# how much an old batch timing counts against a new one in the cost line (per observation)
DECAY = 0.95
# the event loop's lag is sampled this often, and the worst of the last LAG_SAMPLES counts: a request
# waits about one lag before the app sees it and one more before its answer is sent. A short memory: a
# stall that has ended (the machine was busy elsewhere) should not refuse requests for long after it
LAG_TICK_S, LAG_SAMPLES = 0.01, 3
# queued work is admitted up to this share of the budget: the rest absorbs the estimate's error and
# the trip of the answer back to the client
PLAN_SHARE = 0.7
# readiness stays false this long after a refusal (at least): an orchestrator polls every few seconds
SATURATED_FOR_S = 1.0


class Overloaded(Exception):
    """Refused under load; ``retry_after_s`` is when the work ahead should have drained."""

    def __init__(self, retry_after_s: float):
        super().__init__(f"the server is saturated; retry in {retry_after_s:.1f} s")
        self.retry_after_s = retry_after_s

    @property
    def retry_after(self) -> str:
        """The Retry-After header value: whole seconds, at least 1."""
        return str(max(1, math.ceil(self.retry_after_s)))


class _Cost:
    """Seconds per predict call as a line in its rows, fitted with decaying weights."""

    def __init__(self):
        self.w = self.x = self.y = self.xx = self.xy = 0.0

    def add(self, rows: int, seconds: float) -> None:
        d = DECAY
        self.w, self.x, self.y = self.w * d + 1, self.x * d + rows, self.y * d + seconds
        self.xx, self.xy = self.xx * d + rows * rows, self.xy * d + rows * seconds

    def seconds(self, rows: int, calls: int = 1) -> float:
        if not self.w:
            return 0.0
        mx, my = self.x / self.w, self.y / self.w
        var = self.xx / self.w - mx * mx
        # batches of (nearly) one size say nothing about the cost per row: all of it is per call then
        per_row = max(0.0, (self.xy / self.w - mx * my) / var) if var > 0.25 else 0.0
        per_call = max(0.0, my - per_row * mx)
        return calls * per_call + rows * per_row


class Batcher:
    def __init__(self, predict: Callable[[list], list], max_rows: int, max_wait_s: float,
                 observe: Callable[[int, int, float], None] = lambda rows, requests, seconds: None,
                 max_latency_s: float | None = None):
        self.predict, self.max_rows, self.max_wait_s, self.observe = predict, max_rows, max_wait_s, observe
        self.max_latency_s = max_latency_s
        self.queue: asyncio.Queue = asyncio.Queue()
        # one thread: parallel predicts in one process would only fight over the GIL
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict")
        self.task: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.cost = _Cost()
        self._carry = None
        self._queued_rows = 0
        self._computing = False
        self._busy_until = 0.0  # when the batch being computed should be done (monotonic clock)
        self._lags: deque = deque([0.0], maxlen=LAG_SAMPLES)
        self._refused_at = float("-inf")
        self._watch: asyncio.Task | None = None

    def start(self) -> None:
        loop = self.loop = asyncio.get_running_loop()
        self.task = loop.create_task(self._run())
        if self.max_latency_s is not None:
            self._watch = loop.create_task(self._watch_loop())

    async def stop(self) -> None:
        for task in (self.task, self._watch):
            if task:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self.pool.shutdown(wait=False, cancel_futures=True)

    @property
    def alive(self) -> bool:
        return self.task is not None and not self.task.done()

    def serves_this_loop(self) -> bool:
        """Whether requests on the running event loop can be batched here (a batcher belongs to one loop)."""
        try:
            return self.loop is asyncio.get_running_loop()
        except RuntimeError:
            return False

    # ---- the budget ----------------------------------------------------------------------------
    async def _watch_loop(self) -> None:
        while True:
            start = time.monotonic()
            await asyncio.sleep(LAG_TICK_S)
            self._lags.append(max(0.0, time.monotonic() - start - LAG_TICK_S))

    @property
    def loop_lag(self) -> float:
        """The event loop's recent worst lag, in seconds."""
        return max(self._lags)

    @property
    def _plan(self) -> float:
        return PLAN_SHARE * self.max_latency_s

    @property
    def _idle(self) -> bool:
        return not self._queued_rows and not self._computing

    def _drain_at(self, now: float, rows: int) -> float:
        """When ``rows`` more rows would be predicted if they were queued now."""
        total = self._queued_rows + rows
        return max(now, self._busy_until) + self.cost.seconds(total, math.ceil(total / self.max_rows))

    def _refuse(self, now: float, drain_at: float) -> Overloaded:
        self._refused_at = now
        return Overloaded(drain_at - now)

    def refusal(self) -> Overloaded | None:
        """An ``Overloaded`` to answer a new request with right now, before it is even read, when the
        work already queued (or the event loop's lag) leaves it no chance within the budget; else None.
        An idle batcher refuses nothing."""
        if self.max_latency_s is None:
            return None
        now, lag = time.monotonic(), self.loop_lag
        if lag > self.max_latency_s / 4:
            return self._refuse(now, now + lag)
        drain_at = self._drain_at(now, 0)
        if not self._idle and drain_at + 2 * lag > now + self._plan:
            return self._refuse(now, drain_at)
        return None

    @property
    def saturated(self) -> bool:
        """True while a new request would be refused, and for a while after the last refusal."""
        if self.max_latency_s is None:
            return False
        recent = time.monotonic() - self._refused_at < max(SATURATED_FOR_S, self.max_latency_s)
        return recent or self.refusal() is not None

    # ---- requests ------------------------------------------------------------------------------
    async def submit(self, rows: list, arrived: float | None = None) -> list:
        """Predictions for ``rows`` (one per row, in order). ``arrived`` (time.monotonic()) is when
        the request came in; its budget runs from there. Raises Overloaded when it cannot be met."""
        now, idle = time.monotonic(), self._idle
        deadline = None
        if self.max_latency_s is not None and not idle:  # nothing ahead of it: never refused
            deadline = (arrived if arrived is not None else now) + self._plan - 2 * self.loop_lag
            drain_at = self._drain_at(now, len(rows))
            if drain_at > deadline:
                raise self._refuse(now, drain_at)
        loop = asyncio.get_running_loop()
        futures = []
        for start in range(0, len(rows), self.max_rows):
            chunk = rows[start:start + self.max_rows]
            futures.append(loop.create_future())
            self.queue.put_nowait((chunk, futures[-1], deadline))
            self._queued_rows += len(chunk)
        try:
            parts = await asyncio.gather(*futures)
        except BaseException:
            for future in futures:  # a chunk refused or failed: the others need not be computed
                future.cancel()
            raise
        return parts[0] if len(parts) == 1 else [p for part in parts for p in part]

    async def _next(self, timeout: float | None):
        if self._carry is not None:
            item, self._carry = self._carry, None
        elif timeout is None:
            item = await self.queue.get()
        else:
            try:
                item = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                if timeout <= 0:
                    return None
                try:
                    item = await asyncio.wait_for(self.queue.get(), timeout)
                except (TimeoutError, asyncio.TimeoutError):
                    return None
        self._queued_rows -= len(item[0])
        return item

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last_end = 0.0
        while True:
            # a batch that was waiting when the last one ended took all the time since (its share of the
            # event loop's work included); one that had to wait for a request costs its compute time
            backlogged = self._carry is not None or not self.queue.empty()
            batch = [await self._next(None)]
            n = len(batch[0][0])
            deadline = loop.time() + self.max_wait_s
            while n < self.max_rows:
                item = await self._next(deadline - loop.time())
                if item is None:
                    break
                if n + len(item[0]) > self.max_rows:
                    self._carry = item  # opens the next batch
                    self._queued_rows += len(item[0])
                    break
                batch.append(item)
                n += len(item[0])
            batch = self._keep_in_time(batch)
            if not batch:
                continue
            rows = sum(len(part) for part, _, _ in batch)
            start = last_end if backlogged and last_end else time.monotonic()
            self._computing, self._busy_until = True, start + self.cost.seconds(rows)
            try:
                ok = await loop.run_in_executor(self.pool, self._compute, batch, loop)
            except Exception as exc:  # noqa: BLE001 - the loop must outlive any one batch
                ok = False
                for _, future, _ in batch:
                    _settle(future, exc)
            finally:
                self._computing, self._busy_until = False, 0.0
            last_end = time.monotonic()
            if ok:
                self.cost.add(rows, last_end - start)

    def _keep_in_time(self, batch: list) -> list:
        """Drop the requests whose clients hung up, and refuse those this batch would finish too late."""
        batch = [item for item in batch if not item[1].done()]
        now = time.monotonic()
        finish = now + self.cost.seconds(sum(len(part) for part, _, _ in batch))
        keep = []
        for item in batch:
            if item[2] is not None and finish > item[2]:
                _settle(item[1], self._refuse(now, self._drain_at(now, 0)))
            else:
                keep.append(item)
        return keep

    def _compute(self, batch: list, loop) -> bool:
        """In the worker thread: one predict for the whole batch, results split back per request.
        True when that one call succeeded."""
        rows = [row for part, _, _ in batch for row in part]
        start = time.perf_counter()
        try:
            results = self._predict_checked(rows)
        except Exception:
            results = None
        self.observe(len(rows), len(batch), time.perf_counter() - start)
        offset = 0
        for part, future, _ in batch:
            if results is not None:
                outcome: Any = results[offset:offset + len(part)]
            else:
                try:
                    outcome = self._predict_checked(part)
                except Exception as exc:  # noqa: BLE001 - handed to the request, which answers 500
                    outcome = exc
            offset += len(part)
            loop.call_soon_threadsafe(_settle, future, outcome)
        return results is not None

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
