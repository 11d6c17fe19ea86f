"""The store: tables, migrations, trace reads and the single batched writer."""

from __future__ import annotations

from shipyard.store.engine import create_store_engine, migrate, ping
from shipyard.store.retention import PurgeResult, purge
from shipyard.store.traces import TraceFilter, get_spans, get_trace, iter_traces, new_trace_record
from shipyard.store.writer import TraceWriter

__all__ = [
    "PurgeResult",
    "TraceFilter",
    "TraceWriter",
    "create_store_engine",
    "get_spans",
    "get_trace",
    "iter_traces",
    "migrate",
    "new_trace_record",
    "ping",
    "purge",
]
