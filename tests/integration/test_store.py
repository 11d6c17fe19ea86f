"""The store on both backends: migrations from empty, the batched writer, reads and filters."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from sqlalchemy import inspect

from shipyard.store import (
    TraceFilter,
    TraceWriter,
    create_store_engine,
    get_trace,
    iter_traces,
    migrate,
    new_trace_record,
)
from shipyard.store.engine import current_revision, downgrade, head_revision
from shipyard.store.traces import count_traces


def test_migrations_run_from_empty(store_url: str) -> None:
    engine = create_store_engine(store_url)
    try:
        assert current_revision(engine) is None
        migrate(engine)
        assert current_revision(engine) == head_revision()
        columns = {c["name"] for c in inspect(engine).get_columns("traces")}
        assert {"tenant_id", "key_id", "ttft_ms", "tokens_estimated", "capture"} <= columns
        indexes = {i["name"] for i in inspect(engine).get_indexes("traces")}
        assert "ix_traces_tenant_id_started_at" in indexes
        migrate(engine)  # idempotent
        downgrade(engine, "base")  # and reversible
        assert "traces" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_writer_keeps_every_trace(store_url: str) -> None:
    engine = create_store_engine(store_url)
    migrate(engine)
    writer = TraceWriter(engine, queue_size=50_000, batch_size=200, flush_interval_s=0.05)
    writer.start()
    producers = [
        threading.Thread(target=lambda p=p: [
            writer.submit(new_trace_record(route="chat", status=200, request_id=f"{p}-{i}",
                                           service="svc", total_ms=1.0))
            for i in range(1000)])
        for p in range(4)
    ]
    for thread in producers:
        thread.start()
    for thread in producers:
        thread.join()
    writer.stop()
    try:
        assert writer.dropped == 0 and writer.lost == 0
        assert count_traces(engine) == 4000 == writer.written
    finally:
        engine.dispose()


def test_reads_and_filters(store_url: str) -> None:
    engine = create_store_engine(store_url)
    migrate(engine)
    writer = TraceWriter(engine, flush_interval_s=0.01)
    writer.start()
    now = datetime.now(UTC)
    for i in range(30):
        writer.submit(new_trace_record(
            route="chat", request_id=f"r{i}", service="a" if i % 2 else "b",
            status=500 if i % 10 == 0 else 200, started_at=now - timedelta(minutes=i),
            ended_at=now - timedelta(minutes=i), total_ms=float(i),
            error_message="boom needle" if i == 20 else None))
    writer.stop()
    try:
        newest = list(iter_traces(engine, limit=3))
        assert [r["request_id"] for r in newest] == ["r0", "r1", "r2"]
        assert newest[0]["started_at"].tzinfo is not None
        assert len(list(iter_traces(engine, TraceFilter(service="a"), limit=None))) == 15
        errors = list(iter_traces(engine, TraceFilter(errors_only=True), limit=None))
        assert sorted(r["request_id"] for r in errors) == ["r0", "r10", "r20"]
        recent = TraceFilter(since=now - timedelta(minutes=4, seconds=30))
        assert len(list(iter_traces(engine, recent, limit=None))) == 5
        assert [r["request_id"] for r in iter_traces(engine, TraceFilter(text="needle"))] == [
            "r20"]
        row = get_trace(engine, "r7")
        assert row is not None and get_trace(engine, row["id"]) == row
        assert get_trace(engine, "r7", tenant_id="someone-else") is None
        oldest = list(iter_traces(engine, limit=2, newest_first=False))
        assert [r["request_id"] for r in oldest] == ["r29", "r28"]
    finally:
        engine.dispose()


def test_rows_the_store_cannot_hold_are_cleaned_not_fatal(store_url: str) -> None:
    engine = create_store_engine(store_url)
    migrate(engine)
    writer = TraceWriter(engine, flush_interval_s=0.01)
    writer.start()
    good = [new_trace_record(route="chat", status=200, request_id=f"ok-{i}", total_ms=1.0)
            for i in range(5)]
    bad = new_trace_record(route="chat", status=400, request_id="nul",
                           error_message="model 'a\x00b' does not exist", total_ms=1.0,
                           service="s" * 500)
    for record in [*good[:2], bad, *good[2:]]:
        writer.submit(record)
    writer.stop()
    try:
        assert writer.lost == 0 and writer.written == 6
        row = get_trace(engine, "nul")
        assert row is not None and count_traces(engine) == 6
        if engine.dialect.name == "postgresql":  # SQLite stores both as they are
            assert "\x00" not in row["error_message"] and len(row["service"]) <= 128
    finally:
        engine.dispose()
