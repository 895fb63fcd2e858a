"""Load over loopback for the serving tests: a closed loop (N clients, each sends when answered) to find
a server's capacity, and an open loop (requests on a fixed schedule, whatever the answers) to offer it
more than that. Raw HTTP/1.1 on asyncio streams: the client must cost far less CPU than the server."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field


def post(port: int, path: str, body: bytes) -> bytes:
    """The bytes of one keep-alive JSON POST."""
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def _exchange(reader, writer, request: bytes) -> tuple[int, dict]:
    """Send one request; return its status and (lower-case) headers, the body read and dropped."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.decode("latin-1").partition(":")
        headers[key.strip().lower()] = value.strip()
    await reader.readexactly(int(headers.get("content-length", "0")))
    return int(head[9:12]), headers


async def closed_loop(port: int, request: bytes, connections: int, seconds: float) -> float:
    """Answers with status 200 per second, from ``connections`` clients that each send when answered."""
    ok, end = 0, time.monotonic() + seconds

    async def client():
        nonlocal ok
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.monotonic() < end:
                status, _ = await _exchange(reader, writer, request)
                ok += status == 200
        finally:
            writer.close()

    start = time.monotonic()
    await asyncio.gather(*(client() for _ in range(connections)))
    return ok / (time.monotonic() - start)


@dataclass
class Answer:
    status: int | str  # an HTTP status, or "reset" when the connection broke
    seconds: float  # from the moment it was sent to the end of its answer
    retry_after: str | None = None
    idle: float | None = None  # how long its keep-alive connection had sat idle before it; None: a new one


@dataclass
class OpenLoop:
    answers: list[Answer] = field(default_factory=list)
    late: list[float] = field(default_factory=list)  # how far behind its schedule each request went out

    def of(self, status) -> list[Answer]:
        return [a for a in self.answers if a.status == status]

    def p99(self, status=200) -> float:
        times = sorted(a.seconds for a in self.of(status))
        return statistics.quantiles(times, n=100, method="inclusive")[98] if len(times) > 1 else times[0]

    def statuses(self) -> dict:
        out = {}
        for a in self.answers:
            out[a.status] = out.get(a.status, 0) + 1
        return out


async def open_loop(port: int, request: bytes, rate: float, seconds: float, max_connections: int = 256,
                    during=None, keepalive_expiry: float = 4.0) -> OpenLoop:
    """Send ``rate`` requests per second for ``seconds`` on a schedule, over as many keep-alive connections
    as are busy (at most ``max_connections``); ``during``, an async callable, runs alongside.

    Like any HTTP client's pool (httpcore's keepalive_expiry), a connection idle for ``keepalive_expiry``
    seconds, or one the server has closed, is dropped rather than reused: servers close idle connections
    (uvicorn after 5 s), and a request written into one as it closes breaks. Such breaks are the client's,
    so a "reset" counted here is the server's."""
    result, idle, opened = OpenLoop(), [], 0  # idle: (reader, writer, since), the freshest last
    free = asyncio.Condition()

    def usable(conn) -> bool:
        reader, writer, since = conn
        if time.monotonic() - since < keepalive_expiry and not reader.at_eof():
            return True
        writer.close()
        return False

    async def one(due: float):
        nonlocal opened
        async with free:
            while True:
                while not idle and opened >= max_connections:
                    await free.wait()
                conn = idle.pop() if idle else None
                if conn is None or usable(conn):
                    break
                opened -= 1
            opened += conn is None
        age = None
        if conn is None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        else:
            reader, writer, since = conn
            age = time.monotonic() - since
        keep, sent = True, time.monotonic()
        result.late.append(sent - due)
        try:
            status, headers = await _exchange(reader, writer, request)
            result.answers.append(Answer(status, time.monotonic() - sent, headers.get("retry-after"), age))
            keep = headers.get("connection", "").lower() != "close"
        except (ConnectionError, asyncio.IncompleteReadError):
            result.answers.append(Answer("reset", time.monotonic() - sent, idle=age))
            keep = False
        async with free:
            if keep:
                idle.append((reader, writer, time.monotonic()))
            else:
                writer.close()
                opened -= 1
            free.notify()

    side = asyncio.ensure_future(during()) if during else None
    start, tasks = time.monotonic() + 0.05, []
    for i in range(int(rate * seconds)):
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        tasks.append(asyncio.ensure_future(one(due)))
    await asyncio.gather(*tasks)
    if side:
        await side
    for _, writer, _ in idle:
        writer.close()
    return result
