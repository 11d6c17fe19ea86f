"""A fast fake OpenAI-compatible upstream for benchmarks.

A raw asyncio `Protocol` HTTP/1.1 keep-alive server (httptools parser, uvloop event loop) that
answers every `POST /v1/chat/completions` with the same pre-serialised chat completion, `usage`
included. It does no JSON work per request, so it stays far from being the bottleneck.

    python bench/upstream.py --port 9100
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
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


class UpstreamProtocol(asyncio.Protocol):
    """One keep-alive connection; the parser calls back into the `on_*` methods."""

    __slots__ = ("_parser", "_path", "_transport")

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._path = b""

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
        transport.write(RESPONSES.get((method, self._path), NOT_FOUND))
        if not self._parser.should_keep_alive():
            self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

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
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        asyncio.run(serve(args.host, args.port))
    else:
        uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
