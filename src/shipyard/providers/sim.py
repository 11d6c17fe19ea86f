"""`kind: sim` — the simulated model in process (no HTTP hop), for demos and tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson

from shipyard.config.targets import ProviderConfig
from shipyard.errors import InvalidRequest
from shipyard.pipeline import Endpoint, Reply
from shipyard.sim.engine import SimModel, SimRequestError

__all__ = ["SimProvider"]


class SimProvider:
    kind = "sim"

    def __init__(self, name: str, config: ProviderConfig) -> None:
        self.name = name
        self.config = config
        self.model = SimModel()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def send(self, endpoint: Endpoint, payload: dict[str, Any], *, stream: bool,
                   headers: dict[str, str] | None = None, timeout: float | None = None) -> Reply:
        started = time.perf_counter()
        if self.config.latency_ms:
            await asyncio.sleep(self.config.latency_ms / 1000.0)
        route = {"chat/completions": "chat", "completions": "completions"}.get(
            endpoint, "embeddings")
        try:
            self.model.check(route, payload)  # what a real model refuses: a 400
            if stream and endpoint != "embeddings":
                chunks = (self.model.chat_chunks(payload) if endpoint == "chat/completions"
                          else self.model.completion_chunks(payload))
                first = next(chunks, None)  # a refused schema is a 400, not a cut stream
                return Reply(stream=_sse(first, chunks),
                             upstream_ms=(time.perf_counter() - started) * 1000.0)
            if endpoint == "embeddings":
                data = self.model.embeddings(payload)
            elif endpoint == "completions":
                data = self.model.completion(payload)
            else:
                data = self.model.chat(payload)
        except SimRequestError as exc:
            raise InvalidRequest(exc.message, param=exc.param, code=exc.code) from None
        return Reply(data=data, body=orjson.dumps(data),
                     upstream_ms=(time.perf_counter() - started) * 1000.0)


async def _sse(first: dict[str, Any] | None,
               chunks: Iterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    if first is not None:
        yield b"data: " + orjson.dumps(first) + b"\n\n"
    for chunk in chunks:
        yield b"data: " + orjson.dumps(chunk) + b"\n\n"
    yield b"data: [DONE]\n\n"
