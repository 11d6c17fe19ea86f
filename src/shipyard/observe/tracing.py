"""Request spans, recorded cheaply on the hot path and turned into OpenTelemetry spans later.

During a request each pipeline stage appends one light tuple to its context's `spans` list
(`perf_counter` timestamps, no OpenTelemetry objects). After the response the gateway turns
the tuples into rows for the Shipyard store (a waterfall without a collector) and, only when
`traces.otlp.endpoint` is configured, into OpenTelemetry SDK spans for OTLP export.

A stage of one's own (a guard, say) records a span with `span`:

>>> class Guard(Stage):  # doctest: +SKIP
...     async def __call__(self, call: Call, call_next: Handler) -> Reply:
...         with span(call.ctx, "guards.input") as s:
...             s.set("guard", "pii")
...             check(call.payload)
...         return await call_next(call)

W3C trace context: `parse_traceparent` reads an incoming `traceparent` header and
`traceparent` writes the one sent to an upstream (the attempt's span as its parent).
"""

from __future__ import annotations

import re
from random import getrandbits
from time import perf_counter
from types import TracebackType
from typing import Any, Protocol

__all__ = [
    "SpanTuple",
    "TracedContext",
    "new_span_id",
    "parse_traceparent",
    "record_span",
    "sampled",
    "span",
    "traceparent",
]

# (span id, parent span id, name, start perf_counter, end perf_counter, error, attributes)
SpanTuple = tuple[str, str | None, str, float, float, str | None, dict[str, Any] | None]

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


class TracedContext(Protocol):
    """What a request context offers to span recording (`RequestContext` has it)."""

    t0: float
    spans: list[SpanTuple]
    current_span: str


def new_span_id() -> str:
    """A random, non-zero 64-bit span id as 16 hex digits (about 0.2 µs)."""
    return f"{getrandbits(64) or 1:016x}"


def parse_traceparent(value: str | None) -> tuple[str, str, str] | None:
    """(trace id, parent span id, flags) from a W3C `traceparent` header, or None when the
    header is missing or invalid (an invalid one is ignored, as the spec asks).

    >>> parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    ('4bf92f3577b34da6a3ce929d0e0e4736', '00f067aa0ba902b7', '01')
    """
    if not value:
        return None
    match = _TRACEPARENT.match(value.strip().lower())
    if match is None:
        return None
    version, trace_id, parent, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE or (
            parent == _ZERO_SPAN):
        return None
    return trace_id, parent, flags


def traceparent(trace_id: str, span_id: str, flags: str = "01") -> str:
    """The `traceparent` header naming `span_id` as the parent.

    >>> traceparent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")
    '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'
    """
    return f"00-{trace_id}-{span_id}-{flags}"


def sampled(trace_id: str, ratio: float) -> bool:
    """Deterministic sampling from the trace id (its last 8 hex digits, uniform for random
    ids): every service that sees one trace decides the same way.

    >>> sampled("0" * 32, 0.1), sampled("f" * 32, 0.1)
    (True, False)
    """
    if ratio >= 1.0:
        return True
    if ratio <= 0.0:
        return False
    try:
        return int(trace_id[-8:], 16) < ratio * 0x1_0000_0000
    except ValueError:
        return True


def record_span(ctx: TracedContext, name: str, start: float, end: float, *,
                error: str | None = None, attributes: dict[str, Any] | None = None,
                span_id: str | None = None, parent: str | None = None) -> str:
    """Append a finished span (perf_counter times) under the current span; returns its id."""
    sid = span_id or new_span_id()
    ctx.spans.append((sid, parent or ctx.current_span, name, start, end, error, attributes))
    return sid


class span:
    """Time a block as one span under the context's current span (nested blocks nest).

    An exception leaving the block marks the span with its class name and propagates.
    """

    __slots__ = ("_ctx", "_parent", "_start", "attributes", "id", "name")

    def __init__(self, ctx: TracedContext, name: str,
                 attributes: dict[str, Any] | None = None) -> None:
        self._ctx = ctx
        self.name = name
        self.attributes = attributes
        self.id = new_span_id()
        self._parent = ""
        self._start = 0.0

    def set(self, key: str, value: Any) -> None:
        """Attach an attribute (a string, number or bool) to the span."""
        if self.attributes is None:
            self.attributes = {}
        self.attributes[key] = value

    def __enter__(self) -> span:
        ctx = self._ctx
        self._parent = ctx.current_span
        ctx.current_span = self.id
        self._start = perf_counter()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        end = perf_counter()
        ctx = self._ctx
        ctx.current_span = self._parent
        ctx.spans.append((self.id, self._parent, self.name, self._start, end,
                          exc_type.__name__ if exc_type is not None else None, self.attributes))
