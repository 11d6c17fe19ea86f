"""The rate-limit stage: per key, per tenant and per target (model alias or service), requests
and tokens per minute and requests in flight (a service's calls count as requests only).
Answers carry `x-ratelimit-*` headers; a limited request gets 429 with `Retry-After` naming
the limit that was hit."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from shipyard.config.security import RateLimitConfig, RateLimitsConfig
from shipyard.errors import RateLimited
from shipyard.observe.tokens import estimate_chat_prompt, estimate_text
from shipyard.observe.tracing import record_span
from shipyard.pipeline import Call, Handler, Reply, RequestContext, Stage
from shipyard.security.ratelimit import Bucket, Decision, RateLimiter

__all__ = ["RateLimitStage", "settle_tokens"]


@dataclass(frozen=True)
class _Scope:
    kind: str  # key | tenant | model | service
    ident: str
    rpm: int | None
    tpm: int | None
    concurrent: int | None


def _estimate(call: Call, default_max_tokens: int) -> int:
    if call.endpoint == "invoke":
        return 0
    payload = call.payload
    if "messages" in payload:
        prompt = estimate_chat_prompt(payload.get("messages") or [])
    else:
        value = payload.get("prompt") or payload.get("input") or ""
        prompt = estimate_text(value if isinstance(value, str) else str(value))
    answer = payload.get("max_completion_tokens") or payload.get("max_tokens")
    if call.endpoint == "embeddings":
        answer = 0
    return prompt + (answer if isinstance(answer, int) else default_max_tokens)


class RateLimitStage(Stage):
    def __init__(self, alias: str, limiter: RateLimiter, limits: RateLimitsConfig,
                 model_limit: RateLimitConfig, *, kind: str = "model") -> None:
        self.alias = alias
        self.kind = kind
        self.limiter = limiter
        self.limits = limits
        self.model_limit = model_limit
        self.configured = any(
            limit.rpm or limit.tpm or limit.concurrent
            for limit in (limits.key, limits.tenant, model_limit))

    def _scopes(self, call: Call) -> list[_Scope]:
        principal = call.principal
        key_id = call.ctx.key_id or "anonymous"
        own = self.limits.key
        scopes = [
            _Scope("key", key_id, getattr(principal, "rpm", None) or own.rpm,
                   getattr(principal, "tpm", None) or own.tpm,
                   getattr(principal, "max_concurrent", None) or own.concurrent),
            _Scope("tenant", call.ctx.tenant_id, self.limits.tenant.rpm, self.limits.tenant.tpm,
                   self.limits.tenant.concurrent),
            _Scope(self.kind, self.alias, self.model_limit.rpm, self.model_limit.tpm,
                   self.model_limit.concurrent),
        ]
        return [s for s in scopes if s.rpm or s.tpm or s.concurrent]

    async def __call__(self, call: Call, call_next: Handler) -> Reply:
        principal = call.principal
        if not self.configured and not (principal is not None and (
                principal.rpm or principal.tpm or principal.max_concurrent)):
            return await call_next(call)  # nothing to limit: the common fast path
        scopes = self._scopes(call)
        if not scopes:
            return await call_next(call)
        checked = time.perf_counter()
        estimate = _estimate(call, self.limits.default_max_tokens)
        taken: list[tuple[Bucket, float]] = []
        slots: list[str] = []
        headers: dict[str, str] = {}
        try:
            for scope in scopes:
                for unit, capacity, cost in (("requests", scope.rpm, 1.0),
                                             ("tokens", scope.tpm, float(estimate))):
                    if not capacity:
                        continue
                    bucket = Bucket(f"{unit}:{scope.kind}:{scope.ident}", float(capacity))
                    decision = await self.limiter.take(bucket, cost)
                    if not decision.allowed:
                        raise _refusal(scope, unit, capacity, cost, decision)
                    taken.append((bucket, cost))
                    _note(headers, unit, capacity, decision)
                if scope.concurrent:
                    slot = f"{scope.kind}:{scope.ident}"
                    if not await self.limiter.acquire_slot(slot, scope.concurrent, 600.0):
                        raise RateLimited(
                            f"The {scope.kind} '{scope.ident}' already has "
                            f"{scope.concurrent} requests in flight, its limit; retry when one "
                            "finishes.", headers={"retry-after": "1"})
                    slots.append(slot)
        except RateLimited:
            record_span(call.ctx, "rate_limit", checked, time.perf_counter(),
                        error="RateLimited")
            await asyncio.gather(*(self.limiter.give_back(b, c) for b, c in taken))
            await self._release(slots)
            raise
        record_span(call.ctx, "rate_limit", checked, time.perf_counter())
        call.ctx.rate_limit = (self.limiter, [(b, c) for b, c in taken if
                                              b.key.startswith("tokens:")], estimate)
        try:
            reply = await call_next(call)
        except BaseException:
            await self._release(slots)
            raise
        reply.headers.update(headers)
        if reply.stream is not None and slots:
            reply.stream = self._release_after(reply.stream, slots)
        else:
            await self._release(slots)
        return reply

    async def _release(self, slots: list[str]) -> None:
        for slot in slots:
            await self.limiter.release_slot(slot)

    async def _release_after(self, stream: AsyncIterator[bytes],
                             slots: list[str]) -> AsyncIterator[bytes]:
        try:
            async for chunk in stream:
                yield chunk
        finally:
            await self._release(slots)


def _note(headers: dict[str, str], unit: str, capacity: int, decision: Decision) -> None:
    """Keep the tightest limit of each unit in the OpenAI-style headers."""
    remaining = f"x-ratelimit-remaining-{unit}"
    if remaining in headers and float(headers[remaining]) <= decision.remaining:
        return
    headers[f"x-ratelimit-limit-{unit}"] = str(capacity)
    headers[remaining] = str(max(0, math.floor(decision.remaining)))
    headers[f"x-ratelimit-reset-{unit}"] = f"{decision.reset_s:.3f}s"


def _refusal(scope: _Scope, unit: str, capacity: int, cost: float,
             decision: Decision) -> RateLimited:
    wait = max(0.001, decision.retry_after_s)
    what = "requests" if unit == "requests" else "tokens"
    extra = "" if unit == "requests" else f" (this request needs about {int(cost)})"
    return RateLimited(
        f"Rate limit reached: {scope.kind} '{scope.ident}' may use {capacity} {what} per "
        f"minute{extra}; retry after {wait:.2f} s.",
        headers={"retry-after": str(max(1, math.ceil(wait))),
                 f"x-ratelimit-limit-{unit}": str(capacity),
                 f"x-ratelimit-remaining-{unit}": str(max(0, math.floor(decision.remaining))),
                 f"x-ratelimit-reset-{unit}": f"{decision.reset_s:.3f}s"})


async def settle_tokens(ctx: RequestContext) -> None:
    """After the answer: correct the token buckets by (real usage - estimate)."""
    state: Any = ctx.rate_limit
    if not state or ctx.total_tokens is None:
        return
    limiter, buckets, estimate = state
    difference = float(ctx.total_tokens - estimate)
    for bucket, _ in buckets:
        if difference > 0:
            await limiter.take(bucket, difference, force=True)
        elif difference < 0:
            await limiter.give_back(bucket, -difference)
