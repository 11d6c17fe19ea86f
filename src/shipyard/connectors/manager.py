"""The connectors of one process: built from `connectors:` in shipyard.yaml, run beside a
gateway runtime (inside `shipyard serve` with `autostart`, or alone with `shipyard
connectors run NAME`), their runs recorded in the store and their counts kept live.

>>> connectors = Connectors(gateway, Invoker(gateway))  # doctest: +SKIP
>>> await connectors.start()          # every connector with autostart: true  # doctest: +SKIP
>>> await connectors.run("orders")    # one, in the foreground, until stopped  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from starlette.datastructures import Headers

from shipyard.config.connectors import CONNECTOR_KINDS
from shipyard.connectors.base import Connector, Dispatcher, Environment
from shipyard.connectors.files import FilesConnector
from shipyard.connectors.kafka import KafkaConnector
from shipyard.connectors.nats import NATSConnector
from shipyard.connectors.rabbitmq import RabbitMQConnector
from shipyard.connectors.runs import RunLog
from shipyard.connectors.sql import SQLConnector
from shipyard.errors import ConfigError, ShipyardError
from shipyard.security.principal import Principal
from shipyard.security.roles import PLATFORM_TENANT

if TYPE_CHECKING:  # the gateway hands itself and its invoker down; connectors sit below it
    from shipyard.gateway.invoke import Invoker
    from shipyard.gateway.runtime import Gateway

__all__ = ["KINDS", "Connectors"]

log = logging.getLogger("shipyard.connectors")

# The class of each connector kind (the kinds themselves are declared once, in config).
KINDS: dict[str, type[Connector]] = {
    "rabbitmq": RabbitMQConnector, "nats": NATSConnector, "kafka": KafkaConnector,
    "sql": SQLConnector, "files": FilesConnector,
}
if set(KINDS) != set(CONNECTOR_KINDS):  # pragma: no cover - a developer's mistake
    raise RuntimeError("shipyard.connectors.KINDS and config.connectors.CONNECTOR_KINDS differ")

# Queue consumers record one run per session, with their counts saved this often.
_SAVE_EVERY_S = 2.0


class Connectors:
    """Build, start, run and stop the connectors of one gateway runtime."""

    def __init__(self, gateway: Gateway, invoker: Invoker) -> None:
        self.gw = gateway
        self.invoker = invoker
        self.runs = RunLog(gateway.engine)
        self.live: dict[str, Connector] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stop = asyncio.Event()
        gateway.connectors = self

    @property
    def configs(self) -> dict[str, Any]:
        return dict(self.gw.config.connectors)

    async def principal(self, name: str) -> Principal:
        """Who a connector's calls run as: its `api_key`, its `tenant`, or the platform."""
        cfg = self.configs[name]
        if cfg.api_key is not None:
            headers = Headers({"authorization": f"Bearer {cfg.api_key.get_secret_value()}"})
            try:
                return await self.gw.auth.authenticate(headers, "inference", route="connector")
            except ShipyardError as exc:
                raise ConfigError(f"connectors.{name}.api_key was refused ({exc.message}); "
                                  "set it to a valid key with the inference scope (shipyard "
                                  "keys create).") from None
        if cfg.tenant is not None:
            return Principal(tenant_id=cfg.tenant, key_id=None, role="client")
        return Principal(tenant_id=PLATFORM_TENANT, key_id=None, role="admin")

    async def build(self, name: str, *, idle_exit_s: float | None = None,
                    max_messages: int | None = None, scheduled: bool = False) -> Connector:
        """The connector called `name`, ready to run."""
        if name not in self.configs:
            known = ", ".join(sorted(self.configs)) or "none are configured"
            raise ConfigError(f"There is no connector '{name}' (known: {known}); add it under "
                              "'connectors' in shipyard.yaml or fix the name.")
        cfg = self.configs[name]
        dispatcher = None
        if cfg.target is not None:
            dispatcher = Dispatcher(name, cfg.target, self.invoker, await self.principal(name),
                                    self.gw.metrics, max_attempts=cfg.max_attempts,
                                    retry_backoff_s=cfg.retry_backoff_s,
                                    timeout_s=cfg.timeout_s)
            if cfg.target.service is not None:
                schema = self.gw.services[cfg.target.service].input_schema()
                dispatcher.input_schema = schema if isinstance(schema, dict) else None
        env = Environment(dispatcher, self.runs, self.gw.metrics, idle_exit_s=idle_exit_s,
                          max_messages=max_messages, scheduled=scheduled)
        connector = KINDS[cfg.kind](name, cfg, env)
        self.live[name] = connector
        return connector

    async def run(self, name: str, *, stop: asyncio.Event | None = None,
                  idle_exit_s: float | None = None, max_messages: int | None = None,
                  scheduled: bool = False) -> Connector:
        """Run one connector in the foreground until it ends or `stop` is set."""
        connector = await self.build(name, idle_exit_s=idle_exit_s,
                                     max_messages=max_messages, scheduled=scheduled)
        await self.run_built(connector, stop or self._stop)
        return connector

    async def run_built(self, connector: Connector, stop: asyncio.Event) -> None:
        """Run a built connector until it ends or `stop` is set (or the gateway drains)."""
        if connector.env.dispatcher is not None:
            gateway = self.gw
            connector.env.dispatcher.stopping = lambda: stop.is_set() or gateway.draining
        if connector.kind in ("sql", "files"):  # they record their own runs (checkpoints)
            await self._guarded(connector, stop)
            return
        run = await asyncio.to_thread(self.runs.start, connector.name, connector.kind)
        saver = asyncio.create_task(self._save(connector, run))
        status, error = "succeeded", None
        try:
            await self._guarded(connector, stop)
        except asyncio.CancelledError:
            status = "interrupted"
            raise
        except Exception as exc:
            status, error = "failed", f"{type(exc).__name__}: {exc}"
            raise
        finally:
            saver.cancel()
            stats = connector.stats
            await asyncio.to_thread(self.runs.update, run, processed=stats.processed,
                                    succeeded=stats.succeeded, failed=stats.failed,
                                    retried=stats.retried)
            await asyncio.to_thread(self.runs.finish, run, status, error)
            self.gw.metrics.connector_runs.labels(connector.name, status).inc()

    async def _guarded(self, connector: Connector, stop: asyncio.Event) -> None:
        try:
            await connector.run(stop)
        except Exception as exc:
            connector.set_state("failed", f"{type(exc).__name__}: {exc}")
            raise
        finally:
            if connector.stats.state not in ("failed",):
                connector.set_state("stopped")

    async def _save(self, connector: Connector, run: Any) -> None:
        while True:
            await asyncio.sleep(_SAVE_EVERY_S)
            stats = connector.stats
            try:
                await asyncio.to_thread(self.runs.update, run, processed=stats.processed,
                                        succeeded=stats.succeeded, failed=stats.failed,
                                        retried=stats.retried)
            except Exception:  # the store may be down for a moment; counts catch up later
                log.warning("connector %s: saving its run failed", connector.name,
                            exc_info=True)

    async def start(self) -> None:
        """Start every connector with `autostart: true` in the background; they stop when
        the gateway starts draining (SIGTERM), before its requests are cut off."""
        if any(cfg.autostart for cfg in self.configs.values()):
            self._tasks[""] = asyncio.create_task(self._watch_drain())
        for name, cfg in self.configs.items():
            if not cfg.autostart:
                continue
            connector = await self.build(name, scheduled=True)
            task = asyncio.create_task(self._background(connector))
            self._tasks[name] = task
            log.info("connector %s (%s) started", name, cfg.kind)

    async def _watch_drain(self) -> None:
        while not self._stop.is_set():
            if self.gw.draining:
                self._stop.set()
                return
            await asyncio.sleep(0.2)

    async def _background(self, connector: Connector) -> None:
        try:
            await self.run_built(connector, self._stop)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("connector %s stopped with an error", connector.name)

    async def stop(self, *, grace_s: float = 15.0) -> None:
        """Ask every connector to stop, let work in flight settle, then cancel."""
        self._stop.set()
        tasks = list(self._tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self._tasks.clear()

    def status(self) -> list[dict[str, Any]]:
        """Every configured connector: its kind, target, and live counts when it runs here."""
        rows = []
        for name, cfg in sorted(self.configs.items()):
            connector = self.live.get(name)
            rows.append({"name": name, "kind": cfg.kind,
                         "target": describe_target(cfg), "autostart": cfg.autostart,
                         "live": connector.stats.to_dict() if connector else None})
        return rows


def describe_target(cfg: Any) -> str:
    """`service classify`, `model demo`, or `pipeline p.yaml`, for lists and pages."""
    if cfg.target is None:
        return f"pipeline {getattr(cfg, 'pipeline', '')}"
    target = cfg.target
    return f"service {target.service}" if target.service else f"model {target.model}"
