"""Trace writer benchmark: sustained traces/s from the hot path's `submit()` into SQLite.

    .venv/bin/python bench/trace_writer.py [--count 200000] [--no-write]

One producer thread builds realistic trace records with `new_trace_record()` (as the gateway
does per request) and submits them as fast as the bounded queue accepts them; when the queue is
full it waits for room instead of dropping. `stop()` flushes the rest. The clock runs from the
first submit until `stop()` returns, then the rows in the store are counted to check that every
trace was written. Results go to stdout, `bench/results/trace_writer.json` and
`docs/benchmarks.md`.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sqlite3
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    RESULTS_DIR,
    ForeignCpu,
    RssSampler,
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
from shipyard.store.engine import create_store_engine, migrate
from shipyard.store.traces import count_traces, new_trace_record
from shipyard.store.writer import TraceWriter

WORK_ROOT = Path(__file__).resolve().parent / ".work"
GOAL_TRACES_PER_S = 10_000


def realistic_record(index: int, rng: random.Random, base: datetime) -> dict[str, Any]:
    """A trace as the gateway writes it for a chat call with `metadata` capture."""
    started = base + timedelta(microseconds=index * 250)
    upstream_ms = rng.uniform(80.0, 1200.0)
    overhead_ms = rng.uniform(0.1, 0.6)
    prompt_tokens = rng.randint(8, 2000)
    completion_tokens = rng.randint(1, 800)
    failed = index % 100 == 99
    return new_trace_record(
        request_id=f"req-{index:012d}",
        started_at=started,
        ended_at=started + timedelta(milliseconds=upstream_ms + overhead_ms),
        key_id="key-0001",
        route="chat",
        model_alias="bench",
        provider="up",
        upstream_model="gpt-4o-mini-2024-07-18",
        stream=index % 3 == 0,
        status=502 if failed else 200,
        error_type="upstream_error" if failed else None,
        error_message="upstream returned HTTP 503: overloaded" if failed else None,
        upstream_ms=upstream_ms,
        ttft_ms=upstream_ms * 0.3 if index % 3 == 0 else None,
        overhead_ms=overhead_ms,
        total_ms=upstream_ms + overhead_ms,
        prompt_tokens=None if failed else prompt_tokens,
        completion_tokens=None if failed else completion_tokens,
        total_tokens=None if failed else prompt_tokens + completion_tokens,
        finish_reason=None if failed else "stop",
        capture="metadata",
        request_bytes=rng.randint(80, 20_000),
        response_bytes=None if failed else rng.randint(300, 6_000),
        attributes='{"user":"u-42","messages":3}',
    )


def run(args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    url = args.url or f"sqlite:///{work_dir / 'traces.db'}"
    engine = create_store_engine(url)
    migrate(engine)
    before = count_traces(engine)
    writer = TraceWriter(
        engine,
        queue_size=args.queue_size,
        batch_size=args.batch_size,
        flush_interval_s=args.flush_interval,
    )
    rng = random.Random(7)
    base = datetime.now(UTC)
    waits = 0
    produced_s = 0.0

    def produce() -> None:
        nonlocal waits, produced_s
        start = time.perf_counter()
        for index in range(args.count):
            record = realistic_record(index, rng, base)
            # Single producer: the depth only shrinks between this check and submit().
            while writer.depth >= args.queue_size:
                waits += 1
                time.sleep(0.0005)
            if not writer.submit(record):
                raise RuntimeError("submit() refused a record although the queue had room")
        produced_s = time.perf_counter() - start

    log(f"submitting {args.count:,} traces to {engine.url.render_as_string(hide_password=True)}")
    with RssSampler(os.getpid()) as sampler, ForeignCpu([]) as foreign:
        writer.start()
        start = time.perf_counter()
        producer = threading.Thread(target=produce, name="producer")
        producer.start()
        producer.join()
        writer.stop(timeout=600)
        elapsed = time.perf_counter() - start
    rows = count_traces(engine) - before
    engine.dispose()
    db_bytes = sum(p.stat().st_size for p in work_dir.glob("traces.db*")) if not args.url else None
    rate = args.count / elapsed
    result = {
        "count": args.count,
        "rows_written": rows,
        "all_written": rows == args.count,
        "writer_written": writer.written,
        "writer_dropped": writer.dropped,
        "writer_lost": writer.lost,
        "writer_failures": writer.failures,
        "elapsed_s": round(elapsed, 3),
        "traces_per_s": round(rate, 1),
        "producer_s": round(produced_s, 3),
        "producer_waits_for_room": waits,
        "queue_size": args.queue_size,
        "batch_size": args.batch_size,
        "flush_interval_s": args.flush_interval,
        "store": "SQLite (WAL)" if not args.url else engine.url.get_backend_name(),
        "db_mib": round(db_bytes / 2**20, 1) if db_bytes is not None else None,
        "peak_rss_mib": round(sampler.peak_mib, 1),
        "foreign_cpu": round(foreign.foreign, 3),
        "goal_traces_per_s": GOAL_TRACES_PER_S,
        "status": "met" if rate >= GOAL_TRACES_PER_S and rows == args.count else "MISSED",
    }
    log(
        f"{rows:,}/{args.count:,} rows in {elapsed:.2f} s: {rate:,.0f} traces/s "
        f"(producer {produced_s:.2f} s, waited for room {waits:,} times)"
        + (
            f", WARNING: {foreign.foreign:.0%} of the CPU went to other processes"
            if foreign.foreign > 0.05
            else ""
        )
    )
    return result


def run_busy_loop(args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    """The writer beside a saturated event loop, as in the gateway under load.

    One thread stands in for the event loop: per request it burns `--work-us` of pure-Python
    CPU (holding the GIL the way request handling does), then submits one trace and never
    waits for room, like the gateway; it releases the GIL only once per `--poll-every`
    requests, as uvloop does in its poll for I/O. The writer thread has to win the GIL from it.
    Reports how many traces were dropped at that offered rate.
    """
    url = args.url or f"sqlite:///{work_dir / 'traces-busy.db'}"
    engine = create_store_engine(url)
    migrate(engine)
    before = count_traces(engine)
    writer = TraceWriter(
        engine,
        queue_size=args.queue_size,
        batch_size=args.batch_size,
        flush_interval_s=args.flush_interval,
    )
    rng = random.Random(11)
    base = datetime.now(UTC)
    work_s = args.work_us / 1e6
    count = args.busy_count
    log(
        f"busy event loop: {count:,} traces, {args.work_us:g} µs of Python work before each "
        f"(offered ≈ {1 / (work_s + 10e-6):,.0f}/s)"
    )
    quiet = logging.getLogger("shipyard.traces")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # drops are counted here; skip the writer's warnings
    writer.start()
    start = time.perf_counter()
    for index in range(count):
        until = time.perf_counter() + work_s
        while time.perf_counter() < until:
            pass
        writer.submit(realistic_record(index, rng, base))
        if index % args.poll_every == 0:
            time.sleep(0)  # the loop's poll for I/O: the one moment it lets go of the GIL
    offered_s = time.perf_counter() - start
    writer.stop(timeout=600)
    elapsed = time.perf_counter() - start
    quiet.setLevel(level)
    rows = count_traces(engine) - before
    engine.dispose()
    dropped = writer.dropped
    result = {
        "count": count,
        "work_us": args.work_us,
        "poll_every": args.poll_every,
        "offered_per_s": round(count / offered_s, 1),
        "rows_written": rows,
        "dropped": dropped,
        "dropped_share": round(dropped / count, 4),
        "written_during_load_per_s": round((count - dropped) / elapsed, 1),
        "elapsed_s": round(elapsed, 3),
        "status": "met" if dropped == 0 and rows == count else "MISSED",
    }
    log(
        f"busy event loop: offered {result['offered_per_s']:,.0f}/s, {dropped:,} of {count:,} "
        f"dropped ({dropped / count:.0%}), {rows:,} rows written"
    )
    return result


def markdown(report: dict[str, Any]) -> str:
    machine, result, versions = report["machine"], report["result"], report["versions"]
    intro = paragraph(
        f"Measured {report['date']} on {machine['cpu']}, {machine['cores']} cores,",
        f"{machine['ram_gib']} GiB RAM, Python {machine['python']}; shipyard",
        f"{versions['shipyard']} (git {versions['shipyard_git']}), SQLAlchemy",
        f"{versions['sqlalchemy']}, SQLite {versions['sqlite']}.",
    )
    method = paragraph(
        f"One producer thread builds {result['count']:,} realistic chat traces with",
        "`new_trace_record()` and submits them to a `TraceWriter` (queue",
        f"{result['queue_size']:,}, batches of {result['batch_size']}, flush interval",
        f"{result['flush_interval_s']} s) as fast as the queue takes them, waiting for room",
        "when it is full; the clock stops when `stop()` has flushed everything. The store is",
        f"{result['store']} in a fresh file.",
    )
    table = "\n".join(
        [
            "| traces | rows written | elapsed s | traces/s | goal | status | producer s "
            "| peak RSS MiB |",
            "|--:|--:|--:|--:|--:|---|--:|--:|",
            f"| {result['count']:,} | {result['rows_written']:,} | {result['elapsed_s']:.2f} "
            f"| {result['traces_per_s']:,.0f} | ≥ {result['goal_traces_per_s']:,} "
            f"| {result['status']} | {result['producer_s']:.2f} "
            f"| {result['peak_rss_mib']:.1f} |",
        ]
    )
    parts = ["## Trace writer", intro, method, table]
    if result.get("foreign_cpu", 0) > 0.05:
        parts.append(
            f"Note: {result['foreign_cpu']:.0%} of the machine's CPU went to processes outside "
            "the benchmark during this run; its numbers are skewed."
        )
    busy = report.get("busy_loop")
    if busy:
        parts.append(
            paragraph(
                "**Beside a saturated event loop.** In the gateway the writer thread shares the",
                "GIL with an event loop that is busy all the time under load. To model that, one",
                f"thread burns {busy['work_us']:g} µs of pure-Python CPU per request, submits a",
                "trace without ever waiting for room (like the gateway) and lets go of the GIL",
                f"only once per {busy['poll_every']} requests (an event loop's poll for I/O),",
                f"offering {busy['offered_per_s']:,.0f} traces/s. A model of the gateway at",
                "saturation, not the gateway itself (see the gateway section). Goal: the writer",
                "keeps up and nothing is dropped.",
            )
        )
        parts.append(
            "\n".join(
                [
                    "| traces offered | offered/s | dropped (queue full) | rows written | status |",
                    "|--:|--:|--:|--:|---|",
                    f"| {busy['count']:,} | {busy['offered_per_s']:,.0f} "
                    f"| {busy['dropped']:,} ({busy['dropped_share']:.0%}) "
                    f"| {busy['rows_written']:,} | {busy['status']} |",
                ]
            )
        )
    parts.append(f"Reproduce: `{report['command']}`")
    return "\n\n".join(parts)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Trace writer throughput benchmark.")
    parser.add_argument("--count", type=int, default=200_000, help="traces to submit")
    parser.add_argument("--queue-size", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--flush-interval", type=float, default=0.2)
    parser.add_argument(
        "--url", default=None, help="store URL (default: a fresh SQLite file under bench/.work)"
    )
    parser.add_argument(
        "--busy-count",
        type=int,
        default=50_000,
        help="traces for the saturated-event-loop run (0 skips it)",
    )
    parser.add_argument(
        "--work-us",
        type=float,
        default=150.0,
        help="pure-Python CPU per request in the saturated-event-loop run, in µs",
    )
    parser.add_argument(
        "--poll-every",
        type=int,
        default=16,
        help="requests per event-loop iteration (GIL released once per iteration)",
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print only; leave docs/ and results/ alone"
    )
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    work_dir = WORK_ROOT / f"trace-writer-{time.strftime('%Y%m%d-%H%M%S')}"
    work_dir.mkdir()
    busy = wait_for_quiet()
    busy_result: dict[str, Any] | None = None
    try:
        result = run(args, work_dir)
        if args.busy_count > 0:
            busy_result = run_busy_loop(args, work_dir)
    finally:
        for path in work_dir.glob("traces*.db*"):
            path.unlink()
        work_dir.rmdir()

    report: dict[str, Any] = {
        "benchmark": "trace_writer",
        "date": now_iso(),
        "command": command_line(),
        "machine": machine_info(),
        "cpu_busy_before_start": round(busy, 3),
        "versions": {
            "shipyard": dist_version("shipyard"),
            "shipyard_git": git_revision(),
            "sqlalchemy": dist_version("sqlalchemy"),
            "sqlite": sqlite3.sqlite_version,
        },
        "result": result,
        "busy_loop": busy_result,
    }
    print(
        f"\n{result['traces_per_s']:,.0f} traces/s "
        f"(goal ≥ {GOAL_TRACES_PER_S:,}: {result['status']}); "
        f"{result['rows_written']:,}/{result['count']:,} rows written in {result['elapsed_s']} s"
    )
    if busy_result is not None:
        print(
            f"beside a saturated event loop: offered {busy_result['offered_per_s']:,.0f}/s, "
            f"dropped {busy_result['dropped']:,} of {busy_result['count']:,} "
            f"({busy_result['dropped_share']:.0%}): {busy_result['status']}"
        )
    if not args.no_write:
        write_json(RESULTS_DIR / "trace_writer.json", report)
        write_docs_section("trace-writer", markdown(report))
        log("wrote bench/results/trace_writer.json and docs/benchmarks.md")
    return 0 if result["all_written"] else 1


if __name__ == "__main__":
    sys.exit(main())
