"""Readiness verdicts (`shipyard check`) in the store: save one run, read runs over time.

>>> run_id = save_run(engine, report_dict)  # doctest: +SKIP
>>> [r["score"] for r in list_runs(engine, target="model demo")]  # doctest: +SKIP
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Engine, select, update

from shipyard.store.tables import readiness_runs
from shipyard.store.tenants import tenants

__all__ = ["disable_tenant", "get_run", "list_runs", "save_run"]


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def save_run(engine: Engine, report: dict[str, Any], *, tenant_id: str = "default") -> str:
    """Store a `shipyard check` report (its `to_dict()`); returns the run id."""
    run_id = secrets.token_hex(8)
    sections = report.get("sections") or []
    gate = report.get("gate") or {}
    row = {"id": run_id, "tenant_id": tenant_id, "target": str(report["target"])[:256],
           "created_at": datetime.now(UTC), "mode": str(report.get("mode", "full")),
           "score": report.get("score"), "status": str(report.get("status", "fail")),
           "gate_passed": gate.get("passed") if gate.get("given") else None,
           "scores": orjson.dumps({s["key"]: s["score"] for s in sections}).decode(),
           "report": orjson.dumps(report).decode()}
    with engine.begin() as connection:
        connection.execute(readiness_runs.insert(), row)
    return run_id


def _row(row: Any, *, full: bool) -> dict[str, Any]:
    out = {"id": row.id, "target": row.target, "created_at": _utc(row.created_at),
           "mode": row.mode, "score": row.score, "status": row.status,
           "gate_passed": row.gate_passed, "scores": orjson.loads(row.scores)}
    if full:
        out["report"] = orjson.loads(row.report)
    return out


def list_runs(engine: Engine, *, tenant_id: str = "default", target: str | None = None,
              since: datetime | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """Runs newest first (without their full report)."""
    columns = [c for c in readiness_runs.c if c.name != "report"]
    query = select(*columns).where(readiness_runs.c.tenant_id == tenant_id)
    if target is not None:
        query = query.where(readiness_runs.c.target == target)
    if since is not None:
        query = query.where(readiness_runs.c.created_at >= since)
    query = query.order_by(readiness_runs.c.created_at.desc()).limit(limit)
    with engine.connect() as connection:
        return [_row(r, full=False) for r in connection.execute(query)]


def get_run(engine: Engine, run_id: str, *, tenant_id: str = "default") -> dict[str, Any] | None:
    """One run with its full report, or None."""
    query = select(readiness_runs).where(readiness_runs.c.id == run_id,
                                         readiness_runs.c.tenant_id == tenant_id)
    with engine.connect() as connection:
        row = connection.execute(query).first()
    return None if row is None else _row(row, full=True)


def disable_tenant(engine: Engine, tenant_id: str) -> bool:
    """Mark a tenant disabled (the readiness check's temporary tenants, afterwards)."""
    with engine.begin() as connection:
        done = connection.execute(update(tenants).where(tenants.c.id == tenant_id)
                                  .values(disabled=True))
    return bool(done.rowcount)
