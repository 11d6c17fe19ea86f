"""Span recording, W3C trace context parsing and deterministic payload sampling."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from shipyard.config.traces import RetentionConfig
from shipyard.observe.tracing import parse_traceparent, record_span, sampled, span, traceparent
from shipyard.pipeline import RequestContext
from shipyard.store.writer import _span_params

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize(("header", "expected"), [
    (f"00-{TRACE}-00f067aa0ba902b7-01", (TRACE, "00f067aa0ba902b7", "01")),
    (f"00-{TRACE.upper()}-00F067AA0BA902B7-00", (TRACE, "00f067aa0ba902b7", "00")),
    (f"01-{TRACE}-00f067aa0ba902b7-01-future", (TRACE, "00f067aa0ba902b7", "01")),
    (f"00-{TRACE}-00f067aa0ba902b7-01-extra", None),  # version 00 has exactly 4 parts
    (f"ff-{TRACE}-00f067aa0ba902b7-01", None),
    (f"00-{'0' * 32}-00f067aa0ba902b7-01", None),
    (f"00-{TRACE}-{'0' * 16}-01", None),
    ("00-abc-def-01", None),
    ("", None),
    (None, None),
])
def test_parse_traceparent(header: str | None, expected: tuple[str, str, str] | None) -> None:
    assert parse_traceparent(header) == expected


def test_traceparent_round_trip() -> None:
    assert parse_traceparent(traceparent(TRACE, "00f067aa0ba902b7", "00")) == (
        TRACE, "00f067aa0ba902b7", "00")


def test_context_continues_the_callers_trace() -> None:
    ctx = RequestContext("r", "chat", "a" * 32, parent=(TRACE, "00f067aa0ba902b7", "00"))
    assert (ctx.otel_trace_id, ctx.parent_span_id, ctx.sampled) == (
        TRACE, "00f067aa0ba902b7", False)
    assert ctx.to_record()["trace_id"] == TRACE and ctx.to_record()["id"] == "a" * 32
    fresh = RequestContext("r", "chat", "b" * 32)
    assert (fresh.otel_trace_id, fresh.parent_span_id, fresh.sampled) == ("b" * 32, None, True)


def test_sampling_is_deterministic_and_close_to_the_ratio() -> None:
    ids = [os.urandom(16).hex() for _ in range(20_000)]
    for ratio in (0.0, 0.1, 0.5, 1.0):
        kept = [t for t in ids if sampled(t, ratio)]
        assert abs(len(kept) / len(ids) - ratio) < 0.02
        assert kept == [t for t in ids if sampled(t, ratio)]  # same answer every time
    # Monotone: a trace kept at 10% is kept at 50% too.
    assert all(sampled(t, 0.5) for t in ids if sampled(t, 0.1))


def test_spans_nest_and_record_errors() -> None:
    ctx = RequestContext("r", "chat", "c" * 32)
    with span(ctx, "guards") as outer:
        outer.set("guard", "pii")
        with span(ctx, "guards.input"):
            pass
        with pytest.raises(ValueError), span(ctx, "guards.output"):
            raise ValueError("blocked")
    assert ctx.current_span == ctx.root_span
    by_name = {s[2]: s for s in ctx.spans}
    assert by_name["guards"][1] == ctx.root_span
    assert by_name["guards.input"][1] == by_name["guards"][0]
    assert by_name["guards.output"][5] == "ValueError"
    assert by_name["guards"][6] == {"guard": "pii"}
    sid = record_span(ctx, "cache", ctx.t0, ctx.t0 + 0.002, attributes={"hit": True})
    assert ctx.spans[-1][:3] == (sid, ctx.root_span, "cache")


def test_writer_turns_span_tuples_into_one_row_per_request() -> None:
    row = {"id": "r" * 32, "trace_id": TRACE, "tenant_id": "acme", "started_at": "t",
           "spans_t0": 100.0,
           "spans": [("s1", None, "chat", 100.0, 100.0125, None, None),
                     ("s2", "s1", "upstream", 100.001, 100.011, "UpstreamError", {"a": 1})]}
    assert _span_params([row, {"id": "x", "spans": None}]) == [
        ("r" * 32, TRACE, "acme", "t",
         '[["s1",null,"chat",0.0,12.5,null,null],'
         '["s2","s1","upstream",1.0,10.0,"UpstreamError",{"a":1}]]')]


def test_retention_tenants_must_be_unique() -> None:
    with pytest.raises(ValidationError, match="listed twice"):
        RetentionConfig(tenants=[{"tenant": "a", "days": 1}, {"tenant": "a", "days": 2}])


def test_span_attributes_of_any_type_never_fail_the_writer() -> None:
    odd = {"id": "r", "trace_id": None, "tenant_id": "t", "started_at": "s", "spans_t0": 0.0,
           "spans": [("s1", None, "guards", 0.0, 0.001, None, {"value": object()})]}
    ((_, trace_id, _, _, text),) = _span_params([odd])
    assert trace_id == "r" and '"value":"<object object at' in text
