"""Replicas that agree: budget and limit accuracy under 1,000 concurrent requests across four
real `shipyard serve` replicas, and capacity per core.

Two set-ups side by side in one run, the same `shipyard sim` upstream (known usage) and price:
- **redis**: `state.backend: redis` — rate limits, budget reservations and breakers in Redis;
- **per-process**: `state.backend: memory` with `state.per_process: true` — what every replica
  does alone (rate limits per pod, as peers that pre-check per pod do); budgets still go
  through the store's ledger (PostgreSQL row locks), so they stay exact there too.

Each set-up gets 1,000 concurrent requests (spread round-robin over the four replicas) against
a $0.50 daily budget, an rpm-200 alias and a tpm-3400 alias; the error is reported in units of
one request's cost (or of the limit). Then capacity: one replica under a closed loop of 32
connections for `--seconds`, requests per CPU-second of the gateway process (robust to a
shared machine), and req/s.

    .venv/bin/python bench/replicas.py [--requests 1000] [--seconds 10] [--no-write]

Needs PostgreSQL on 127.0.0.1:5432 (a private database is created and dropped) and Redis on
127.0.0.1:6379 (a private key prefix, deleted afterwards).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from _harness import (
    REPO_DIR,
    RESULTS_DIR,
    _proc_ticks,
    command_line,
    free_port,
    load_average,
    log,
    machine_info,
    managed_processes,
    now_iso,
    paragraph,
    wait_for_port,
    write_docs_section,
    write_json,
)

KEY = "sk-bench-" + "r" * 24
PRICE = 300.0  # USD per 1M tokens in and out: a request of ~17 tokens costs ~$0.005
LIMIT_USD = 0.50
RPM = 200
TPM = 3400
MAX_TOKENS = 8
PG = "host=127.0.0.1 port=5432 user=postgres dbname=test"


def config(sim_port: int, store_url: str, state: str) -> str:
    return f"""
store: {{url: "{store_url}"}}
traces: {{flush_interval_s: 0.05}}
auth: {{api_keys: ["{KEY}"]}}
state: {state}
server: {{access_log: false}}
providers:
  sim: {{kind: openai, base_url: "http://127.0.0.1:{sim_port}/v1", timeout_s: 30}}
models:
  demo: {{provider: sim, model: sim-chat}}
  rpm-demo: {{provider: sim, model: sim-chat, rate_limit: {{rpm: {RPM}}}}}
  tpm-demo: {{provider: sim, model: sim-chat, rate_limit: {{tpm: {TPM}}}}}
pricing:
  demo: {{input_per_1m: {PRICE}, output_per_1m: {PRICE}}}
  rpm-demo: {{input_per_1m: 0, output_per_1m: 0}}
  tpm-demo: {{input_per_1m: 0, output_per_1m: 0}}
  tpm-free: {{input_per_1m: 0, output_per_1m: 0}}
budgets:
  - {{tenant: default, period: day, limit_usd: {LIMIT_USD}}}
"""


def body(i: int, model: str) -> dict[str, Any]:
    return {"model": model, "max_tokens": MAX_TOKENS,
            "messages": [{"role": "user", "content": f"Question number {i} please"}]}


async def fire(urls: list[str], model: str, n: int) -> list[tuple[int, dict[str, Any]]]:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers={
            "authorization": f"Bearer {KEY}"}) as session:
        async def one(i: int) -> tuple[int, dict[str, Any]]:
            url = urls[i % len(urls)] + "/v1/chat/completions"
            async with session.post(url, json=body(i, model)) as response:
                return response.status, await response.json(content_type=None)

        return list(await asyncio.gather(*(one(i) for i in range(n))))


def accuracy(urls: list[str], n: int) -> dict[str, Any]:
    """The rpm and tpm aliases first (priced at zero, so they spend nothing), then the
    budget."""
    out: dict[str, Any] = {}
    started = time.monotonic()
    results = asyncio.run(fire(urls, "rpm-demo", n))
    elapsed = time.monotonic() - started
    passed = sum(s == 200 for s, _ in results)
    allowed = RPM + elapsed * RPM / 60
    out["rpm"] = {"passed": passed, "allowed": round(allowed, 1),
                  "error_pct": round(100 * (passed - allowed) / RPM, 1),
                  "statuses": sorted({s for s, _ in results})}
    started = time.monotonic()
    results = asyncio.run(fire(urls, "tpm-demo", n))
    elapsed = time.monotonic() - started
    used = sum(r["usage"]["total_tokens"] for s, r in results if s == 200)
    allowed = TPM + elapsed * TPM / 60
    out["tpm"] = {"tokens": used, "allowed": round(allowed, 1),
                  "error_pct": round(100 * (used - allowed) / TPM, 1),
                  "statuses": sorted({s for s, _ in results})}
    started = time.monotonic()
    results = asyncio.run(fire(urls, "demo", n))
    elapsed = time.monotonic() - started
    costs = [(r["usage"]["total_tokens"]) * PRICE / 1e6 for s, r in results if s == 200]
    one = max(costs) if costs else 0.0
    spent = sum(costs)
    out["budget"] = {"passed": len(costs), "spent_usd": round(spent, 6),
                     "error_usd": round(spent - LIMIT_USD, 6),
                     "error_in_requests": round((spent - LIMIT_USD) / one, 2) if one else None,
                     "statuses": sorted({s for s, _ in results}), "seconds": round(elapsed, 2)}
    return out


async def closed_loop(url: str, seconds: float, connections: int) -> int:
    done = 0
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, headers={
            "authorization": f"Bearer {KEY}"}) as session:
        async def worker(w: int) -> None:
            nonlocal done
            i = 0
            while time.monotonic() < deadline:
                async with session.post(url + "/v1/chat/completions",
                                        json=body(w * 100000 + i, "tpm-free")) as response:
                    await response.read()
                    if response.status == 200:
                        done += 1
                i += 1

        await asyncio.gather(*(worker(w) for w in range(connections)))
    return done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    import psycopg
    import redis

    databases = {name: f"shipyard_bench_{uuid.uuid4().hex[:10]}"
                 for name in ("redis", "per-process")}
    prefix = f"shipyard-bench-{uuid.uuid4().hex[:10]}:"
    with psycopg.connect(PG, autocommit=True) as conn:
        for database in databases.values():
            conn.execute(f'CREATE DATABASE "{database}"')
    results: dict[str, Any] = {"machine": machine_info(), "when": now_iso(),
                               "command": command_line(), "requests": args.requests}
    work = Path(tempfile.mkdtemp(prefix="shipyard-bench-replicas-"))
    env = {**os.environ, "PYTHONPATH": str(REPO_DIR / "src")}
    try:
        with managed_processes(work) as group:
            sim_port = free_port()
            sim = group.start("sim", [sys.executable, "-m", "shipyard", "sim", "--port",
                                      str(sim_port)], env=env)
            wait_for_port(sim, sim_port, 30)
            setups = {
                "redis": f'{{backend: redis, redis_url: "redis://127.0.0.1:6379/0", '
                         f'key_prefix: "{prefix}"}}',
                "per-process": "{backend: memory, per_process: true}",
            }
            for name, state in setups.items():
                store = f"postgresql+psycopg://postgres@127.0.0.1:5432/{databases[name]}"
                path = work / f"{name}.yaml"
                path.write_text(config(sim_port, store, state))
                urls = []
                for i in range(4):
                    port = free_port()
                    server = group.start(f"{name}-{i}", [
                        sys.executable, "-m", "shipyard", "serve", "--config", str(path),
                        "--port", str(port)], env=env, cwd=work)
                    problem = wait_for_port(server, port, 60)
                    if problem:
                        raise RuntimeError(problem)
                    urls.append(f"http://127.0.0.1:{port}")
                log(f"{name}: 4 replicas up; {args.requests} concurrent requests x 3")
                results[name] = accuracy(urls, args.requests)
                log(json.dumps(results[name]))
                for server in list(group.servers):
                    if server.name.startswith(name):
                        group.stop(server)
            # Capacity per core: one replica, no limits on the alias, a closed loop.
            path = work / "capacity.yaml"
            path.write_text(config(sim_port, f"sqlite:///{work}/capacity.db",
                                   "{backend: memory}").replace(
                "tpm-demo:", "tpm-free: {provider: sim, model: sim-chat}\n  tpm-demo:"))
            port = free_port()
            server = group.start("capacity", [
                sys.executable, "-m", "shipyard", "serve", "--config", str(path), "--port",
                str(port)], env=env, cwd=work)
            if problem := wait_for_port(server, port, 60):
                raise RuntimeError(problem)
            url = f"http://127.0.0.1:{port}"
            asyncio.run(closed_loop(url, 2.0, 32))  # warm up
            ticks = _proc_ticks(server.pid)
            started = time.monotonic()
            done = asyncio.run(closed_loop(url, args.seconds, 32))
            wall = time.monotonic() - started
            cpu_s = (_proc_ticks(server.pid) - ticks) / os.sysconf("SC_CLK_TCK")
            results["capacity"] = {"requests": done, "seconds": round(wall, 2),
                                   "req_per_s": round(done / wall, 1),
                                   "gateway_cpu_s": round(cpu_s, 2),
                                   "req_per_cpu_s": round(done / cpu_s, 1) if cpu_s else None,
                                   "load_average": load_average()}
            log(json.dumps(results["capacity"]))
    finally:
        with psycopg.connect(PG, autocommit=True) as conn:
            for database in databases.values():
                conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        client = redis.Redis(host="127.0.0.1", port=6379)
        for key in client.scan_iter(match=prefix + "*"):
            client.delete(key)
        client.close()
    write_json(RESULTS_DIR / "replicas.json", results)
    if not args.no_write:
        write_docs_section("replicas", render(results))
    return 0


def render(r: dict[str, Any]) -> str:
    rows = []
    for name in ("redis", "per-process"):
        b, rpm, tpm = r[name]["budget"], r[name]["rpm"], r[name]["tpm"]
        rows.append(f"| {name} | {b['passed']} in {b['seconds']:.1f} s | "
                    f"${b['spent_usd']:.4f} | {b['error_in_requests']:+.2f} | {rpm['passed']} "
                    f"({100 * (rpm['passed'] - RPM) / RPM:+.1f}%; ≤ {rpm['allowed']:.0f}) | "
                    f"{tpm['tokens']} ({100 * (tpm['tokens'] - TPM) / TPM:+.1f}%; "
                    f"≤ {tpm['allowed']:.0f}) |")
    c = r["capacity"]
    return "\n".join([
        "## Replicas that agree (`bench/replicas.py`)",
        "",
        paragraph(
            f"Four real `shipyard serve` replicas on one PostgreSQL database, {r['requests']} "
            "concurrent requests spread over them (round-robin), `shipyard sim` upstream with "
            f"known usage, ${PRICE:.0f} per million tokens, `max_tokens: {MAX_TOKENS}`. "
            f"Budget ${LIMIT_USD:.2f}/day; an alias limited to {RPM} rpm; one limited to "
            f"{TPM} tpm. *redis*: shared state in Redis. *per-process*: `state.backend: "
            "memory` with `state.per_process: true` (each replica limits alone; budgets still "
            "reserve in the store's ledger). Budget error in units of one request's cost "
            "(goal: ≤ +1; negative: under the limit, by what reservations held when the last "
            "requests were refused); rpm/tpm against the limit, and the bound: the limit plus "
            "what the bucket refilled while the burst ran. Both ledgers keep the budget; the "
            "store's (PostgreSQL row locks, two transactions per request) takes the burst "
            "several times longer than Redis's Lua scripts."),
        "",
        f"| set-up | budget: passed, burst time | spent (limit ${LIMIT_USD:.2f}) | "
        f"error (requests) | rpm: passed (vs {RPM}; bound with refill) | "
        f"tpm: tokens (vs {TPM}; bound) |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        paragraph(
            f"Capacity: one replica (one process, `--workers 1`) under a closed loop of 32 "
            f"connections for {c['seconds']} s served {c['req_per_s']} req/s and "
            f"**{c['req_per_cpu_s']} requests per CPU-second of the gateway process** "
            f"(load average {c['load_average']}). Requests per CPU-second is the capacity per "
            "core to plan with; req/s on this 2-core machine is shared with the simulated "
            f"upstream and the load generator. Measured {r['when']} on a shared machine; "
            f"`{r['command']}`."),
    ])


if __name__ == "__main__":
    raise SystemExit(main())
