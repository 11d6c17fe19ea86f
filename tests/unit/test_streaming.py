"""`shipyard.gateway.streaming.relay_sse`: SSE relayed event by event, with usage and errors."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest

from shipyard.errors import UpstreamUnavailable
from shipyard.gateway.streaming import relay_sse
from shipyard.observe.tokens import estimate_chat_prompt, estimate_text
from shipyard.pipeline import RequestContext

PAYLOAD = {"model": "demo", "stream": True,
           "messages": [{"role": "user", "content": "Tell me about ships."}]}
BASE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}


def event(obj: dict[str, Any] | str) -> bytes:
    data = obj if isinstance(obj, str) else json.dumps(obj)
    return f"data: {data}\n\n".encode()


def delta(content: str, finish: str | None = None) -> bytes:
    return event({**BASE, "choices": [{"index": 0, "delta": {"content": content},
                                       "finish_reason": finish}]})


USAGE = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
USAGE_EVENT = event({**BASE, "choices": [], "usage": USAGE})
DONE = b"data: [DONE]\n\n"
STREAM = [delta("Hello"), delta(" there"), delta("!", "stop")]


async def _source(chunks: Iterable[bytes], fail_with: Exception | None = None,
                  pause_s: float = 0.0) -> AsyncIterator[bytes]:
    for chunk in chunks:
        if pause_s:
            await asyncio.sleep(pause_s)
        yield chunk
    if fail_with is not None:
        raise fail_with


def relay(chunks: Iterable[bytes], *, fail_with: Exception | None = None,
          wants_usage: bool = False, drop_usage: bool = False, keep_text: bool = False,
          pause_s: float = 0.0) -> tuple[list[bytes], RequestContext]:
    """Run relay_sse over `chunks`; return what the client received and the context."""
    ctx = RequestContext(request_id="req-1", route="chat", trace_id="trace-1")
    ctx.provider = "up"

    async def run() -> list[bytes]:
        out = []
        async for piece in relay_sse(_source(chunks, fail_with, pause_s), ctx,
                                     payload=PAYLOAD, client_wants_usage=wants_usage,
                                     drop_usage_event=drop_usage, keep_text=keep_text,
                                     upstream_started=time.perf_counter()):
            out.append(piece)
        return out

    return asyncio.run(run()), ctx


def events_of(pieces: list[bytes]) -> list[bytes]:
    """Split what the client got into complete events (each ending in a blank line)."""
    joined = b"".join(pieces)
    assert joined.endswith(b"\n\n")
    return [e + b"\n\n" for e in joined[:-2].split(b"\n\n")]


def split_every(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("size", [1, 3, 7, 50, 10_000])
def test_events_split_across_chunks_are_reassembled_unchanged(size: int) -> None:
    upstream = b"".join([*STREAM, USAGE_EVENT, DONE])
    pieces, ctx = relay(split_every(upstream, size), wants_usage=True)

    assert b"".join(pieces) == upstream
    assert events_of(pieces)[-1] == DONE
    assert ctx.status == 200
    assert ctx.finish_reason == "stop"


def test_events_are_forwarded_as_soon_as_complete() -> None:
    pieces, _ = relay([STREAM[0] + STREAM[1][:10], STREAM[1][10:], STREAM[2], DONE])
    assert pieces[0] == STREAM[0]  # the partial second event waits for its end
    assert pieces[1] == STREAM[1]


def test_crlf_line_endings() -> None:
    upstream = b"".join([*STREAM, DONE]).replace(b"\n", b"\r\n")
    # Split so that one \r\n pair straddles a chunk boundary.
    cut = upstream.index(b"\r\n") + 1
    pieces, ctx = relay([upstream[:cut], upstream[cut:]], keep_text=True)

    received = events_of(pieces)
    assert received[:3] == STREAM
    assert received[-1] == DONE
    assert ctx.response_body == "Hello there!"
    assert ctx.status == 200


def test_comments_and_keepalives_pass_through() -> None:
    ping = b"event: ping\ndata: {}\n\n"
    pieces, ctx = relay([b": keep-alive\n\n", STREAM[0], ping, *STREAM[1:], DONE])
    assert events_of(pieces) == [b": keep-alive\n\n", STREAM[0], ping, *STREAM[1:], DONE]
    assert ctx.status == 200


def test_usage_is_captured() -> None:
    _, ctx = relay([*STREAM, USAGE_EVENT, DONE], wants_usage=True)
    assert (ctx.prompt_tokens, ctx.completion_tokens, ctx.total_tokens) == (11, 3, 14)
    assert ctx.tokens_estimated is False


def test_usage_event_dropped_when_client_did_not_ask() -> None:
    pieces, ctx = relay([*STREAM, USAGE_EVENT, DONE], drop_usage=True)
    assert events_of(pieces) == [*STREAM, DONE]
    assert ctx.total_tokens == 14  # still recorded in the trace


def test_usage_event_kept_when_not_dropping() -> None:
    pieces, _ = relay([*STREAM, USAGE_EVENT, DONE], wants_usage=True, drop_usage=False)
    assert events_of(pieces) == [*STREAM, USAGE_EVENT, DONE]


def test_usage_estimated_when_upstream_sends_none() -> None:
    pieces, ctx = relay([*STREAM, DONE], wants_usage=True)
    received = events_of(pieces)

    assert received[:3] == STREAM
    assert received[-1] == DONE
    synthesised = json.loads(received[3][len(b"data: "):])
    assert synthesised["choices"] == []
    assert synthesised["id"] == BASE["id"]
    usage = synthesised["usage"]
    assert usage["estimated"] is True
    assert usage["prompt_tokens"] == estimate_chat_prompt(PAYLOAD["messages"])
    assert usage["completion_tokens"] == estimate_text("Hello there!")
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert ctx.tokens_estimated is True
    assert ctx.total_tokens == usage["total_tokens"]


def test_estimated_usage_not_sent_when_client_did_not_ask() -> None:
    pieces, ctx = relay([*STREAM, DONE], wants_usage=False)
    assert events_of(pieces) == [*STREAM, DONE]
    assert ctx.tokens_estimated is True
    assert ctx.total_tokens is not None


def _error_of(piece: bytes) -> dict[str, Any]:
    assert piece.startswith(b"data: ")
    body = json.loads(piece[len(b"data: "):])
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


def test_stream_without_done_ends_with_an_error_event() -> None:
    pieces, ctx = relay(STREAM, keep_text=True)
    received = events_of(pieces)

    assert received[:3] == STREAM
    assert DONE not in received
    error = _error_of(received[-1])
    assert error["code"] == "upstream_unavailable"
    assert "ended the stream before it was complete" in error["message"]
    assert "'up'" in error["message"]
    assert ctx.status == 502
    assert ctx.error_type == "UpstreamUnavailable"
    assert ctx.response_body == "Hello there!"


def test_source_failing_midway_ends_with_an_error_event() -> None:
    failure = UpstreamUnavailable("The upstream 'up' reset the connection.")
    pieces, ctx = relay(STREAM[:2], fail_with=failure)
    received = events_of(pieces)

    assert received[:2] == STREAM[:2]
    assert DONE not in received
    assert _error_of(received[-1])["message"] == "The upstream 'up' reset the connection."
    assert ctx.status == 502
    assert ctx.error_message == failure.message
    assert ctx.upstream_ms is not None


def test_malformed_event_ends_the_stream_with_an_error() -> None:
    pieces, ctx = relay([STREAM[0], b"data: {not json\n\n", *STREAM[1:], DONE])
    received = events_of(pieces)
    assert received[0] == STREAM[0]
    assert "malformed stream event" in _error_of(received[-1])["message"]
    assert DONE not in received
    assert ctx.status == 502


def test_upstream_error_event_is_forwarded_and_recorded() -> None:
    upstream_error = event({"error": {"message": "overloaded", "type": "server_error",
                                      "param": None, "code": None}})
    pieces, ctx = relay([STREAM[0], upstream_error])
    assert events_of(pieces) == [STREAM[0], upstream_error]
    assert ctx.status == 502
    assert ctx.error_type == "UpstreamError"


def test_upstream_error_event_followed_by_done_keeps_the_error_status() -> None:
    # vLLM and others send [DONE] after an in-stream error event.
    upstream_error = event({"error": {"message": "overloaded", "type": "server_error",
                                      "param": None, "code": None}})
    pieces, ctx = relay([STREAM[0], upstream_error, DONE])
    assert events_of(pieces) == [STREAM[0], upstream_error]  # an error, never a clean end
    assert ctx.status == 502
    assert ctx.error_type == "UpstreamError"


def test_ttft_is_measured_at_the_first_chunk() -> None:
    pieces, ctx = relay([*STREAM, DONE], pause_s=0.02)
    assert ctx.ttft_ms is not None
    assert 15 <= ctx.ttft_ms < ctx.elapsed_ms()
    assert ctx.upstream_ms is not None
    assert ctx.upstream_ms >= 4 * 15  # four pauses
    assert pieces[-1] == DONE
