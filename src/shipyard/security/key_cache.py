"""What a gateway knows about stored API keys, so the hot path rarely needs the store.

Three things live here:
- **records**, read from the store and used for `cache_s` seconds (a revocation made through
  another gateway or the CLI applies within that time);
- **the set of key ids that exist**, loaded once and refreshed incrementally: a key id that is
  not in it costs no query of its own. Lookups of unknown ids share one refresh, at most one
  per `refresh_s`, so a flood of random ids reaches the store about once a second while a key
  created a moment ago on another replica is found on its first use;
- **outage grace**: when the store cannot be reached, a key is checked against its last known
  record if that was read at most `outage_grace_s` ago (a revocation or expiry seen before
  stays in force); any other key gets `StoreUnavailable` (503 with Retry-After), never a 500.

>>> cache = KeyCache(engine)  # doctest: +SKIP
>>> record = await cache.get("ab12cd34ef56")  # None: no such key  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

from shipyard.errors import NotFound, StoreUnavailable
from shipyard.store.tenants import KeyRecord, api_keys, get_key

__all__ = ["KeyCache"]

log = logging.getLogger("shipyard.security")

# Keys created this long before the newest one seen are read again at each refresh: replicas'
# clocks differ, and a key's row becomes visible only when its transaction commits.
_OVERLAP = timedelta(minutes=5)
_STORE_ERRORS = (SQLAlchemyError, OSError, TimeoutError)
T = TypeVar("T")


@dataclass(frozen=True)
class _Entry:
    fetched: float  # clock() when the record was read from the store
    record: KeyRecord | None


class KeyCache:
    """Key records and key ids, cached, with a bounded grace period through store outages."""

    def __init__(self, engine: Engine, *, cache_s: float = 5.0, outage_grace_s: float = 900.0,
                 refresh_s: float = 1.0, retry_s: float = 2.0, lookup_timeout_s: float = 3.0,
                 max_entries: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.cache_s = cache_s
        self.outage_grace_s = outage_grace_s
        self.refresh_s = refresh_s
        self.retry_s = retry_s
        self.lookup_timeout_s = lookup_timeout_s
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._ids: set[str] | None = None
        self._newest: datetime | None = None
        self._ids_at = -math.inf
        self._refresh: asyncio.Task[None] | None = None
        self._reads: dict[str, asyncio.Task[_Entry]] = {}
        self._down_until = -math.inf
        self.stale_served = 0  # answers given from a record older than cache_s (store down)
        self.queries = 0  # statements sent to the store (for tests and the benchmark)

    # -- the public surface -------------------------------------------------------------------
    async def get(self, key_id: str) -> KeyRecord | None:
        """The key's record, or None when no key has this id; `StoreUnavailable` when the
        store cannot say and no record recent enough is known."""
        now = self._clock()
        entry = self._entries.get(key_id)
        if entry is not None and now - entry.fetched <= self.cache_s:
            return entry.record
        if now < self._down_until:
            return self._stale(key_id, entry, now)
        try:
            if not await self._exists(key_id):
                return None
            return (await self._read(key_id)).record
        except _STORE_ERRORS as exc:
            self._mark_down(exc)
            return self._stale(key_id, entry, now)

    def remember(self, record: KeyRecord) -> None:
        """A record this process just wrote (created, revoked, rotated): use it at once."""
        self._put(record.id, _Entry(self._clock(), record))
        if self._ids is not None:
            self._ids.add(record.id)

    def peek(self, key_id: str) -> KeyRecord | None:
        """The cached record, however old (no store query)."""
        entry = self._entries.get(key_id)
        return entry.record if entry is not None else None

    def forget(self, key_id: str) -> None:
        self._entries.pop(key_id, None)

    @property
    def store_down(self) -> bool:
        return self._clock() < self._down_until

    # -- the store ----------------------------------------------------------------------------
    def _mark_down(self, exc: BaseException) -> None:
        if not self.store_down:
            log.warning("the key store cannot be reached (%s); checking keys against their "
                        "last known records (auth.outage_grace_s=%gs) and probing again every "
                        "%gs", type(exc).__name__, self.outage_grace_s, self.retry_s)
        self._down_until = self._clock() + self.retry_s

    def _stale(self, key_id: str, entry: _Entry | None, now: float) -> KeyRecord | None:
        if entry is None:
            pass
        elif now - entry.fetched <= self.outage_grace_s:
            self.stale_served += 1
            return entry.record
        elif entry.record is not None and entry.record.status() != "active":
            return entry.record  # revoked or expired is final, however old the record
        raise StoreUnavailable(
            "The key store cannot be reached right now, so this API key cannot be checked; "
            "retry in a few seconds.",
            headers={"retry-after": str(max(1, math.ceil(self.retry_s)))})

    async def _exists(self, key_id: str) -> bool:
        if self._ids is not None and key_id in self._ids:
            return True
        if self._refresh is None:
            wait = self._ids_at + self.refresh_s - self._clock() if self._ids is not None else 0
            self._refresh = asyncio.get_running_loop().create_task(self._refresh_ids(wait))
            self._refresh.add_done_callback(_retrieve)
        await self._bounded(asyncio.shield(self._refresh))
        return self._ids is not None and key_id in self._ids

    async def _refresh_ids(self, wait: float) -> None:
        try:
            if wait > 0:
                await asyncio.sleep(wait)  # one refresh per refresh_s, shared by every waiter
            since = self._newest - _OVERLAP if self._newest is not None else None
            rows = await asyncio.to_thread(self._key_ids, since)
            ids = self._ids if self._ids is not None and since is not None else set()
            for key_id, created in rows:
                ids.add(key_id)
                if created is not None and (self._newest is None or created > self._newest):
                    self._newest = created
            self._ids = ids
            self._ids_at = self._clock()
        finally:
            self._refresh = None

    def _key_ids(self, since: datetime | None) -> list[tuple[str, datetime | None]]:
        self.queries += 1
        query = select(api_keys.c.id, api_keys.c.created_at)
        if since is not None:
            query = query.where(api_keys.c.created_at >= since)
        with self.engine.connect() as connection:
            return [(row[0], row[1]) for row in connection.execute(query)]

    async def _read(self, key_id: str) -> _Entry:
        task = self._reads.get(key_id)
        if task is None:  # concurrent requests with one key share one query
            task = asyncio.get_running_loop().create_task(self._read_one(key_id))
            self._reads[key_id] = task
            task.add_done_callback(lambda _: self._reads.pop(key_id, None))
            task.add_done_callback(_retrieve)
        return await self._bounded(asyncio.shield(task))

    async def _read_one(self, key_id: str) -> _Entry:
        self.queries += 1
        try:
            record: KeyRecord | None = await asyncio.to_thread(
                get_key, self.engine, key_id, tenant_id=None)
        except NotFound:
            record = None
        entry = _Entry(self._clock(), record)
        if record is not None:
            self._put(key_id, entry)
        return entry

    async def _bounded(self, waiting: asyncio.Future[T]) -> T:
        """A store that hangs (a black-holed connection) counts as down after a few seconds."""
        try:
            return await asyncio.wait_for(waiting, self.lookup_timeout_s)
        except TimeoutError:
            raise TimeoutError(f"the key store did not answer within "
                               f"{self.lookup_timeout_s:g}s") from None

    def _put(self, key_id: str, entry: _Entry) -> None:
        if key_id not in self._entries and len(self._entries) >= self.max_entries:
            for oldest in list(self._entries)[: max(1, self.max_entries // 10)]:
                del self._entries[oldest]
        self._entries[key_id] = entry


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Waiters may have given up (timeout): the task's error is theirs, not a loop warning."""
    if not task.cancelled():
        task.exception()
