"""The HTTP/1.1 protocol `shipyard serve` runs: uvicorn's httptools protocol, plus refusing a
request the moment its request line and headers are parsed when the gateway-wide admission
(`server.max_in_flight`) has no room for it, not even in its queue.

Through the app, a refusal costs what any request's first steps cost: uvicorn builds a request
cycle and starts a task, the ASGI call runs, the 503's head and body go out in two system
calls. Here it is one write of a pre-built answer (`FastPath.refuse_unread`), and whatever body
follows is dropped as it arrives. That is what lets one process refuse a flood at ten times
its capacity and keep serving at capacity (`bench/overload.py`).

The connection stays open after a refusal (unless the client asked to close it): closing it
would make the client's next request pay for a new connection, which costs this side an
accept and a new protocol object — more than the refusal itself.

Only the plain case is decided here: no pipelined request still being answered on the
connection, no upgrade, no CORS or access log that the answer must go through. Everything
else reaches the app as usual, where `FastPath._admitted` applies the same admission.
"""

from __future__ import annotations

import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from shipyard.gateway.app import FastPath

__all__ = ["AdmissionProtocol"]

log = logging.getLogger("shipyard.gateway")

_CLOSE = b"\r\nconnection: close\r\n\r\n"


class AdmissionProtocol(HttpToolsProtocol):
    """uvicorn's `httptools` protocol that refuses at once what admission cannot take."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gate = _fast_path(self.app) if not self.access_log else None
        self._dropping = False  # the body of a refused request is arriving: drop it

    def on_headers_complete(self) -> None:
        gate = self._gate
        cycle = self.cycle
        if (gate is not None and (cycle is None or cycle.response_complete)
                and not self.root_path and not self.parser.should_upgrade()):
            path = self.url.partition(b"?")[0]
            try:
                answer = None if b"%" in path else gate.refuse_unread(
                    self.parser.get_method(), path)
            except Exception:  # a bug here must cost the shortcut, not the connection
                log.exception("refusing a request before reading it failed")
                answer = None
            if answer is not None:
                self._refuse(answer)
                return
        super().on_headers_complete()

    def _refuse(self, answer: bytes) -> None:
        keep_alive = (self.parser.get_http_version() != "1.0"
                      and self.parser.should_keep_alive())
        extra = self.server_state.default_headers
        if extra or not keep_alive:
            head, _, body = answer.partition(b"\r\n\r\n")
            lines = b"".join(b"\r\n" + name + b": " + value for name, value in extra)
            answer = head + lines + (b"\r\n\r\n" if keep_alive else _CLOSE) + body
        self.transport.write(answer)
        self._dropping = True
        if not keep_alive:
            self.transport.close()
        # What uvicorn does when a response is complete: count it, and arm the keep-alive
        # timer, so a client that never sends the promised body is not kept forever.
        self.on_response_complete()

    def on_body(self, body: bytes) -> None:
        if not self._dropping:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._dropping:
            self._dropping = False
            return
        super().on_message_complete()


def _fast_path(app: Any) -> FastPath | None:
    """The gateway app under uvicorn's wrappers (proxy headers, message logging)."""
    for _ in range(8):
        if isinstance(app, FastPath):
            return app
        app = getattr(app, "app", None)
    return None
