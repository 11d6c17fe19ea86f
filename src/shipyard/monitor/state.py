"""The alert state machine: inactive → pending → firing → resolved, each transition once.

`advance` is pure: given an open alert (or None), whether its condition holds now and the
clock, it returns the alert's next state and the transition taken, if any. A pending alert
fires after its condition held for `for_s`; a firing alert resolves only after the condition
stayed false for `resolve_after_s` (hysteresis), so a flapping signal neither re-fires nor
re-resolves: a flap back to true while resolving just keeps the alert firing, silently.

>>> from datetime import UTC, datetime, timedelta
>>> t0 = datetime(2026, 1, 1, tzinfo=UTC)
>>> a, step = advance(None, active=True, value=0.5, now=t0, for_s=60, resolve_after_s=0)
>>> a.state, step
('pending', 'pending')
>>> a, step = advance(a, active=True, value=0.5, now=t0 + timedelta(seconds=60), for_s=60,
...                   resolve_after_s=0)
>>> a.state, step
('firing', 'firing')
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime

__all__ = ["OpenAlert", "advance"]


@dataclass(frozen=True)
class OpenAlert:
    """An alert that is pending or firing (resolved ones are history)."""

    id: str
    key: str
    state: str  # pending | firing
    started_at: datetime
    value: float | None = None
    fired_at: datetime | None = None
    clear_since: datetime | None = None


def advance(alert: OpenAlert | None, *, active: bool, value: float | None, now: datetime,
            for_s: float, resolve_after_s: float, key: str = "",
            ) -> tuple[OpenAlert | None, str | None]:
    """The alert's next state and the transition: `pending`, `firing`, `resolved`,
    `cleared` (pending that never fired), or None (no change worth telling)."""
    if alert is None:
        if not active:
            return None, None
        fresh = OpenAlert(uuid.uuid4().hex, key, "pending", now, value)
        if for_s <= 0:
            return replace(fresh, state="firing", fired_at=now), "firing"
        return fresh, "pending"
    if alert.state == "pending":
        if not active:
            return None, "cleared"
        if (now - alert.started_at).total_seconds() >= for_s:
            return replace(alert, state="firing", fired_at=now, value=value), "firing"
        return replace(alert, value=value), None
    # firing
    if active:
        return replace(alert, value=value, clear_since=None), None
    clear_since = alert.clear_since or now
    if (now - clear_since).total_seconds() >= resolve_after_s:
        return None, "resolved"
    return replace(alert, clear_since=clear_since,
                   value=value if value is not None else alert.value), None
