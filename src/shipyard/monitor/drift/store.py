"""Drift in the store: save and load reference profiles, record and list check results.

>>> from sqlalchemy import create_engine
>>> from shipyard.store import migrate
>>> from shipyard.monitor.drift.profiles import profile_columns
>>> engine = create_engine("sqlite://")
>>> migrate(engine)
>>> saved = save_profile(engine, "support", profile_columns({"x": [1.0, 2.0, 3.0]}))
>>> load_profile(engine, "support").rows
3
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Engine, insert, select

from shipyard.errors import NotFound
from shipyard.monitor.drift.detect import DriftReport
from shipyard.monitor.drift.profiles import DatasetProfile
from shipyard.store.tables import drift_profiles, drift_results

__all__ = [
    "StoredProfile",
    "drift_history",
    "latest_profile",
    "load_profile",
    "record_result",
    "save_profile",
]


@dataclass(frozen=True, kw_only=True)
class StoredProfile:
    id: str
    name: str
    created_at: datetime
    window_start: datetime | None
    window_end: datetime | None
    profile: DatasetProfile


def _utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def save_profile(
    engine: Engine,
    name: str,
    profile: DatasetProfile,
    *,
    tenant_id: str = "default",
    service: str | None = None,
    window_start: datetime | None = None,
    window_end: datetime | None = None,
) -> str:
    """Store a reference profile under `name`; the newest one of a name is the one used."""
    profile_id = uuid.uuid4().hex
    with engine.begin() as connection:
        connection.execute(insert(drift_profiles).values(
            id=profile_id, name=name, tenant_id=tenant_id, service=service,
            created_at=datetime.now(UTC), window_start=window_start, window_end=window_end,
            rows=profile.rows, data=orjson.dumps(profile.to_dict()).decode()))
    return profile_id


def latest_profile(engine: Engine, name: str, *, tenant_id: str = "default"
                   ) -> StoredProfile | None:
    """The newest stored profile called `name`, or None."""
    query = (select(drift_profiles)
             .where(drift_profiles.c.name == name, drift_profiles.c.tenant_id == tenant_id)
             .order_by(drift_profiles.c.created_at.desc()).limit(1))
    with engine.connect() as connection:
        row = connection.execute(query).mappings().first()
    if row is None:
        return None
    return StoredProfile(
        id=row["id"], name=row["name"], created_at=_utc(row["created_at"]) or datetime.now(UTC),
        window_start=_utc(row["window_start"]), window_end=_utc(row["window_end"]),
        profile=DatasetProfile.from_dict(orjson.loads(row["data"])))


def load_profile(engine: Engine, name: str, *, tenant_id: str = "default") -> DatasetProfile:
    """The newest profile called `name`; `NotFound` names the command that builds one."""
    stored = latest_profile(engine, name, tenant_id=tenant_id)
    if stored is None:
        raise NotFound(f"No drift profile named '{name}' is stored; build one with "
                       f"'shipyard drift profile {name}'.")
    return stored.profile


def record_result(
    engine: Engine,
    check_name: str,
    report: DriftReport,
    *,
    tenant_id: str = "default",
    service: str | None = None,
    profile_id: str | None = None,
    current_start: datetime | None = None,
    current_end: datetime | None = None,
    at: datetime | None = None,
) -> str:
    """Append one check result (the dashboard plots these over time)."""
    result_id = uuid.uuid4().hex
    current_rows = max((c.current_rows for c in report.columns), default=0)
    with engine.begin() as connection:
        connection.execute(insert(drift_results).values(
            id=result_id, check_name=check_name, tenant_id=tenant_id, service=service,
            at=at or datetime.now(UTC), profile_id=profile_id, current_start=current_start,
            current_end=current_end, current_rows=current_rows,
            dataset_drift=report.dataset_drift, share=report.share,
            drifted=len(report.drifted_columns), tested=len(report.tested),
            details=orjson.dumps(report.to_dict()).decode()))
    return result_id


def drift_history(
    engine: Engine,
    check_name: str | None = None,
    *,
    tenant_id: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
    details: bool = False,
) -> list[dict[str, Any]]:
    """Check results, newest first; `details=True` adds each column's verdict."""
    query = select(drift_results).order_by(drift_results.c.at.desc()).limit(limit)
    if check_name is not None:
        query = query.where(drift_results.c.check_name == check_name)
    if tenant_id is not None:
        query = query.where(drift_results.c.tenant_id == tenant_id)
    if since is not None:
        query = query.where(drift_results.c.at >= since)
    with engine.connect() as connection:
        rows = connection.execute(query).mappings().all()
    out = []
    for row in rows:
        item = {str(k): v for k, v in row.items() if k != "details"}
        for key in ("at", "current_start", "current_end"):
            item[key] = _utc(item[key])
        if details:
            item["report"] = orjson.loads(row["details"])
        out.append(item)
    return out
