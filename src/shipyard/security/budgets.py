"""Budgets: spend per tenant and per key over a day or a month, with a soft threshold (an
alert event: logged, counted, audited once per period) and a hard limit (requests refused
with a 429 `insufficient_quota` error that names the budget).

Spend is kept in memory per period and loaded from the traces at start, so checks cost a dict
lookup; with several replicas each one also counts what the others wrote when it reloads
(every `reload_s`). Cost is recorded off the hot path with the trace.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, func, select

from shipyard.config.security import BudgetConfig
from shipyard.errors import RateLimited
from shipyard.security.pricing import format_usd
from shipyard.store.tables import traces

__all__ = ["BudgetGuard", "period_start"]

log = logging.getLogger("shipyard.budgets")
_ADJECTIVE = {"day": "daily", "month": "monthly"}


def period_start(period: str, now: datetime | None = None) -> datetime:
    now = now or datetime.now(UTC)
    if period == "day":
        return now.replace(hour=0, minute=0, second=0, microsecond=0)
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


@dataclass
class _Spend:
    since: datetime
    usd: float = 0.0
    warned: bool = False


class BudgetExceeded(RateLimited):
    type = "insufficient_quota"
    code = "budget_exceeded"


class BudgetGuard:
    def __init__(self, engine: Engine, budgets: list[BudgetConfig], *,
                 on_soft: Callable[[BudgetConfig, float], None] | None = None,
                 reload_s: float = 30.0) -> None:
        self.engine = engine
        self.budgets = budgets
        self.on_soft = on_soft
        self.reload_s = reload_s
        self._spend: dict[tuple[str, str], _Spend] = {}
        self._loaded = 0.0

    @staticmethod
    def _scope(budget: BudgetConfig) -> tuple[str, str]:
        return ("key", budget.key) if budget.key else ("tenant", budget.tenant or "")

    def _applies(self, budget: BudgetConfig, tenant_id: str, key_id: str | None) -> bool:
        if budget.key:
            return budget.key == key_id
        return budget.tenant == tenant_id

    def reload(self) -> None:
        """Recount spend per budget from the stored traces (shared truth across replicas)."""
        for budget in self.budgets:
            since = period_start(budget.period)
            kind, ident = self._scope(budget)
            column = traces.c.key_id if kind == "key" else traces.c.tenant_id
            query = (select(func.coalesce(func.sum(traces.c.cost_usd), 0.0))
                     .where(column == ident).where(traces.c.started_at >= since))
            with self.engine.connect() as connection:
                total = float(connection.execute(query).scalar_one())
            entry = self._spend.get((kind, ident))
            if entry is None or entry.since != since:
                entry = _Spend(since=since)
            entry.usd = max(entry.usd, total)
            self._spend[(kind, ident)] = entry
        self._loaded = time.monotonic()

    def claim_reload(self) -> bool:
        """True (once per `reload_s`) when spend should be recounted from the store."""
        if not self.budgets or time.monotonic() - self._loaded <= self.reload_s:
            return False
        self._loaded = time.monotonic()
        return True

    def check(self, tenant_id: str, key_id: str | None) -> None:
        """Refuse the request when a hard limit that applies is spent."""
        for budget in self.budgets:
            if not self._applies(budget, tenant_id, key_id):
                continue
            entry = self._spend.get(self._scope(budget))
            if entry is None or entry.since != period_start(budget.period):
                continue
            if entry.usd >= budget.limit_usd:
                kind, ident = self._scope(budget)
                raise BudgetExceeded(
                    f"The {_ADJECTIVE[budget.period]} budget of {kind} '{ident}' "
                    f"({format_usd(budget.limit_usd)}) is spent ({format_usd(entry.usd)} so "
                    "far); requests are refused until the period ends or an admin raises "
                    "'budgets' in the config.")

    def add(self, tenant_id: str, key_id: str | None, usd: float) -> None:
        for budget in self.budgets:
            if not self._applies(budget, tenant_id, key_id):
                continue
            scope = self._scope(budget)
            since = period_start(budget.period)
            entry = self._spend.get(scope)
            if entry is None or entry.since != since:
                entry = self._spend[scope] = _Spend(since=since)
            entry.usd += usd
            if not entry.warned and entry.usd >= budget.limit_usd * budget.soft_ratio:
                entry.warned = True
                log.warning("budget of %s '%s' is %.0f%% spent ($%.2f of $%.2f this %s)",
                            scope[0], scope[1], 100 * entry.usd / budget.limit_usd, entry.usd,
                            budget.limit_usd, budget.period)
                if self.on_soft is not None:
                    self.on_soft(budget, entry.usd)

    def status(self) -> list[dict[str, object]]:
        out = []
        for budget in self.budgets:
            kind, ident = self._scope(budget)
            entry = self._spend.get((kind, ident))
            out.append({"scope": kind, "id": ident, "period": budget.period,
                        "limit_usd": budget.limit_usd,
                        "spent_usd": round(entry.usd, 6) if entry else 0.0})
        return out
