"""The drain grace: after SIGTERM, answer instead of resetting kept-alive connections.

uvicorn's shutdown closes idle kept-alive connections at once, so a client that sends its next
request on one just then sees a reset. Instead, for up to `server.drain_grace_s` after SIGTERM
the server keeps running while the gateway answers every request except the health probes with
503, `Retry-After` and `Connection: close` — each client closes its connection after that
answer — and uvicorn's own shutdown (which lets in-flight requests finish for
`server.drain_timeout_s`) starts as soon as no connection is left open, or when the grace ends.
A second SIGTERM skips the rest of the grace.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

__all__ = ["DrainGrace"]

log = logging.getLogger("shipyard.gateway")
ExitHandler = Callable[[int, FrameType | None], Any]
_POLL_S = 0.05


class DrainGrace:
    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: asyncio.Task[None] | None = None
        self._pending: tuple[ExitHandler, int, FrameType | None] | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The serving loop (called at startup, from inside it)."""
        self._loop = loop

    def on_signal(self, exit_now: ExitHandler, signum: int, frame: FrameType | None) -> None:
        """Called from the SIGTERM handler: pass the signal on to the server's handler after
        the grace (at once when there is no grace, or on a second signal)."""
        if self._loop is None or self.grace_s <= 0 or self._pending is not None:
            if self._waiting is not None and self._loop is not None:
                self._loop.call_soon_threadsafe(self._waiting.cancel)
            exit_now(signum, frame)
            return
        self._pending = (exit_now, signum, frame)
        # Signal-safe: the loop picks this up on its next turn.
        self._loop.call_soon_threadsafe(self._start)

    def _start(self) -> None:
        if self._loop is not None:
            self._waiting = self._loop.create_task(self._wait())

    async def _wait(self) -> None:
        if self._pending is None:
            return
        exit_now, signum, frame = self._pending
        deadline = time.monotonic() + self.grace_s
        # uvicorn's handler is a bound method of its Server, whose state lists the open
        # connections; without it, the full grace is waited.
        state = getattr(getattr(exit_now, "__self__", None), "server_state", None)
        log.info("draining: answering 503 with Connection: close for up to %gs before "
                 "shutting down", self.grace_s)
        try:
            while time.monotonic() < deadline:
                connections = getattr(state, "connections", None)
                if connections is not None and not connections:
                    break
                await asyncio.sleep(_POLL_S)
        finally:
            exit_now(signum, frame)
