"""The single batched trace writer: requests enqueue, one thread writes, nothing silently lost.

The hot path only calls `submit()` (a non-blocking put on a bounded queue). A daemon thread
drains the queue in batches of up to `batch_size` rows, or whatever arrived within
`flush_interval_s`, and writes each batch in one transaction. When the queue is full the
record is counted in `dropped` (and the `shipyard_trace_queue_dropped_total` metric) and a
warning is logged; nothing is dropped without a count. `stop()` flushes everything queued.
If the store fails, the batch is kept and retried with backoff until it is written or the
writer is stopped, when the unwritten rows are counted as lost and logged.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from shipyard.store.tables import traces

__all__ = ["TraceWriter"]

log = logging.getLogger("shipyard.traces")
_STOP = object()


class TraceWriter:
    """Bounded queue + one batched writer thread.

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
    ) -> None:
        self.engine = engine
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._on_drop = on_drop
        self._on_write = on_write
        self._last_drop_log = 0.0
        self._lock = threading.Lock()
        self.written = 0
        self.dropped = 0
        self.lost = 0
        self.failures = 0

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="shipyard-trace-writer",
                                            daemon=True)
            self._thread.start()

    def submit(self, record: dict[str, Any]) -> bool:
        """Queue one trace; never blocks. False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(record)
            return True
        except queue.Full:
            with self._lock:
                self.dropped += 1
                now = time.monotonic()
                should_log = now - self._last_drop_log > 5.0
                if should_log:
                    self._last_drop_log = now
            if self._on_drop is not None:
                self._on_drop(1)
            if should_log:
                log.warning(
                    "trace queue is full (%d queued); %d traces dropped so far. Raise "
                    "traces.queue_size or check that the store keeps up.",
                    self._queue.maxsize,
                    self.dropped,
                )
            return False

    def stop(self, timeout: float = 30.0) -> None:
        """Flush everything queued and stop the thread (waits up to `timeout` seconds)."""
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._queue.put(_STOP, timeout=0.1)
                break
            except queue.Full:
                if time.monotonic() > deadline:
                    break
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            log.error("trace writer did not finish within %.0fs; %d traces still queued",
                      timeout, self.depth)
        self._thread = None

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch: list[dict[str, Any]] = []
            try:
                item = self._queue.get()
            except Exception:  # pragma: no cover - queue.get does not fail
                continue
            if item is _STOP:
                stopping = True
            else:
                batch.append(item)
            deadline = time.monotonic() + self.flush_interval_s
            while not stopping and len(batch) < self.batch_size:
                remaining = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=remaining) if remaining > 0 else (
                        self._queue.get_nowait()
                    )
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                else:
                    batch.append(item)
            if stopping:
                # Drain what is left so a shutdown flushes everything queued.
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is not _STOP:
                        batch.append(item)
            for start in range(0, len(batch), self.batch_size):
                self._write(batch[start : start + self.batch_size], final=stopping)

    def _write(self, rows: list[dict[str, Any]], *, final: bool) -> None:
        if not rows:
            return
        delay = 0.05
        attempts = 0
        while True:
            try:
                with self.engine.begin() as connection:
                    connection.execute(traces.insert(), rows)
                self.written += len(rows)
                if self._on_write is not None:
                    self._on_write(len(rows))
                return
            except Exception as exc:
                attempts += 1
                self.failures += 1
                log.warning("writing %d traces failed (%s); retrying in %.2fs",
                            len(rows), type(exc).__name__, delay)
                if final and attempts >= 5:
                    self.lost += len(rows)
                    log.error("store unreachable at shutdown; %d traces lost", len(rows))
                    return
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
