"""Durable traces: what `traces.durable` costs, side by side with it off, in front of one fast
upstream.

    .venv/bin/python bench/durability.py [--rounds 5] [--duration 3] [--no-write]

Three Shipyards (`shipyard serve --workers 1`, API-key auth, SQLite store) serve the same alias
with `capture: full` (request and response bodies kept): `traces.durable` `off` (traces wait in
memory for the batched writer), `full` (every request here: its bodies are captured) and `all`.
On a shared machine one long run per target is skewed by whatever else runs at that moment, so
the targets are measured in interleaved rounds (wrk at c=1 for latency and c=16 for
throughput, `--duration` seconds each, after a warm-up) and the medians over the rounds are
reported, with the CPU each Shipyard process used per request. Results go to stdout,
`bench/results/durability.json` and `docs/benchmarks.md`.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    BENCH_DIR,
    RESULTS_DIR,
    ProcessGroup,
    _proc_ticks,
    find_wrk,
    free_port,
    git_revision,
    load_average,
    log,
    machine_info,
    managed_processes,
    now_iso,
    paragraph,
    process_tree,
    run_wrk,
    wait_for_port,
    wait_for_quiet,
    write_docs_section,
    write_json,
    write_wrk_script,
)

REPO = BENCH_DIR.parent
WORK = BENCH_DIR / ".work" / "durability"
BODY = b'{"model":"bench","messages":[{"role":"user","content":"Say hello"}]}'
MODES = ("off", "full", "all")


def start_shipyard(group: ProcessGroup, mode: str, upstream: int, api_key: str) -> tuple[int, int]:
    work = WORK / mode
    work.mkdir(parents=True, exist_ok=True)
    for old in [*work.glob("shipyard.db*"), *work.glob("spool/*")]:
        old.unlink()
    config = work / "shipyard.yaml"
    config.write_text(f"""\
store: {{url: "sqlite:///{work / 'shipyard.db'}"}}
traces: {{durable: "{mode}"}}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
providers:
  up: {{kind: openai, base_url: "http://127.0.0.1:{upstream}/v1"}}
models:
  bench: {{provider: up, model: fixed, capture: full}}
""")
    port = free_port()
    env = {**os.environ, "SHIPYARD_API_KEY": api_key, "PYTHONPATH": str(REPO / "src")}
    server = group.start(f"shipyard-{mode}", [
        sys.executable, "-m", "shipyard", "serve", "--config", str(config), "--host",
        "127.0.0.1", "--port", str(port), "--workers", "1"], env=env, cwd=work)
    error = wait_for_port(server, port, timeout=60)
    if error:
        raise SystemExit(f"shipyard ({mode}) did not start: {error}\n{server.log_tail()}")
    return port, server.pid


def cpu_ticks(pid: int) -> int:
    return sum(_proc_ticks(p) for p in process_tree(pid))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per wrk run")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    wrk = find_wrk()
    if wrk is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    WORK.mkdir(parents=True, exist_ok=True)
    api_key = "sk-bench-" + secrets.token_hex(12)
    script = write_wrk_script(WORK / "chat.lua", BODY, api_key)
    p50: dict[str, list[float]] = {m: [] for m in MODES}
    rps: dict[str, list[float]] = {m: [] for m in MODES}
    cpu_us: dict[str, list[float]] = {m: [] for m in MODES}
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    loads: list[float] = []
    with managed_processes(WORK) as group:
        upstream_port = free_port()
        upstream = group.start("upstream", [sys.executable, str(BENCH_DIR / "upstream.py"),
                                            "--port", str(upstream_port)])
        if wait_for_port(upstream, upstream_port, timeout=20):
            raise SystemExit(f"the upstream did not start\n{upstream.log_tail()}")
        targets = {m: start_shipyard(group, m, upstream_port, api_key) for m in MODES}
        urls = {m: f"http://127.0.0.1:{port}/v1/chat/completions"
                for m, (port, _) in targets.items()}
        for url in urls.values():  # warm-up
            run_wrk(wrk, url, script, connections=4, duration_s=1)
        for round_ in range(args.rounds):
            wait_for_quiet(max_wait_s=20)
            loads.append(load_average())
            for mode, url in urls.items():
                latency = run_wrk(wrk, url, script, connections=1, duration_s=args.duration)
                pid = targets[mode][1]
                before = cpu_ticks(pid)
                load = run_wrk(wrk, url, script, connections=16, duration_s=args.duration)
                for result in (latency, load):
                    if result.error_count:
                        raise SystemExit(f"{mode}: errors {result.errors}")
                time.sleep(0.5)  # the writer thread finishes the run's last batch
                cpu_us[mode].append((cpu_ticks(pid) - before) * tick_us
                                    / max(1, load.requests))
                p50[mode].append(latency.p50_ms)
                rps[mode].append(load.rps)
            log(f"round {round_ + 1}/{args.rounds}: " + ", ".join(
                f"{m} p50 {p50[m][-1]:.3f} ms, {rps[m][-1]:,.0f} req/s" for m in MODES))
    base_rps = statistics.median(rps["off"])
    base_p50 = statistics.median(p50["off"])
    rows = []
    for mode in MODES:
        rows.append({"durable": mode, "p50_ms": statistics.median(p50[mode]),
                     "requests_per_s": statistics.median(rps[mode]),
                     "cpu_us_per_request": statistics.median(cpu_us[mode]),
                     "rounds_p50_ms": p50[mode], "rounds_requests_per_s": rps[mode]})
    lines = ["| `traces.durable` | c=1 p50 ms | added p50 vs off | c=16 req/s | req/s vs off | "
             "CPU µs per request |", "|---|--:|--:|--:|--:|--:|"]
    for row in rows:
        lines.append(
            f"| `{row['durable']}` | {row['p50_ms']:.3f} | {row['p50_ms'] - base_p50:+.3f} ms | "
            f"{row['requests_per_s']:,.0f} | {row['requests_per_s'] / base_rps:.2f}x | "
            f"{row['cpu_us_per_request']:.0f} |")
    table = "\n".join(lines)
    print(table)
    info = machine_info()
    markdown = "\n\n".join([
        "## Durable traces (`traces.durable`)",
        paragraph(f"Measured {now_iso()} on {info.get('cpu', '?')}, {info.get('cores', '?')} "
                  f"cores (shared with other work: load average {statistics.median(loads):.1f} "
                  f"at the rounds' start); shipyard git {git_revision() or '?'}; "
                  f"{args.rounds} interleaved rounds of `wrk` at c=1 and c=16, "
                  f"{args.duration:g} s each, medians over the rounds."),
        paragraph("Each Shipyard is `shipyard serve --workers 1` with API-key auth, "
                  "`capture: full` and a SQLite store, in front of `bench/upstream.py`. With "
                  "`durable: full` or `all` every request's trace record is also appended to the "
                  "process's journal file before the response is sent (one `write` call; no "
                  "`fsync`), so a SIGKILL loses no trace of a completed request "
                  "(tests/integration/test_shutdown.py kills a gateway under load and finds "
                  "every trace after the restart)."),
        table,
        "Reproduce: `.venv/bin/python bench/durability.py`",
    ])
    if not args.no_write:
        write_json(RESULTS_DIR / "durability.json", {"measured": now_iso(), "rows": rows,
                                                      "machine": info})
        write_docs_section("durability", markdown)


if __name__ == "__main__":
    main()
