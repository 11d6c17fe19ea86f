"""The key cache: random key ids cost no store query of their own, a key created elsewhere is
found on its first use, and a store outage is bridged by the last known records."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest
from sqlalchemy import Engine, event

from shipyard.errors import StoreUnavailable
from shipyard.security.key_cache import KeyCache
from shipyard.security.lockout import FailureLimiter
from shipyard.store import create_store_engine, migrate
from shipyard.store import tenants as store


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = create_store_engine(f"sqlite:///{tmp_path}/keys.db")
    migrate(engine)
    store.create_tenant(engine, "acme")
    return engine


def _count_statements(engine: Engine) -> list[str]:
    seen: list[str] = []
    event.listen(engine, "before_cursor_execute",
                 lambda conn, cursor, statement, *rest: seen.append(statement))
    return seen


def test_a_flood_of_random_key_ids_costs_about_one_query_per_refresh(engine: Engine) -> None:
    store.create_key(engine, tenant_id="acme", name="k", role="client")
    statements = _count_statements(engine)
    cache = KeyCache(engine, refresh_s=0.2)

    async def flood() -> list[object]:
        return list(await asyncio.gather(*(cache.get(secrets.token_hex(6)) for _ in range(500))))

    assert asyncio.run(flood()) == [None] * 500
    assert len(statements) <= 2, statements  # the id set, once; not one query per id


def test_a_key_created_elsewhere_is_found_on_its_first_use(engine: Engine) -> None:
    cache = KeyCache(engine, refresh_s=0.2)

    async def scenario() -> None:
        assert await cache.get(secrets.token_hex(6)) is None  # loads the id set
        created, _ = store.create_key(engine, tenant_id="acme", name="new", role="client")
        found = await cache.get(created.id)  # waits for the next refresh, at most refresh_s
        assert found is not None and found.id == created.id

    asyncio.run(scenario())


def test_an_outage_is_bridged_by_last_known_records_for_the_grace_period(
        engine: Engine, tmp_path: Path) -> None:
    used, _ = store.create_key(engine, tenant_id="acme", name="used", role="client")
    revoked, _ = store.create_key(engine, tenant_id="acme", name="revoked", role="client")
    store.revoke_key(engine, revoked.id, tenant_id="acme")
    never, _ = store.create_key(engine, tenant_id="acme", name="never", role="client")
    now = [1000.0]
    cache = KeyCache(engine, cache_s=5, outage_grace_s=60, retry_s=2, clock=lambda: now[0])

    async def scenario() -> None:
        assert (await cache.get(used.id)) is not None
        assert (await cache.get(revoked.id)).status() == "revoked"  # type: ignore[union-attr]

        def refuse(*args: object) -> None:
            raise OSError("connection refused (the test's outage)")

        event.listen(engine, "do_connect", refuse)
        engine.dispose()  # pooled connections go; new ones are refused
        now[0] += 30  # past cache_s, within the grace
        assert (await cache.get(used.id)) == (await cache.get(used.id)) is not None
        assert (await cache.get(revoked.id)).status() == "revoked"  # type: ignore[union-attr]
        with pytest.raises(StoreUnavailable) as raised:
            await cache.get(never.id)
        assert raised.value.status == 503 and raised.value.headers["retry-after"] == "2"
        now[0] += 60  # past the grace: only a final verdict (revoked) still counts
        with pytest.raises(StoreUnavailable):
            await cache.get(used.id)
        assert (await cache.get(revoked.id)).status() == "revoked"  # type: ignore[union-attr]
        event.remove(engine, "do_connect", refuse)
        now[0] += 3  # past retry_s: the store is probed again
        assert (await cache.get(never.id)) is not None
        assert (await cache.get(used.id)) is not None

    asyncio.run(scenario())


def test_the_failure_limiter_locks_refills_and_spares_known_clients() -> None:
    now = [0.0]
    limiter = FailureLimiter(per_address=3, per_key=5, window_s=60, known_good_s=600,
                             clock=lambda: now[0])
    limiter.succeed("10.0.0.1", b"good")
    assert [limiter.fail("10.0.0.1", None) for _ in range(3)] == [[], [], [
        ("address", "10.0.0.1")]]
    assert limiter.locked("10.0.0.1", None) == pytest.approx(20.0)  # one token per 20 s
    assert limiter.locked("10.0.0.2", None) == 0
    assert limiter.known("10.0.0.1", b"good") and not limiter.known("10.0.0.1", b"other")
    now[0] += 20
    assert limiter.locked("10.0.0.1", None) == 0
    assert limiter.fail("10.0.0.1", None) == []  # locked again, but reported only once
    assert limiter.locked("10.0.0.1", None) > 0
    for i in range(5):
        limiter.fail(f"10.1.0.{i}", "key1")
    assert limiter.locked("10.9.9.9", "key1") > 0 and limiter.locked("10.9.9.9", "key2") == 0


def test_the_failure_limiter_is_bounded() -> None:
    limiter = FailureLimiter(per_address=2, per_key=2, window_s=60, max_tracked=100)
    for i in range(10_000):
        limiter.fail(f"10.{i // 256}.{i % 256}.1", None)
    assert len(limiter._addresses._state) <= 100
