"""The provider interface: one object per upstream, one method that sends a request.

A provider turns an OpenAI-shaped request (already validated, `model` set to the upstream
model name) into a `Reply`: either a complete JSON body or a stream of SSE bytes. Built-in
providers are `openai` (HTTP), `python` (a callable) and `sim` (in process); a user's own
provider implements the same two methods.
"""

from __future__ import annotations

from typing import Any, Protocol

from shipyard.config.targets import ProviderConfig
from shipyard.pipeline import Endpoint, Reply

__all__ = ["Provider"]

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
