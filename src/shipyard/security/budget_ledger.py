"""Budget ledgers: spend and reservations per budget account, shared by every replica.

An *account* is one budget in one period ("tenant:acme:day:2026-05-01"). A request reserves
its estimated cost in every account that applies, all or nothing, in one atomic step; the
step refuses when `spent + reserved + estimate` would pass an account's limit. After the
answer the reservation is settled with the real cost (or released, for a failure). So the
accounts never promise more than their limit to requests in flight, whatever the number of
replicas and the concurrency; spend passes a limit only by what a request cost beyond its
own estimate.

Two ledgers, one contract:
- `RedisLedger`: one Lua script per operation (Redis runs each alone), hashes per account and
  a sorted set of reservations by expiry.
- `StoreLedger`: the store (PostgreSQL, or SQLite for one machine): a conditional `UPDATE ...
  WHERE spent + reserved + :amount <= :limit` per account in one transaction, accounts in a
  fixed order; PostgreSQL's row lock makes concurrent updates of one account take turns.

Amounts are integers in nano-USD (1e-9), so sums are exact. Reservations expire after
`ttl_s`, so a replica that crashed with requests in flight does not hold their estimates
forever.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import InterfaceError, OperationalError

from shipyard.errors import StateUnavailable
from shipyard.state.redis import RedisState
from shipyard.store.tables import budget_accounts, budget_reservations

__all__ = ["NANO", "Account", "Hold", "Ledger", "RedisLedger", "StoreLedger"]

T = TypeVar("T")

NANO = 1_000_000_000


@dataclass(frozen=True)
class Account:
    """One budget in one period, as the ledger sees it."""

    key: str  # "tenant:acme:day:2026-05-01"
    limit: int  # nano-USD
    soft: int  # nano-USD: the soft threshold (an alert, once per account)
    seed: int  # nano-USD spent before the ledger knew the account (from the stored traces)
    period_end: float  # epoch seconds; the ledger may forget the account after it


@dataclass(frozen=True)
class Hold:
    """The outcome of `reserve`: granted, or refused by the account at `refused`."""

    granted: bool
    refused: int  # index of the account that refused (-1 when granted)
    spent: tuple[int, ...]  # per account, as seen by the reservation
    reserved: tuple[int, ...]


@dataclass(frozen=True)
class Settled:
    spent: tuple[int, ...]  # per account, after the settle
    warn: tuple[bool, ...]  # the settle crossed the account's soft threshold first


class Ledger(Protocol):
    async def reserve(self, accounts: Sequence[Account], rid: str, amount: int,
                      ttl_s: float) -> Hold: ...

    async def settle(self, accounts: Sequence[Account], rid: str, held: int,
                     amount: int) -> Settled: ...

    async def totals(self, accounts: Sequence[Account]) -> list[tuple[int, int]]: ...

    async def sweep(self) -> int: ...


# KEYS: the accounts' hashes. ARGV: rid, amount, ttl ms, then per account: limit, seed,
# period end (epoch ms). Reservations: '<key>:h' (rid -> amount) and '<key>:z' (rid by expiry).
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rid = ARGV[1]
local amount = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local out = {1, 0}
for i, key in ipairs(KEYS) do
  local base = 3 + (i - 1) * 3
  local limit = tonumber(ARGV[base + 1])
  redis.call('HSETNX', key, 'spent', ARGV[base + 2])
  redis.call('HSETNX', key, 'reserved', '0')
  local stale = redis.call('ZRANGEBYSCORE', key .. ':z', '-inf', now, 'LIMIT', 0, 100)
  for _, old in ipairs(stale) do
    local held = tonumber(redis.call('HGET', key .. ':h', old) or '0')
    redis.call('HINCRBY', key, 'reserved', -held)
    redis.call('HDEL', key .. ':h', old)
    redis.call('ZREM', key .. ':z', old)
  end
  local spent = tonumber(redis.call('HGET', key, 'spent'))
  local reserved = tonumber(redis.call('HGET', key, 'reserved'))
  table.insert(out, spent)
  table.insert(out, reserved)
  if spent >= limit or spent + reserved + amount > limit then
    out[1] = 0
    out[2] = i
  end
end
if out[1] == 0 then return out end
for i, key in ipairs(KEYS) do
  local ends = ARGV[3 + (i - 1) * 3 + 3]
  redis.call('HINCRBY', key, 'reserved', amount)
  redis.call('HSET', key .. ':h', rid, amount)
  redis.call('ZADD', key .. ':z', now + ttl, rid)
  redis.call('PEXPIREAT', key, ends)
  redis.call('PEXPIREAT', key .. ':h', ends)
  redis.call('PEXPIREAT', key .. ':z', ends)
end
return out
"""

# KEYS: the accounts. ARGV: rid, amount, then per account: seed, soft, period end (epoch ms).
# Returns per account: spent after, and 1 when this settle crossed the soft threshold first.
_SETTLE = """
local rid = ARGV[1]
local amount = tonumber(ARGV[2])
local out = {}
for i, key in ipairs(KEYS) do
  local base = 2 + (i - 1) * 3
  redis.call('HSETNX', key, 'spent', ARGV[base + 1])
  redis.call('HSETNX', key, 'reserved', '0')
  local held = redis.call('HGET', key .. ':h', rid)
  if held then
    redis.call('HINCRBY', key, 'reserved', -tonumber(held))
    redis.call('HDEL', key .. ':h', rid)
    redis.call('ZREM', key .. ':z', rid)
  end
  local spent = redis.call('HINCRBY', key, 'spent', amount)
  local warn = 0
  if spent >= tonumber(ARGV[base + 2]) and redis.call('HSETNX', key, 'warned', '1') == 1 then
    warn = 1
  end
  redis.call('PEXPIREAT', key, ARGV[base + 3])
  table.insert(out, spent)
  table.insert(out, warn)
end
return out
"""


class RedisLedger:
    """Budgets in Redis: every operation is one Lua script, so it is atomic across replicas."""

    def __init__(self, state: RedisState) -> None:
        self.state = state
        self.prefix = state.prefix + "budget:"
        self._reserve = state.client.register_script(_RESERVE)
        self._settle = state.client.register_script(_SETTLE)

    async def reserve(self, accounts: Sequence[Account], rid: str, amount: int,
                      ttl_s: float) -> Hold:
        args: list[Any] = [rid, amount, int(ttl_s * 1000)]
        for a in accounts:
            args += [a.limit, a.seed, int(a.period_end * 1000)]
        keys = [self.prefix + a.key for a in accounts]
        out = await self.state.run(lambda: self._reserve(keys=keys, args=args),
                                   feature="budgets")
        values = [int(v) for v in out]
        return Hold(granted=values[0] == 1, refused=values[1] - 1,
                    spent=tuple(values[2::2]), reserved=tuple(values[3::2]))

    async def settle(self, accounts: Sequence[Account], rid: str, held: int,
                     amount: int) -> Settled:
        args: list[Any] = [rid, amount]
        for a in accounts:
            args += [a.seed, a.soft, int(a.period_end * 1000)]
        keys = [self.prefix + a.key for a in accounts]
        out = await self.state.run(lambda: self._settle(keys=keys, args=args),
                                   feature="budgets")
        values = [int(v) for v in out]
        return Settled(spent=tuple(values[0::2]), warn=tuple(v == 1 for v in values[1::2]))

    async def totals(self, accounts: Sequence[Account]) -> list[tuple[int, int]]:
        async def read() -> list[Any]:
            pipe = self.state.client.pipeline(transaction=False)
            for a in accounts:
                pipe.hmget(self.prefix + a.key, "spent", "reserved")
            return list(await pipe.execute())

        rows = await self.state.run(read, feature="budgets")
        return [(int(s) if s is not None else a.seed, int(r) if r is not None else 0)
                for a, (s, r) in zip(accounts, rows, strict=True)]

    async def sweep(self) -> int:
        return 0  # expired reservations are swept by the next reservation of their account


def _insert(engine: Engine) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING in the store's dialect."""
    if engine.dialect.name == "postgresql":
        return postgresql.insert(budget_accounts).on_conflict_do_nothing()
    return sqlite.insert(budget_accounts).on_conflict_do_nothing()


class StoreLedger:
    """Budgets in the store; synchronous SQL run in a worker thread by `BudgetGuard`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._insert = _insert(engine)
        self._exists: set[str] = set()  # accounts known to have a row (rows are never deleted)

    def _ensure(self, connection: Any, accounts: Sequence[Account]) -> list[str]:
        fresh = [a for a in accounts if a.key not in self._exists]
        if fresh:
            connection.execute(self._insert, [
                {"account": a.key, "spent_nusd": a.seed, "reserved_nusd": 0, "warned": False,
                 "period_end": datetime.fromtimestamp(a.period_end, UTC)} for a in fresh])
        return [a.key for a in fresh]

    def reserve_sync(self, accounts: Sequence[Account], rid: str, amount: int,
                     ttl_s: float) -> Hold:
        ordered = sorted(range(len(accounts)), key=lambda i: accounts[i].key)
        c = budget_accounts.c
        spent = [0] * len(accounts)
        reserved = [0] * len(accounts)
        with self.engine.begin() as connection:
            created = self._ensure(connection, [accounts[i] for i in ordered])
            # Writes first (SQLite: the write lock before any read); the reservation rows
            # go before the account rows are locked, so each lock is held for one round trip
            # to the commit. A refusal rolls all of it back.
            connection.execute(insert(budget_reservations), [
                {"id": rid, "account": a.key, "amount_nusd": amount,
                 "expires_at": time.time() + ttl_s} for a in accounts])
            for i in ordered:
                account = accounts[i]
                row = connection.execute(
                    update(budget_accounts)
                    .where(c.account == account.key)
                    .where(c.spent_nusd < account.limit)
                    .where(c.spent_nusd + c.reserved_nusd + amount <= account.limit)
                    .values(reserved_nusd=c.reserved_nusd + amount)
                    .returning(c.spent_nusd, c.reserved_nusd)).first()
                if row is None:
                    seen = self._read(connection, accounts)
                    connection.rollback()
                    return Hold(False, i, *seen)
                spent[i], reserved[i] = int(row[0]), int(row[1])
        self._exists.update(created)
        return Hold(True, -1, tuple(spent), tuple(reserved))

    def _read(self, connection: Any, accounts: Sequence[Account]
              ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        c = budget_accounts.c
        rows = {r.account: r for r in connection.execute(
            select(c.account, c.spent_nusd, c.reserved_nusd)
            .where(c.account.in_([a.key for a in accounts])))}
        spent = tuple(int(rows[a.key].spent_nusd) if a.key in rows else a.seed
                      for a in accounts)
        reserved = tuple(int(rows[a.key].reserved_nusd) if a.key in rows else 0
                         for a in accounts)
        return spent, reserved

    def settle_sync(self, accounts: Sequence[Account], rid: str, held: int,
                    amount: int) -> Settled:
        c = budget_accounts.c
        r = budget_reservations.c
        spent: dict[str, int] = {}
        warn: dict[str, bool] = {}
        with self.engine.begin() as connection:
            created = self._ensure(connection, sorted(accounts, key=lambda a: a.key))
            for account in sorted(accounts, key=lambda a: a.key):
                released = connection.execute(
                    delete(budget_reservations)
                    .where(r.id == rid).where(r.account == account.key)).rowcount
                row = connection.execute(
                    update(budget_accounts).where(c.account == account.key)
                    .values(spent_nusd=c.spent_nusd + amount,
                            reserved_nusd=c.reserved_nusd - (held if released else 0))
                    .returning(c.spent_nusd, c.warned)).one()
                spent[account.key] = int(row[0])
                warn[account.key] = False
                if not row[1] and row[0] >= account.soft:  # once per account, all replicas
                    warn[account.key] = bool(connection.execute(
                        update(budget_accounts).where(c.account == account.key)
                        .where(c.warned.is_(False)).values(warned=True)).rowcount)
        self._exists.update(created)
        return Settled(tuple(spent[a.key] for a in accounts),
                       tuple(warn[a.key] for a in accounts))

    def totals_sync(self, accounts: Sequence[Account]) -> list[tuple[int, int]]:
        with self.engine.connect() as connection:
            spent, reserved = self._read(connection, accounts)
        return list(zip(spent, reserved, strict=True))

    def sweep_sync(self) -> int:
        """Release the reservations of requests that never settled (a crashed replica)."""
        c = budget_accounts.c
        r = budget_reservations.c
        swept = 0
        with self.engine.begin() as connection:
            stale = connection.execute(
                select(r.id, r.account, r.amount_nusd).where(r.expires_at < time.time())
                .order_by(r.account).limit(1000)).all()
            for row in stale:
                gone = connection.execute(delete(budget_reservations).where(
                    r.id == row.id).where(r.account == row.account)).rowcount
                if gone:
                    connection.execute(update(budget_accounts).where(c.account == row.account)
                                       .values(reserved_nusd=c.reserved_nusd - row.amount_nusd))
                    swept += 1
        return swept

    # The async face of the ledger: the same calls in a worker thread; a store that cannot
    # be reached is a 503 with Retry-After for budgeted requests (fail closed), never a 500.
    async def reserve(self, accounts: Sequence[Account], rid: str, amount: int,
                      ttl_s: float) -> Hold:
        return await self._run(self.reserve_sync, accounts, rid, amount, ttl_s)

    async def settle(self, accounts: Sequence[Account], rid: str, held: int,
                     amount: int) -> Settled:
        return await self._run(self.settle_sync, accounts, rid, held, amount)

    async def totals(self, accounts: Sequence[Account]) -> list[tuple[int, int]]:
        return await self._run(self.totals_sync, accounts)

    async def sweep(self) -> int:
        return await self._run(self.sweep_sync)

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.to_thread(function, *args)
        except (OperationalError, InterfaceError) as exc:
            raise StateUnavailable(
                "Budgets cannot be checked: the store (store.url) is unreachable "
                f"({type(exc.orig).__name__ if exc.orig else type(exc).__name__}), and budgets "
                "fail closed while it is; retry after 2 s.",
                headers={"retry-after": "2"}) from None
