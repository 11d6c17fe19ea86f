"""A model alias as a target: its deployments, retry budget and fallback chain; the terminal
step is failover over the deployments (`shipyard.resilience.failover`).

A model alias's versions are its configurations (`shipyard.lifecycle.aliases`), and a
configuration is more than a terminal: guards, PII rules, escalation, your own stages and
the cache are part of it. So the chain is split in two. The alias's *outer* stages (rate
limits, the budget reservation, admission) belong to the alias as the config file states
it; they run once per request. Between them and the rest sits the version router: it picks
the version that answers (stable, a canary's candidate, sticky as for services) and runs
that version's *own* chain — escalation (the alias's policy), its PII rules, guards,
stages, cache and failover — so a
whole request, streamed or not, is answered by one version. A canary request the candidate
fails (5xx before an answer started) is answered by stable when the rollout's `fallback` is
on, the failure recorded against the candidate (a trace of route `canary`); in shadow mode
a copy goes to the candidate after stable answered, off the caller's path (route `shadow`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import Any

import orjson

from shipyard.config.targets import ModelConfig
from shipyard.errors import ShipyardError
from shipyard.lifecycle.serving import (
    Choice,
    LoadedVersion,
    ShadowResult,
    VersionRouter,
    elapsed_ms,
    shadow_context,
)
from shipyard.pipeline import Call, Handler, Reply, RequestContext, Stage, Target, compose
from shipyard.resilience.admission import Admission
from shipyard.resilience.failover import Deployment, failover
from shipyard.resilience.retry import RetryBudget

__all__ = ["ALIAS_VERSION", "ModelTarget"]

# The trace attribute (and source of `x-shipyard-version`) naming the alias version that
# answered.
ALIAS_VERSION = "alias_version"


class ModelTarget(Target):
    """A model alias and everything needed to serve it."""

    kind = "model"

    def __init__(self, alias: str, config: ModelConfig, deployments: list[Deployment],
                 budget: RetryBudget) -> None:
        super().__init__(alias, failover)
        self.config = config
        self.deployments = deployments
        self.budget = budget
        self.fallback_targets: list[ModelTarget] = []
        self.admissions: list[Admission] = []
        # The version of this alias's configuration in the registry (`model/ALIAS`), set
        # by the gateway once registered; on the `x-shipyard-version` header and traces.
        self.version: str | None = None
        # The versions serving this alias and the split between them (set by the gateway;
        # None: this configuration answers alone). See the module docstring.
        self.router: VersionRouter | None = None
        self.chain: Handler = self._reach  # this configuration's own part of the chain
        self._outer: list[Stage] = []
        self._own: list[Stage] = []

    @property
    def alias(self) -> str:
        return self.name

    @property
    def serving(self) -> str | None:
        """The version stable serves now (the registry's; else this configuration's)."""
        router = self.router
        if router is not None and router.plan.stable.number is not None:
            return router.plan.stable.label
        return self.version

    def use_split(self, outer: Sequence[Stage], own: Sequence[Stage]) -> None:
        """Install the chain: the alias's `outer` stages around the version router, and the
        stages of this configuration's own part (see the module docstring)."""
        self._outer, self._own = [*self._outer, *outer], [*self._own, *own]
        self.stages = [*self._outer, *self._own]
        self.chain = compose(self._own, self._reach)
        self.handler = compose(self._outer, self._route)

    def use(self, *stages: Stage) -> None:
        """Add stages (outermost first) to this configuration's own part of the chain."""
        self.use_split([], stages)

    async def _route(self, call: Call) -> Reply:
        router = self.router
        if router is None:
            return await self.chain(call)
        plan = router.plan
        if plan.candidate is None:
            # The gateway stamped stable's version (`serving`); a swap since is re-stamped.
            if plan.stable.number is not None and call.ctx.version != plan.stable.label:
                _stamp(call.ctx, plan.stable.label)
            return await _via(plan.stable, self, call)
        choice = router.choose(call)
        kept = _Kept(call) if choice.fallback is not None or choice.shadow is not None else None
        _stamp(call.ctx, choice.version.label)
        started = time.perf_counter()
        try:
            reply = await _via(choice.version, self, call)
        except ShipyardError as exc:
            if choice.fallback is None or exc.status < 500 or kept is None:
                raise
            # The canary failed: its attempt is recorded against it, stable answers.
            self._canary_failed(call.ctx, choice.version, exc, elapsed_ms(started))
            kept.restore(call)
            _stamp(call.ctx, choice.fallback.label)
            return await _via(choice.fallback, self, call)
        if choice.shadow is not None and kept is not None:
            self._shadow(call, kept, choice, reply)
        return reply

    def _canary_failed(self, parent: RequestContext, version: LoadedVersion,
                       exc: ShipyardError, ms: float) -> None:
        router = self.router
        ctx = _context(parent, self.name, version.label, route="canary")
        ctx.status, ctx.error_type, ctx.error_message = (exc.status, type(exc).__name__,
                                                         exc.message[:500])
        ctx.upstream_model = parent.upstream_model
        ctx.provider = parent.provider
        ctx.upstream_ms = ms
        ctx.attributes = {**(ctx.attributes or {}), "canary": {"fallback": "stable"}}
        if router is not None and router.on_shadow is not None:
            router.on_shadow(ctx, ShadowResult(version.label, error=type(exc).__name__))

    def _shadow(self, call: Call, kept: _Kept, choice: Choice, reply: Reply) -> None:
        """A copy of the request (as it reached the router) to the candidate's own chain,
        after stable answered; recorded as a trace of route `shadow`. A copy of a
        streamed request is streamed too and read to its end."""
        router, candidate = self.router, choice.shadow
        if router is None or candidate is None:
            return
        parent = call.ctx
        stable_answer = _text(reply.data) if reply.stream is None else None
        stable_ms = reply.upstream_ms or parent.upstream_ms or 0.0

        async def copy_() -> None:
            ctx = _context(parent, self.name, candidate.label)
            shadow = Call(ctx, call.endpoint, kept.payload, call.stream,
                          candidate.target or self, headers=dict(kept.headers),
                          deadline=call.deadline, priority=call.priority,
                          client_wants_usage=call.client_wants_usage,
                          principal=call.principal, conversation_id=call.conversation_id)
            result = ShadowResult(candidate.label)
            started = time.perf_counter()
            upstream_ms = 0.0
            try:
                answer = await _via(candidate, self, shadow)
                upstream_ms = answer.upstream_ms
                if answer.stream is not None:
                    async for _ in answer.stream:
                        pass
                    result.agree = None
                else:
                    if answer.data is None and answer.body:
                        answer.data = orjson.loads(answer.body)
                    result.output = answer.data
                    text = _text(answer.data)
                    result.agree = (None if text is None or stable_answer is None
                                    else text == stable_answer)
                if answer.headers.get("x-shipyard-guard", "").startswith(
                        ("block", "escalate")):
                    result.guard_action = answer.headers["x-shipyard-guard"].split(":")[0]
                ctx.status = answer.status
            except ShipyardError as exc:
                result.error, result.error_message = type(exc).__name__, exc.message
                ctx.status, ctx.error_type, ctx.error_message = (
                    exc.status, result.error, exc.message[:500])
            result.ms = elapsed_ms(started)
            # Measured as a caller's answer is: the upstream's own time when the provider
            # reports it (non-streamed), else until the stream ended.
            ctx.upstream_ms = upstream_ms or result.ms
            ctx.response_payload = result.output
            ctx.attributes = {**(ctx.attributes or {}), "shadow": {
                "stable_version": choice.version.label, "agree": result.agree,
                "stable_ms": round(stable_ms, 3), "candidate_ms": round(result.ms, 3),
                "guard": result.guard_action, "error": result.error}}
            if router.on_shadow is not None:
                router.on_shadow(ctx, result)

        router.shadow(copy_)


class _Kept:
    """What a request looked like when it reached the router: stages change the call
    (PII placeholders, guard fixes), and a fallback or shadow copy starts from the original."""

    def __init__(self, call: Call) -> None:
        self.payload = copy.deepcopy(call.payload)
        self.traced = call.traced_payload
        self.headers = dict(call.headers)

    def restore(self, call: Call) -> None:
        call.payload = copy.deepcopy(self.payload)
        call.traced_payload = self.traced
        call.headers = dict(self.headers)
        call.validated = None


async def _via(version: LoadedVersion, own: ModelTarget, call: Call) -> Reply:
    """Run `version`'s own chain (this alias's configuration when it is the one)."""
    target = version.target if isinstance(version.target, ModelTarget) else own
    call.target = target
    return await target.chain(call)


def _stamp(ctx: RequestContext, label: str | None) -> None:
    if label is None:
        return
    ctx.version = label
    ctx.attributes = {**(ctx.attributes or {}), ALIAS_VERSION: label}


def _context(parent: RequestContext, alias: str, label: str, *,
             route: str = "shadow") -> RequestContext:
    ctx = shadow_context(parent, alias, label, route=route)
    ctx.model_alias = alias
    ctx.provider = None
    ctx.attributes = {ALIAS_VERSION: label}
    return ctx


def _text(data: Any) -> str | None:
    """The answer's text, to compare a shadow copy with stable (chat or completion)."""
    if not isinstance(data, dict):
        return None
    choices = data.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        first = choices[0]
        message = first.get("message")
        if isinstance(message, dict):
            content = message.get("content")
            return content if isinstance(content, str) else None
        text = first.get("text")
        return text if isinstance(text, str) else None
    return None
