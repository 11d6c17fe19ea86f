"""`kind: ollama` — Ollama's native chat API (`POST /api/chat`), translated to and from
OpenAI chat by `shipyard.providers.formats.ollama` (which says why native: exact token counts
on every answer, streamed or not).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from shipyard.config.targets import DEFAULT_BASE_URLS, ProviderConfig
from shipyard.providers.formats import ollama as wire
from shipyard.providers.formats.openai import ChunkWriter, ndjson_lines
from shipyard.providers.translating import (
    Prepared,
    StreamState,
    TranslatingProvider,
    loads_event,
)

__all__ = ["OllamaProvider"]


class OllamaProvider(TranslatingProvider):
    kind = "ollama"

    def __init__(self, name: str, config: ProviderConfig) -> None:
        super().__init__(name, config)
        base = (config.base_url or DEFAULT_BASE_URLS["ollama"]).rstrip("/")
        # A base URL copied from an OpenAI-style setup ends in /v1: the native API is beside it.
        self.url = base.removesuffix("/v1") + "/api/chat"
        if config.api_key is not None:  # Ollama behind an authenticating proxy, or its cloud
            self._headers["authorization"] = f"Bearer {config.api_key.get_secret_value()}"

    def prepare(self, payload: dict[str, Any], *, stream: bool) -> Prepared:
        body = wire.to_ollama(payload, stream=stream, keep_alive=self.config.keep_alive)
        return Prepared(self.url, orjson.dumps(body), {}, payload)

    def answer(self, data: Any, prepared: Prepared) -> dict[str, Any]:
        return wire.from_ollama(data, prepared.payload)

    async def read_stream(self, source: AsyncIterator[bytes], prepared: Prepared,
                          writer: ChunkWriter, state: StreamState
                          ) -> AsyncIterator[dict[str, Any]]:
        reader = wire.StreamReader(writer, prepared.payload, provider=self.name)
        async for line in ndjson_lines(source):
            for chunk in reader.feed(loads_event(line, self.name)):
                yield chunk
            if reader.done:
                break
        state.usage, state.done = reader.usage, reader.done

    def error_text(self, body: bytes, headers: Any) -> tuple[str, str | None]:
        return (wire.error_message(body), None)
