"""An open-loop HTTP/1.1 load generator: requests start at a fixed rate, whatever the answers.

wrk (and every closed-loop client) sends the next request when the previous answer arrives, so
the offered load depends on the server: fast refusals make it explode, slow answers make it
shrink. Here request i is due at `start + i / rate`, as if each came from a different user.
A due request goes out on an idle keep-alive connection, or on a new one (up to
`max_connections`); its latency counts from when it was due, so a client that fell behind is
not hidden (no coordinated omission). An answer that does not arrive within `timeout_s` of the
due time is a client timeout: the connection is dropped, as a real client would.

The bookkeeping is a few dictionary operations per request on uvloop, so one Python process
offers several thousand requests a second while leaving the rest of a core to the server;
`max_lag_ms` (due time to send time) shows whether it kept up.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, cast

__all__ = ["OpenLoopResult", "run_open_loop"]


@dataclass
class OpenLoopResult:
    target_rps: float
    duration_s: float
    sent: int  # requests that went out (or were due while no connection could be had)
    offered_rps: float  # sent / the time it took to send them: the rate actually offered
    statuses: dict[int, int]
    timeouts: int  # no answer within timeout_s of the due time
    errors: dict[str, int]  # connect failures, resets
    latency_ms: dict[int, dict[str, float]]  # per status: p50, p90, p99, max
    max_lag_ms: float  # the longest a due request waited for the client itself
    connections_opened: int
    peak_connections: int
    extra: dict[str, Any] = field(default_factory=dict)

    def count(self, status: int) -> int:
        return self.statuses.get(status, 0)


class _Conn(asyncio.Protocol):
    __slots__ = ("buf", "client", "due", "seq", "transport")

    def __init__(self, client: _Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.due = 0.0
        self.seq = -1  # the request in flight on this connection, -1 when idle

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            self.buf = buf
            return
        head = buf[:end].lower()
        at = head.find(b"\r\ncontent-length:")
        length = 0
        if at >= 0:
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : stop if stop >= 0 else len(head)])
        if len(buf) < end + 4 + length:
            self.buf = buf
            return
        self.buf = b""
        self.client.answered(self, int(buf[9:12]), b"\r\nconnection: close" in head)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.client.lost(self)


class _Client:
    def __init__(self, host: str, port: int, request: bytes, timeout_s: float,
                 max_connections: int) -> None:
        self.host, self.port, self.request = host, port, request
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self.loop = asyncio.get_running_loop()
        self.idle: list[_Conn] = []
        self.open = 0  # connected or connecting
        self.connecting = 0
        self.peak = 0
        self.opened = 0
        self.waiting: deque[tuple[int, float]] = deque()  # due, no connection yet
        self.in_flight: deque[tuple[float, int, _Conn]] = deque()  # in send order
        self.seq = 0
        self.statuses: dict[int, int] = {}
        self.latencies: dict[int, list[float]] = {}
        self.timeouts = 0
        self.errors: dict[str, int] = {}
        self.max_lag = 0.0

    # -- sending ----------------------------------------------------------------------------
    def due(self, when: float) -> None:
        seq = self.seq
        self.seq += 1
        if self.idle:
            self._send(self.idle.pop(), seq, when)
            return
        self.waiting.append((seq, when))
        if self.open < self.max_connections and self.connecting < len(self.waiting):
            self.open += 1
            self.connecting += 1
            self.peak = max(self.peak, self.open)
            self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        try:
            _, conn = await self.loop.create_connection(lambda: _Conn(self), self.host,
                                                        self.port)
        except OSError as exc:
            self.open -= 1
            self.connecting -= 1
            self._error(f"connect: {exc.strerror or type(exc).__name__}")
            return
        self.connecting -= 1
        self.opened += 1
        self._ready(conn)

    def _ready(self, conn: _Conn) -> None:
        if self.waiting:
            seq, when = self.waiting.popleft()
            self._send(conn, seq, when)
        else:
            self.idle.append(conn)

    def _send(self, conn: _Conn, seq: int, when: float) -> None:
        now = self.loop.time()
        self.max_lag = max(self.max_lag, now - when)
        if conn.transport is None:  # closed by the server while idle
            self._error("reset")
            return
        conn.seq, conn.due = seq, when
        self.in_flight.append((when, seq, conn))
        conn.transport.write(self.request)

    # -- answers ----------------------------------------------------------------------------
    def answered(self, conn: _Conn, status: int, close: bool) -> None:
        latency = self.loop.time() - conn.due
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.latencies.setdefault(status, []).append(latency)
        conn.seq = -1
        if close:
            if conn.transport is not None:
                conn.transport.close()
            return
        self._ready(conn)

    def lost(self, conn: _Conn) -> None:
        self.open -= 1
        if conn.seq >= 0:
            conn.seq = -1
            self._error("reset")
        elif conn in self.idle:
            self.idle.remove(conn)

    def _error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def sweep(self, now: float, *, final: bool = False) -> None:
        """Time out what has waited `timeout_s` since it was due (oldest first)."""
        limit = now - self.timeout_s
        while self.waiting and (final or self.waiting[0][1] <= limit):
            self.waiting.popleft()
            self.timeouts += 1
        while self.in_flight:
            when, seq, conn = self.in_flight[0]
            if conn.seq != seq:  # answered (or failed) already
                self.in_flight.popleft()
                continue
            if not final and when > limit:
                break
            self.in_flight.popleft()
            conn.seq = -1
            self.timeouts += 1
            if conn.transport is not None:
                conn.transport.abort()

    def close(self) -> None:
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()
        self.idle.clear()


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)

    return {"count": len(ordered), "p50": at(0.50), "p90": at(0.90), "p99": at(0.99),
            "max": round(ordered[-1] * 1000, 2)}


async def _run(host: str, port: int, request: bytes, rate: float, duration_s: float,
               timeout_s: float, max_connections: int) -> OpenLoopResult:
    client = _Client(host, port, request, timeout_s, max_connections)
    loop = client.loop
    start = loop.time() + 0.01
    end = start + duration_s
    total = int(duration_s * rate)
    sent = 0
    while sent < total:  # every request of the window goes out, late if the client lags
        now = loop.time()
        due = min(int((now - start) * rate) + 1, total)
        while sent < due:
            client.due(start + sent / rate)
            sent += 1
        client.sweep(now)
        await asyncio.sleep(0.001)
    # The rate actually offered: over the window, or longer if the client fell behind.
    span = max(duration_s, loop.time() - start)
    # What is still out gets its full timeout, then counts as timed out.
    drain_until = max(end, loop.time()) + timeout_s
    while (client.in_flight or client.waiting) and loop.time() < drain_until:
        client.sweep(loop.time())
        await asyncio.sleep(0.005)
    client.sweep(loop.time(), final=True)
    client.close()
    return OpenLoopResult(
        target_rps=rate, duration_s=duration_s, sent=sent,
        offered_rps=round(sent / span, 1), statuses=dict(sorted(client.statuses.items())),
        timeouts=client.timeouts, errors=client.errors,
        latency_ms={status: _percentiles(values)
                    for status, values in sorted(client.latencies.items())},
        max_lag_ms=round(client.max_lag * 1000, 2), connections_opened=client.opened,
        peak_connections=client.peak)


def run_open_loop(url: str, body: bytes, *, rate: float, duration_s: float, timeout_s: float,
                  headers: dict[str, str] | None = None,
                  max_connections: int = 8000) -> OpenLoopResult:
    """POST `body` to `url` at `rate` requests a second for `duration_s` seconds."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    lines = [f"POST {parts.path or '/'} HTTP/1.1", f"Host: {host}:{port}",
             f"Content-Length: {len(body)}", "Content-Type: application/json",
             *(f"{k}: {v}" for k, v in (headers or {}).items())]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    started = time.perf_counter()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        result = asyncio.run(_run(host, port, request, rate, duration_s, timeout_s,
                                  max_connections))
    else:
        result = uvloop.run(_run(host, port, request, rate, duration_s, timeout_s,
                                 max_connections))
    result.extra["wall_s"] = round(time.perf_counter() - started, 2)
    return result
