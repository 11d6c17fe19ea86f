"""Dashboard benchmark: server time of the /ui pages over 1,000,000 stored traces on SQLite.

    .venv/bin/python bench/dashboard.py [--traces 1000000] [--days 7] [--repeat 20] [--reuse]

Fills a fresh SQLite store with `--traces` traces spread over `--days` days (5 services, 2 models
each, ~4% errors; bulk-inserted straight into the table) and builds their per-minute rollups with
the same `aggregate()`/`upsert()` the trace writer runs per batch. Then the real app
(`create_app`) serves the pages in-process through Starlette's test client with a logged-in
session, and the median and worst of `--repeat` requests per page are reported; the overview's
goal is ≤ 300 ms. Side by side: the overview's numbers computed the naive way, from the raw
traces of the window (what a dashboard without rollups has to read). Also measured: what the
rollups cost the trace writer per batch of 500. Results go to stdout,
`bench/results/dashboard.json` and `docs/benchmarks.md`.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sqlite3
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from starlette.testclient import TestClient

from _harness import (
    RESULTS_DIR,
    command_line,
    dist_version,
    git_revision,
    log,
    machine_info,
    now_iso,
    paragraph,
    write_docs_section,
    write_json,
)
from shipyard.config import parse_config
from shipyard.gateway.app import create_app
from shipyard.store.engine import create_store_engine, migrate
from shipyard.store.rollups import aggregate, upsert
from shipyard.store.tables import LATENCY_BUCKETS
from shipyard.store.traces import new_trace_record

WORK = Path(__file__).resolve().parent / ".work" / "dashboard"
GOAL_MS = 300.0
KEY = "sk-bench-" + "d" * 24
SERVICES = ["support", "search", "summarise", "classify", "translate"]
COLUMNS = ("id", "request_id", "started_at", "ended_at", "tenant_id", "route", "service",
           "model_alias", "provider", "upstream_model", "stream", "status", "error_type",
           "upstream_ms", "overhead_ms", "total_ms", "prompt_tokens", "completion_tokens",
           "total_tokens", "tokens_estimated", "capture", "cost_usd")


def _sqlite_time(value: datetime) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S.%f}"


def fill(path: Path, count: int, days: float) -> dict[str, Any]:
    """Bulk-insert `count` traces ending now, then roll them up as the writer would."""
    if path.exists():
        path.unlink()
    engine = create_store_engine(f"sqlite:///{path}")
    migrate(engine)
    rng = random.Random(42)
    now = datetime.now(UTC)
    span_s = days * 86400
    started = time.perf_counter()
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA journal_mode=WAL")
    raw.execute("PRAGMA synchronous=OFF")
    sql = (f"INSERT INTO traces ({', '.join(COLUMNS)}) VALUES "
           f"({', '.join('?' * len(COLUMNS))})")
    rollup_rows: list[dict[str, Any]] = []
    chunk = 50_000
    for offset in range(0, count, chunk):
        rows = []
        records = []
        for i in range(offset, min(count, offset + chunk)):
            at = now - timedelta(seconds=span_s * (i / count))
            service = SERVICES[i % 5]
            model = f"{service}-{'large' if i % 3 == 0 else 'small'}"
            failed = rng.random() < 0.04
            status = rng.choice((502, 504, 429)) if failed else 200
            upstream = rng.lognormvariate(5.5, 0.6)
            total = upstream + rng.uniform(0.2, 2.0)
            prompt, completion = rng.randint(20, 1500), rng.randint(1, 600)
            error = {502: "UpstreamUnavailable", 504: "UpstreamTimeout",
                     429: "RateLimited"}.get(status)
            cost = (prompt * 0.15 + completion * 0.6) / 1e6
            rows.append((os.urandom(16).hex(), f"req-{i}", _sqlite_time(at),
                         _sqlite_time(at + timedelta(milliseconds=total)), "default", "chat",
                         service, model, "openai", "gpt-4o-mini", 0, status, error, upstream,
                         total - upstream, total, prompt, completion, prompt + completion, 0,
                         "metadata", cost))
            records.append({"tenant_id": "default", "started_at": at, "service": service,
                            "model_alias": model, "status": status, "error_type": error,
                            "total_ms": total, "prompt_tokens": prompt,
                            "completion_tokens": completion, "cost_usd": cost})
        raw.executemany(sql, rows)
        raw.commit()
        rollup_rows.extend(aggregate(records))
        log(f"  {min(count, offset + chunk):,} traces")
    raw.close()
    inserted = time.perf_counter() - started
    with engine.begin() as connection:
        for i in range(0, len(rollup_rows), 5000):
            upsert(connection, rollup_rows[i:i + 5000])
    with engine.connect() as connection:
        connection.exec_driver_sql("ANALYZE")
        rollups = connection.exec_driver_sql("SELECT count(*) FROM trace_rollups").scalar()
    engine.dispose()
    return {"fill_s": round(time.perf_counter() - started, 1), "insert_s": round(inserted, 1),
            "rollup_rows": rollups}


def rollup_cost(repeat: int = 200) -> dict[str, float]:
    """What rollups add to one 500-trace batch of the trace writer (aggregate + upsert)."""
    path = WORK / "rollup-cost.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    engine = create_store_engine(f"sqlite:///{path}")
    migrate(engine)
    rng = random.Random(1)
    now = datetime.now(UTC)
    batches = [[new_trace_record(route="chat", status=rng.choice([200] * 24 + [502]),
                                 service=rng.choice(SERVICES), model_alias="m",
                                 started_at=now + timedelta(milliseconds=2 * (b * 500 + i)),
                                 total_ms=rng.lognormvariate(5.5, 0.6), prompt_tokens=100,
                                 completion_tokens=50, cost_usd=0.0001)
                for i in range(500)] for b in range(repeat)]
    agg, ups = [], []
    for batch in batches:
        t0 = time.perf_counter()
        rolled = aggregate(batch)
        t1 = time.perf_counter()
        with engine.begin() as connection:
            upsert(connection, rolled)
        t2 = time.perf_counter()
        agg.append(t1 - t0)
        ups.append(t2 - t1)
    engine.dispose()
    return {"aggregate_ms": round(statistics.median(agg) * 1e3, 3),
            "upsert_ms": round(statistics.median(ups) * 1e3, 3)}


def naive_overview(path: Path, since: datetime) -> tuple[float, int]:
    """The overview's numbers from raw traces: read the window's rows, bucket, percentiles."""
    t0 = time.perf_counter()
    raw = sqlite3.connect(path)
    rows = raw.execute(
        "SELECT started_at, status, total_ms, prompt_tokens, completion_tokens, cost_usd "
        "FROM traces WHERE tenant_id = ? AND started_at >= ?",
        ("default", _sqlite_time(since))).fetchall()
    buckets: dict[str, list[Any]] = {}
    for at, status, total, prompt, completion, cost in rows:
        slot = at[:15]  # ten-minute buckets
        b = buckets.setdefault(slot, [0, 0, 0, 0.0, []])
        b[0] += 1
        b[1] += status >= 400
        b[2] += prompt + completion
        b[3] += cost
        b[4].append(total)
    for b in buckets.values():
        b[4].sort()
        _ = [b[4][int(q * (len(b[4]) - 1))] for q in (0.5, 0.95, 0.99)]
    everything = sorted(r[2] for r in rows)
    _ = [everything[int(q * (len(everything) - 1))] for q in (0.5, 0.95, 0.99)]
    raw.close()
    return (time.perf_counter() - t0) * 1e3, len(rows)


def serve_pages(path: Path, repeat: int) -> list[dict[str, Any]]:
    app = create_app(parse_config(f'store: {{url: "sqlite:///{path}"}}\n'
                                  f'auth: {{api_keys: ["{KEY}"]}}\n'), migrate=False)
    results = []
    with TestClient(app, base_url="http://127.0.0.1") as client:  # type: ignore[arg-type]
        form = client.get("/ui/login").text
        csrf = re.search(r'name="csrf" value="([^"]+)"', form)
        assert csrf is not None
        client.post("/ui/login", data={"csrf": csrf[1], "key": KEY})
        explorer = client.get("/ui/traces").text
        trace = re.search(r'href="/ui/traces/([0-9a-f]{32})"', explorer)
        assert trace is not None
        older = re.search(r'id="older" href="([^"]+)"', explorer)
        assert older is not None
        pages = [("overview, last 24 h", "/ui"), ("overview, last 7 d", "/ui?range=7d"),
                 ("service page, 24 h", "/ui/services/support"),
                 ("trace explorer, first page", "/ui/traces"),
                 ("trace explorer, page 2 (keyset)",
                  "/ui/traces" + older[1].replace("&amp;", "&")),
                 ("trace explorer, errors of one service", "/ui/traces?service=search"
                  "&status=errors"),
                 ("trace detail", f"/ui/traces/{trace[1]}")]
        for name, url in pages:
            client.get(url)  # warm: templates compiled, page cache of SQLite filled
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                response = client.get(url)
                times.append((time.perf_counter() - t0) * 1e3)
                assert response.status_code == 200, (url, response.status_code)
            results.append({"page": name, "url": url, "median_ms": statistics.median(times),
                            "max_ms": max(times), "bytes": len(response.content)})
            log(f"  {name}: median {statistics.median(times):.1f} ms, max {max(times):.1f} ms")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--reuse", action="store_true",
                        help="Reuse the store of the last run (same --traces).")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / f"traces-{args.traces}.db"
    if args.reuse and path.exists():
        filled: dict[str, Any] = {"fill_s": None, "insert_s": None, "rollup_rows": None}
        log(f"reusing {path}")
    else:
        log(f"filling {path} with {args.traces:,} traces over {args.days} days")
        filled = fill(path, args.traces, args.days)
    log("serving pages")
    pages = serve_pages(path, args.repeat)
    naive_ms, naive_rows = naive_overview(path, datetime.now(UTC) - timedelta(hours=24))
    cost = rollup_cost()
    load = os.getloadavg()[0]
    overview = pages[0]["median_ms"]
    result = {"when": now_iso(), "machine": machine_info(), "git": git_revision(),
              "sqlite": sqlite3.sqlite_version, "sqlalchemy": dist_version("sqlalchemy"),
              "traces": args.traces, "days": args.days, "repeat": args.repeat, **filled,
              "pages": pages, "naive_overview_ms": naive_ms, "naive_rows": naive_rows,
              "rollup_cost": cost, "goal_ms": GOAL_MS, "met": overview <= GOAL_MS,
              "latency_buckets": LATENCY_BUCKETS, "load_average_1m": load,
              "command": command_line()}
    write_json(RESULTS_DIR / "dashboard.json", result)
    m = result["machine"]
    lines = [
        "## Dashboard",
        "",
        paragraph(f"Measured {result['when']} on {m['cpu'].split()[0]} {m['cpu'].split()[1]}, "
                  f"{m['cores']} cores, {m['ram_gib']} GiB RAM; shipyard git {result['git']}, "
                  f"SQLAlchemy {result['sqlalchemy']}, SQLite {result['sqlite']}; 1-minute load "
                  f"average {load:.1f} at the end (the machine is shared)."),
        "",
        paragraph(f"{args.traces:,} traces over {args.days:g} days (5 services, 2 models each, ~4% "
                  "errors) in one SQLite file, with their per-minute and per-hour rollups "
                  f"({filled['rollup_rows'] or 'reused'} rows) built by the writer's own "
                  "`aggregate()`/`upsert()`. Each page is served by the real app in-process "
                  "(Starlette test client, logged-in session, no network), warmed once, then "
                  f"requested {args.repeat} times: server time per page, median and worst."),
        "",
        "| page | median ms | worst ms | HTML KiB |",
        "|---|--:|--:|--:|",
        *(f"| {p['page']} | {p['median_ms']:.1f} | {p['max_ms']:.1f} | {p['bytes'] / 1024:.0f} |"
          for p in pages),
        "",
        paragraph(f"**Overview: {overview:.1f} ms median, goal ≤ {GOAL_MS:.0f} ms: "
                  f"{'met' if result['met'] else 'NOT met'}.** The same numbers computed "
                  f"without rollups (read the last 24 h of raw traces, {naive_rows:,} rows, "
                  f"bucket and sort in Python) take {naive_ms:,.0f} ms: "
                  f"{naive_ms / overview:.0f} times the rollup-backed page."),
        "",
        paragraph("Cost to the trace writer: per batch of 500 traces, aggregating the batch in "
                  f"Python takes {cost['aggregate_ms']:.2f} ms and upserting its rollup rows "
                  f"{cost['upsert_ms']:.2f} ms (median of 200 batches, SQLite), in the same "
                  "transaction as the traces."),
        "",
        f"Reproduce: `{result['command']}`",
    ]
    write_docs_section("dashboard", "\n".join(lines))
    log("\n".join(lines))


if __name__ == "__main__":
    main()
