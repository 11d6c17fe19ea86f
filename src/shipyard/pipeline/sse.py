"""Server-sent events as stages see them: whole events out of a byte stream.

Upstreams send SSE bytes in arbitrary pieces; a stage that rewrites a stream (PII restore,
guards) needs whole events. `events()` re-frames a byte stream into complete events (each
ending with its blank line), and `data_of()` reads an event's `data:` payload.

>>> data_of(b'data: {"a": 1}\\n\\n')
b'{"a": 1}'
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

__all__ = ["DONE", "chunks", "data_of", "events"]

DONE = b"data: [DONE]\n\n"


async def events(source: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Yield each complete event of `source` (CRLF normalised, blank line included); a
    trailing piece without its blank line is yielded as it is at the end."""
    buffer = b""
    async for chunk in source:
        buffer += chunk
        if b"\r\n" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        if b"\n\n" not in buffer:
            continue
        *complete, buffer = buffer.split(b"\n\n")
        for event in complete:
            if event.strip():
                yield event + b"\n\n"
    if buffer.strip():
        yield buffer


def data_of(event: bytes) -> bytes | None:
    """The `data:` payload of one event (lines joined), or None for comments and keep-alives."""
    data: bytes | None = None
    for line in event.rstrip(b"\n").split(b"\n"):
        if line.startswith(b"data:"):
            value = line[5:]
            if value.startswith(b" "):
                value = value[1:]
            data = value if data is None else data + b"\n" + value
    return data


async def chunks(source: AsyncIterator[bytes]) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of an OpenAI-style stream's `data:` lines (`[DONE]`, comments and
    anything that is not a JSON object skipped): what a translator to another format reads."""
    async for event in events(source):
        data = data_of(event)
        if data is None or data == b"[DONE]":
            continue
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            yield obj
