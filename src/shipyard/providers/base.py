"""The provider interface: one object per upstream, one method that sends a request.

A provider turns an OpenAI-shaped request (already validated, `model` set to the upstream
model name) into a `Reply`: either a complete JSON body or a stream of SSE bytes. Built-in
providers are `openai` (HTTP), `python` (a callable) and `sim` (in process); a user's own
provider implements the same two methods.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from shipyard.config.targets import ProviderConfig

__all__ = ["Endpoint", "Provider", "Reply"]

Endpoint = Literal["chat/completions", "completions", "embeddings"]


@dataclass(slots=True)
class Reply:
    """What an upstream answered.

    Non-streaming: `body` holds the JSON bytes and `data` the parsed object (a provider that
    parses anyway fills it; otherwise the gateway parses `body`). Streaming: `stream` yields raw
    SSE bytes exactly as they should reach the client (`data: {...}\\n\\n` ... `data: [DONE]`).
    """

    status: int = 200
    body: bytes = b""
    data: dict[str, Any] | None = None
    stream: AsyncIterator[bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    upstream_ms: float = 0.0
    # Shipyard asked the upstream for stream usage the client did not ask for: drop that event.
    usage_injected: bool = False


class Provider(Protocol):
    """An upstream model. `send` raises `shipyard.errors.ShipyardError` subclasses on failure."""

    name: str
    kind: str
    config: ProviderConfig

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def send(
        self,
        endpoint: Endpoint,
        payload: dict[str, Any],
        *,
        stream: bool,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Reply:
        """Send one attempt; `timeout` is what is left of the request's deadline, in seconds."""
        ...
