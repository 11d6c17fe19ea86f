"""Built-in pipeline stages of the resilience layer (same interface as a user's own stage)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from shipyard.gateway.pipeline import Call, Handler, Stage
from shipyard.providers.base import Reply
from shipyard.resilience.admission import Admission

__all__ = ["AdmissionStage"]


class AdmissionStage(Stage):
    """Hold a slot in each admission (global, then per service) for the whole request —
    for streams, until the last byte."""

    def __init__(self, admissions: Sequence[Admission]) -> None:
        self.admissions = [a for a in admissions if a.max_in_flight is not None]

    async def __call__(self, call: Call, call_next: Handler) -> Reply:
        held: list[Admission] = []
        queued = 0.0
        try:
            for admission in self.admissions:
                queued += await admission.acquire(call.priority)
                held.append(admission)
        except BaseException:
            _release(held)
            raise
        if held:
            call.ctx.queue_ms = queued
        try:
            reply = await call_next(call)
        except BaseException:
            _release(held)
            raise
        if reply.stream is not None and held:
            reply.stream = _release_after(reply.stream, held)
        else:
            _release(held)
        return reply


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
