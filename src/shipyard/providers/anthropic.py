"""`kind: anthropic` — Anthropic's Messages API (`POST /v1/messages`), translated to and from
OpenAI chat by `shipyard.providers.formats.anthropic`.

Sends `x-api-key` and `anthropic-version` (`api_version`, default 2023-06-01); requests
without `max_tokens` get `default_max_tokens`. Overloaded answers (HTTP 529) count as 503s,
so they are retried and fail over like any unavailable upstream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from shipyard.config.targets import DEFAULT_API_VERSIONS, DEFAULT_BASE_URLS, ProviderConfig
from shipyard.errors import ShipyardError
from shipyard.providers.formats import anthropic as wire
from shipyard.providers.formats.openai import ChunkWriter, sse_events
from shipyard.providers.translating import (
    Prepared,
    StreamState,
    TranslatingProvider,
    loads_event,
)

__all__ = ["AnthropicProvider"]


class AnthropicProvider(TranslatingProvider):
    kind = "anthropic"

    def __init__(self, name: str, config: ProviderConfig) -> None:
        super().__init__(name, config)
        self.url = (config.base_url or DEFAULT_BASE_URLS["anthropic"]).rstrip("/") + "/messages"
        self._headers["anthropic-version"] = config.api_version or DEFAULT_API_VERSIONS[
            "anthropic"]
        if config.api_key is not None:
            self._headers["x-api-key"] = config.api_key.get_secret_value()

    def prepare(self, payload: dict[str, Any], *, stream: bool) -> Prepared:
        body = wire.to_anthropic(payload, default_max_tokens=self.config.default_max_tokens)
        body["stream"] = stream
        return Prepared(self.url, orjson.dumps(body), {}, payload,
                        json_tool=wire.forced_json_tool(payload))

    def answer(self, data: Any, prepared: Prepared) -> dict[str, Any]:
        return wire.from_anthropic(data, json_tool=prepared.json_tool)

    async def read_stream(self, source: AsyncIterator[bytes], prepared: Prepared,
                          writer: ChunkWriter, state: StreamState
                          ) -> AsyncIterator[dict[str, Any]]:
        reader = wire.StreamReader(writer, json_tool=prepared.json_tool, provider=self.name)
        async for _, data in sse_events(source, provider=self.name):
            for chunk in reader.feed(loads_event(data, self.name)):
                yield chunk
            if reader.done:
                break
        state.usage, state.done = reader.usage, reader.done

    def error_text(self, body: bytes, headers: Any) -> tuple[str, str | None]:
        return wire.error_message(body)

    def error(self, status: int, body: bytes, headers: Any) -> ShipyardError:
        # 529 (overloaded) is Anthropic's own status: treat it as the 503 it means.
        return super().error(503 if status == 529 else status, body, headers)
