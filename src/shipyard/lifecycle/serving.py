"""Serving versions: a loaded version, and the router (inside a service's terminal step, or
around a model alias's per-version chain, `shipyard.targets.model`) that
picks which version answers a call (stable, or the candidate of a canary) and sends shadow
copies to a candidate off the caller's path.

The router holds one immutable `Plan`; a swap replaces it with one assignment, so a request
that already chose keeps the version objects it chose (in-flight requests finish on the old
version), and the next request sees the new plan. Nothing here blocks the event loop: loading
a version happens before the swap, in a worker thread (`shipyard.lifecycle.controller`).

Choosing is cheap and deterministic when sticky: the conversation (`sticky: conversation`,
the default) or the user (`sticky: user`: the API key, else the tenant) is hashed into 10,000
buckets, and buckets below `share * 100` go to the candidate, so one conversation stays on
one version while the share only grows. A request with nothing to stick to is drawn on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shipyard.config.lifecycle import CanaryRule
from shipyard.errors import ConfigError
from shipyard.lifecycle.artifacts import ModelCaller, StoredArtifact, load_model
from shipyard.pipeline import Call, RequestContext
from shipyard.providers.loading import import_object

__all__ = ["Choice", "LoadedVersion", "Plan", "ShadowResult", "VersionRouter",
           "elapsed_ms", "load_function", "load_model_version", "same_answer",
           "shadow_context"]

log = logging.getLogger("shipyard.lifecycle")


@dataclass(frozen=True)
class LoadedVersion:
    """A version ready to serve: its label on traces and the callable that answers."""

    label: str  # the version number as text ("3"); "config" before the registry is read
    function: Callable[..., Any]
    caller: ModelCaller | None = None  # a model artifact's built-in call style
    number: int | None = None
    # Where it came from, so another engine can load the same version elsewhere (a Ray
    # replica): the `module:function` reference, or the artifact and its call style.
    reference: str | None = None
    artifact: StoredArtifact | None = None
    # A model alias's version: the target (a `shipyard.targets.model.ModelTarget`) built
    # from its configuration, whose own chain answers.
    target: Any = None


def load_function(reference: str, *, key: str, label: str = "config",
                  number: int | None = None) -> LoadedVersion:
    function = import_object(reference, key=key)
    if not callable(function):
        raise ConfigError(f"Config key '{key}' is '{reference}', which is not callable.")
    return LoadedVersion(label, function, None, number, reference=reference)


def load_model_version(artifact: StoredArtifact, call: str, *, name: str,
                       label: str = "config", number: int | None = None) -> LoadedVersion:
    caller = ModelCaller(load_model(artifact), call, name=name)
    width = getattr(caller.model, "n_features_in_", None)
    if isinstance(width, int):
        # One call before serving: lazy initialisation is not paid by a caller (nor seen
        # by the latency gate as the candidate being slow).
        with contextlib.suppress(Exception):
            caller.predict_rows([[0.0] * width])
    return LoadedVersion(label, caller, caller, number, artifact=artifact)


@dataclass(frozen=True)
class Plan:
    """Which versions serve a target and how traffic splits between them."""

    stable: LoadedVersion
    candidate: LoadedVersion | None = None
    mode: str = "canary"  # canary | shadow
    share: float = 0.0  # percent of requests to a canary
    rules: tuple[CanaryRule, ...] = ()
    sticky: str = "conversation"
    rollout_id: str | None = None
    fallback: bool = True

    def key(self) -> tuple[Any, ...]:
        """What a plan serves, to tell whether the registry's routing changed."""
        return (self.stable.number, self.candidate.number if self.candidate else None,
                self.mode if self.candidate else None, self.share if self.candidate else None,
                self.rollout_id)


@dataclass(frozen=True)
class Choice:
    version: LoadedVersion
    shadow: LoadedVersion | None = None
    fallback: LoadedVersion | None = None  # stable, when a canary's candidate answers


@dataclass
class ShadowResult:
    """What a shadow copy did, for its trace and the comparison with stable."""

    version: str
    output: Any = None
    error: str | None = None
    error_message: str | None = None
    ms: float = 0.0
    guard_action: str | None = None
    agree: bool | None = None


def _bucket(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest()) % 10_000


def _matches(rule: CanaryRule, call: Call) -> bool:
    ctx = call.ctx
    if rule.header is not None:
        value = call.headers.get(rule.header.lower())
        return value is not None and (rule.equals is None or value == rule.equals)
    if rule.key is not None:
        return ctx.key_id == rule.key
    return ctx.tenant_id == rule.tenant


def same_answer(a: Any, b: Any) -> bool:
    """Two outputs agree: the same prediction for model outputs, else equal values."""
    if isinstance(a, dict) and isinstance(b, dict) and "prediction" in a and "prediction" in b:
        return bool(a["prediction"] == b["prediction"])
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return all(same_answer(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@dataclass
class VersionRouter:
    """The versions of one service and the split between them (see the module docstring)."""

    name: str
    plan: Plan
    shadow_limit: int = 8
    # Where a shadow copy's record goes (set by the gateway: a trace of route "shadow").
    on_shadow: Callable[[RequestContext, ShadowResult], None] | None = None
    # Makes a plan servable before it is swapped in (blocking, in a worker thread): an
    # engine that runs versions elsewhere deploys them here (`shipyard.engines.ray`). An
    # exception leaves the previous plan serving, like a version that fails to load.
    prepare: Callable[[Plan], None] | None = None
    # Builds a model alias's configuration version (a registry `Version` of kind
    # `config`) into a servable one (blocking; set by the gateway, which owns the targets).
    build: Callable[[Any], LoadedVersion] | None = None
    shadow_in_flight: int = 0
    shadow_skipped: int = 0
    load_error: str | None = None  # the last version that failed to load, and why
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def swap(self, plan: Plan) -> None:
        """Serve `plan` from the next request on (one assignment: atomic for the loop)."""
        self.plan = plan

    def choose(self, call: Call) -> Choice:
        plan = self.plan
        candidate = plan.candidate
        if candidate is None:
            return Choice(plan.stable)
        if plan.mode == "shadow":
            return Choice(plan.stable, shadow=candidate)
        canary = Choice(candidate, fallback=plan.stable if plan.fallback else None)
        if any(_matches(rule, call) for rule in plan.rules):
            return canary
        if plan.share <= 0:
            return Choice(plan.stable)
        if plan.share >= 100:
            return canary
        ctx = call.ctx
        sticky = None
        if plan.sticky == "conversation":
            sticky = call.conversation_id
        elif plan.sticky == "user":
            sticky = ctx.key_id or (None if ctx.tenant_id == "default" else ctx.tenant_id)
        # Nothing to stick to: each request is drawn on its own.
        draw = (random.random() * 10_000 if sticky is None
                else _bucket(f"{self.name}:{sticky}"))
        return canary if draw < plan.share * 100 else Choice(plan.stable)

    def shadow(self, work: Callable[[], Any]) -> bool:
        """Run a shadow copy in the background, unless `shadow_limit` copies are in flight
        (then it is skipped and counted: never queued behind the caller)."""
        if self.shadow_in_flight >= self.shadow_limit:
            self.shadow_skipped += 1
            return False
        self.shadow_in_flight += 1

        async def run() -> None:
            try:
                await work()
            except Exception:  # a shadow copy must never affect serving
                log.exception("shadow copy of %s failed", self.name)
            finally:
                self.shadow_in_flight -= 1

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True


def shadow_context(parent: RequestContext, service: str, version: str, *,
                   route: str = "shadow") -> RequestContext:
    """The context of a shadow copy (or of a canary's failed attempt): its own trace,
    linked to the caller's request."""
    ctx = RequestContext(parent.request_id, route, os.urandom(16).hex(),
                         parent=(parent.otel_trace_id, parent.root_span, "01"))
    ctx.tenant_id = parent.tenant_id
    ctx.key_id = parent.key_id
    ctx.service = service
    ctx.provider = "python"
    ctx.version = version
    ctx.capture = parent.capture
    return ctx


def elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
