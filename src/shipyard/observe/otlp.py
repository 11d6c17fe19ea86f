"""OTLP/HTTP export of request spans (needs the `otel` extra: pip install 'shipyard[otel]').

The gateway records spans as light tuples during a request (`shipyard.observe.tracing`). Only
when `traces.otlp` is configured is this module imported: after each response the tuples
become OpenTelemetry SDK spans — with the very span ids the upstreams saw in `traceparent` —
and go to a `BatchSpanProcessor`, whose own thread batches and posts them to the collector.

>>> settings = OTLPConfig(endpoint="http://127.0.0.1:4318/v1/traces")
>>> exporter = OTLPExporter(settings)  # doctest: +SKIP
>>> gateway.otlp = exporter  # the gateway calls export() after each response  # doctest: +SKIP
>>> exporter.shutdown()  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from shipyard._version import __version__
from shipyard.config.traces import OTLPConfig
from shipyard.errors import ConfigError
from shipyard.observe.tracing import SpanTuple

try:  # optional dependency: only needed when traces.otlp is set
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
except ModuleNotFoundError:  # pragma: no cover - exercised only without the extra
    OTLPSpanExporter = None  # type: ignore[assignment,misc]

__all__ = ["OTLPExporter"]

log = logging.getLogger("shipyard.traces")
_SAMPLED = None if OTLPSpanExporter is None else TraceFlags(TraceFlags.SAMPLED)


class _Counting(SpanExporter if OTLPSpanExporter is not None else object):  # type: ignore[misc]
    """Wraps the OTLP exporter to count spans the collector did not take."""

    def __init__(self, inner: Any, on_failed: Callable[[int], None] | None) -> None:
        self.inner = inner
        self.on_failed = on_failed

    def export(self, spans: Any) -> Any:
        result = self.inner.export(spans)
        if result is not SpanExportResult.SUCCESS and self.on_failed is not None:
            self.on_failed(len(spans))
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return bool(self.inner.force_flush(timeout_millis))


class OTLPExporter:
    """Turns recorded request spans into OpenTelemetry spans and exports them in batches."""

    def __init__(self, settings: OTLPConfig, *,
                 on_failed: Callable[[int], None] | None = None) -> None:
        if OTLPSpanExporter is None:
            raise ConfigError(
                "Config key 'traces.otlp' is set, but the OpenTelemetry packages are missing; "
                "run: pip install 'shipyard[otel]'")
        self.settings = settings
        exporter = OTLPSpanExporter(
            endpoint=settings.endpoint,
            headers={k: v.get_secret_value() for k, v in settings.headers.items()},
            timeout=settings.timeout_s)
        self.processor = BatchSpanProcessor(
            _Counting(exporter, on_failed), max_queue_size=settings.max_queue_size,
            schedule_delay_millis=settings.schedule_delay_s * 1000.0)
        self.resource = Resource.create({"service.name": settings.service_name,
                                         "service.version": __version__})
        self.scope = InstrumentationScope("shipyard", __version__)

    def export(self, *, trace_id: str, remote_parent: str | None, root_span: str,
               root_name: str, root_attributes: dict[str, Any], error: str | None,
               spans: list[SpanTuple], t0: float, t0_ns: int, end: float) -> None:
        """Queue one request's spans (root first) for export; never blocks."""
        trace = int(trace_id, 16)

        def context(span_id: str) -> Any:
            return SpanContext(trace, int(span_id, 16), is_remote=False, trace_flags=_SAMPLED)

        def ns(at: float) -> int:
            return t0_ns + int((at - t0) * 1e9)

        parent = (SpanContext(trace, int(remote_parent, 16), is_remote=True,
                              trace_flags=_SAMPLED) if remote_parent else None)
        on_end = self.processor.on_end
        on_end(ReadableSpan(
            root_name, context(root_span), parent, self.resource, root_attributes,
            kind=SpanKind.SERVER, instrumentation_scope=self.scope,
            status=Status(StatusCode.ERROR, error) if error else Status(StatusCode.UNSET),
            start_time=t0_ns, end_time=ns(end)))
        for sid, parent_id, name, start, stop, failed, attributes in spans:
            on_end(ReadableSpan(
                name, context(sid), context(parent_id) if parent_id else None, self.resource,
                attributes or {},
                kind=SpanKind.CLIENT if name == "upstream.attempt" else SpanKind.INTERNAL,
                instrumentation_scope=self.scope,
                status=Status(StatusCode.ERROR, failed) if failed else Status(StatusCode.UNSET),
                start_time=ns(start), end_time=ns(stop)))

    def flush(self, timeout_s: float = 10.0) -> bool:
        return bool(self.processor.force_flush(int(timeout_s * 1000)))

    def shutdown(self) -> None:
        started = time.monotonic()
        self.processor.shutdown()  # type: ignore[no-untyped-call]
        log.debug("OTLP exporter stopped in %.3fs", time.monotonic() - started)
