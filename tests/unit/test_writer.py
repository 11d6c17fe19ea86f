"""`shipyard.store.writer.TraceWriter` on a temporary SQLite store."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from sqlalchemy import Engine

from shipyard.store import create_store_engine, migrate, new_trace_record
from shipyard.store.journal import Journal
from shipyard.store.spool import Spool
from shipyard.store.traces import count_traces, get_trace
from shipyard.store.writer import TraceWriter


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_store_engine(f"sqlite:///{tmp_path}/store.db")
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def unmigrated(tmp_path: Path) -> Iterator[Engine]:
    """A store that answers but has no tables: every write fails."""
    engine = create_store_engine(f"sqlite:///{tmp_path}/empty.db")
    yield engine
    engine.dispose()


def wait_for(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_every_submitted_trace_is_written_after_stop(engine: Engine) -> None:
    written: list[int] = []
    writer = TraceWriter(engine, batch_size=64, flush_interval_s=0.05, on_write=written.append)
    writer.start()
    records = [new_trace_record(route="chat", status=200, request_id=f"r-{i}")
               for i in range(1000)]
    assert all(writer.submit(r) for r in records)
    writer.stop()

    assert count_traces(engine) == 1000
    assert writer.written == sum(written) == 1000
    assert max(written) <= 64  # written in batches
    assert (writer.dropped, writer.lost, writer.failures) == (0, 0, 0)
    row = get_trace(engine, "r-999")
    assert row is not None
    assert row["id"] == records[999]["id"]
    assert row["status"] == 200


def test_stop_flushes_without_waiting_for_the_interval(engine: Engine) -> None:
    writer = TraceWriter(engine, flush_interval_s=30.0)
    writer.start()
    for _ in range(10):
        writer.submit(new_trace_record(route="chat", status=200))
    started = time.monotonic()
    writer.stop()
    assert time.monotonic() - started < 5.0
    assert count_traces(engine) == 10


def test_traces_are_written_while_running(engine: Engine) -> None:
    writer = TraceWriter(engine, flush_interval_s=0.02)
    writer.start()
    try:
        writer.submit(new_trace_record(route="chat", status=200))
        wait_for(lambda: count_traces(engine) == 1)
    finally:
        writer.stop()


def test_full_queue_counts_drops(engine: Engine) -> None:
    drops: list[int] = []
    writer = TraceWriter(engine, queue_size=3, on_drop=drops.append)  # never started

    results = [writer.submit(new_trace_record(route="chat")) for _ in range(10)]

    assert results == [True] * 3 + [False] * 7
    assert writer.dropped == 7
    assert drops == [1] * 7
    assert writer.depth == 3
    writer.stop()  # not started: a no-op
    assert count_traces(engine) == 0


def test_failed_store_at_shutdown_counts_lost_traces(unmigrated: Engine) -> None:
    writer = TraceWriter(unmigrated, flush_interval_s=0.01)
    writer.start()
    for _ in range(5):
        writer.submit(new_trace_record(route="chat", status=200))
    wait_for(lambda: writer.failures >= 1)  # the batch is being retried
    started = time.monotonic()
    writer.stop(timeout=10)

    assert time.monotonic() - started < 5.0
    assert writer.lost == 5
    assert writer.written == 0
    assert writer.depth == 0


# -- the durable journal (traces.durable) -------------------------------------------------
def _journal_lines(folder: Path) -> list[bytes]:
    return [line for p in folder.glob("*.journal") for line in p.read_bytes().splitlines()]


def test_a_durable_record_is_on_disk_when_submit_returns(engine: Engine, tmp_path: Path) -> None:
    folder = tmp_path / "spool"
    writer = TraceWriter(engine, flush_interval_s=30, journal=Journal(folder),
                         spool=Spool(folder, max_bytes=10**8))
    writer.start()
    try:
        record = new_trace_record(route="chat", status=200, request_id="durable-1")
        assert writer.submit(record, durable=True)
        # No flush yet (30 s interval): the record is only in memory and in the journal file.
        assert count_traces(engine) == 0
        assert any(record["id"].encode() in line for line in _journal_lines(folder))
        plain = new_trace_record(route="chat", status=200, request_id="plain-1")
        writer.submit(plain)
        assert not any(plain["id"].encode() in line for line in _journal_lines(folder))
    finally:
        writer.stop()
    assert count_traces(engine) == 2
    assert _journal_lines(folder) == []  # written: the segment is gone


def test_journal_segments_of_a_dead_process_are_replayed_once(engine: Engine,
                                                              tmp_path: Path) -> None:
    folder = tmp_path / "spool"
    folder.mkdir()
    dead = 2**22 + 12345  # above pid_max's default range: no such process
    records = [new_trace_record(route="chat", status=200, request_id=f"orphan-{i}")
               for i in range(50)]
    segment = folder / f"{time.time_ns():020d}-{dead}-00000000.journal"
    segment.write_bytes(b"".join(orjson.dumps(r, option=orjson.OPT_NON_STR_KEYS) + b"\n"
                                 for r in records)
                        + b'{"id": "cut-by-the-k')  # the kill cut the last append short
    early = TraceWriter(engine)  # the first 10 were written before the kill
    early.start()
    for r in records[:10]:
        early.submit(dict(r))
    early.stop()
    writer = TraceWriter(engine, flush_interval_s=0.05, journal=Journal(folder),
                         spool=Spool(folder, max_bytes=10**8))
    writer.start()
    try:
        wait_for(lambda: count_traces(engine) == 50)
    finally:
        writer.stop()
    assert count_traces(engine) == 50  # no duplicates, nothing lost
    assert not list(folder.glob("*.journal")) and not list(folder.glob("*.jsonl"))


def test_durable_records_beyond_the_queue_are_read_back_from_the_journal(
        engine: Engine, tmp_path: Path) -> None:
    folder = tmp_path / "spool"
    writer = TraceWriter(engine, queue_size=100, batch_size=50, flush_interval_s=30,
                         journal=Journal(folder), spool=Spool(folder, max_bytes=10**8))
    writer.start()
    try:
        for i in range(500):
            assert writer.submit(new_trace_record(route="chat", status=200,
                                                  request_id=f"d-{i}"), durable=True)
    finally:
        writer.stop()
    assert count_traces(engine) == 500
    assert writer.dropped == 0
