"""Retention on SQLite and PostgreSQL: payloads cleared and traces (with their spans) deleted
in small batches, per-tenant overrides, a dry run, no harm to concurrent writes, the gateway's
background purge and `shipyard traces purge`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from conftest import API_KEY, Proc, gateway_config
from shipyard.config.traces import RetentionConfig, TenantRetention
from shipyard.store import TraceWriter, create_store_engine, migrate, new_trace_record, purge
from shipyard.store.tables import spans, traces

NOW = datetime.now(UTC)


def record(tenant: str, age_days: float, **extra: Any) -> dict[str, Any]:
    trace_id = uuid.uuid4().hex
    row = new_trace_record(id=trace_id, trace_id=trace_id, tenant_id=tenant, route="chat",
                           status=200, capture="full", request_body="question",
                           response_body="answer", started_at=NOW - timedelta(days=age_days),
                           ended_at=NOW - timedelta(days=age_days), **extra)
    # Two spans, as the gateway hands them to the writer (perf_counter times, t0).
    row["spans"] = [(uuid.uuid4().hex[:16], None, "chat", 10.0, 10.5, None, None),
                    (uuid.uuid4().hex[:16], None, "upstream", 10.1, 10.4, None, {"a": 1})]
    row["spans_t0"] = 10.0
    return row


def write(engine: Engine, rows: list[dict[str, Any]]) -> None:
    writer = TraceWriter(engine, flush_interval_s=0.02)
    writer.start()
    for row in rows:
        assert writer.submit(row)
    writer.stop()
    assert writer.written == len(rows) and writer.lost == 0


def state(engine: Engine) -> dict[tuple[str, int], list[tuple[str, Any, Any]]]:
    """(tenant, age in whole days) -> [(capture, request_body, span records)]"""
    out: dict[tuple[str, int], list[tuple[str, Any, Any]]] = {}
    with engine.connect() as connection:
        span_counts = dict(connection.execute(
            select(spans.c.record_id, func.count()).group_by(spans.c.record_id)).all())
        for row in connection.execute(select(traces)).mappings():
            started = row["started_at"]
            if started.tzinfo is None:
                started = started.replace(tzinfo=UTC)
            age = round((NOW - started).total_seconds() / 86400)
            out.setdefault((row["tenant_id"], age), []).append(
                (row["capture"], row["request_body"], span_counts.get(row["id"], 0)))
    return out


def test_purge_payloads_then_traces_per_tenant(store_url: str) -> None:
    engine = create_store_engine(store_url)
    migrate(engine)
    write(engine, [record(tenant, age) for tenant in ("default", "acme")
                   for age in (40, 10, 1) for _ in range(5)])
    policy = RetentionConfig(days=30, payload_days=7,
                             tenants=[TenantRetention(tenant="acme", days=60)])
    before = state(engine)

    dry = purge(engine, policy, dry_run=True)
    assert (dry.traces, dry.spans, dry.payloads) == (5, 5, 20)
    assert state(engine) == before  # a dry run changes nothing

    done = purge(engine, policy, batch_size=2, pause_s=0)
    assert (done.traces, done.spans, done.payloads) == (5, 5, 20)
    after = state(engine)
    assert ("default", 40) not in after  # deleted, spans too
    cleared = [("expired", None, 1)] * 5
    assert after[("default", 10)] == cleared
    assert after[("acme", 40)] == cleared  # acme keeps traces 60 days, payloads 7
    assert after[("acme", 10)] == cleared
    assert after[("default", 1)] == after[("acme", 1)] == [("full", "question", 1)] * 5
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(spans)).scalar_one() == 25

    again = purge(engine, policy)
    assert (again.traces, again.spans, again.payloads) == (0, 0, 0)
    engine.dispose()


def test_purge_does_not_block_concurrent_writes(store_url: str) -> None:
    engine = create_store_engine(store_url)
    migrate(engine)
    write(engine, [record("default", 40) for _ in range(1500)])
    writer = TraceWriter(engine, flush_interval_s=0.01, batch_size=50)
    writer.start()
    fresh = [record("default", 0) for _ in range(1500)]
    result: dict[str, Any] = {}

    def run_purge() -> None:
        result["purge"] = purge(engine, RetentionConfig(days=30), batch_size=100)

    purger = threading.Thread(target=run_purge)
    purger.start()
    for i, row in enumerate(fresh):
        assert writer.submit(row)
        if i % 50 == 0:
            time.sleep(0.002)
    purger.join(60)
    writer.stop()
    assert result["purge"].traces == 1500
    assert writer.written == 1500 and writer.lost == 0 and writer.dropped == 0
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(traces)).scalar_one() == 1500
    engine.dispose()


def test_cli_purge_dry_run_and_apply(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    engine = create_store_engine(url)
    migrate(engine)
    write(engine, [record("default", 40), record("default", 10), record("default", 1)])
    engine.dispose()

    def cli(*args: str) -> dict[str, Any]:
        done = subprocess.run([sys.executable, "-m", "shipyard", "traces", "purge",
                               "--store-url", url, "--json", *args], capture_output=True,
                              text=True, check=False, env={**os.environ, "COLUMNS": "200"})
        assert done.returncode == 0, done.stderr
        parsed: dict[str, Any] = json.loads(done.stdout)
        return parsed

    dry = cli("--dry-run", "--days", "30", "--payload-days", "7")
    assert (dry["dry_run"], dry["traces"], dry["spans"], dry["payloads"]) == (True, 1, 1, 2)
    done = cli("--days", "30", "--payload-days", "7")
    assert (done["traces"], done["payloads"]) == (1, 2)
    assert cli("--days", "30")["traces"] == 0

    nothing = subprocess.run([sys.executable, "-m", "shipyard", "traces", "purge",
                              "--store-url", url], capture_output=True, text=True, check=False)
    assert nothing.returncode == 1 and "No retention is configured" in nothing.stderr
    negative = subprocess.run([sys.executable, "-m", "shipyard", "traces", "purge",
                               "--store-url", url, "--days", "-1"], capture_output=True,
                              text=True, check=False)
    assert negative.returncode != 0 and "--days" in negative.stderr


def test_gateway_purges_in_the_background(start_gateway: Callable[..., Proc],
                                          tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    engine = create_store_engine(url)
    migrate(engine)
    old = record("default", 3)
    write(engine, [old])
    extra = "  retention: {days: 1, interval_s: 1}"
    config = gateway_config(None, url).replace("  flush_interval_s: 0.05",
                                               "  flush_interval_s: 0.05\n" + extra)
    gateway = start_gateway(config)
    deadline = time.monotonic() + 20
    remaining = 1
    while time.monotonic() < deadline and remaining:
        with engine.connect() as connection:
            remaining = connection.execute(
                select(func.count()).select_from(traces).where(traces.c.id == old["id"])
            ).scalar_one()
        time.sleep(0.2)
    engine.dispose()
    assert remaining == 0
    request = urllib.request.Request(f"{gateway.url}/metrics",
                                     headers={"authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        text = response.read().decode()
    assert 'shipyard_traces_purged_total{kind="traces"} 1.0' in text
