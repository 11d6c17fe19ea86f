"""Built-in pipeline stages of the resilience layer (same interface as a user's own stage)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence

from shipyard.errors import CapacityError, CircuitOpen, ShipyardError, UpstreamTimeout
from shipyard.observe.tracing import record_span
from shipyard.pipeline import Call, Handler, Reply, Stage
from shipyard.resilience.admission import Admission

__all__ = ["AdmissionStage"]


class AdmissionStage(Stage):
    """Hold a slot in each admission of a target (its own `admission:`) for the whole request
    — for streams, until the last byte. The gateway-wide admission (`server.max_in_flight`)
    is taken earlier, before the request is even read (`shipyard.gateway.app.FastPath`)."""

    def __init__(self, admissions: Sequence[Admission],
                 scopes: Sequence[str] | None = None) -> None:
        kept = [(a, scope) for a, scope in zip(
            admissions, scopes or [a.name for a in admissions], strict=True)
            if a.max_in_flight is not None]
        self.admissions = [a for a, _ in kept]
        self.scopes = [scope for _, scope in kept]  # metric label of each (global or alias)

    async def __call__(self, call: Call, call_next: Handler) -> Reply:
        held: list[Admission] = []
        queued = 0.0
        waited = time.perf_counter()
        try:
            for admission in self.admissions:
                queued += await admission.acquire(call.priority)
                held.append(admission)
        except CapacityError as exc:
            call.ctx.shed_by = self.scopes[len(held)]
            record_span(call.ctx, "admission", waited, time.perf_counter(),
                        error=type(exc).__name__)
            _release(held)
            raise
        except BaseException:
            _release(held)
            raise
        if held:
            call.ctx.queue_ms = (call.ctx.queue_ms or 0.0) + queued
            record_span(call.ctx, "admission", waited, time.perf_counter(),
                        attributes={"shipyard.queue_ms": round(queued, 3)} if queued else None)
        started = time.monotonic()
        try:
            reply = await call_next(call)
        except ShipyardError as exc:
            _observe(held, time.monotonic() - started, overloaded=_overload(exc))
            _release(held)
            raise
        except BaseException:
            _release(held)
            raise
        _observe(held, time.monotonic() - started, overloaded=False)
        if reply.stream is not None and held:
            reply.stream = _release_after(reply.stream, held)
        else:
            _release(held)
        return reply


def _overload(exc: ShipyardError) -> bool:
    """Signals that the upstream is past its capacity (not that the caller erred)."""
    return isinstance(exc, UpstreamTimeout | CircuitOpen | CapacityError) or exc.status in (
        429, 503)


def _observe(held: list[Admission], latency_s: float, *, overloaded: bool) -> None:
    for admission in held:
        admission.observe(latency_s, overloaded=overloaded)


def _release(held: list[Admission]) -> None:
    for admission in reversed(held):
        admission.release()


async def _release_after(stream: AsyncIterator[bytes],
                         held: list[Admission]) -> AsyncIterator[bytes]:
    try:
        async for chunk in stream:
            yield chunk
    finally:
        _release(held)
