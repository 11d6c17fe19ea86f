"""Overload benchmark: goodput when ten times more is offered than the upstream can serve.

    .venv/bin/python bench/overload.py [--duration 15] [--slots 64] [--latency-ms 50]
                                       [--factor 10] [--no-write]

As in LLM serving, the upstream is the bottleneck: bench/upstream.py serves at most `--slots`
completions at once, each taking `--latency-ms` (the rest wait in its queue), behind
`shipyard serve` (one worker, API-key auth, traces on). Capacity is the goodput through the
gateway with every slot busy (wrk, 2 x slots connections, nothing refused). Then, on a fresh
gateway each time:

  open loop    `--factor` x capacity offered at a fixed rate by bench/_openloop.py: request i
               is due at i / rate whatever the answers (new users keep arriving), 2 s client
               timeout, latency counted from when a request was due
  retry storm  wrk's closed loop on 800 connections, 2 s timeout: every refused client sends
               again the instant its 503 arrives, ignoring Retry-After

each with admission (`server.max_in_flight` = slots, a queue of as many, `max_queue_ms`) and
without it. Goodput is the rate of 200 answers; the goal (issue 16) is at least 80% of the
capacity in the open loop with admission, with no client timeouts, and sheds written to no
trace row (only counted in the rollups). Results go to stdout, `bench/results/overload.json`
and `docs/benchmarks.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    RESULTS_DIR,
    ProcessGroup,
    RssSampler,
    Server,
    WrkResult,
    command_line,
    cpu_seconds,
    dist_version,
    find_wrk,
    free_port,
    git_revision,
    http_request,
    load_average,
    log,
    machine_info,
    managed_processes,
    now_iso,
    paragraph,
    run_wrk,
    wait_for_port,
    wait_for_quiet,
    write_docs_section,
    write_json,
    write_wrk_script,
)
from _openloop import OpenLoopResult, run_open_loop

BENCH = Path(__file__).resolve().parent
WORK_ROOT = BENCH / ".work"
PATH = "/v1/chat/completions"
BODY = b'{"model":"bench","messages":[{"role":"user","content":"Say hello"}]}'
STORM_CONNECTIONS = 800
CLIENT_TIMEOUT_S = 2.0
QUEUE_MS = 500


def admission_config(slots: int) -> str:
    return f"server: {{max_in_flight: {slots}, max_queue: {slots}, max_queue_ms: {QUEUE_MS}}}"


def start(group: ProcessGroup, name: str, argv: list[str], port: int,
          env: dict[str, str] | None = None, cwd: Path | None = None) -> Server:
    server = group.start(name, argv, env=env, cwd=cwd)
    error = wait_for_port(server, port, 60)
    if error:
        raise RuntimeError(f"{name}: {error}\n{server.log_tail()}")
    return server


def gateway(group: ProcessGroup, folder: Path, upstream: int, admission: str | None,
            api_key: str) -> tuple[Server, int, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    store = folder / "shipyard.db"
    config = folder / "shipyard.yaml"
    server_block = admission.replace("server: {", "server: {drain_timeout_s: 1, ") \
        if admission else "server: {drain_timeout_s: 1}"
    config.write_text(f"""\
store:
  url: sqlite:///{store}
auth:
  api_keys: [{{$env: SHIPYARD_API_KEY}}]
{server_block}
providers:
  up: {{kind: openai, base_url: "http://127.0.0.1:{upstream}/v1"}}
models:
  bench: {{provider: up, model: fixed}}
""")
    port = free_port()
    shipyard = Path(sys.executable).with_name("shipyard")
    server = start(group, f"shipyard-{folder.name}",
                   [str(shipyard), "serve", "--config", str(config), "--host", "127.0.0.1",
                    "--port", str(port), "--workers", "1"], port,
                   env={**os.environ, "SHIPYARD_API_KEY": api_key}, cwd=folder)
    return server, port, store


def rows(store: Path) -> tuple[int, int]:
    """(trace rows, shed requests counted in the minute rollups)."""
    with sqlite3.connect(store, timeout=10) as db:
        traces = db.execute("SELECT COUNT(*) FROM traces").fetchone()[0]
        shed = db.execute("SELECT COALESCE(SUM(shed), 0) FROM trace_rollups "
                          "WHERE span = 1").fetchone()[0]
    return int(traces), int(shed)


def settled_rows(store: Path, timeout_s: float = 15.0) -> tuple[int, int]:
    """The row counts once the trace writer has flushed (two equal reads 0.6 s apart)."""
    deadline = time.monotonic() + timeout_s
    last = rows(store)
    while time.monotonic() < deadline:
        time.sleep(0.6)
        now = rows(store)
        if now == last:
            return now
        last = now
    return last


def upstream_stats(port: int) -> dict[str, Any]:
    answer = http_request(f"http://127.0.0.1:{port}/stats", timeout=5)
    return dict(answer.json()) if answer.status == 200 else {}


def wait_upstream_idle(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stats = upstream_stats(port)
        if not stats.get("busy") and not stats.get("waiting"):
            return
        time.sleep(0.2)


def measure_capacity(wrk: str, url: str, script: Path, slots: int,
                     duration: float, server: Server) -> dict[str, Any]:
    """Goodput with every upstream slot busy and the gateway's queue in use (1.5 x slots
    connections: more than the slots, fewer than slots + queue, so nothing is refused)."""
    cpu0 = cpu_seconds(server.pid)
    result = run_wrk(wrk, url, script, connections=slots + slots // 2, duration_s=duration,
                     timeout_s=10.0)
    cpu = cpu_seconds(server.pid) - cpu0
    served = result.requests - result.errors.get("non_2xx", 0)
    if result.error_count:
        log(f"capacity: {result.errors} (expected none); counting only the 200s")
    return {"rps": round(served / result.duration_s, 1), "connections": slots + slots // 2,
            "result": result,
            "gateway_cpu_cores": round(cpu / result.duration_s, 2),
            "cpu_us_per_served": round(cpu / served * 1e6, 1) if served else None}


def open_loop_phase(url: str, rate: float, duration: float, api_key: str,
                    server: Server) -> tuple[OpenLoopResult, float, float]:
    cpu0 = cpu_seconds(server.pid)
    with RssSampler(server.pid) as rss:
        result = run_open_loop(url, BODY, rate=rate, duration_s=duration,
                               timeout_s=CLIENT_TIMEOUT_S,
                               headers={"Authorization": f"Bearer {api_key}"})
    return result, cpu_seconds(server.pid) - cpu0, rss.peak_mib


def storm_phase(wrk: str, url: str, script: Path, duration: float,
                server: Server) -> tuple[WrkResult, float, float]:
    cpu0 = cpu_seconds(server.pid)
    with RssSampler(server.pid) as rss:
        result = run_wrk(wrk, url, script, connections=STORM_CONNECTIONS, duration_s=duration,
                         timeout_s=CLIENT_TIMEOUT_S)
    return result, cpu_seconds(server.pid) - cpu0, rss.peak_mib


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per phase")
    parser.add_argument("--slots", type=int, default=64,
                        help="completions the upstream serves at once")
    parser.add_argument("--latency-ms", type=float, default=50.0,
                        help="time the upstream takes per completion")
    parser.add_argument("--factor", type=float, default=10.0,
                        help="offered load as a multiple of the measured capacity")
    parser.add_argument("--skip-storm", action="store_true", help="no retry-storm phases")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    wrk = find_wrk()
    if wrk is None:
        print("wrk is not installed: `apt-get install -y wrk`", file=sys.stderr)
        return 2
    work = WORK_ROOT / f"overload-{time.strftime('%Y%m%d-%H%M%S')}"
    work.mkdir(parents=True)
    load, busy = load_average(), wait_for_quiet()
    api_key = "sk-bench-" + secrets.token_hex(12)
    script = write_wrk_script(work / "post.lua", BODY, api_key)
    admission = admission_config(args.slots)
    report: dict[str, Any] = {
        "benchmark": "overload", "date": now_iso(), "command": command_line(),
        "load_average_at_start": load, "cpu_busy_before_start": round(busy, 3),
        "machine": machine_info(), "duration_s": args.duration,
        "upstream": {"slots": args.slots, "latency_ms": args.latency_ms,
                     "ceiling_rps": round(args.slots / args.latency_ms * 1000, 1)},
        "admission": admission, "client_timeout_s": CLIENT_TIMEOUT_S,
        "factor": args.factor,
        "versions": {"shipyard": dist_version("shipyard"), "shipyard_git": git_revision()},
        "open_loop": {}, "retry_storm": {}}
    with managed_processes(work) as group:
        upstream_port = free_port()
        start(group, "upstream", [sys.executable, str(BENCH / "upstream.py"), "--port",
                                  str(upstream_port), "--latency-ms", str(args.latency_ms),
                                  "--concurrency", str(args.slots)], upstream_port)
        phases = [("open_loop", True), ("open_loop", False)]
        if not args.skip_storm:
            phases += [("retry_storm", True), ("retry_storm", False)]
        rate = 0.0
        for kind, with_admission in phases:
            name = "with admission" if with_admission else "without admission"
            folder = work / f"{kind}-{'admission' if with_admission else 'open'}"
            server, port, store = gateway(group, folder, upstream_port,
                                          admission if with_admission else None, api_key)
            url = f"http://127.0.0.1:{port}{PATH}"
            run_wrk(wrk, url, script, connections=args.slots, duration_s=2)  # warm-up
            # wrk stops with requests in flight: let the gateway finish them first.
            wait_upstream_idle(upstream_port)
            if not rate:
                capacity = measure_capacity(wrk, url, script, args.slots, args.duration, server)
                report["capacity"] = capacity
                rate = round(capacity["rps"] * args.factor, 1)
                log(f"capacity {capacity['rps']:,.0f} req/s through the gateway "
                    f"(upstream ceiling {report['upstream']['ceiling_rps']:,.0f}); "
                    f"offering {rate:,.0f} req/s")
            wait_upstream_idle(upstream_port)
            before = settled_rows(store)
            upstream_stats(upstream_port)  # resets its peaks
            if kind == "open_loop":
                result, cpu, peak = open_loop_phase(url, rate, args.duration, api_key, server)
                run = open_loop_summary(result, report["capacity"]["rps"])
            else:
                wrk_result, cpu, peak = storm_phase(wrk, url, script, args.duration, server)
                run = storm_summary(wrk_result, report["capacity"]["rps"])
            up = upstream_stats(upstream_port)
            after = settled_rows(store)
            run.update({
                "trace_rows": after[0] - before[0], "shed_in_rollups": after[1] - before[1],
                "gateway_cpu_cores": round(cpu / args.duration, 2),
                "peak_rss_mib": round(peak, 1),
                "upstream_max_waiting": up.get("max_waiting"),
                "upstream_max_wait_ms": up.get("max_wait_ms"),
                "upstream_backlog_at_end": (up.get("busy") or 0) + (up.get("waiting") or 0)})
            served_cost = report["capacity"]["cpu_us_per_served"] or 0.0
            if run["refused_503"]:
                run["cpu_us_per_shed"] = round(
                    max(0.0, cpu * 1e6 - run["ok"] * served_cost) / run["refused_503"], 1)
            report[kind][name] = run
            log(f"{kind} {name}: offered {run['offered_rps']:,.0f} req/s, goodput "
                f"{run['goodput_rps']:,.0f} req/s ({run['goodput_share']:.0%} of capacity), "
                f"{run['refused_503']:,} refused, {run['client_timeouts']:,} client timeouts, "
                f"{run['trace_rows']:,} trace rows, gateway CPU {run['gateway_cpu_cores']}")
            group.stop(server)
    print(json.dumps(report, indent=2, default=str))
    if not args.no_write:
        write_json(RESULTS_DIR / "overload.json", report)
        write_docs_section("overload", markdown(report))
        log("wrote bench/results/overload.json and docs/benchmarks.md")
    return 0


def open_loop_summary(result: OpenLoopResult, capacity: float) -> dict[str, Any]:
    ok = result.count(200)
    goodput = ok / result.duration_s
    others = {str(s): n for s, n in result.statuses.items() if s not in (200, 503)}
    return {
        "target_rps": result.target_rps, "offered_rps": result.offered_rps, "sent": result.sent,
        "ok": ok, "goodput_rps": round(goodput, 1),
        "goodput_share": round(goodput / capacity, 3) if capacity else 0.0,
        "refused_503": result.count(503), "other_statuses": others,
        "client_timeouts": result.timeouts, "client_errors": result.errors,
        "latency_ms": {str(s): v for s, v in result.latency_ms.items()},
        "client_max_lag_ms": result.max_lag_ms,
        "connections_opened": result.connections_opened,
        "peak_connections": result.peak_connections}


def storm_summary(result: WrkResult, capacity: float) -> dict[str, Any]:
    ok = result.requests - result.errors.get("non_2xx", 0)
    goodput = ok / result.duration_s if result.duration_s else 0.0
    return {
        "answered_rps": result.rps, "offered_rps": result.rps, "ok": ok,
        "goodput_rps": round(goodput, 1),
        "goodput_share": round(goodput / capacity, 3) if capacity else 0.0,
        "refused_503": result.errors.get("non_2xx", 0),
        "client_timeouts": result.errors.get("timeouts", 0), "wrk": result}


def _ms(run: dict[str, Any], status: str, key: str) -> str:
    value = run["latency_ms"].get(status, {}).get(key)
    return "-" if value is None else f"{value:,.0f}"


def _cost(run: dict[str, Any]) -> str:
    value = run.get("cpu_us_per_shed")
    return "-" if value is None else f"{value:,.0f}"


def markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    up = report["upstream"]
    capacity = report["capacity"]
    lines = [
        "## Overload: goodput at ten times the capacity", "",
        paragraph(f"Measured {report['date']} on {machine.get('cpu', '?')}, "
                  f"{machine.get('cores', '?')} cores (load average "
                  f"{report['load_average_at_start']} at start); shipyard "
                  f"{report['versions']['shipyard']} (git {report['versions']['shipyard_git']})."),
        "",
        paragraph(f"The upstream is the bottleneck, as in LLM serving: `bench/upstream.py` "
                  f"serves {up['slots']} completions at once, {up['latency_ms']:g} ms each (a "
                  f"ceiling of {up['ceiling_rps']:,.0f} req/s); the rest wait in its queue. "
                  "It sits behind `shipyard serve` (one worker, API-key auth, traces on). "
                  f"**Capacity** is the goodput through the gateway with every slot busy (wrk, "
                  f"{capacity['connections']} connections, admission on, nothing refused): "
                  f"**{capacity['rps']:,.0f} req/s**, below the ceiling because each of the "
                  "gateway's slots also covers its own part of a request, while the upstream's "
                  f"slot idles; it used {capacity['gateway_cpu_cores']} "
                  f"of a core ({capacity['cpu_us_per_served']:,.0f} µs of gateway CPU per "
                  f"served request). With admission: `{report['admission']}` (as many slots "
                  "as the upstream has); without: no limit. Each phase runs "
                  f"{report['duration_s']:g} s on a fresh gateway, with a "
                  f"{report['client_timeout_s']:g} s client timeout. *Served too late* counts "
                  "trace rows beyond the 200s the clients received: work done for a client "
                  "that had given up. *CPU per refusal* is the gateway's CPU time less the "
                  "served requests' (at the capacity rate's cost), per 503."),
        "",
        "### Open loop: new requests at ten times the capacity",
        "",
        paragraph("`bench/_openloop.py` sends request *i* at *i* / rate whatever the answers "
                  f"(users keep arriving; target {report['factor']:g} x capacity), each on an "
                  "idle keep-alive connection or a new one (at most 8,000); latency counts "
                  "from when a request was due, so a client that fell behind hides nothing. "
                  "The offered rate is the one achieved: requests sent over the time it took."),
        "",
        "| gateway | offered req/s | goodput req/s | share of capacity | 503 refused | "
        "client timeouts | 200 p50 / p99 ms | 503 p99 / max ms | trace rows | served too late "
        "| sheds in rollups | gateway CPU (cores) | CPU µs per refusal | peak RSS MiB |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, run in report["open_loop"].items():
        lines.append(
            f"| {name} | {run['offered_rps']:,.0f} | {run['goodput_rps']:,.0f} | "
            f"{run['goodput_share']:.0%} | {run['refused_503']:,} | {run['client_timeouts']:,} | "
            f"{_ms(run, '200', 'p50')} / {_ms(run, '200', 'p99')} | "
            f"{_ms(run, '503', 'p99')} / {_ms(run, '503', 'max')} | {run['trace_rows']:,} | "
            f"{max(0, run['trace_rows'] - run['ok']):,} | {run['shed_in_rollups']:,} | "
            f"{run['gateway_cpu_cores']} | {_cost(run)} | {run['peak_rss_mib']:.0f} |")
    run = report["open_loop"].get("with admission")
    if run:
        met = run["goodput_share"] >= 0.8 and run["client_timeouts"] == 0
        slowest = max(v.get("max", 0.0) for v in run["latency_ms"].values())
        lines += ["", paragraph(
            f"Goal (issue 16, with admission): goodput ≥ 80% of capacity at 10x offered load, "
            f"no client timeouts — **{'met' if met else 'not met'}**: "
            f"{run['goodput_share']:.0%} of the measured capacity "
            f"({run['goodput_rps'] / up['ceiling_rps']:.0%} of the upstream's ceiling), "
            f"{run['client_timeouts']:,} timeouts, the slowest answer {slowest:,.0f} ms "
            f"(queue limit {QUEUE_MS} ms + {up['latency_ms']:g} ms upstream). "
            f"{run['trace_rows']:,} trace rows for {run['ok']:,} answers of 200 and "
            f"{run['refused_503']:,} of 503; {run['shed_in_rollups']:,} refusals counted in "
            "the rollups.")]
    if report["retry_storm"]:
        lines += [
            "", "### Retry storm: clients that ignore Retry-After", "",
            paragraph(f"wrk's closed loop on {STORM_CONNECTIONS} connections: each connection "
                      "sends again the instant its answer arrives, so refused clients come "
                      "straight back and the offered rate is whatever the gateway can refuse — "
                      "the cheaper a refusal, the faster the storm. Without admission the same "
                      f"clients are only ever {STORM_CONNECTIONS} requests at a time: they wait "
                      "in the gateway and the upstream's queue and are served, so this table "
                      "tests refusals, not overload (the open loop does)."),
            "",
            "| gateway | answers req/s | goodput req/s | share of capacity | 503 refused | "
            "client timeouts | trace rows | sheds in rollups | gateway CPU (cores) | "
            "CPU µs per refusal |",
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for name, run in report["retry_storm"].items():
            lines.append(
                f"| {name} | {run['answered_rps']:,.0f} | {run['goodput_rps']:,.0f} | "
                f"{run['goodput_share']:.0%} | {run['refused_503']:,} | "
                f"{run['client_timeouts']:,} | {run['trace_rows']:,} | "
                f"{run['shed_in_rollups']:,} | {run['gateway_cpu_cores']} | {_cost(run)} |")
    lines += ["", "Reproduce: `.venv/bin/python bench/overload.py`"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
