"""Connector runs in the store (`connector_runs`, migration 0019): one row per run — a queue
consumer's session, a SQL scoring pass, a file — with its counts, a heartbeat, and the
checkpoint a SQL run resumes from.

>>> log = RunLog(engine)  # doctest: +SKIP
>>> run = log.start("scores", "sql")  # doctest: +SKIP
>>> log.update(run, processed=500, failed=2, checkpoint={"key": 500})  # doctest: +SKIP
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Index,
    Integer,
    String,
    Table,
    Text,
    desc,
    select,
    update,
)

from shipyard.store.tables import metadata

__all__ = ["RUN_STATUSES", "Run", "RunLog", "connector_runs"]

RUN_STATUSES = ("running", "succeeded", "failed", "interrupted")

connector_runs = Table(
    "connector_runs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("connector", String(128), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("status", String(16), nullable=False),  # running|succeeded|failed|interrupted
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("heartbeat_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True), nullable=True),
    Column("processed", Integer, nullable=False, server_default="0"),
    Column("succeeded", Integer, nullable=False, server_default="0"),
    Column("failed", Integer, nullable=False, server_default="0"),
    Column("retried", Integer, nullable=False, server_default="0"),
    Column("checkpoint", Text, nullable=True),
    Column("detail", Text, nullable=True),
    Column("error", Text, nullable=True),
    Column("host", String(128), nullable=False),
    Index("ix_connector_runs_connector_started_at", "connector", "started_at"),
    Index("ix_connector_runs_status", "status"),
)


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(slots=True)
class Run:
    """One run of a connector, as stored."""

    id: str
    connector: str
    kind: str
    status: str
    started_at: datetime
    heartbeat_at: datetime
    ended_at: datetime | None = None
    processed: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    checkpoint: Any = None
    detail: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    host: str = ""
    resumed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "connector": self.connector, "kind": self.kind,
                "status": self.status, "started_at": self.started_at.isoformat(),
                "ended_at": self.ended_at.isoformat() if self.ended_at else None,
                "heartbeat_at": self.heartbeat_at.isoformat(),
                "processed": self.processed, "succeeded": self.succeeded,
                "failed": self.failed, "retried": self.retried,
                "checkpoint": self.checkpoint, "detail": self.detail, "error": self.error,
                "host": self.host}


def _run(row: Any) -> Run:
    return Run(id=row.id, connector=row.connector, kind=row.kind, status=row.status,
               started_at=_aware(row.started_at) or _now(),
               heartbeat_at=_aware(row.heartbeat_at) or _now(),
               ended_at=_aware(row.ended_at), processed=row.processed,
               succeeded=row.succeeded, failed=row.failed, retried=row.retried,
               checkpoint=orjson.loads(row.checkpoint) if row.checkpoint else None,
               detail=orjson.loads(row.detail) if row.detail else {}, error=row.error,
               host=row.host)


class RunLog:
    """Runs of connectors in the store: start (or resume), update, finish, list."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.host = f"{socket.gethostname()[:100]}:{os.getpid()}"

    def start(self, connector: str, kind: str, *, resume: bool = False,
              stale_after_s: float = 30.0) -> Run:
        """A new run; with `resume`, the newest unfinished run of this connector instead
        (one marked interrupted, or running with a heartbeat older than `stale_after_s`: its
        process died), picked up from its checkpoint with its counts and run id."""
        now = _now()
        if resume:
            found = self.unfinished(connector)
            if found is not None and (found.status == "interrupted"
                                      or now - found.heartbeat_at
                                      > timedelta(seconds=stale_after_s)):
                with self.engine.begin() as conn:
                    conn.execute(update(connector_runs).where(
                        connector_runs.c.id == found.id).values(
                        status="running", heartbeat_at=now, host=self.host, error=None))
                found.status, found.heartbeat_at, found.resumed = "running", now, True
                return found
        run = Run(id="run_" + os.urandom(12).hex(), connector=connector, kind=kind,
                  status="running", started_at=now, heartbeat_at=now, host=self.host)
        with self.engine.begin() as conn:
            conn.execute(connector_runs.insert().values(
                id=run.id, connector=connector, kind=kind, status="running", started_at=now,
                heartbeat_at=now, processed=0, succeeded=0, failed=0, retried=0,
                host=self.host))
        return run

    def unfinished(self, connector: str) -> Run | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(connector_runs).where(
                connector_runs.c.connector == connector,
                connector_runs.c.status.in_(("running", "interrupted"))).order_by(
                desc(connector_runs.c.started_at)).limit(1)).first()
        return _run(row) if row is not None else None

    def update(self, run: Run, *, checkpoint: Any = None, **counts: int) -> None:
        """Save the run's counts (absolute values) and, when given, its checkpoint."""
        for name, value in counts.items():
            setattr(run, name, value)
        values: dict[str, Any] = {"heartbeat_at": _now(), "processed": run.processed,
                                  "succeeded": run.succeeded, "failed": run.failed,
                                  "retried": run.retried}
        if checkpoint is not None:
            run.checkpoint = checkpoint
            values["checkpoint"] = orjson.dumps(checkpoint).decode()
        if run.detail:
            values["detail"] = orjson.dumps(run.detail).decode()
        with self.engine.begin() as conn:
            conn.execute(update(connector_runs).where(connector_runs.c.id == run.id)
                         .values(**values))

    def finish(self, run: Run, status: str, error: str | None = None) -> None:
        run.status, run.error, run.ended_at = status, error, _now()
        self.update(run)
        with self.engine.begin() as conn:
            conn.execute(update(connector_runs).where(connector_runs.c.id == run.id).values(
                status=status, error=error[:2000] if error else None, ended_at=run.ended_at))

    def list(self, connector: str | None = None, *, limit: int = 50) -> list[Run]:
        query = select(connector_runs).order_by(desc(connector_runs.c.started_at)).limit(limit)
        if connector is not None:
            query = query.where(connector_runs.c.connector == connector)
        with self.engine.connect() as conn:
            return [_run(row) for row in conn.execute(query)]

    def latest(self) -> dict[str, Run]:
        """The newest run of every connector that has run."""
        newest: dict[str, Run] = {}
        for run in self.list(limit=500):
            newest.setdefault(run.connector, run)
        return newest
