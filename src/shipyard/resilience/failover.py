"""The last step of the pipeline: pick a deployment, call it within its timeouts, retry within
the budget, fall back to the next alias, and record every attempt.

For one request:
  for each alias in [requested alias, *fallbacks]:
      up to `retry.attempts` attempts, each on the least-loaded deployment whose circuit
      admits it (another deployment than last time when there is one); between attempts a
      full-jitter backoff that honours `Retry-After`; a retry needs the retry budget and
      enough deadline left — otherwise move on to the next alias.
  A non-retryable failure (the caller's own mistake, bad upstream credentials) is returned
  at once. Streams are retried or failed over only until their first chunk has arrived:
  after that the client has bytes, and a failure ends the stream with an error event.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from shipyard.config.targets import ModelConfig
from shipyard.errors import CircuitOpen, ShipyardError, UpstreamTimeout
from shipyard.observe.tracing import new_span_id, record_span, traceparent
from shipyard.pipeline import Call, Reply
from shipyard.providers.base import Provider
from shipyard.resilience.circuit import CircuitBreaker
from shipyard.resilience.retry import RetryBudget, backoff_s, is_retryable, retry_after_s

__all__ = ["Deployment", "Routed", "failover", "pick"]

log = logging.getLogger("shipyard.resilience")
# Below this much time left, another attempt on the same alias is not worth starting.
_MIN_ATTEMPT_S = 0.05


@dataclass(eq=False)
class Deployment:
    """One upstream model on one provider, with its breaker and its load."""

    provider: Provider
    model: str
    weight: float
    breaker: CircuitBreaker
    in_flight: int = 0

    @property
    def name(self) -> str:
        return f"{self.provider.name}/{self.model}"


class Routed(Protocol):
    """What failover needs of a model alias (`shipyard.targets.model.ModelTarget`)."""

    @property
    def alias(self) -> str: ...

    @property
    def config(self) -> ModelConfig: ...

    @property
    def deployments(self) -> list[Deployment]: ...

    @property
    def budget(self) -> RetryBudget: ...

    @property
    def fallback_targets(self) -> Sequence[Routed]: ...


def pick(deployments: list[Deployment], avoid: set[Deployment],
         rng: random.Random | None = None) -> Deployment | None:
    """Weighted least-request choice among deployments whose circuit admits a call.

    Each candidate's chance is its weight divided by (its requests in flight + 1): idle
    deployments share traffic by weight, busy ones get less (as Envoy's least-request
    balancer does). `avoid` (deployments already tried) is honoured when another candidate
    exists.
    """
    candidates = [d for d in deployments if d.breaker.available()]
    fresh = [d for d in candidates if d not in avoid]
    pool = fresh or candidates
    if not pool:
        return None
    if len(pool) == 1:
        return pool[0]
    return (rng or random).choices(pool, weights=[d.weight / (d.in_flight + 1) for d in pool])[0]


def _counts_as_failure(exc: ShipyardError) -> bool:
    """Failures of the upstream itself (not 429 back-pressure, not the caller's mistakes)."""
    return is_retryable(exc) and exc.status != 429


async def _attempt(call: Call, target: Routed, deployment: Deployment,
                   remaining: float, span_id: str) -> Reply:
    config = deployment.provider.config
    ctx = call.ctx
    # The upstream continues our trace, with this attempt's span as its parent.
    headers = {**call.headers, "traceparent": traceparent(
        ctx.otel_trace_id, span_id, "01" if ctx.sampled else "00")}
    payload = dict(call.payload)
    payload["model"] = deployment.model
    injected = False
    if (call.stream and not call.client_wants_usage and config.stream_usage
            and deployment.provider.kind in ("openai", "local")):
        payload["stream_options"] = {**(payload.get("stream_options") or {}),
                                     "include_usage": True}
        injected = True
    if not deployment.breaker.acquire():
        raise CircuitOpen(f"The circuit of '{deployment.name}' is open.")
    deployment.in_flight += 1
    call.ctx.provider = deployment.provider.name
    call.ctx.upstream_model = deployment.model
    first_byte = min(config.first_byte_timeout_s, remaining)
    released = False
    try:
        try:
            async with asyncio.timeout(first_byte):
                reply = await deployment.provider.send(
                    call.endpoint, payload, stream=call.stream, headers=headers,
                    timeout=remaining)
                if call.stream and reply.stream is not None:
                    first = await anext(reply.stream, None)
        except TimeoutError:
            raise UpstreamTimeout(
                f"The upstream '{deployment.provider.name}' sent nothing within "
                f"{first_byte:g}s (providers.{deployment.provider.name}.first_byte_timeout_s or "
                "the request's deadline).") from None
        reply.usage_injected = injected
        if call.stream and reply.stream is not None:
            idle = min(config.idle_timeout_s, max(remaining, 0.001))
            reply.stream = _guard_stream(first, reply.stream, deployment, idle)
            released = True  # the stream wrapper releases the deployment when it ends
        deployment.breaker.record(True)
        return reply
    except ShipyardError as exc:
        deployment.breaker.record(not _counts_as_failure(exc))
        raise
    except BaseException:
        deployment.breaker.release()  # cancelled by the caller: no verdict on the upstream
        raise
    finally:
        if not released:
            deployment.in_flight -= 1


async def _guard_stream(first: bytes | None, rest: AsyncIterator[bytes], deployment: Deployment,
                        idle_s: float) -> AsyncIterator[bytes]:
    """Yield the stream with an idle timeout between chunks; release the deployment at the end."""
    try:
        if first is not None:
            yield first
            while True:
                try:
                    async with asyncio.timeout(idle_s):
                        chunk = await anext(rest, None)
                except TimeoutError:
                    deployment.breaker.record(False)
                    raise UpstreamTimeout(
                        f"The upstream '{deployment.provider.name}' stalled for {idle_s:g}s "
                        f"mid-stream (providers.{deployment.provider.name}.idle_timeout_s); "
                        "the stream was ended.") from None
                if chunk is None:
                    break
                yield chunk
    except ShipyardError as exc:
        if not isinstance(exc, UpstreamTimeout):
            deployment.breaker.record(not _counts_as_failure(exc))
        raise
    finally:
        deployment.in_flight -= 1


def _attempt_attributes(target: Routed, deployment: Deployment, attempt: int,
                        position: int, exc: ShipyardError | None) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "shipyard.model": target.alias, "shipyard.deployment": deployment.name,
        "shipyard.attempt": attempt + 1, "shipyard.fallback": position > 0,
        "shipyard.outcome": "ok" if exc is None else type(exc).__name__}
    if exc is not None:
        attributes["shipyard.status"] = exc.status
    return attributes


async def failover(call: Call) -> Reply:
    """Serve `call` from its target's deployments, retrying and falling back as configured."""
    ctx = call.ctx
    attempts: list[dict[str, Any]] = []
    last: ShipyardError | None = None
    requested = cast(Routed, call.target)
    chain = [requested, *requested.fallback_targets]
    # One "upstream" span; each attempt (and each backoff wait) is a child of it.
    upstream_span = new_span_id()
    parent = ctx.current_span
    upstream_started = time.perf_counter()
    try:
        for position, target in enumerate(chain):
            retry = target.config.retry
            target.budget.record_request()
            tried: set[Deployment] = set()
            for attempt in range(retry.attempts):
                if attempt:
                    if last is None or not is_retryable(last) or isinstance(last, CircuitOpen):
                        break
                    wait = backoff_s(attempt - 1, retry)
                    hinted = retry_after_s(last)
                    if hinted is not None:
                        if position < len(chain) - 1 and hinted > wait:
                            break  # busy for a while: the next alias answers sooner
                        wait = max(wait, hinted)
                    if call.deadline - time.monotonic() - wait < _MIN_ATTEMPT_S:
                        break  # deadline pressure: the next alias is the better bet
                    if not target.budget.try_spend():
                        attempts.append({"alias": target.alias, "outcome": "retry_budget_spent"})
                        break
                    if wait > 0:
                        slept = time.perf_counter()
                        await asyncio.sleep(wait)
                        record_span(ctx, "backoff", slept, time.perf_counter(),
                                    parent=upstream_span, attributes={"shipyard.wait_s": wait})
                remaining = call.deadline - time.monotonic()
                if remaining <= 0:
                    raise UpstreamTimeout(
                        f"The request's deadline passed after {len(attempts)} attempt(s); the "
                        f"last error was: {last.message if last else 'none'}")
                deployment = pick(target.deployments, tried)
                if deployment is None:
                    wait_s = min(d.breaker.retry_after_s() for d in target.deployments)
                    last = CircuitOpen(
                        f"Every deployment of '{target.alias}' has an open circuit after "
                        "repeated failures; retry later.",
                        headers={"retry-after": str(max(1, math.ceil(wait_s)))})
                    attempts.append({"alias": target.alias, "outcome": "circuit_open"})
                    break
                tried.add(deployment)
                attempt_span = new_span_id()
                started = time.perf_counter()
                try:
                    reply = await _attempt(call, target, deployment, remaining, attempt_span)
                except ShipyardError as exc:
                    ended = time.perf_counter()
                    attempts.append({"alias": target.alias, "deployment": deployment.name,
                                     "outcome": type(exc).__name__,
                                     "ms": round((ended - started) * 1e3, 3)})
                    record_span(ctx, "upstream.attempt", started, ended, span_id=attempt_span,
                                parent=upstream_span, error=type(exc).__name__,
                                attributes=_attempt_attributes(target, deployment, attempt,
                                                               position, exc))
                    last = exc
                    if not is_retryable(exc):
                        raise
                    continue
                ended = time.perf_counter()
                attempts.append({"alias": target.alias, "deployment": deployment.name,
                                 "outcome": "ok", "ms": round((ended - started) * 1e3, 3)})
                record_span(ctx, "upstream.attempt", started, ended, span_id=attempt_span,
                            parent=upstream_span,
                            attributes=_attempt_attributes(target, deployment, attempt,
                                                           position, None))
                call.served_by = target.alias
                if position:
                    log.info("request %s served by fallback %s", ctx.request_id, target.alias)
                return reply
        raise last if last is not None else CircuitOpen(
            f"No deployment of '{requested.alias}' could be tried.")
    finally:
        failed = last if attempts and attempts[-1].get("outcome") != "ok" else None
        record_span(ctx, "upstream", upstream_started, time.perf_counter(),
                    span_id=upstream_span, parent=parent,
                    error=type(failed).__name__ if failed is not None else None,
                    attributes={"shipyard.model": requested.alias,
                                "shipyard.attempts": sum("deployment" in a for a in attempts)})
        rerouted = bool(attempts) and attempts[-1].get("alias") != requested.alias
        if len(attempts) > 1 or rerouted:
            attributes = ctx.attributes if ctx.attributes is not None else {}
            attributes["attempts"] = attempts
            ctx.attributes = attributes
