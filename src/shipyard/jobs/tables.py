"""The tables of files and batches (on the store's metadata; migration 0018 creates them).

Jobs are work items (`shipyard.work`, kind `job:<model|service>:<name>`) and need no table of
their own. A batch is one work item (kind `batch`) plus a row here with what the Batch API
shows; its input and output files are rows of `files` whose bytes live on disk.
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, Integer, String, Table, Text

from shipyard.store.tables import metadata

__all__ = ["batches", "files"]

files = Table(
    "files",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("purpose", String(32), nullable=False),  # batch | batch_output | ...
    Column("filename", String(512), nullable=False),
    Column("bytes", Integer, nullable=False),
    Column("path", String(512), nullable=False),  # relative to batches.files_dir
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Index(None, "tenant_id", "created_at"),
    Index(None, "expires_at"),
)

batches = Table(
    "batches",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("endpoint", String(256), nullable=False),
    Column("input_file_id", String(64), nullable=False),
    Column("completion_window", String(16), nullable=False),
    # validating | failed | in_progress | finalizing | completed | expired | cancelling |
    # cancelled (OpenAI's statuses)
    Column("status", String(16), nullable=False),
    Column("item_id", String(40), nullable=True),  # the work item that runs it
    Column("output_file_id", String(64), nullable=True),
    Column("error_file_id", String(64), nullable=True),
    Column("errors", Text, nullable=True),  # JSON: validation errors
    Column("metadata", Text, nullable=True),  # JSON
    Column("principal", Text, nullable=False),  # JSON: who created it (no secret)
    Column("checkpoint", Text, nullable=True),  # JSON: durable progress (see batches.py)
    Column("attempt", Integer, nullable=False, server_default="0"),  # who may write it
    Column("total", Integer, nullable=False, server_default="0"),
    Column("completed", Integer, nullable=False, server_default="0"),
    Column("failed", Integer, nullable=False, server_default="0"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("in_progress_at", DateTime(timezone=True), nullable=True),
    Column("finalizing_at", DateTime(timezone=True), nullable=True),
    Column("completed_at", DateTime(timezone=True), nullable=True),
    Column("failed_at", DateTime(timezone=True), nullable=True),
    Column("expired_at", DateTime(timezone=True), nullable=True),
    Column("cancelling_at", DateTime(timezone=True), nullable=True),
    Column("cancelled_at", DateTime(timezone=True), nullable=True),
    Index(None, "tenant_id", "created_at"),
)
