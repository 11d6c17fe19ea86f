"""What durability costs: items per second through `shipyard.work` (store-backed queue, leases,
attempt log) against a bare in-memory `asyncio.Queue` running the same trivial handler with
the same concurrency, in one run on one machine.

Rows: the in-memory peer; the Worker on SQLite (WAL, one process); on PostgreSQL (one
process, then two processes competing for the same items); and the enqueue rate (one
transaction per item, as webhooks and jobs enqueue; and `enqueue_many`, as batch lines do).

    .venv/bin/python bench/work_queue.py [--items 2000] [--concurrency 8] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _harness import (
    REPO_DIR,
    RESULTS_DIR,
    command_line,
    load_average,
    log,
    machine_info,
    now_iso,
    paragraph,
    write_docs_section,
    write_json,
)
from shipyard.store import create_store_engine, migrate
from shipyard.work import Attempt, Worker, WorkItem, WorkQueue

PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
KIND = "bench"


async def work(payload: dict[str, Any]) -> dict[str, Any]:
    """The trivial job both sides run."""
    await asyncio.sleep(0)
    return {"n": payload["n"]}


async def handler(item: WorkItem, attempt: Attempt) -> dict[str, Any]:
    return await work(item.payload)


async def in_memory(items: int, concurrency: int) -> float:
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for n in range(items):
        queue.put_nowait({"n": n})
    results: list[Any] = []

    async def worker() -> None:
        while True:
            try:
                payload = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            results.append(await work(payload))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    assert len(results) == items
    return items / elapsed


async def _drain(url: str, concurrency: int, owner: str) -> None:
    engine = create_store_engine(url)
    queue = WorkQueue(engine)
    worker = Worker(queue, owner=owner, lease_s=30, poll_interval_s=0.02)
    worker.handle(KIND, handler, concurrency=concurrency)
    await worker.run_until_idle(timeout_s=600)
    engine.dispose()


def shipyard_rate(url: str, items: int, concurrency: int, processes: int) -> float:
    engine = create_store_engine(url)
    migrate(engine)
    queue = WorkQueue(engine)
    queue.enqueue_many(KIND, ({"n": n} for n in range(items)))
    start = time.perf_counter()
    if processes == 1:
        asyncio.run(_drain(url, concurrency, "bench-0"))
    else:
        env = {**os.environ, "PYTHONPATH": str(REPO_DIR / "src")}
        children = [subprocess.Popen([sys.executable, __file__, "--child", url,
                                      "--concurrency", str(concurrency)], env=env)
                    for _ in range(processes)]
        for child in children:
            child.wait(600)
    elapsed = time.perf_counter() - start
    counts = queue.counts(kind=KIND)
    engine.dispose()
    if counts["succeeded"] != items:
        raise SystemExit(f"only {counts['succeeded']} of {items} items succeeded: {counts}")
    return items / elapsed


def enqueue_rates(url: str, items: int) -> tuple[float, float]:
    engine = create_store_engine(url)
    migrate(engine)
    queue = WorkQueue(engine)
    start = time.perf_counter()
    for n in range(items):
        queue.enqueue("enq", {"n": n})
    single = items / (time.perf_counter() - start)
    start = time.perf_counter()
    queue.enqueue_many("enq-many", ({"n": n} for n in range(items)))
    many = items / (time.perf_counter() - start)
    engine.dispose()
    return single, many


class _PostgresDatabase:
    def __init__(self) -> None:
        self.name = f"shipyard_bench_{uuid.uuid4().hex[:10]}"

    def __enter__(self) -> str:
        import psycopg

        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:5432/{self.name}"

    def __exit__(self, *exc: object) -> None:
        import psycopg

        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--no-write", action="store_true", help="Do not update the docs.")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(_drain(args.child, args.concurrency, f"bench-{os.getpid()}"))
        return
    n, c = args.items, args.concurrency
    load_before = load_average()
    rows: list[tuple[str, float]] = []
    log("in-memory asyncio.Queue")
    rows.append(("in-memory asyncio.Queue (no durability; the peer)",
                 asyncio.run(in_memory(n, c))))
    with tempfile.TemporaryDirectory() as folder:
        sqlite = f"sqlite:///{Path(folder) / 'bench.db'}"
        log("Worker on SQLite")
        rows.append(("Worker, SQLite (WAL), 1 process", shipyard_rate(sqlite, n, c, 1)))
        sqlite_enqueue = enqueue_rates(f"sqlite:///{Path(folder) / 'enqueue.db'}", n)
    with _PostgresDatabase() as pg:
        log("Worker on PostgreSQL, 1 process")
        rows.append(("Worker, PostgreSQL, 1 process", shipyard_rate(pg, n, c, 1)))
    with _PostgresDatabase() as pg:
        log("Worker on PostgreSQL, 2 processes")
        rows.append(("Worker, PostgreSQL, 2 processes", shipyard_rate(pg, n, c, 2)))
    with _PostgresDatabase() as pg:
        pg_enqueue = enqueue_rates(pg, n)
    peer = rows[0][1]
    table = ["| run | items/s | ms per item | in-memory is N times faster |",
             "|---|---:|---:|---:|"]
    table += [f"| {name} | {rate:,.0f} | {1000 / rate:.3f} | {peer / rate:,.0f} |"
              for name, rate in rows]
    enqueue = ["| store | `enqueue` (one transaction per item) | `enqueue_many` (1000 per "
               "transaction) |", "|---|---:|---:|",
               f"| SQLite | {sqlite_enqueue[0]:,.0f}/s | {sqlite_enqueue[1]:,.0f}/s |",
               f"| PostgreSQL | {pg_enqueue[0]:,.0f}/s | {pg_enqueue[1]:,.0f}/s |"]
    machine = machine_info()
    markdown = "\n".join([
        "## Durable work queue (`bench/work_queue.py`)", "",
        paragraph(f"{n:,} items with a trivial async handler, {c} at once per process, "
                  "through `shipyard.work.Worker` (one claim transaction per batch of due "
                  "items, one completion transaction per item: the conditional update and "
                  "its attempt-log row) and through a bare in-memory `asyncio.Queue` with the "
                  "same handler and concurrency, in one run. What durability costs is about "
                  "one store commit per item: PostgreSQL's commits wait for the disk "
                  "(`synchronous_commit` on), SQLite's (WAL, `synchronous=NORMAL`) do not. "
                  f"Machine: {machine.get('cores')} cores, shared with other work (load "
                  f"average {load_before:.1f} at the start), so read the rates as a floor "
                  "and compare rows of one run."), "",
        *table, "", *enqueue, "",
        f"Run: `{command_line()}` at {now_iso()}.",
    ])
    print(markdown)
    write_json(RESULTS_DIR / "work_queue.json", {"rows": rows, "enqueue": {
        "sqlite": sqlite_enqueue, "postgresql": pg_enqueue}, "items": n, "concurrency": c,
        "machine": machine, "load_before": load_before})
    if not args.no_write:
        write_docs_section("work_queue", markdown)


if __name__ == "__main__":
    main()
