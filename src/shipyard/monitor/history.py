"""Alerts in the store: open incidents, their history, and the evaluator's lease.

Every state change is a conditional UPDATE (`WHERE state = <expected>`), so if two
evaluators ever acted at once (a lease that expired mid-evaluation) only one would win a
transition, and only the winner notifies: fire once, resolve once.

The lease is one row in `alert_lease`; a holder renews it every evaluation, and another
process takes it over only after it expired (one UPDATE that checks holder or expiry, atomic
on SQLite and PostgreSQL alike).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Engine, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from shipyard.monitor.state import OpenAlert
from shipyard.store.tables import alert_events, alert_lease, alerts

__all__ = [
    "AlertInfo",
    "acquire_lease",
    "alert_events_of",
    "close_orphan",
    "get_alert",
    "list_alerts",
    "open_alerts",
    "record_event",
    "release_lease",
    "save_transition",
]


@dataclass(frozen=True)
class AlertInfo:
    """What a new alert row carries besides its state."""

    key: str
    source: str
    severity: str
    tenant_id: str
    summary: str
    runbook: str
    labels: dict[str, str]
    threshold: float | None


def _utc(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _row(mapping: Any) -> dict[str, Any]:
    row = {str(k): _utc(v) for k, v in mapping.items()}
    if "labels" in row:
        row["labels"] = orjson.loads(row["labels"]) if row["labels"] else {}
    if "details" in row:
        row["details"] = orjson.loads(row["details"]) if row["details"] else None
    return row


def open_alerts(engine: Engine) -> dict[str, OpenAlert]:
    """Pending and firing alerts by key (what an evaluator resumes from after a failover)."""
    query = select(alerts).where(alerts.c.state.in_(("pending", "firing")))
    with engine.connect() as connection:
        rows = [_row(m) for m in connection.execute(query).mappings()]
    return {r["key"]: OpenAlert(r["id"], r["key"], r["state"], r["started_at"], r["value"],
                                r["fired_at"], r["clear_since"]) for r in rows}


def record_event(engine: Engine, alert_id: str, event: str, *, at: datetime | None = None,
                 value: float | None = None, details: dict[str, Any] | None = None) -> None:
    with engine.begin() as connection:
        connection.execute(insert(alert_events).values(
            alert_id=alert_id, at=at or datetime.now(UTC), event=event, value=value,
            details=orjson.dumps(details).decode() if details else None))


def _open_incident(engine: Engine, alert: OpenAlert, info: AlertInfo, *, now: datetime,
                   url_base: str) -> bool:
    with engine.begin() as connection:
        connection.execute(insert(alerts).values(
            id=alert.id, key=info.key, tenant_id=info.tenant_id, source=info.source,
            severity=info.severity, state=alert.state, value=alert.value,
            threshold=info.threshold, summary=info.summary, runbook=info.runbook,
            labels=orjson.dumps(info.labels).decode() if info.labels else None,
            url=f"{url_base.rstrip('/')}/ui/alerts/{alert.id}", started_at=alert.started_at,
            fired_at=alert.fired_at, updated_at=now))
        events = ["pending", "firing"] if alert.state == "firing" else ["pending"]
        for event in events:
            connection.execute(insert(alert_events).values(
                alert_id=alert.id, at=now, event=event, value=alert.value))
    return True


def save_transition(engine: Engine, before: OpenAlert | None, after: OpenAlert | None,
                    transition: str | None, info: AlertInfo, *, now: datetime,
                    url_base: str) -> bool:
    """Persist one step of the state machine; True when this call made the transition
    (and so must notify), False when there was none or another evaluator already did."""
    if before is None:
        if after is None:
            return False
        try:  # a new incident, pending or firing at once
            return _open_incident(engine, after, info, now=now, url_base=url_base)
        except IntegrityError:  # another evaluator opened this key's incident first
            return False
    with engine.begin() as connection:
        if transition == "cleared":  # pending that never fired: not worth keeping
            done = connection.execute(delete(alerts).where(
                alerts.c.id == before.id, alerts.c.state == "pending")).rowcount
            connection.execute(delete(alert_events).where(alert_events.c.alert_id == before.id))
            return bool(done)
        if transition == "firing" and after is not None:
            done = connection.execute(update(alerts).where(
                alerts.c.id == before.id, alerts.c.state == "pending").values(
                state="firing", fired_at=after.fired_at, value=after.value,
                updated_at=now)).rowcount
        elif transition == "resolved":
            done = connection.execute(update(alerts).where(
                alerts.c.id == before.id, alerts.c.state == "firing").values(
                state="resolved", resolved_at=now, clear_since=before.clear_since,
                updated_at=now)).rowcount
        else:
            if after is not None and after != before:
                connection.execute(update(alerts).where(alerts.c.id == before.id).values(
                    value=after.value, clear_since=after.clear_since, updated_at=now))
            return False
        if done:
            connection.execute(insert(alert_events).values(
                alert_id=before.id, at=now, event=transition,
                value=after.value if after is not None else before.value))
        return bool(done)


def close_orphan(engine: Engine, alert_id: str, *, now: datetime) -> bool:
    """Resolve an open alert whose rule or SLO is no longer configured (no notification)."""
    with engine.begin() as connection:
        done = connection.execute(update(alerts).where(
            alerts.c.id == alert_id, alerts.c.state.in_(("pending", "firing"))).values(
            state="resolved", resolved_at=now, updated_at=now)).rowcount
        if done:
            connection.execute(insert(alert_events).values(
                alert_id=alert_id, at=now, event="resolved",
                details=orjson.dumps({"reason": "no longer configured"}).decode()))
    return bool(done)


def list_alerts(engine: Engine, *, state: str | None = None, tenant_id: str | None = None,
                since: datetime | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Alerts newest first: open ones (`pending`, `firing`) and history (`resolved`)."""
    query = select(alerts)
    if state == "open":
        query = query.where(alerts.c.state.in_(("pending", "firing")))
    elif state is not None:
        query = query.where(alerts.c.state == state)
    if tenant_id is not None:
        query = query.where(alerts.c.tenant_id == tenant_id)
    if since is not None:
        query = query.where(alerts.c.started_at >= since)
    query = query.order_by(alerts.c.started_at.desc(), alerts.c.id).limit(limit)
    with engine.connect() as connection:
        return [_row(m) for m in connection.execute(query).mappings()]


def get_alert(engine: Engine, alert_id: str, *, tenant_id: str | None = None
              ) -> dict[str, Any] | None:
    """One alert by id (of `tenant_id` when given), or None."""
    query = select(alerts).where(alerts.c.id == alert_id)
    if tenant_id is not None:
        query = query.where(alerts.c.tenant_id == tenant_id)
    with engine.connect() as connection:
        mapping = connection.execute(query).mappings().first()
    return None if mapping is None else _row(mapping)


def alert_events_of(engine: Engine, alert_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The history of each alert, oldest event first."""
    out: dict[str, list[dict[str, Any]]] = {i: [] for i in alert_ids}
    if not alert_ids:
        return out
    query = (select(alert_events).where(alert_events.c.alert_id.in_(alert_ids))
             .order_by(alert_events.c.alert_id, alert_events.c.seq))
    with engine.connect() as connection:
        for mapping in connection.execute(query).mappings():
            row = _row(mapping)
            out[row["alert_id"]].append(
                {"at": row["at"], "event": row["event"], "value": row["value"],
                 "details": row["details"]})
    return out


def acquire_lease(engine: Engine, holder: str, ttl_s: float, *, name: str = "alerts",
                  now: datetime | None = None) -> bool:
    """Take or renew the lease `name` for `ttl_s`; False while another holder's is valid."""
    now = now or datetime.now(UTC)
    expires = now + timedelta(seconds=ttl_s)
    with engine.begin() as connection:
        taken = connection.execute(update(alert_lease).where(
            alert_lease.c.name == name,
            or_(alert_lease.c.holder == holder, alert_lease.c.expires_at < now)).values(
            holder=holder, expires_at=expires)).rowcount
    if taken:
        return True
    try:
        with engine.begin() as connection:
            connection.execute(insert(alert_lease).values(name=name, holder=holder,
                                                          expires_at=expires))
        return True
    except IntegrityError:  # the row exists and another holder's lease is still valid
        return False


def release_lease(engine: Engine, holder: str, *, name: str = "alerts") -> None:
    """Give the lease up (on shutdown), so another process takes over at once."""
    with engine.begin() as connection:
        connection.execute(delete(alert_lease).where(alert_lease.c.name == name,
                                                     alert_lease.c.holder == holder))
