"""Where the lifecycle plugs into the gateway: the version routers' shadow records, the
retraining jobs the controller starts, and the zero-downtime reload (`shipyard reload`,
SIGHUP, `POST /v1/admin/reload`).

A reload builds every target of the new config *beside* the running ones (imports, schemas,
guards, model files), has the controller load the versions the registry names for them, and
only then swaps `providers`, `models` and `services` on the gateway — one assignment each,
so a request that already resolved its target finishes on it. Anything that fails leaves the
running targets serving and raises with the reason.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import orjson

from shipyard.config.loader import install_python_path, load_config
from shipyard.config.schema import Config
from shipyard.errors import ConfigError, ShipyardError
from shipyard.lifecycle import registry
from shipyard.lifecycle.aliases import alias_config, alias_target, model_config_of
from shipyard.lifecycle.controller import Decision, Routed
from shipyard.lifecycle.retrain import RetrainJob, start_job
from shipyard.lifecycle.serving import LoadedVersion, Plan, ShadowResult, VersionRouter
from shipyard.pipeline import RequestContext
from shipyard.providers import Provider, build_provider
from shipyard.targets.build import build_targets, build_version
from shipyard.targets.model import ModelTarget
from shipyard.targets.service import ServiceTarget

if TYPE_CHECKING:
    from collections.abc import Mapping

    from shipyard.gateway.runtime import Gateway

__all__ = ["RESTART_SECTIONS", "LifecycleHooks"]

log = logging.getLogger("shipyard.gateway")

# Sections a reload does not apply (the objects built from them live as long as the process).
RESTART_SECTIONS = ("server", "store", "state", "auth", "traces", "ui", "rate_limits",
                    "budgets", "alerts", "slos", "drift", "pricing", "ray")


class LifecycleHooks:
    """The gateway's side of `shipyard.lifecycle` (see the module docstring)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.reloads = 0
        self._lock = asyncio.Lock()

    def routers(self) -> Routed:
        return routed(self.gw.services, self.gw.models)

    def wire_shadows(self, services: dict[str, ServiceTarget],
                     models: Mapping[str, ModelTarget] | None = None) -> None:
        """Shadow copies and a canary's failed attempts become traces of their own."""
        gw = self.gw

        def record(ctx: RequestContext, result: ShadowResult) -> None:
            if ctx.route == "shadow":
                gw.metrics.shadow.labels(ctx.service or "", result.error or (
                    "agree" if result.agree else "differ")).inc()
            gw.recorder.record(ctx)

        routers = [s.router for s in services.values()]
        routers += [m.router for m in (models or {}).values() if m.router is not None]
        for router in routers:
            router.on_shadow = record
            router.shadow_limit = gw.config.lifecycle.shadow_concurrency

    def wire_models(self, models: dict[str, ModelTarget], config: Config,
                    providers: Mapping[str, Provider]) -> None:
        """Give each model alias its version router: it serves the registry's stable
        version of the alias's configuration and, during a rollout, the candidate, each
        built from its registered configuration beside this config's targets."""
        shared = self.gw.shared
        for alias, target in models.items():
            name = alias_target(alias)
            # This configuration's own version is this target; others are built once.
            own = orjson.loads(orjson.dumps(alias_config(alias, target.config, config)))
            built: dict[int, LoadedVersion] = {}

            def build(version: registry.Version, alias: str = alias,
                      target: ModelTarget = target, own: Any = own,
                      built: dict[int, LoadedVersion] = built) -> LoadedVersion:
                found = built.get(version.number)
                if found is not None:
                    return found
                label = str(version.number)
                if version.config == own:
                    loaded = LoadedVersion(label, target.chain, number=version.number,
                                           target=target)
                else:
                    model = model_config_of(alias, version.config, config)
                    if model.type != target.config.type:
                        raise ConfigError(f"It is a {model.type} model and the alias now "
                                          f"serves {target.config.type}.")
                    candidate = build_version(alias, model, config, providers, shared,
                                              models, cache_name=f"{alias}@v{label}")
                    candidate.version = label
                    loaded = LoadedVersion(label, candidate.chain, number=version.number,
                                           target=candidate)
                built[version.number] = loaded
                return loaded

            rollout = target.config.rollout
            target.router = VersionRouter(name, Plan(
                LoadedVersion(target.version or "config", target.chain, target=target),
                sticky=rollout.sticky, rules=tuple(rollout.rules)), build=build)

    def stamp_models(self, models: dict[str, ModelTarget]) -> None:
        """Each model alias carries its configuration's registered version number."""
        numbers = self.gw.lifecycle.alias_versions
        for alias, target in models.items():
            number = numbers.get(alias)
            target.version = str(number) if number is not None else None

    def count_decision(self, decision: Decision) -> None:
        if decision.action != "wait":
            self.gw.metrics.rollout_decisions.labels(decision.target, decision.action).inc()

    def retrain(self, service: str, trigger: str) -> None:
        """Start a retraining job (its steps run in a worker thread, off the loop)."""
        try:
            job_id = start_job(self.gw.engine, service, trigger,
                               holder=self.gw.lifecycle.holder)
        except ShipyardError as exc:
            log.info("retrain of %s not started: %s", service, exc.message)
            return
        log.info("retrain of %s started (%s): job %s", service, trigger, job_id)
        self.run_job(job_id)

    def run_job(self, job_id: str) -> None:
        gw = self.gw

        def run() -> None:
            try:
                RetrainJob(gw.engine, gw.config, job_id, holder=gw.lifecycle.holder).run()
            except Exception as exc:  # recorded on the job; the gateway keeps serving
                log.warning("retrain job %s failed: %s", job_id, exc)

        gw.background.spawn(asyncio.to_thread(run))

    async def reload_logged(self) -> None:
        """SIGHUP's reload: the outcome goes to the log."""
        try:
            result = await self.reload()
            log.info("reloaded: %s", result)
        except ShipyardError as exc:
            log.error("reload refused, the running config keeps serving: %s", exc.message)

    async def reload(self, config: Config | None = None) -> dict[str, Any]:
        """Load the config again (or `config`) and swap it in; see the module docstring.
        Returns what serves now and the changed sections only a restart applies."""
        gw = self.gw
        async with self._lock:
            if config is None:
                if gw.config_path is None:
                    raise ConfigError("This gateway was not started from a config file, so "
                                      "there is nothing to reload; restart it instead.")
                config = await asyncio.to_thread(load_config, gw.config_path)
            install_python_path(config)
            restart = [name for name in RESTART_SECTIONS
                       if getattr(config, name) != getattr(gw.config, name)]
            # What a reload cannot apply keeps its running value, so the process stays
            # consistent (routes read limits from `gateway.config`).
            config = config.model_copy(update={n: getattr(gw.config, n) for n in restart})
            providers = {name: build_provider(name, p) for name, p in config.providers.items()}
            targets = await asyncio.to_thread(build_targets, config, providers, gw.shared)
            self.wire_models(targets.models, config, providers)
            self.wire_shadows(targets.services, targets.models)
            routers = routed(targets.services, targets.models)
            await gw.lifecycle.sync(routers, config)
            self.stamp_models(targets.models)
            failed = [r.load_error for r, _ in routers.values() if r.load_error]
            if failed:
                raise ConfigError("Reload refused, the running config keeps serving: "
                                  + "; ".join(failed))
            for provider in providers.values():
                await provider.start()
            old = list(gw.providers.values())
            # The swap: one assignment each; requests that resolved a target keep it.
            gw.providers, gw.models, gw.services = providers, targets.models, targets.services
            gw.config = config
            gw.lifecycle.config = config
            self.reloads += 1
            gw.background.spawn(self._close_later(old))
            return {"reloaded": True, "models": sorted(gw.models),
                    "services": {n: s.router.plan.stable.label
                                 for n, s in sorted(gw.services.items())},
                    "model_versions": {n: m.serving for n, m in sorted(gw.models.items())},
                    "restart_needed": restart}

    async def _close_later(self, providers: list[Provider]) -> None:
        """Close replaced providers once the requests that use them had time to finish."""
        await asyncio.sleep(self.gw.config.server.drain_timeout_s)
        for provider in providers:
            try:
                await provider.close()
            except Exception:
                log.exception("closing replaced provider %s failed", provider.name)


def routed(services: Mapping[str, ServiceTarget], models: Mapping[str, ModelTarget]) -> Routed:
    """Every versioned target's router and config: services by name, model aliases as
    `model/ALIAS` (the registry's names)."""
    out: Routed = {name: (svc.router, svc.config) for name, svc in services.items()}
    for alias, model in models.items():
        if model.router is not None:
            out[alias_target(alias)] = (model.router, model.config)
    return out
