"""Alert evaluation cost: one evaluation of SLOs and rules over a large SQLite traces table.

The number that matters is the whole evaluation's time: it runs every `alerts.interval_s` in
one process per store. Per SLO, side by side on the same data: the stateless query (every window
of the burn-rate table in one indexed range scan, `shipyard.monitor.queries.window_counts`), the
straightforward way (two COUNT queries per window), and the evaluator's `SLOCounter` (first run,
then steady state: the last 6 hours plus the slice that just left them).

    .venv/bin/python bench/alerts_eval.py                  # 1,000,000 traces
    .venv/bin/python bench/alerts_eval.py --count 200000 --no-write
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sqlalchemy import Engine, func, insert, select

from _harness import (
    RESULTS_DIR,
    command_line,
    dist_version,
    git_revision,
    log,
    machine_info,
    now_iso,
    paragraph,
    wait_for_quiet,
    write_docs_section,
    write_json,
)
from shipyard.config import parse_config
from shipyard.monitor.alerts import definitions, observe
from shipyard.monitor.queries import Scope, WindowCounts
from shipyard.monitor.slo import SLOCounter, evaluate_slo
from shipyard.store.engine import create_store_engine, migrate
from shipyard.store.tables import traces
from shipyard.store.traces import new_trace_record

WORK_ROOT = Path(__file__).resolve().parent / ".work"
SERVICES = ["support", "search", "summarise", "classify", "chat"]
CONFIG = """
slos:
  - {name: support-availability, sli: availability, objective: 0.999, service: support}
  - {name: support-latency, sli: latency, objective: 0.99, latency_threshold_ms: 2000,
     service: support}
alerts:
  rules:
    - {name: errors, metric: error_rate, service: support, window: 5m, threshold: 0.05}
    - {name: p95, metric: latency_p95_ms, service: support, window: 5m, threshold: 3000}
    - {name: spend, metric: cost_per_hour, window: 1h, threshold: 50}
    - {name: traffic, metric: request_rate, window: 15m, threshold: 1000}
    - {name: cache, metric: cache_hit_rate, window: 15m, comparison: "<", threshold: 0.1}
    - {name: shed, metric: shed_requests, window: 5m, threshold: 10}
"""


def fill(engine: Engine, count: int, now: datetime) -> None:
    rng = random.Random(7)
    span_s = 3 * 86400.0  # the longest default window: 3 days
    batch: list[dict[str, Any]] = []
    for i in range(count):
        status = 200 if rng.random() > 0.01 else rng.choice((500, 502, 503, 429))
        batch.append(new_trace_record(
            route="chat", service=rng.choice(SERVICES), model_alias="gpt-4o-mini",
            status=status, total_ms=rng.lognormvariate(6, 0.6),
            started_at=now - timedelta(seconds=rng.random() * span_s),
            total_tokens=rng.randint(50, 900), cost_usd=rng.random() / 1000,
            attributes='{"cache":"hit"}' if rng.random() < 0.2 else None))
        if len(batch) == 20_000 or i == count - 1:
            with engine.begin() as connection:
                connection.execute(insert(traces), batch)
            batch.clear()


def naive_counts(engine: Engine, scope: Scope, until: datetime, windows: list[float],
                 latency_ms: float | None) -> list[WindowCounts]:
    """The baseline: two COUNT queries per window."""
    out = []
    with engine.connect() as connection:
        for w in windows:
            where = scope.where(until - timedelta(seconds=w), until)
            bad = traces.c.status >= 500 if latency_ms is None else traces.c.total_ms > latency_ms
            total = connection.execute(select(func.count()).select_from(traces)
                                       .where(*where)).scalar_one()
            n_bad = connection.execute(select(func.count()).select_from(traces)
                                       .where(*where, bad)).scalar_one()
            out.append(WindowCounts(int(total), int(n_bad)))
    return out


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    fn()  # warm the page cache
    samples, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples), result


def run(args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    url = f"sqlite:///{work_dir}/traces.db"
    engine = create_store_engine(url)
    migrate(engine)
    now = datetime.now(UTC)
    log(f"writing {args.count:,} traces over 3 days")
    fill(engine, args.count, now)
    config = parse_config(CONFIG)
    defs = definitions(config)
    rows: list[dict[str, Any]] = []
    for slo in config.slos:
        windows = [w for p in slo.burn_rates for w in (p.long_window, p.short_window)]
        latency = slo.latency_threshold_ms if slo.sli == "latency" else None
        ours_ms, status = timed(lambda slo=slo: evaluate_slo(engine, slo, now), args.repeat)
        base_ms, counts = timed(lambda slo=slo, windows=windows, latency=latency: naive_counts(
            engine, Scope(service=slo.service), now, windows, latency), args.repeat)
        burns = [c.long_burn for c in status.checks]
        expected = [round(c.error_ratio / (1 - slo.objective), 10) if c.error_ratio is not None
                    else None for c in counts[0::2]]
        if burns != expected:
            raise SystemExit(f"mismatch for {slo.name}: {burns} != {expected}")
        counter = SLOCounter(engine, slo)
        start = time.perf_counter()
        counter.status(now)  # the first evaluation fills the buckets
        first_ms = (time.perf_counter() - start) * 1000
        ticks = iter(range(1, 10_000))
        steady_ms, _ = timed(
            lambda counter=counter, ticks=ticks: counter.status(
                now + timedelta(seconds=30 * next(ticks))), args.repeat)
        rows.append({"what": f"SLO {slo.name} ({len(windows)} windows)", "shipyard_ms": ours_ms,
                     "naive_ms": base_ms, "first_ms": first_ms, "steady_ms": steady_ms})
    total_ms, _ = timed(lambda: observe(engine, defs, now), args.repeat)
    counters = {slo.name: SLOCounter(engine, slo) for slo in config.slos}
    observe(engine, defs, now, counters=counters)
    ticks = iter(range(1, 10_000))
    steady_total_ms, _ = timed(lambda: observe(
        engine, defs, now + timedelta(seconds=30 * next(ticks)), counters=counters), args.repeat)
    engine.dispose()
    return {"count": args.count, "rows": rows, "rules": len(config.alerts.rules),
            "slos": len(config.slos), "evaluation_ms": total_ms,
            "steady_evaluation_ms": steady_total_ms, "repeat": args.repeat}


def markdown(report: dict[str, Any]) -> str:
    machine, result = report["machine"], report["result"]
    intro = paragraph(
        f"Measured {report['date']} on {machine['cpu']}, {machine['cores']} cores, Python",
        f"{machine['python']}; shipyard git {report['versions']['shipyard_git']}, SQLite",
        f"{report['versions']['sqlite']}, SQLAlchemy {report['versions']['sqlalchemy']}.",
        f"{result['count']:,} traces spread over 3 days (5 services, 1% errors) in a fresh SQLite",
        "file; medians of",
        f"{result['repeat']} runs after a warm-up. Shipyard computes every window of an SLO's",
        "burn-rate table (the SRE workbook's 1h/5m, 6h/30m, 1d/2h, 3d/6h) in one range scan",
        "over the `(service, started_at)` index; the baseline runs two COUNT queries per",
        "window. Both return the same burn rates (checked) and both read every trace of the",
        "3-day window. The gateway's evaluator does neither after its first run: its",
        "`SLOCounter` counts windows up to 6h exactly and keeps the older part of the 1d and",
        "3d windows in buckets, so each later evaluation (every `alerts.interval_s`, 30 s)",
        "reads the last 6 hours of traces plus the 30 s that just left them.")
    lines = ["| evaluation | one scan ms | per-window queries ms | evaluator, first run ms "
             "| evaluator, steady state ms | one scan / steady |", "|---|--:|--:|--:|--:|--:|"]
    for row in result["rows"]:
        lines.append(f"| {row['what']} | {row['shipyard_ms']:.0f} | {row['naive_ms']:.0f} "
                     f"| {row['first_ms']:.0f} | {row['steady_ms']:.0f} "
                     f"| {row['shipyard_ms'] / row['steady_ms']:.1f}x |")
    whole = paragraph(
        f"A whole evaluation ({result['slos']} SLOs and {result['rules']} rules: error rate,",
        "p95 latency, cost per hour, request rate, cache hit rate, shed requests) takes",
        f"**{result['steady_evaluation_ms']:.0f} ms** in the evaluator's steady state",
        f"({result['evaluation_ms']:.0f} ms stateless, as `shipyard alerts test --evaluate`",
        "runs it), in a thread of one process per store.")
    parts = ["## Alert evaluation", intro, "\n".join(lines), whole]
    if report.get("cpu_busy_before_start", 0) > 0.5:
        parts.append(f"Note: the machine was {report['cpu_busy_before_start']:.0%} busy with "
                     "other work when the run started; absolute numbers are high, the ratios "
                     "hold.")
    return "\n\n".join([*parts, f"Reproduce: `{report['command']}`"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Alert evaluation cost benchmark.")
    parser.add_argument("--count", type=int, default=1_000_000, help="traces in the store")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per measurement")
    parser.add_argument("--no-write", action="store_true",
                        help="print only; leave docs/ and results/ alone")
    args = parser.parse_args(argv)
    work_dir = WORK_ROOT / f"alerts-{time.strftime('%Y%m%d-%H%M%S')}"
    work_dir.mkdir(parents=True)
    busy = wait_for_quiet()
    try:
        result = run(args, work_dir)
    finally:
        for path in work_dir.glob("traces.db*"):
            path.unlink()
        work_dir.rmdir()
    report = {"benchmark": "alerts_eval", "date": now_iso(), "command": command_line(),
              "machine": machine_info(),
              "versions": {"shipyard_git": git_revision(), "sqlite": sqlite3.sqlite_version,
                           "sqlalchemy": dist_version("sqlalchemy")},
              "cpu_busy_before_start": round(busy, 3), "result": result}
    text = markdown(report)
    print(text)
    if not args.no_write:
        write_docs_section("alerts", text)
        write_json(RESULTS_DIR / "alerts_eval.json", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
