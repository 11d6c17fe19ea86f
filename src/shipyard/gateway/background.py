"""The gateway's background work, started and stopped with it: trace retention, the alert
evaluator, scheduled drift checks, the escalation overdue checker, and short tasks spawned
off the request path (audit appends, token settlement, budget reloads)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from sqlalchemy import Engine

from shipyard.config.schema import Config
from shipyard.errors import ConfigError
from shipyard.escalation import Escalations, OverdueChecker
from shipyard.monitor.alerts import AlertEvaluator
from shipyard.observe.metrics import Metrics
from shipyard.security.crypto import PayloadCipher
from shipyard.store.retention import RetentionTask
from shipyard.webhooks.delivery import WebhookOutbox

__all__ = ["Background"]

log = logging.getLogger("shipyard.gateway")


class Background:
    """Everything that runs beside the requests of one gateway process."""

    def __init__(self, config: Config, engine: Engine, metrics: Metrics, *,
                 escalations: Escalations, cipher: PayloadCipher | None,
                 outbox: WebhookOutbox | None = None) -> None:
        self.config = config
        self.engine = engine
        self.metrics = metrics
        self.cipher = cipher
        self.alerts = AlertEvaluator(config, engine, outbox=outbox,
                                     on_evaluated=metrics.alert_evaluations.inc)
        self.overdue = OverdueChecker(escalations)
        self.retention: RetentionTask | None = None
        self.drift: Any = None  # a shipyard.monitor DriftScheduler once started
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` on the event loop without waiting for it (kept until it ends)."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self, *, traces: bool) -> None:
        retention = self.config.traces.retention
        if traces and (retention.days or retention.payload_days or retention.tenants):
            self.retention = RetentionTask(self.engine, retention,
                                           on_purge=self.metrics.count_purge)
            self.retention.start()
        self.overdue.start()
        await self._start_drift()
        await self.alerts.start()

    async def _start_drift(self) -> None:
        """Scheduled drift checks (`drift:` in the config); needs the `monitor` extra."""
        if not (self.config.drift.enabled and self.config.drift.checks):
            return
        try:  # optional extra: imported only when drift checks are configured
            from shipyard.monitor.drift.checks import DriftScheduler
        except ImportError as exc:
            raise ConfigError(f"drift.checks needs numpy and scipy ({exc}); install them with "
                              "pip install 'shipyard[monitor]'.") from exc
        self.drift = DriftScheduler(self.engine, self.config.drift,
                                    decrypt=self.cipher.decrypt if self.cipher else None)
        await self.drift.start()

    async def stop(self) -> None:
        if self.drift is not None:
            await self.drift.stop()
        await self.overdue.stop()
        await self.alerts.stop()
        if self.retention is not None:
            await self.retention.stop()
