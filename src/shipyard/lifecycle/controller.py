"""The rollout controller: keeps every replica serving what the registry says, and (on one
replica at a time) decides rollouts and starts retraining.

Every `lifecycle.tick_s` each gateway process:

1. reads the registry's routing (two small tables) and, for a service whose aliases or
   rollout changed, loads the versions it needs *beside* the ones serving (in a worker
   thread), then swaps the service's plan in one assignment. In-flight requests finish on
   the objects they chose; a version that fails to load leaves the old plan serving and the
   error on `status()`, the log and the target's history.
2. if it holds the `lifecycle` lease (the alert evaluator's lease table, see
   `shipyard.monitor.history`), evaluates each running rollout's gates (`gates.py`): a
   failing gate rolls the candidate back at once (alias, audit log, history, an alert to the
   configured channels); passing gates for `step_s` with enough samples advance the canary
   share step by step, and the last step promotes the candidate to stable. A shadow rollout
   that passes becomes a canary at the first step.
3. starts retraining jobs whose trigger fired (a drift result, feedback volume, a schedule)
   and resumes jobs whose process died (`retrain.py`).

>>> controller = Controller(config, engine, routers=lambda: routers)  # doctest: +SKIP
>>> await controller.start()  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from shipyard.config.lifecycle import RolloutConfig
from shipyard.config.schema import Config
from shipyard.config.targets import ModelConfig, ServiceConfig
from shipyard.lifecycle import registry
from shipyard.lifecycle.aliases import register_aliases
from shipyard.lifecycle.artifacts import artifact_dir
from shipyard.lifecycle.gates import Check, check_gates
from shipyard.lifecycle.retrain import claim_stale, due_triggers
from shipyard.lifecycle.serving import (
    LoadedVersion,
    Plan,
    VersionRouter,
    load_function,
    load_model_version,
)
from shipyard.monitor import history
from shipyard.monitor.channels import Channel, Notification, build_channel, deliver

__all__ = ["Controller", "Decision", "register_configured"]

log = logging.getLogger("shipyard.lifecycle")
LEASE = "lifecycle"

# Registry target → its router and config: services by name, model aliases as `model/ALIAS`
# (both configs carry the `rollout` policy).
Routed = dict[str, tuple[VersionRouter, ServiceConfig | ModelConfig]]
Routers = Callable[[], Routed]


def register_configured(engine: Engine, config: Config, name: str,
                        service: ServiceConfig) -> tuple[registry.Version, bool]:
    """Register the version a service's config names; a version new to the registry (or
    the first one) becomes stable, so editing the config and reloading deploys it."""
    if service.model is not None:
        version, new = registry.register_version(
            engine, name, model=Path(service.model), call=service.call,
            artifact_dir=artifact_dir(config), actor="config",
            meta={"source": "config", "file": service.model})
    else:
        version, new = registry.register_version(
            engine, name, function=service.function, actor="config",
            meta={"source": "config"})
    stable = registry.aliases_of(engine, name).get(name, {}).get("stable")
    if new or stable is None:
        registry.promote(engine, name, version.number, actor="config",
                         reason="the config names a new version" if stable is not None
                         else "first version")
    return version, new


@dataclass
class Decision:
    """What the controller did to one rollout in one tick."""

    target: str
    action: str  # wait | step | promote | rollback | shadow_to_canary
    check: Check
    share: float | None = None


@dataclass
class _Cache:
    versions: dict[tuple[str, int], LoadedVersion] = field(default_factory=dict)
    failed: dict[tuple[str, int], str] = field(default_factory=dict)


class Controller:
    """See the module docstring."""

    def __init__(self, config: Config, engine: Engine, *, routers: Routers,
                 holder: str | None = None,
                 on_decision: Callable[[Decision], None] | None = None,
                 retrain: Callable[[str, str], Any] | None = None,
                 resume: Callable[[str], Any] | None = None) -> None:
        self.config = config
        self.engine = engine
        self.routers = routers
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.on_decision = on_decision
        self.retrain = retrain  # (service, trigger) -> starts a job (see retrain.py)
        self.resume = resume  # (job id) -> runs an abandoned job on from its step
        self.leader = False
        self.channels: dict[str, Channel] = {c.name: build_channel(c)
                                             for c in config.alerts.channels}
        self._cache = _Cache()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._sends: set[asyncio.Task[None]] = set()
        self.synced = False
        self.ticks = 0
        self.alias_versions: dict[str, int] = {}  # model alias → its config's version

    # -- loop ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Register the configured versions, serve what the registry says, then tick."""
        if not self.routers():
            await self.register_aliases(self.config)
            return
        await self.sync()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._sends:
            await asyncio.wait(list(self._sends), timeout=5)
        if self.leader:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(history.release_lease, self.engine, self.holder,
                                        name=LEASE)
            self.leader = False

    async def _loop(self) -> None:
        tick = self.config.lifecycle.tick_s
        while True:
            await asyncio.sleep(tick)
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a store outage must not stop serving or the loop
                log.warning("lifecycle: tick failed (%s: %s); retrying in %gs",
                            type(exc).__name__, str(exc)[:200], tick)
                self.leader = False

    async def sync(self, routers: Routed | None = None, config: Config | None = None) -> None:
        """Register every service's configured version and serve the registry's routing
        (on `routers`, e.g. a reload's new services before they are swapped in)."""
        routers = routers if routers is not None else self.routers()
        config = config or self.config

        def register() -> None:
            for name, (_, service) in routers.items():
                if isinstance(service, ServiceConfig):  # aliases: register_aliases
                    register_configured(self.engine, config, name, service)

        await self.register_aliases(config)
        await asyncio.to_thread(register)
        await self.refresh(routers)
        self.synced = True

    async def register_aliases(self, config: Config) -> dict[str, int]:
        """Register each model alias's configuration as a version (`aliases.py`); the
        numbers are kept on `alias_versions` for the gateway to stamp on answers."""
        self.alias_versions = await asyncio.to_thread(register_aliases, self.engine, config)
        return self.alias_versions

    async def run_once(self) -> list[Decision]:
        """One tick: refresh routing; decide rollouts and retraining when leader."""
        self.ticks += 1
        await self.refresh()
        self.leader = await asyncio.to_thread(history.acquire_lease, self.engine, self.holder,
                                              self.config.lifecycle.lease_s, name=LEASE)
        if not self.leader:
            return []
        decisions = await asyncio.to_thread(self._decide, datetime.now(UTC))
        if any(d.action != "wait" for d in decisions):
            await self.refresh()  # serve the decision here at once (others: next tick)
        for decision in decisions:
            if decision.action == "rollback":
                self._alert(decision)
            if self.on_decision is not None:
                self.on_decision(decision)
        if self.retrain is not None:
            resumed, due = await asyncio.to_thread(self._retrain_triggers)
            for job_id in resumed:
                if self.resume is not None:
                    self.resume(job_id)
            for name, trigger in due:
                self.retrain(name, trigger)
        return decisions

    # -- routing ------------------------------------------------------------------------------
    async def refresh(self, routers: Routed | None = None) -> list[str]:
        """Swap in the registry's routing where it changed; returns the services swapped."""
        async with self._lock:
            routing = await asyncio.to_thread(registry.routing, self.engine)
            swapped = []
            for name, (router, service) in (routers or self.routers()).items():
                wanted = routing.get(name)
                if wanted is None:
                    continue
                if router.plan.key() == _key(wanted):
                    continue
                plan = await asyncio.to_thread(self._plan, name, router, service, wanted)
                if plan is not None:
                    router.swap(plan)
                    swapped.append(name)
                    log.info("lifecycle: %s now serves %s", name, _describe(plan))
            if swapped:
                self._forget_unused()
            return swapped

    def _forget_unused(self) -> None:
        """Drop loaded versions no plan serves (requests still on one keep their own
        reference), so a long-lived process does not keep every version it ever loaded."""
        used = set()
        for name, (router, _) in self.routers().items():
            for version in (router.plan.stable, router.plan.candidate):
                if version is not None and version.number is not None:
                    used.add((name, version.number))
        for key in [k for k in self._cache.versions if k not in used]:
            del self._cache.versions[key]

    def _plan(self, name: str, router: VersionRouter, service: ServiceConfig | ModelConfig,
              wanted: registry.Routing) -> Plan | None:
        """Load what `wanted` needs beside what serves now (blocking: a worker thread)."""
        try:
            stable = self._load(name, wanted.stable, router)
            candidate = (self._load(name, wanted.candidate, router)
                         if wanted.candidate is not None else None)
        except Exception as exc:
            message = (f"version {exc.args[1]} of '{name}' failed to load ({exc.args[0]}); "
                       "the previous version keeps serving" if isinstance(exc, _LoadFailed)
                       else f"loading versions of '{name}' failed ({exc})")
            if router.load_error != message:
                log.error("lifecycle: %s", message)
            router.load_error = message
            return None
        rollout = service.rollout
        plan = Plan(stable, candidate, wanted.mode, wanted.share, tuple(rollout.rules),
                    rollout.sticky, wanted.rollout_id, rollout.fallback)
        if router.prepare is not None:
            try:
                router.prepare(plan)  # e.g. deployed on Ray and healthy before it serves
            except Exception as exc:
                text = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
                message = (f"versions of '{name}' could not be deployed ({text}); the "
                           "previous version keeps serving")
                if router.load_error != message:
                    log.error("lifecycle: %s", message)
                router.load_error = message
                return None
        router.load_error = None
        return plan

    def _load(self, name: str, number: int, router: VersionRouter) -> LoadedVersion:
        key = (name, number)
        found = self._cache.versions.get(key)
        if found is not None:
            return found
        try:
            version = registry.get_version(self.engine, name, number)
            if version.kind == "config":
                if router.build is None:
                    raise ValueError("this gateway cannot build model alias versions")
                # Built (and kept) by the gateway per set of targets: a reload builds anew.
                return router.build(version)
            if version.artifact is not None:
                loaded = load_model_version(version.artifact, version.call or "predict_proba",
                                            name=name, label=str(number), number=number)
            else:
                loaded = load_function(version.function or "", key=f"{name} version {number}",
                                       label=str(number), number=number)
        except Exception as exc:
            text = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            if key not in self._cache.failed:
                self._cache.failed[key] = text
                with contextlib.suppress(Exception), self.engine.begin() as connection:
                    registry.record_event(connection, name, "load_failed", version=number,
                                          actor=self.holder, details={"error": text[:500]})
            raise _LoadFailed(text, number) from exc
        self._cache.versions[key] = loaded
        return loaded

    # -- decisions ----------------------------------------------------------------------------
    def _policy(self, name: str) -> RolloutConfig | None:
        found = self.routers().get(name)
        return found[1].rollout if found is not None else None

    def _decide(self, now: datetime) -> list[Decision]:
        out = []
        for rollout in registry.running_rollouts(self.engine):
            policy = self._policy(rollout.target)
            if policy is None:
                continue
            check = check_gates(self.engine, rollout, policy, now)
            out.append(self._act(rollout, policy, check, now))
        return out

    def _act(self, rollout: registry.Rollout, policy: RolloutConfig, check: Check,
             now: datetime) -> Decision:
        actor = f"shipyard:rollouts:{self.holder}"
        details = check.to_dict()
        if check.failed and policy.auto:
            reason = "gate failed: " + "; ".join(check.failures)
            if registry.finish_rollout(self.engine, rollout, "rolled_back", actor=actor,
                                       reason=reason, check=details):
                log.warning("lifecycle: rolled back %s version %d: %s", rollout.target,
                            rollout.candidate, reason)
                return Decision(rollout.target, "rollback", check)
        at_step = (now - rollout.step_started_at).total_seconds()
        ready = (check.enough and not check.failed and not check.waiting
                 and at_step >= policy.step_s and policy.auto)
        if not ready:
            registry.update_rollout(self.engine, rollout, last_check=details, actor=actor)
            return Decision(rollout.target, "wait", check)
        if rollout.mode == "shadow":
            share = policy.steps[0]
            registry.shadow_to_canary(self.engine, rollout, share, actor=actor,
                                      check=details)
            return Decision(rollout.target, "shadow_to_canary", check, share)
        following = [s for s in policy.steps if s > rollout.share]
        if not following or rollout.share >= 100:
            registry.finish_rollout(self.engine, rollout, "promoted", actor=actor,
                                    reason="every gate passed at every step", check=details)
            return Decision(rollout.target, "promote", check, 100.0)
        registry.update_rollout(self.engine, rollout, step=rollout.step + 1,
                                share=following[0], last_check=details, actor=actor)
        return Decision(rollout.target, "step", check, following[0])

    def _alert(self, decision: Decision) -> None:
        """A rollback fires an alert through every configured channel."""
        if not self.channels:
            return
        server = self.config.server
        base = (server.public_url or f"http://{server.host}:{server.port}").rstrip("/")
        now = datetime.now(UTC).isoformat()
        payload = {"id": f"rollback-{decision.target}-{int(time.time())}",
                   "key": f"rollback:{decision.target}", "source": "rollout",
                   "severity": "critical", "state": "firing", "value": None,
                   "threshold": None,
                   "summary": f"Rollout of '{decision.target}' rolled back automatically",
                   "detail": "; ".join(decision.check.failures), "labels": {
                       "service": decision.target.removeprefix(registry.ALIAS_PREFIX),
                       "target": decision.target}, "tenant": "default",
                   "runbook": "See the service's versions page for the comparison; fix the "
                   "candidate and register a new version.",
                   "url": f"{base}/ui/versions/{decision.target}", "started_at": now,
                   "fired_at": now, "resolved_at": None}
        for channel in self.channels.values():
            task = asyncio.get_running_loop().create_task(
                self._send(channel, Notification("firing", payload)))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)

    async def _send(self, channel: Channel, notification: Notification) -> None:
        await deliver(channel, notification, attempts=3, backoff_s=0.5)

    def _retrain_triggers(self) -> tuple[list[str], list[tuple[str, str]]]:
        """(abandoned jobs claimed for resuming, (service, trigger) to start); blocking."""
        resumed: list[str] = []
        if self.resume is not None:
            # A job whose process died (no heartbeat for three leases) is resumed here.
            resumed = claim_stale(self.engine, holder=self.holder,
                                  stale_s=3 * self.config.lifecycle.lease_s)
            for job_id in resumed:
                log.info("lifecycle: resuming retraining job %s", job_id)
        due = []
        for name, (_, service) in self.routers().items():
            if not isinstance(service, ServiceConfig) or service.retrain is None:
                continue
            due += [(name, trigger) for trigger in due_triggers(
                self.engine, name, service.retrain, holder=self.holder)]
        return resumed, due

    def status(self) -> dict[str, Any]:
        return {name: {"serving": _describe(router.plan), "load_error": router.load_error,
                       "shadow_in_flight": router.shadow_in_flight,
                       "shadow_skipped": router.shadow_skipped}
                for name, (router, _) in self.routers().items()}


class _LoadFailed(Exception):
    pass


def _key(routing: registry.Routing) -> tuple[Any, ...]:
    return (routing.stable, routing.candidate,
            routing.mode if routing.candidate is not None else None,
            routing.share if routing.candidate is not None else None,
            routing.rollout_id)


def _describe(plan: Plan) -> str:
    text = f"stable v{plan.stable.label}"
    if plan.candidate is not None:
        text += (f", shadow v{plan.candidate.label}" if plan.mode == "shadow"
                 else f", canary v{plan.candidate.label} at {plan.share:g}%")
    return text

