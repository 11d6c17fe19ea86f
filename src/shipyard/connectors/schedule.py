"""When a scheduled connector runs next: every N seconds, or the next minute a five-field
cron expression (UTC) matches.

>>> from datetime import datetime, UTC
>>> next_run(Schedule(cron="*/15 * * * *"), datetime(2026, 1, 1, 10, 7, tzinfo=UTC), None)
datetime.datetime(2026, 1, 1, 10, 15, tzinfo=datetime.timezone.utc)
"""

from __future__ import annotations

from datetime import datetime, timedelta

from shipyard.config.connectors import Schedule

__all__ = ["cron_matches", "next_run"]

_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 6))


def _values(field: str, low: int, high: int) -> set[int]:
    found: set[int] = set()
    for part in field.split(","):
        base, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if base == "*":
            start, end = low, high
        elif "-" in base:
            first, last = base.split("-")
            start, end = int(first), int(last)
        else:
            start = int(base)
            end = high if step_text else start
        found.update(range(start, end + 1, max(step, 1)))
    return found


def cron_matches(expression: str, when: datetime) -> bool:
    """Whether the cron expression matches `when`'s minute (weekday 0 = Sunday, as in cron;
    7 is Sunday too)."""
    fields = expression.split()
    values = [_values(f, lo, hi) for f, (lo, hi) in zip(fields, _RANGES, strict=True)]
    weekday = (when.weekday() + 1) % 7
    days = values[4] | ({0} if 7 in values[4] else set())
    return (when.minute in values[0] and when.hour in values[1] and when.day in values[2]
            and when.month in values[3] and weekday in days)


def next_run(schedule: Schedule, now: datetime, last_start: datetime | None) -> datetime:
    """The next time a run is due (`now` when one is due already)."""
    if schedule.every_s is not None:
        if last_start is None:
            return now
        return max(now, last_start + timedelta(seconds=schedule.every_s))
    expression = schedule.cron or "* * * * *"
    when = (now + timedelta(minutes=1)).replace(second=0, microsecond=0)
    for _ in range(366 * 24 * 60):  # a year of minutes: every valid expression matches
        if cron_matches(expression, when):
            return when
        when += timedelta(minutes=1)
    return when
