"""A fast fake OpenAI-compatible upstream for benchmarks.

A raw asyncio `Protocol` HTTP/1.1 keep-alive server (httptools parser, uvloop event loop) that
answers every `POST /v1/chat/completions` with the same pre-serialised chat completion, `usage`
included. It does no JSON work per request, so it stays far from being the bottleneck.

    python bench/upstream.py --port 9100
    python bench/upstream.py --port 9100 --latency-ms 50 --concurrency 64

With `--latency-ms` each completion takes that long; with `--concurrency N` at most N are
served at once and the rest wait in arrival order, as in a model server with N batch slots. So
the upstream, not the gateway, is the bottleneck: it serves at most N / latency completions a
second, and `GET /stats` tells how many it served, how many waited and the longest wait (the
peaks since the previous `GET /stats`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
from collections import deque
from typing import Any, cast

import httptools
import orjson

COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-bench0000000000000000000000",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": "fixed",
    "system_fingerprint": "fp_bench",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18},
}
MODELS: dict[str, Any] = {
    "object": "list",
    "data": [{"id": "fixed", "object": "model", "created": 1_700_000_000, "owned_by": "bench"}],
}


def _response(status: bytes, body: bytes, *, close: bool = False) -> bytes:
    head = (
        b"HTTP/1.1 " + status + b"\r\n"
        b"content-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n"
        b"connection: " + (b"close" if close else b"keep-alive") + b"\r\n\r\n"
    )
    return head + body


_COMPLETION = orjson.dumps(COMPLETION)
_NOT_FOUND = orjson.dumps({"error": {"message": "not found", "type": "invalid_request_error"}})
RESPONSES: dict[tuple[bytes, bytes], bytes] = {
    (b"POST", b"/v1/chat/completions"): _response(b"200 OK", _COMPLETION),
    (b"POST", b"/chat/completions"): _response(b"200 OK", _COMPLETION),
    (b"GET", b"/v1/models"): _response(b"200 OK", orjson.dumps(MODELS)),
    (b"GET", b"/health"): _response(b"200 OK", b'{"status":"ok"}'),
}
NOT_FOUND = _response(b"404 Not Found", _NOT_FOUND)


class Slots:
    """At most `limit` completions in progress (0: no limit), each taking `latency_s`; the
    rest wait in arrival order. Counts what `GET /stats` reports."""

    def __init__(self, latency_s: float, limit: int) -> None:
        self.latency_s = latency_s
        self.limit = limit
        self.busy = 0
        self.waiting: deque[tuple[UpstreamProtocol, bytes, bool, float]] = deque()
        self.served = 0
        self.waited = 0
        self.max_waiting = 0
        self.max_wait_s = 0.0
        self.abandoned = 0  # waited, but the caller hung up first

    @property
    def immediate(self) -> bool:
        return self.latency_s <= 0 and self.limit <= 0

    def submit(self, conn: UpstreamProtocol, response: bytes, keep_alive: bool) -> None:
        if self.limit <= 0 or self.busy < self.limit:
            self._start(conn, response, keep_alive)
            return
        self.waiting.append((conn, response, keep_alive, time.monotonic()))
        self.waited += 1
        self.max_waiting = max(self.max_waiting, len(self.waiting))

    def _start(self, conn: UpstreamProtocol, response: bytes, keep_alive: bool) -> None:
        self.busy += 1
        asyncio.get_running_loop().call_later(self.latency_s, self._finish, conn, response,
                                              keep_alive)

    def _finish(self, conn: UpstreamProtocol, response: bytes, keep_alive: bool) -> None:
        self.busy -= 1
        self.served += 1
        conn.answer(response, keep_alive)
        while self.waiting and (self.limit <= 0 or self.busy < self.limit):
            waiter, queued, alive, since = self.waiting.popleft()
            if waiter.gone:
                self.abandoned += 1
                continue
            self.max_wait_s = max(self.max_wait_s, time.monotonic() - since)
            self._start(waiter, queued, alive)

    def stats(self) -> bytes:
        """Counts so far; the peaks (`max_*`) are since the previous read."""
        body = orjson.dumps({
            "latency_ms": self.latency_s * 1000, "concurrency": self.limit, "busy": self.busy,
            "waiting": len(self.waiting), "served": self.served, "waited": self.waited,
            "max_waiting": self.max_waiting, "max_wait_ms": round(self.max_wait_s * 1000, 1),
            "abandoned": self.abandoned})
        self.max_waiting, self.max_wait_s = len(self.waiting), 0.0
        return body


SLOTS = Slots(0.0, 0)
_SLOW = frozenset({(b"POST", b"/v1/chat/completions"), (b"POST", b"/chat/completions")})


class UpstreamProtocol(asyncio.Protocol):
    """One keep-alive connection; the parser calls back into the `on_*` methods."""

    __slots__ = ("_parser", "_path", "_transport", "gone")

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._path = b""
        self.gone = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._close()
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.write(_response(b"400 Bad Request", b"{}", close=True))
            self._close()

    def on_url(self, url: bytes) -> None:
        self._path = url.split(b"?", 1)[0]

    def on_message_complete(self) -> None:
        transport = self._transport
        if transport is None:
            return
        method = self._parser.get_method()
        key = (method, self._path)
        keep_alive = self._parser.should_keep_alive()
        if key in _SLOW and not SLOTS.immediate:
            SLOTS.submit(self, RESPONSES[key], keep_alive)
            return
        if key == (b"GET", b"/stats"):
            self.answer(_response(b"200 OK", SLOTS.stats()), keep_alive)
            return
        self.answer(RESPONSES.get(key, NOT_FOUND), keep_alive)

    def answer(self, response: bytes, keep_alive: bool) -> None:
        if self._transport is None:
            return  # the caller hung up while this one was being served
        self._transport.write(response)
        if not keep_alive:
            self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self.gone = True

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        UpstreamProtocol, host, port, backlog=4096, reuse_address=True
    )
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"upstream listening on http://{host}:{port} (pid {os.getpid()})", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-ms", type=float, default=0.0,
                        help="time each chat completion takes (default: none)")
    parser.add_argument("--concurrency", type=int, default=0,
                        help="completions served at once; the rest wait (default: no limit)")
    args = parser.parse_args()
    SLOTS.latency_s = args.latency_ms / 1000.0
    SLOTS.limit = args.concurrency
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        asyncio.run(serve(args.host, args.port))
    else:
        uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
