"""The store: tables, migrations, trace reads and the single batched writer."""

from __future__ import annotations

from shipyard.store.engine import create_store_engine, migrate, ping
from shipyard.store.traces import TraceFilter, get_trace, iter_traces, new_trace_record
from shipyard.store.writer import TraceWriter

__all__ = [
    "TraceFilter",
    "TraceWriter",
    "create_store_engine",
    "get_trace",
    "iter_traces",
    "migrate",
    "new_trace_record",
    "ping",
]
