"""The budget ledgers against real PostgreSQL, SQLite and Redis: reservations are atomic under
concurrency (several engines or clients standing in for replicas), settle replaces a hold by
the real cost, expired holds are swept, and the soft threshold fires once."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shipyard.config.security import BudgetConfig
from shipyard.errors import StateUnavailable
from shipyard.security.budget_ledger import NANO, Account, RedisLedger, StoreLedger
from shipyard.security.budgets import BudgetExceeded, BudgetGuard, Reservation
from shipyard.state.redis import RedisState
from shipyard.store import create_store_engine, migrate

LIMIT = 10 * NANO // 1000  # $0.01


def _account(key: str = "tenant:acme:day:2026-05-01", limit: int = LIMIT) -> Account:
    return Account(key=key, limit=limit, soft=limit // 2, seed=0, period_end=4_102_444_800.0)


@pytest.fixture(params=["sqlite", "postgres"])
def store_ledgers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[StoreLedger]]:
    """Three ledgers on three engines over one store: three replicas' views."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/store.db"
    else:
        url = str(request.getfixturevalue("postgres_url"))
    engines = [create_store_engine(url) for _ in range(3)]
    migrate(engines[0])
    yield [StoreLedger(e) for e in engines]
    for engine in engines:
        engine.dispose()


def test_store_ledger_never_promises_more_than_the_limit(
        store_ledgers: list[StoreLedger]) -> None:
    account = _account()
    amount = LIMIT // 37 + 1  # 37 holds fit... almost: the 37th does not
    granted: list[str] = []
    refused = 0
    lock = threading.Lock()

    def worker(ledger: StoreLedger, n: int, offset: int) -> None:
        nonlocal refused
        for i in range(n):
            rid = f"r{offset}-{i}"
            hold = ledger.reserve_sync([account], rid, amount, 60.0)
            with lock:
                if hold.granted:
                    granted.append(rid)
                else:
                    refused += 1
                    assert hold.refused == 0

    threads = [threading.Thread(target=worker, args=(store_ledgers[i % 3], 20, i))
               for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(granted) == LIMIT // amount == 36
    assert refused == 120 - 36
    spent, reserved = store_ledgers[0].totals_sync([account])[0]
    assert (spent, reserved) == (0, 36 * amount)
    # settle half with their real (smaller) cost, release the rest
    for rid in granted[:18]:
        store_ledgers[1].settle_sync([account], rid, amount, amount // 2)
    for rid in granted[18:]:
        store_ledgers[2].settle_sync([account], rid, amount, 0)
    assert store_ledgers[0].totals_sync([account])[0] == (18 * (amount // 2), 0)
    # settling twice does not release twice (the hold is gone), it only adds the cost
    store_ledgers[0].settle_sync([account], granted[0], amount, 0)
    assert store_ledgers[0].totals_sync([account])[0] == (18 * (amount // 2), 0)


def test_store_ledger_all_or_nothing_and_sweep(store_ledgers: list[StoreLedger]) -> None:
    tenant, key = _account(), _account("key:k1:day:2026-05-01", limit=LIMIT // 4)
    ledger = store_ledgers[0]
    assert ledger.reserve_sync([tenant, key], "a", LIMIT // 5, 60.0).granted
    refused = ledger.reserve_sync([tenant, key], "b", LIMIT // 5, 60.0)
    assert not refused.granted and refused.refused == 1  # the key's budget refused...
    assert ledger.totals_sync([tenant])[0] == (0, LIMIT // 5)  # ...and the tenant kept nothing
    # a hold whose request never settles (its replica crashed) expires and is swept
    assert ledger.reserve_sync([tenant], "lost", LIMIT // 2, -1.0).granted
    assert ledger.sweep_sync() == 1
    assert ledger.totals_sync([tenant])[0] == (0, LIMIT // 5)


def test_store_ledger_warns_once_at_the_soft_threshold(store_ledgers: list[StoreLedger]) -> None:
    account = _account()
    warns = []
    for i, ledger in enumerate(store_ledgers * 2):
        assert ledger.reserve_sync([account], f"w{i}", LIMIT // 8, 60.0).granted
        warns += ledger.settle_sync([account], f"w{i}", LIMIT // 8, LIMIT // 8).warn
    assert warns == [False, False, False, True, False, False]


def test_redis_ledger_never_promises_more_than_the_limit(redis_prefix: str) -> None:
    async def run() -> None:
        states = [RedisState("redis://127.0.0.1:6379/0", prefix=redis_prefix)
                  for _ in range(3)]
        ledgers = [RedisLedger(s) for s in states]
        account = _account()
        amount = LIMIT // 37 + 1
        holds = await asyncio.gather(*(
            ledgers[i % 3].reserve([account], f"r{i}", amount, 60.0) for i in range(300)))
        granted = [f"r{i}" for i, h in enumerate(holds) if h.granted]
        assert len(granted) == 36
        assert await ledgers[0].totals([account]) == [(0, 36 * amount)]
        done = await asyncio.gather(*(
            ledgers[i % 3].settle([account], rid, amount, amount * 3 // 4)
            for i, rid in enumerate(granted)))
        assert await ledgers[1].totals([account]) == [(36 * (amount * 3 // 4), 0)]
        assert sum(w for d in done for w in d.warn) == 1  # soft threshold: once
        # all or nothing across accounts, and expired holds are swept by the next reserve
        key = _account("key:k1:day:2026-05-01", limit=LIMIT)
        assert not (await ledgers[0].reserve([key, account], "big", LIMIT, 60.0)).granted
        assert await ledgers[0].totals([key]) == [(0, 0)]
        assert (await ledgers[0].reserve([key], "lost", LIMIT, 0.001)).granted
        await asyncio.sleep(0.01)
        assert (await ledgers[0].reserve([key], "next", LIMIT, 60.0)).granted
        for state in states:
            await state.close()

    asyncio.run(run())


def test_redis_ledger_outage_is_a_503_not_a_500() -> None:
    async def run() -> None:
        state = RedisState("redis://127.0.0.1:1/0", timeout_s=0.2)  # nothing listens on :1
        ledger = RedisLedger(state)
        with pytest.raises(StateUnavailable) as raised:
            await ledger.reserve([_account()], "x", 1, 60.0)
        assert raised.value.status == 503 and raised.value.headers["retry-after"] == "2"
        assert "budgets fail closed" in raised.value.message
        assert not state.health.up
        await state.close()

    asyncio.run(run())


def test_the_guard_reserves_settles_and_refuses(
        tmp_path: Path) -> None:
    engine = create_store_engine(f"sqlite:///{tmp_path}/store.db")
    migrate(engine)
    alerts: list[Any] = []
    budget = BudgetConfig(tenant="acme", period="day", limit_usd=0.01, soft_ratio=0.5)
    ledger = StoreLedger(engine)

    async def run() -> None:
        guard = BudgetGuard([budget], ledger, engine=engine,
                            on_soft=lambda b, spent: alerts.append(spent))
        await guard.start()
        assert await guard.reserve("other", None, 1.0) is None  # no budget applies
        held = await guard.reserve("acme", "k", 0.004)
        assert isinstance(held, Reservation) and held.amount == 4 * NANO // 1000
        with pytest.raises(BudgetExceeded) as refused:
            await guard.reserve("acme", "k", 0.007)
        message = refused.value.message
        assert "daily budget of tenant 'acme' ($0.01) cannot cover this request" in message
        assert "$0.004 is held" in message and "up to $0.007" in message
        await guard.settle(held, 0.006)
        assert alerts == [pytest.approx(0.006)]
        held = await guard.reserve("acme", "k", 0.004)
        await guard.settle(held, 0.004)
        await guard.refresh()
        assert guard.status()[0]["spent_usd"] == pytest.approx(0.010)
        with pytest.raises(BudgetExceeded, match="is spent"):
            guard.check("acme", "k")
        await guard.stop()

    asyncio.run(run())
    engine.dispose()
