"""Scheduled drift checks: profile the reference window, test the current one, store the result.

The gateway runs `DriftScheduler(engine, config.drift)` beside serving (`start()` / `stop()`);
the CLI's `shipyard drift check` calls `run_check` once. Work happens in a thread so the event
loop keeps serving.

>>> from datetime import UTC, datetime
>>> from shipyard.config.drift import DriftCheckConfig
>>> windows(DriftCheckConfig(current_window_s=3600, reference_window_s=7200),
...         datetime(2026, 1, 1, 12, tzinfo=UTC))[0].start.hour
9
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from shipyard.config.drift import DriftCheckConfig, DriftConfig
from shipyard.monitor.drift.detect import DriftReport, detect_drift
from shipyard.monitor.drift.features import ColumnSource, TraceWindow, load_features
from shipyard.monitor.drift.profiles import profile_columns
from shipyard.monitor.drift.store import (
    drift_history,
    latest_profile,
    record_result,
    save_profile,
)

__all__ = ["CheckOutcome", "DriftScheduler", "run_check", "run_drift_checks", "windows"]

log = logging.getLogger("shipyard.drift")


def windows(check: DriftCheckConfig, now: datetime) -> tuple[TraceWindow, TraceWindow]:
    """(reference, current) windows for a run at `now`."""
    current_start = now - timedelta(seconds=check.current_window_s)
    current = TraceWindow(start=current_start, end=now, service=check.service,
                          tenant_id=check.tenant)
    if check.reference_start is not None:
        start = _utc(check.reference_start)
        end = (_utc(check.reference_end) if check.reference_end is not None
               else start + timedelta(seconds=check.reference_window_s))
    else:
        end = current_start
        start = end - timedelta(seconds=check.reference_window_s)
    reference = TraceWindow(start=start, end=end, service=check.service,
                            tenant_id=check.tenant)
    return reference, current


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True, kw_only=True)
class CheckOutcome:
    """What one run did: a report (stored) or the reason it was skipped."""

    name: str
    report: DriftReport | None
    skipped: str | None = None
    result_id: str | None = None


def run_check(
    engine: Engine,
    name: str,
    check: DriftCheckConfig,
    *,
    now: datetime | None = None,
    sources: Sequence[ColumnSource] = (),
    decrypt: Callable[[str], str | None] | None = None,
    store: bool = True,
) -> CheckOutcome:
    """Run one check now; with `store=True` the result is recorded for the dashboard.

    A fixed reference window is profiled once and kept under the check's name; a rolling one is
    profiled again once its stored profile is older than `reference_refresh_s`, so most runs
    read only the current window's traces.
    """
    now = now or datetime.now(UTC)
    reference_window, current_window = windows(check, now)
    stored = latest_profile(engine, name, tenant_id=check.tenant or "default")
    reusable = stored is not None and all(c in stored.profile.columns for c in check.columns)
    if stored is not None and check.reference_start is not None:
        reusable = reusable and (stored.window_start, stored.window_end) == (
            reference_window.start, reference_window.end)
    elif stored is not None:
        age = (now - stored.created_at).total_seconds()
        reusable = reusable and check.reference_refresh_s > 0 and age < check.reference_refresh_s
    profile_id: str | None
    if reusable and stored is not None:
        profile, profile_id = stored.profile, stored.id
    else:
        data, kinds = load_features(engine, reference_window, columns=check.columns,
                                    sources=sources, decrypt=decrypt, limit=check.max_rows)
        if len(data[check.columns[0]]) < check.min_rows:
            return CheckOutcome(name=name, report=None, skipped=(
                f"the reference window has {len(data[check.columns[0]])} traces, fewer than "
                f"min_rows={check.min_rows}"))
        profile = profile_columns(data, kinds=kinds)
        profile_id = save_profile(engine, name, profile, tenant_id=check.tenant or "default",
                                  service=check.service, window_start=reference_window.start,
                                  window_end=reference_window.end) if store else None
    current, kinds = load_features(engine, current_window, columns=check.columns,
                                   sources=sources, decrypt=decrypt, limit=check.max_rows)
    rows = len(current[check.columns[0]])
    if rows < check.min_rows:
        return CheckOutcome(name=name, report=None, skipped=(
            f"the current window has {rows} traces, fewer than min_rows={check.min_rows}"))
    report = detect_drift(profile, current, columns=check.columns, kinds=kinds,
                          method=check.method or None, threshold=check.threshold or None,
                          drift_share=check.drift_share)
    result_id = None
    if store:
        result_id = record_result(engine, name, report, tenant_id=check.tenant or "default",
                                  service=check.service, profile_id=profile_id,
                                  current_start=current_window.start,
                                  current_end=current_window.end, at=now)
    return CheckOutcome(name=name, report=report, result_id=result_id)


async def run_drift_checks(
    engine: Engine,
    config: DriftConfig,
    *,
    sources: Sequence[ColumnSource] = (),
    decrypt: Callable[[str], str | None] | None = None,
) -> list[CheckOutcome]:
    """Run every configured check once, off the event loop; a failing check is logged.

    A check whose last stored result is younger than half the interval is left out: another
    worker (`serve --workers N`) or a restart just ran it.
    """
    outcomes = []
    recent = datetime.now(UTC) - timedelta(seconds=config.interval_s / 2)
    for name, check in config.checks.items():
        try:
            if await asyncio.to_thread(drift_history, engine, name, since=recent, limit=1):
                continue
            outcome = await asyncio.to_thread(run_check, engine, name, check, sources=sources,
                                              decrypt=decrypt)
        except Exception:
            log.exception("drift check '%s' failed", name)
            continue
        if outcome.skipped:
            log.info("drift check '%s' skipped: %s", name, outcome.skipped)
        elif outcome.report is not None:
            log.info("drift check '%s': %d of %d columns drifted", name,
                     len(outcome.report.drifted_columns), len(outcome.report.tested))
        outcomes.append(outcome)
    return outcomes


class DriftScheduler:
    """Runs `run_drift_checks` every `config.interval_s` seconds until `stop()`.

    The gateway's start/stop hooks: `await scheduler.start()` after startup and
    `await scheduler.stop()` on shutdown. Does nothing when drift is disabled or has no checks.
    """

    def __init__(self, engine: Engine, config: DriftConfig, *,
                 sources: Sequence[ColumnSource] = (),
                 decrypt: Callable[[str], str | None] | None = None) -> None:
        self.engine = engine
        self.config = config
        self.sources = sources
        self.decrypt = decrypt
        self.runs = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None and self.config.enabled and self.config.checks:
            self._task = asyncio.create_task(self._loop(), name="shipyard-drift")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        while True:
            await run_drift_checks(self.engine, self.config, sources=self.sources,
                                   decrypt=self.decrypt)
            self.runs += 1
            await asyncio.sleep(self.config.interval_s)
