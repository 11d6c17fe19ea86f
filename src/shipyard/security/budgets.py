"""Budgets: spend per tenant and per key over a day or a month, with a soft threshold (an
alert event: logged, counted, audited once per period across all replicas) and a hard limit
(requests refused with a 429 `insufficient_quota` error that names the budget).

A request that a budget applies to *reserves* its worst-case cost before it goes upstream:
the prompt's estimated tokens times the input price plus its `max_tokens` (or
`rate_limits.default_max_tokens`) times the output price, at the highest price among the
alias, its upstream models and its fallbacks. The reservation is atomic in a shared ledger
(`shipyard.security.budget_ledger`: Redis when `state.backend: redis`, else the store), so
replicas never promise the same dollars twice. When the answer is in, the reservation is
*settled* with the real cost (or *released*, for a failure). Spend therefore passes a limit
only by what a request cost beyond its own estimate: with `max_tokens` set that is at most
the prompt estimate's error of one request.

>>> guard = BudgetGuard(config.budgets, StoreLedger(engine))                    # doctest: +SKIP
>>> held = await guard.reserve("acme", "key_1", 0.002)             # doctest: +SKIP
>>> await guard.settle(held, 0.0013)                               # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select

from shipyard.config.security import BudgetConfig
from shipyard.errors import RateLimited, StateUnavailable
from shipyard.observe.tokens import estimate_chat_prompt, estimate_text
from shipyard.pipeline import Call, Handler, Reply, Stage
from shipyard.security.budget_ledger import NANO, Account, Ledger
from shipyard.security.pricing import Price, format_usd
from shipyard.store.tables import traces

__all__ = [
    "BudgetExceeded",
    "BudgetGuard",
    "BudgetStage",
    "Reservation",
    "estimate_tokens",
    "period_start",
]

log = logging.getLogger("shipyard.budgets")

# How long a reservation holds when its request never settles (the replica crashed): longer
# than any request may run, short enough that a crash does not block a budget for long.
RESERVATION_TTL_S = 900.0
_PERIOD_WORD = {"day": "daily", "month": "monthly"}


def period_start(period: str, now: datetime | None = None) -> datetime:
    now = now or datetime.now(UTC)
    if period == "day":
        return now.replace(hour=0, minute=0, second=0, microsecond=0)
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def period_end(period: str, since: datetime) -> datetime:
    if period == "day":
        return since + timedelta(days=1)
    return (since + timedelta(days=32)).replace(day=1)


class BudgetExceeded(RateLimited):
    type = "insufficient_quota"
    code = "budget_exceeded"


@dataclass
class Reservation:
    """Dollars held in every budget account a request is subject to, until settled."""

    id: str
    tenant_id: str
    key_id: str | None
    budgets: tuple[BudgetConfig, ...]
    accounts: tuple[Account, ...]
    amount: int  # nano-USD held
    settled: bool = False

    @property
    def amount_usd(self) -> float:
        return self.amount / NANO


def estimate_tokens(endpoint: str, payload: Any, default_max_tokens: int) -> tuple[int, int]:
    """(prompt tokens, answer tokens at most) of an OpenAI request, before it is sent.

    The answer bound is `max_completion_tokens`/`max_tokens` (else `default_max_tokens`)
    times `n`; an embedding has no answer tokens.
    """
    if not isinstance(payload, dict):
        return estimate_text(str(payload)), 0
    if endpoint == "embeddings":
        value = payload.get("input")
        items = value if isinstance(value, list) else [value]
        prompt = 0
        for item in items:
            if isinstance(item, str):
                prompt += estimate_text(item)
            elif isinstance(item, list):  # token ids: their count is exact
                prompt += len(item)
            elif isinstance(item, int):
                prompt += 1
        return prompt, 0
    if "messages" in payload:
        prompt = estimate_chat_prompt(payload.get("messages") or [])
    else:
        value = payload.get("prompt") or ""
        texts = value if isinstance(value, list) else [value]
        prompt = sum(estimate_text(t) if isinstance(t, str) else 1 for t in texts)
    answer = payload.get("max_completion_tokens") or payload.get("max_tokens")
    if not isinstance(answer, int) or isinstance(answer, bool) or answer < 0:
        answer = default_max_tokens
    n = payload.get("n")
    choices = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
    return prompt, answer * choices


class BudgetGuard:
    """The budgets of the config over a shared ledger: `check` (cheap, before the body is
    read), `reserve`, `settle`, `release`, `charge`; a background task refreshes what this
    replica knows of the spend and retries settles that failed while the ledger was down."""

    def __init__(self, budgets: Sequence[BudgetConfig], ledger: Ledger, *,
                 engine: Engine | None = None,
                 on_soft: Callable[[BudgetConfig, float], None] | None = None,
                 refresh_s: float = 1.0, reload_s: float = 30.0,
                 reservation_ttl_s: float = RESERVATION_TTL_S,
                 max_pending: int = 100_000) -> None:
        self.budgets = list(budgets)
        self.ledger = ledger
        self.engine = engine
        self.on_soft = on_soft
        self.refresh_s = refresh_s
        self.reload_s = reload_s
        self.reservation_ttl_s = reservation_ttl_s
        self._seeds: dict[str, int] = {}
        self._known: dict[str, tuple[int, int]] = {}  # account -> (spent, reserved)
        self._pending: deque[tuple[Reservation, int]] = deque()
        self.max_pending = max_pending
        self.unsettled_lost = 0  # settles dropped because the pending queue was full
        self._task: asyncio.Task[None] | None = None
        self._loaded = 0.0

    # -- accounts ---------------------------------------------------------------------------
    @staticmethod
    def _scope(budget: BudgetConfig) -> tuple[str, str]:
        return ("key", budget.key) if budget.key else ("tenant", budget.tenant or "")

    def applying(self, tenant_id: str, key_id: str | None) -> list[BudgetConfig]:
        return [b for b in self.budgets
                if (b.key == key_id if b.key else b.tenant == tenant_id)]

    def _account(self, budget: BudgetConfig, now: datetime | None = None) -> Account:
        kind, ident = self._scope(budget)
        since = period_start(budget.period, now)
        key = f"{kind}:{ident}:{budget.period}:{since:%Y-%m-%d}"
        ends = period_end(budget.period, since) + timedelta(days=1)  # kept a day past its end
        # Where the ledger starts an account it does not know (a new period, or Redis that
        # lost its data): the stored traces' spend, or what this replica last saw if more.
        seed = max(self._seeds.get(key, 0), self._known.get(key, (0, 0))[0])
        return Account(key=key, limit=round(budget.limit_usd * NANO),
                       soft=round(budget.limit_usd * budget.soft_ratio * NANO),
                       seed=seed, period_end=ends.timestamp())

    # -- the request path -------------------------------------------------------------------
    def check(self, tenant_id: str, key_id: str | None) -> None:
        """Refuse at once when an applicable budget is known to be spent (no I/O): spares
        reading the body of a request that `reserve` would refuse anyway."""
        for budget in self.applying(tenant_id, key_id):
            account = self._account(budget)
            spent, _ = self._known.get(account.key, (account.seed, 0))
            if spent >= account.limit:
                raise self._exceeded(budget, spent, 0, 0)

    async def reserve(self, tenant_id: str, key_id: str | None,
                      estimate_usd: float) -> Reservation | None:
        """Hold `estimate_usd` in every budget that applies, all or nothing; raises
        `BudgetExceeded` (429) when one would pass its limit, `StateUnavailable` (503) when
        the ledger cannot be reached. None when no budget applies."""
        budgets = self.applying(tenant_id, key_id)
        if not budgets:
            return None
        accounts = tuple(self._account(b) for b in budgets)
        amount = max(0, math.ceil(estimate_usd * NANO))
        rid = os.urandom(12).hex()
        hold = await self.ledger.reserve(accounts, rid, amount, self.reservation_ttl_s)
        for account, spent, reserved in zip(accounts, hold.spent, hold.reserved, strict=True):
            self._known[account.key] = (spent, reserved)
        if not hold.granted:
            i = hold.refused
            raise self._exceeded(budgets[i], hold.spent[i], hold.reserved[i], amount)
        return Reservation(rid, tenant_id, key_id, tuple(budgets), accounts, amount)

    async def settle(self, reservation: Reservation | None, actual_usd: float) -> None:
        """Replace the reservation by the real cost (0: release it). Never raises: when the
        ledger is down the settle waits in memory and is retried until it lands."""
        if reservation is None or reservation.settled:
            return
        reservation.settled = True
        amount = max(0, round(actual_usd * NANO))
        try:
            await self._settle(reservation, amount)
        except Exception as exc:
            self._defer(reservation, amount, exc)

    async def release(self, reservation: Reservation | None) -> None:
        """The request failed before it cost anything: give its reservation back."""
        await self.settle(reservation, 0.0)

    async def charge(self, tenant_id: str, key_id: str | None, usd: float) -> None:
        """Add spend that had no reservation (never raises)."""
        budgets = self.applying(tenant_id, key_id)
        if not budgets or usd <= 0:
            return
        held = Reservation(os.urandom(12).hex(), tenant_id, key_id, tuple(budgets),
                           tuple(self._account(b) for b in budgets), 0)
        await self.settle(held, usd)

    async def _settle(self, reservation: Reservation, amount: int) -> None:
        done = await self.ledger.settle(reservation.accounts, reservation.id,
                                        reservation.amount, amount)
        for budget, account, spent, warn in zip(reservation.budgets, reservation.accounts,
                                                done.spent, done.warn, strict=True):
            _, reserved = self._known.get(account.key, (0, reservation.amount))
            self._known[account.key] = (spent, max(0, reserved - reservation.amount))
            if warn:
                self._warn(budget, spent / NANO)

    def _defer(self, reservation: Reservation, amount: int, exc: Exception) -> None:
        if len(self._pending) >= self.max_pending:
            self.unsettled_lost += 1
            log.error("budget settle dropped: %d settles already wait for the ledger",
                      len(self._pending))
            return
        if not self._pending:
            log.warning("budget ledger unreachable (%s); settles wait and are retried",
                        type(exc).__name__ if not isinstance(exc, StateUnavailable) else
                        "Redis down")
        self._pending.append((reservation, amount))

    def _warn(self, budget: BudgetConfig, spent: float) -> None:
        kind, ident = self._scope(budget)
        log.warning("budget of %s '%s' is %.0f%% spent (%s of %s this %s)", kind, ident,
                    100 * spent / budget.limit_usd, format_usd(spent), format_usd(budget.limit_usd),
                    budget.period)
        if self.on_soft is not None:
            self.on_soft(budget, spent)

    def _exceeded(self, budget: BudgetConfig, spent: int, reserved: int,
                  amount: int) -> BudgetExceeded:
        kind, ident = self._scope(budget)
        word = _PERIOD_WORD[budget.period]
        limit = format_usd(budget.limit_usd)
        if spent >= round(budget.limit_usd * NANO):
            ends = period_end(budget.period, period_start(budget.period))
            wait = max(1, math.ceil(ends.timestamp() - time.time()))
            return BudgetExceeded(
                f"The {word} budget of {kind} '{ident}' ({limit}) is spent "
                f"({format_usd(spent / NANO)} so far); requests are refused until the period "
                "ends or an admin raises 'budgets' in the config.",
                headers={"retry-after": str(wait)})
        return BudgetExceeded(
            f"The {word} budget of {kind} '{ident}' ({limit}) cannot cover this request: "
            f"{format_usd(spent / NANO)} is spent and {format_usd(reserved / NANO)} is held by "
            f"requests in flight, and this one may cost up to {format_usd(amount / NANO)}; "
            "lower max_tokens or retry when those finish.", headers={"retry-after": "1"})

    # -- background -------------------------------------------------------------------------
    def load_seeds(self) -> None:
        """Spend per account so far from the stored traces: where the ledger starts an
        account it has not seen (a new deployment, or Redis that lost its data)."""
        if self.engine is None:
            return
        for budget in self.budgets:
            kind, ident = self._scope(budget)
            since = period_start(budget.period)
            column = traces.c.key_id if kind == "key" else traces.c.tenant_id
            query = (select(func.coalesce(func.sum(traces.c.cost_usd), 0.0))
                     .where(column == ident).where(traces.c.started_at >= since))
            with self.engine.connect() as connection:
                total = float(connection.execute(query).scalar_one())
            self._seeds[self._account(budget).key] = round(total * NANO)
        self._loaded = time.monotonic()

    async def refresh(self) -> None:
        """Retry waiting settles, then learn every account's spend from the ledger."""
        while self._pending:
            reservation, amount = self._pending[0]
            await self._settle(reservation, amount)  # raises while the ledger is still down
            self._pending.popleft()
        if time.monotonic() - self._loaded > self.reload_s:
            await asyncio.to_thread(self.load_seeds)
            await self.ledger.sweep()
        accounts = [self._account(b) for b in self.budgets]
        if accounts:
            for account, totals in zip(accounts, await self.ledger.totals(accounts),
                                       strict=True):
                self._known[account.key] = totals

    async def start(self) -> None:
        if not self.budgets:
            return
        await asyncio.to_thread(self.load_seeds)
        try:
            await self.refresh()
        except Exception as exc:  # the ledger may be down at start: the loop retries
            log.warning("budget ledger not reachable at start (%s)", type(exc).__name__)
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.refresh()
            except StateUnavailable:
                continue  # Redis is down: counted by the state's health
            except Exception:
                log.exception("refreshing budgets failed")

    async def stop(self) -> None:
        if not self.budgets:
            return
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self.refresh()  # land what waits, if the ledger is back
        except Exception:
            if self._pending:
                log.error("%d budget settles could not be written before shutdown",
                          len(self._pending))

    @property
    def pending(self) -> int:
        return len(self._pending)

    def status(self) -> list[dict[str, object]]:
        out = []
        for budget in self.budgets:
            kind, ident = self._scope(budget)
            account = self._account(budget)
            spent, reserved = self._known.get(account.key, (account.seed, 0))
            out.append({"scope": kind, "id": ident, "period": budget.period,
                        "limit_usd": budget.limit_usd, "spent_usd": round(spent / NANO, 9),
                        "reserved_usd": round(reserved / NANO, 9)})
        return out


class BudgetStage(Stage):
    """Reserve a request's worst-case cost before it goes on; release it when the request
    fails. The gateway settles it with the real cost when the request is recorded."""

    def __init__(self, guard: BudgetGuard, price: Price | None, *,
                 default_max_tokens: int) -> None:
        self.guard = guard
        self.price = price
        self.default_max_tokens = default_max_tokens

    def estimate_usd(self, call: Call) -> float:
        if self.price is None:
            return 0.0
        prompt, answer = estimate_tokens(call.endpoint, call.payload, self.default_max_tokens)
        return self.price.cost(prompt, answer)

    async def __call__(self, call: Call, call_next: Handler) -> Reply:
        ctx = call.ctx
        if self.price is None or not self.guard.applying(ctx.tenant_id, ctx.key_id):
            return await call_next(call)
        reservation = await self.guard.reserve(ctx.tenant_id, ctx.key_id,
                                               self.estimate_usd(call))
        ctx.budget = reservation
        try:
            return await call_next(call)
        except BaseException:
            ctx.budget = None
            # Shielded: a cancelled request must still give its reservation back.
            await asyncio.shield(self.guard.release(reservation))
            raise

