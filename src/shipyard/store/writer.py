"""The single batched trace writer: requests enqueue, one thread writes, nothing silently lost.

The hot path only calls `submit()` (an append to a bounded buffer; no lock, no wake-up). A
daemon thread drains the buffer every `flush_interval_s` (or as soon as a full batch is
waiting) in batches of up to `batch_size` rows, each written in one transaction. When the
buffer is full the record is counted in `dropped` (and the
`shipyard_trace_queue_dropped_total` metric) and a warning is logged; nothing is dropped
without a count. `stop()` flushes everything queued. If the store fails, batches go to the
on-disk spool (`store.spool`) and are replayed in order once it answers again; without a
spool, a batch is retried with backoff until it is written or the writer stops, when the
unwritten rows are counted as lost and logged. Records submitted with `durable=True` are also
appended to the journal (`store.journal`) before `submit` returns, so a killed process loses
none of them (see `traces.durable`).
"""

from __future__ import annotations

import logging
import operator
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine
from sqlalchemy.exc import DataError, IntegrityError

from shipyard.store.journal import Journal
from shipyard.store.rollups import aggregate, upsert
from shipyard.store.spool import Spool, revive
from shipyard.store.tables import spans, traces

__all__ = ["TraceWriter"]

log = logging.getLogger("shipyard.traces")


class TraceWriter:
    """Bounded buffer + one batched writer thread.

    >>> writer = TraceWriter(engine)  # doctest: +SKIP
    >>> writer.start(); writer.submit(new_trace_record(route="chat", status=200)); writer.stop()
    """

    def __init__(
        self,
        engine: Engine,
        *,
        queue_size: int = 10_000,
        batch_size: int = 500,
        flush_interval_s: float = 0.2,
        on_drop: Callable[[int], None] | None = None,
        on_write: Callable[[int], None] | None = None,
        spool: Spool | None = None,
        probe_interval_s: float = 2.0,
        journal: Journal | None = None,
    ) -> None:
        self.engine = engine
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        # A deque, not a queue.Queue: append/popleft are atomic and need no lock or
        # notification, so the hot path never wakes the writer thread (no GIL ping-pong).
        self._buffer: deque[dict[str, Any]] = deque()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._on_drop = on_drop
        self._on_write = on_write
        self._last_drop_log = 0.0
        self.spool = spool
        self.journal = journal
        self._journal_failed_at = -1e9
        self.probe_interval_s = probe_interval_s
        self._pick: Callable[[dict[str, Any]], tuple[Any, ...]] | None = None
        self._mark: str | None = None
        self._columns: list[str] = []
        self._rows_per_statement = 1
        self._sql_cache: dict[tuple[str, int], str] = {}
        self._store_down_until = 0.0
        self.written = 0
        self.dropped = 0
        self.lost = 0
        self.failures = 0

    @property
    def depth(self) -> int:
        return len(self._buffer)

    def spool_status(self) -> dict[str, int]:
        if self.spool is None:
            return {"spooled": 0, "replayed": 0, "spool_lost": 0, "spool_bytes": 0}
        return {"spooled": self.spool.spooled, "replayed": self.spool.replayed,
                "spool_lost": self.spool.lost, "spool_bytes": self.spool.bytes}

    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="shipyard-trace-writer",
                                            daemon=True)
            self._thread.start()

    def submit(self, record: dict[str, Any], *, durable: bool = False) -> bool:
        """Queue one trace; never blocks on the store. False (and counted) when the buffer is
        full. With `durable` (and a journal), the record is on disk when this returns."""
        if durable and self.journal is not None:
            try:
                with self.journal.lock:
                    self.journal.append(record)
                    if len(self._buffer) >= self.queue_size:
                        self.journal.overflowed = True  # on disk; read back from the segment
                        return True
                    self._buffer.append(record)
                if len(self._buffer) == self.batch_size:
                    self._wake.set()
                return True
            except OSError as exc:  # a full or broken disk: keep serving, say so
                now = time.monotonic()
                if now - self._journal_failed_at > 5.0:
                    self._journal_failed_at = now
                    log.error("appending to the trace journal in %s failed (%s); traces are "
                              "not durable until it works again", self.journal.folder, exc)
        depth = len(self._buffer)
        if depth >= self.queue_size:
            self._drop()
            return False
        self._buffer.append(record)
        if depth + 1 == self.batch_size:
            self._wake.set()  # a full batch is waiting: write it now
        return True

    def _drop(self) -> None:
        self.dropped += 1
        if self._on_drop is not None:
            self._on_drop(1)
        now = time.monotonic()
        if now - self._last_drop_log > 5.0:
            self._last_drop_log = now
            log.warning(
                "trace queue is full (%d queued); %d traces dropped so far. Raise "
                "traces.queue_size or check that the store keeps up.",
                self.queue_size,
                self.dropped,
            )

    def stop(self, timeout: float = 30.0) -> None:
        """Flush everything queued and stop the thread (waits up to `timeout` seconds)."""
        if self._thread is None:
            return
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("trace writer did not finish within %.0fs; %d traces still queued",
                      timeout, self.depth)
        self._thread = None

    def _run(self) -> None:
        if self.spool is not None:
            self.spool.recover_claims()
        self._recover_journal()
        while True:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            stopping = self._stopping
            self._replay()
            # Every record of the closed segment is in the buffer (or marked overflowed):
            # once the buffer is drained, the segment is no longer needed.
            segment = self.journal.rotate() if self.journal is not None else None
            lost = self._lost_so_far()
            self._drain(stopping)
            if segment is not None:
                self._settle(segment, lost, final=stopping)
            if stopping:
                if self.journal is not None and (last := self.journal.rotate()) is not None:
                    lost = self._lost_so_far()
                    self._drain(stopping)
                    self._settle(last, lost, final=True)
                self._replay()
                return

    def _drain(self, stopping: bool) -> None:
        while self._buffer:
            batch: list[dict[str, Any]] = []
            popleft = self._buffer.popleft
            try:
                for _ in range(self.batch_size):
                    batch.append(popleft())
            except IndexError:
                pass
            self._write(batch, final=stopping)

    def _lost_so_far(self) -> int:
        return self.lost + (self.spool.lost if self.spool is not None else 0)

    def _settle(self, segment: tuple[Path, bool], lost: int, *, final: bool) -> None:
        """A closed journal segment whose records were all written (or spooled): delete it.
        Records that overflowed the buffer are read back from it first. If some rows were
        lost meanwhile (no spool, or a full one), the segment stays for the next start."""
        path, overflowed = segment
        if overflowed:
            self._write([revive(r) for r in Journal.read(path)], final=final)
        if self._lost_so_far() > lost:
            log.error("some traces could not be written or spooled; their journal segment %s "
                      "is kept and replayed at the next start", path)
            return
        path.unlink(missing_ok=True)

    def _recover_journal(self) -> None:
        """Journal segments of processes that died are replayed (through the spool)."""
        if self.journal is None:
            return
        for path in self.journal.orphans():
            try:
                if self.spool is not None:
                    self.spool.folder.mkdir(parents=True, exist_ok=True)
                    path.rename(self.spool.folder / (path.name.removesuffix(".journal")
                                                     + ".jsonl"))
                else:
                    self._write([revive(r) for r in Journal.read(path)], final=False)
                    path.unlink(missing_ok=True)
            except FileNotFoundError:
                continue  # another worker took it
            log.warning("recovered the trace journal %s of a process that stopped without "
                        "flushing; its traces are replayed", path.name)

    def _store_down(self) -> bool:
        return time.monotonic() < self._store_down_until

    def _mark_down(self, exc: Exception, rows: int) -> None:
        self.failures += 1
        if not self._store_down():
            log.warning("writing %d traces failed (%s); spooling to disk until the store is "
                        "back", rows, type(exc).__name__)
        self._store_down_until = time.monotonic() + self.probe_interval_s

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        """Insert rows (and the spans they carry) in one transaction, with as few driver
        calls as possible.

        Two costs matter beside a busy event loop: SQLAlchemy's per-row, per-column bind
        processing (Python, under the GIL), and the GIL hand-off the driver makes around
        every statement execution — an `executemany` of 500 rows waits for the GIL 500
        times. So rows go in as multi-row `INSERT ... VALUES (...), (...)` statements of up
        to a few hundred rows, bound by the driver in C. Datetimes reach SQLite in
        SQLAlchemy's own storage format, so reads are unchanged. A record's spans (the
        `spans` key: lists from `shipyard.observe.tracing.span_rows`) go to the `spans` table,
        and the batch's per-minute rollups (`store.rollups`) are added in the same transaction.
        """
        pick = self._pick or self._prepare()
        rollups = aggregate(rows)
        # A `rollup_only` record (a shed request) is counted in the rollups, with no trace row:
        # under overload, refusing must cost far less than serving.
        kept = [row for row in rows if not row.get("rollup_only")]
        span_rows = _span_params(kept)
        with self.engine.begin() as connection:
            if self._mark is None:
                if kept:
                    connection.execute(traces.insert(), [
                        {c: row.get(c) for c in self._columns} for row in kept])
                if span_rows:
                    connection.execute(spans.insert(), [
                        dict(zip(_SPAN_COLUMNS, values, strict=True)) for values in span_rows])
                upsert(connection, rollups)
                return
            if kept:
                self._insert_many(connection, "traces", self._columns,
                                  [pick(row) for row in kept])
            if span_rows:
                self._insert_many(connection, "spans", _SPAN_COLUMNS, span_rows)
            upsert(connection, rollups)

    def _insert_many(self, connection: Any, table: str, columns: list[str],
                     values: list[tuple[Any, ...]]) -> None:
        per_statement = max(1, min(self._rows_per_statement, 32_000 // len(columns)))
        per_statement = 1 << (per_statement.bit_length() - 1)
        start = 0
        while start < len(values):
            # Statement sizes are powers of two, so only a handful of SQL texts exist
            # (each compiled once by the driver's statement cache).
            size = per_statement
            while size > len(values) - start:
                size //= 2
            params: list[Any] = []
            for row in values[start : start + size]:
                params.extend(row)
            connection.exec_driver_sql(self._sql(table, columns, size), tuple(params))
            start += size

    def _prepare(self) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
        dialect = self.engine.dialect
        self._mark = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(dialect.paramstyle)
        if dialect.name == "sqlite":
            sqlite3.register_adapter(datetime, _sqlite_datetime)
        columns = [c.name for c in traces.columns]
        self._columns = columns
        self._pick = operator.itemgetter(*columns)
        # SQLite allows 32,766 bound parameters per statement, PostgreSQL 65,535.
        limit = max(1, min(self.batch_size, 32_000 // len(columns)))
        self._rows_per_statement = 1 << (limit.bit_length() - 1)  # a power of two
        return self._pick

    def _sql(self, table: str, columns: list[str], rows: int) -> str:
        sql = self._sql_cache.get((table, rows))
        if sql is None:
            one = f"({', '.join([self._mark or '?'] * len(columns))})"
            sql = (f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                   + ", ".join([one] * rows))
            self._sql_cache[(table, rows)] = sql
        return sql

    def _replay(self) -> None:
        """Write spooled segments back, oldest first, before anything newer."""
        if self.spool is None or self._store_down():
            return
        while (claim := self.spool.claim_oldest()) is not None:
            path, rows = claim
            for row in rows:  # spooled by an older release: columns added since are empty
                for column in (c.name for c in traces.columns):
                    row.setdefault(column, None)
            try:
                self._insert_checked(rows)
            except Exception as exc:
                self.spool.give_back(path)
                self._mark_down(exc, len(rows))
                return
            self.spool.done(path, len(rows))
            self.written += len(rows)
            if self._on_write is not None:
                self._on_write(len(rows))
            log.info("replayed %d spooled traces", len(rows))

    def _insert_checked(self, rows: list[dict[str, Any]]) -> None:
        """Insert a batch; rows the store refuses do not take the batch down with them.

        A duplicate (a spooled segment written just before a crash) is skipped. A row the
        database cannot hold (PostgreSQL refuses NUL characters in text; a value too long for
        its column) is cleaned and retried, and if it is still refused it is kept in
        `rejected.jsonl` beside the spool and counted as lost — logged, never silent.
        Connection errors propagate: the caller spools the batch.
        """
        try:
            self._insert(rows)
            return
        except (IntegrityError, DataError):
            pass
        for row in rows:
            try:
                self._insert([row])
            except IntegrityError:
                continue  # already stored
            except DataError:
                try:
                    self._insert([_clean(row)])
                except IntegrityError:
                    continue
                except DataError as exc:
                    self._reject(row, exc)

    def _reject(self, row: dict[str, Any], exc: Exception) -> None:
        self.lost += 1
        kept = ""
        if self.spool is not None:
            self.spool.folder.mkdir(parents=True, exist_ok=True)
            with (self.spool.folder / "rejected.jsonl").open("ab") as handle:
                handle.write(orjson.dumps(row, default=str) + b"\n")
            kept = f"; kept in {self.spool.folder / 'rejected.jsonl'}"
        log.error("the store refused trace %s (%s)%s", row.get("id"), type(exc).__name__, kept)

    def _write(self, rows: list[dict[str, Any]], *, final: bool) -> None:
        if not rows:
            return
        # Keep the order: while anything is spooled (or the store is down), spool behind it.
        if self.spool is not None and (self._store_down() or self.spool.pending()):
            self.spool.append(rows)
            return
        delay = 0.05
        attempts = 0
        while True:
            try:
                self._insert_checked(rows)
                self.written += len(rows)
                if self._on_write is not None:
                    self._on_write(len(rows))
                return
            except Exception as exc:
                if self.spool is not None:
                    self._mark_down(exc, len(rows))
                    self.spool.append(rows)
                    return
                attempts += 1
                self.failures += 1
                log.warning("writing %d traces failed (%s); retrying in %.2fs",
                            len(rows), type(exc).__name__, delay)
                if (final or self._stopping) and attempts >= 5:
                    self.lost += len(rows)
                    log.error("store unreachable at shutdown; %d traces lost", len(rows))
                    return
                time.sleep(delay)
                delay = min(delay * 2, 5.0)


_LENGTHS = {c.name: getattr(c.type, "length", None) for c in traces.columns}
_SPAN_COLUMNS = ["record_id", "trace_id", "tenant_id", "started_at", "spans"]


def _span_params(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The `spans` rows (one per request) carried by trace records, in `_SPAN_COLUMNS` order.

    A record carries its spans as the gateway recorded them — (span id, parent id, name,
    start, end, error, attributes) with `perf_counter` times — and `spans_t0`, the request's
    start on the same clock; they become milliseconds from the request's start here, in the
    writer thread, so the event loop never pays for it.
    """
    out: list[tuple[Any, ...]] = []
    for row in rows:
        carried = row.get("spans")
        if not carried:
            continue
        t0 = row.get("spans_t0") or 0.0
        out.append((row["id"], row.get("trace_id") or row["id"], row["tenant_id"],
                    row["started_at"], orjson.dumps([
                        [sid, parent, name, round((start - t0) * 1000.0, 3),
                         round(max(0.0, end - start) * 1000.0, 3), error, attributes]
                        for sid, parent, name, start, end, error, attributes in carried],
                        default=str,  # an attribute of any type (a user's stage) never fails
                    ).decode()))
    return out


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    """A copy any database can hold: no NUL characters, strings cut to their column size."""
    clean = dict(row)
    for key, value in row.items():
        if isinstance(value, str):
            value = value.replace("\x00", "\ufffd")
            length = _LENGTHS.get(key)
            if length is not None and len(value) > length:
                value = value[: length - 1] + "…"
            clean[key] = value
    return clean


def _sqlite_datetime(value: datetime) -> str:
    """SQLAlchemy's SQLite storage format for DateTime (naive, UTC by our convention)."""
    return f"{value:%Y-%m-%d %H:%M:%S.%f}"
