"""Reading server-sent events from a load-test or chaos answer."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp

__all__ = ["sse_data"]


async def sse_data(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """Yield the payload of each `data:` line as it arrives (`b"[DONE]"` included)."""
    buffer = b""
    async for chunk in response.content.iter_any():
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            line = line.strip()
            if line.startswith(b"data:"):
                yield line[5:].strip()
