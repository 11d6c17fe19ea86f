"""Overload benchmark: goodput when far more is offered than the gateway can serve.

    .venv/bin/python bench/overload.py [--duration 15] [--no-write]

One fast fake upstream (bench/upstream.py) behind `shipyard serve` (one worker, API-key auth,
traces on). First the gateway's capacity is measured at 16 connections (every answer a 200).
Then wrk holds 800 connections open against it — far more than it can serve — with a 2 s
client timeout, twice, in one run:

  with admission     server.max_in_flight 32, max_queue 32, max_queue_ms 200: extra requests
                     are refused with 503 + Retry-After before they are read
  without admission  no limit: every request is read and queued on the event loop

Goodput is the rate of 200 answers during the overload; the goal is at least 80% of the
capacity, with no client timeouts beyond the queue time, and shed requests writing no trace
rows. Results go to stdout, `bench/results/overload.json` and `docs/benchmarks.md`.
"""

from __future__ import annotations

import argparse
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
    dist_version,
    find_wrk,
    free_port,
    git_revision,
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

BENCH = Path(__file__).resolve().parent
WORK_ROOT = BENCH / ".work"
PATH = "/v1/chat/completions"
BODY = b'{"model":"bench","messages":[{"role":"user","content":"Say hello"}]}'
OVERLOAD_CONNECTIONS = 800
CLIENT_TIMEOUT_S = 2.0
ADMISSION = "server: {max_in_flight: 32, max_queue: 32, max_queue_ms: 200}"


def start(group: ProcessGroup, name: str, argv: list[str], port: int,
          env: dict[str, str] | None = None, cwd: Path | None = None) -> Server:
    server = group.start(name, argv, env=env, cwd=cwd)
    error = wait_for_port(server, port, 60)
    if error:
        raise RuntimeError(f"{name}: {error}\n{server.log_tail()}")
    return server


def gateway(group: ProcessGroup, work: Path, upstream: int, admission: bool,
            api_key: str) -> tuple[Server, int, Path]:
    folder = work / ("admission" if admission else "open")
    folder.mkdir(parents=True, exist_ok=True)
    store = folder / "shipyard.db"
    config = folder / "shipyard.yaml"
    config.write_text(f"""\
store:
  url: sqlite:///{store}
auth:
  api_keys: [{{$env: SHIPYARD_API_KEY}}]
{ADMISSION if admission else ""}
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
    with sqlite3.connect(store) as db:
        traces = db.execute("SELECT COUNT(*) FROM traces").fetchone()[0]
        shed = db.execute("SELECT COALESCE(SUM(shed), 0) FROM trace_rollups "
                          "WHERE span = 1").fetchone()[0]
    return int(traces), int(shed)


def phase(wrk: str, url: str, script: Path, connections: int, duration: float,
          timeout_s: float, server: Server) -> tuple[WrkResult, float]:
    with RssSampler(server.pid) as rss:
        result = run_wrk(wrk, url, script, connections=connections, duration_s=duration,
                         timeout_s=timeout_s)
    return result, rss.peak_mib


def goodput(result: WrkResult) -> float:
    ok = result.requests - result.errors.get("non_2xx", 0)
    return ok / result.duration_s if result.duration_s else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per phase")
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
    runs: dict[str, Any] = {}
    with managed_processes(work) as group:
        upstream_port = free_port()
        start(group, "upstream", [sys.executable, str(BENCH / "upstream.py"), "--port",
                                  str(upstream_port)], upstream_port)
        for admission in (True, False):
            name = "with admission" if admission else "without admission"
            server, port, store = gateway(group, work, upstream_port, admission, api_key)
            url = f"http://127.0.0.1:{port}{PATH}"
            run_wrk(wrk, url, script, connections=16, duration_s=3)  # warm-up
            capacity, _ = phase(wrk, url, script, 16, args.duration, 10.0, server)
            log(f"{name}: capacity {capacity.rps:,.0f} req/s at c=16")
            flood, peak = phase(wrk, url, script, OVERLOAD_CONNECTIONS, args.duration,
                                CLIENT_TIMEOUT_S, server)
            time.sleep(1.5)  # the trace writer flushes
            traces, shed = rows(store)
            runs[name] = {
                "capacity_rps": capacity.rps, "capacity_p99_ms": capacity.p99_ms,
                "overload": flood, "goodput_rps": round(goodput(flood), 1),
                "goodput_share": round(goodput(flood) / capacity.rps, 3) if capacity.rps
                else 0.0, "refused_503": flood.errors.get("non_2xx", 0),
                "client_timeouts": flood.errors.get("timeouts", 0),
                "trace_rows": traces, "shed_in_rollups": shed, "peak_rss_mib": round(peak, 1)}
            log(f"{name}: goodput {runs[name]['goodput_rps']:,.0f} req/s "
                f"({runs[name]['goodput_share']:.0%} of capacity), "
                f"{runs[name]['refused_503']:,} refused, "
                f"{runs[name]['client_timeouts']:,} client timeouts")
            group.stop(server)
    report = {"benchmark": "overload", "date": now_iso(), "command": command_line(),
              "load_average_at_start": load, "cpu_busy_before_start": round(busy, 3),
              "machine": machine_info(), "duration_s": args.duration,
              "versions": {"shipyard": dist_version("shipyard"),
                           "shipyard_git": git_revision()}, "runs": runs}
    if not args.no_write:
        write_json(RESULTS_DIR / "overload.json", report)
        write_docs_section("overload", markdown(report))
        log("wrote bench/results/overload.json and docs/benchmarks.md")
    return 0


def markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    lines = [
        "## Overload: goodput at far more than capacity", "",
        paragraph(f"Measured {report['date']} on {machine.get('cpu', '?')}, "
                  f"{machine.get('cores', '?')} cores (load average "
                  f"{report['load_average_at_start']} at start); shipyard "
                  f"{report['versions']['shipyard']} (git {report['versions']['shipyard_git']})."),
        "",
        paragraph("One fast fake upstream behind `shipyard serve` (one worker, API-key auth, "
                  "traces on). Capacity is wrk at 16 connections; overload is wrk holding "
                  f"{OVERLOAD_CONNECTIONS} connections open with a {CLIENT_TIMEOUT_S:g} s client "
                  f"timeout, {report['duration_s']:g} s per phase. With admission: `{ADMISSION}`."),
        "",
        "| gateway | capacity req/s (c=16) | goodput req/s (c=800) | share of capacity | "
        "503 refused | client timeouts | trace rows | shed counted in rollups | peak RSS MiB |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, run in report["runs"].items():
        lines.append(f"| {name} | {run['capacity_rps']:,.0f} | {run['goodput_rps']:,.0f} | "
                     f"{run['goodput_share']:.0%} | {run['refused_503']:,} | "
                     f"{run['client_timeouts']:,} | {run['trace_rows']:,} | "
                     f"{run['shed_in_rollups']:,} | {run['peak_rss_mib']:.0f} |")
    run = report["runs"].get("with admission")
    if run:
        met = "met" if run["goodput_share"] >= 0.8 and run["client_timeouts"] == 0 else "not met"
        lines += ["", f"Goal (with admission): goodput ≥ 80% of capacity and no client timeouts "
                      f"— {met}."]
    lines += ["", "Reproduce: `.venv/bin/python bench/overload.py`"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
