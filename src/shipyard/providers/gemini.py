"""`kind: gemini` — Google's Generative Language API (Gemini), translated to and from OpenAI
chat by `shipyard.providers.formats.gemini`.

`POST {base_url}/models/{model}:generateContent`, streams from
`:streamGenerateContent?alt=sse`; the key goes in the `x-goog-api-key` header (never in the
URL, which would put it in access logs).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import orjson

from shipyard.config.targets import DEFAULT_BASE_URLS, ProviderConfig
from shipyard.providers.formats import gemini as wire
from shipyard.providers.formats.openai import ChunkWriter, sse_events
from shipyard.providers.translating import (
    Prepared,
    StreamState,
    TranslatingProvider,
    loads_event,
)

__all__ = ["GeminiProvider"]


class GeminiProvider(TranslatingProvider):
    kind = "gemini"

    def __init__(self, name: str, config: ProviderConfig) -> None:
        super().__init__(name, config)
        self.base_url = (config.base_url or DEFAULT_BASE_URLS["gemini"]).rstrip("/")
        if config.api_key is not None:
            self._headers["x-goog-api-key"] = config.api_key.get_secret_value()

    def prepare(self, payload: dict[str, Any], *, stream: bool) -> Prepared:
        model = quote(str(payload.get("model", "")).removeprefix("models/"), safe="")
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return Prepared(f"{self.base_url}/models/{model}:{method}",
                        orjson.dumps(wire.to_gemini(payload)), {}, payload)

    def answer(self, data: Any, prepared: Prepared) -> dict[str, Any]:
        return wire.from_gemini(data, model=str(prepared.payload.get("model", "")))

    async def read_stream(self, source: AsyncIterator[bytes], prepared: Prepared,
                          writer: ChunkWriter, state: StreamState
                          ) -> AsyncIterator[dict[str, Any]]:
        reader = wire.StreamReader(writer, provider=self.name)
        async for _, data in sse_events(source, provider=self.name):
            for chunk in reader.feed(loads_event(data, self.name)):
                yield chunk
        # The stream simply ends; it is complete when a candidate carried a finish reason.
        state.usage, state.done = reader.usage, reader.done

    def error_text(self, body: bytes, headers: Any) -> tuple[str, str | None]:
        return wire.error_message(body)
