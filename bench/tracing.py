"""Tracing overhead: Shipyard with spans off, spans stored, and spans stored + OTLP export, side by
side (and, with --baseline REV, the Shipyard of an older git revision), in front of one fast
upstream.

    .venv/bin/python bench/tracing.py [--rounds 5] [--duration 3] [--baseline REV] [--no-write]

On a shared machine one long run per target is skewed by whatever else runs at that moment, so
the targets are measured in interleaved rounds (wrk -t1 -c1, `--duration` seconds each, after a
warm-up) and the median p50 over the rounds is reported, as added latency over the upstream
measured in the same rounds. The OTLP target exports to a local OTLP/HTTP sink (this process).
Results go to stdout, `bench/results/tracing.json` and `docs/benchmarks.md`.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    BENCH_DIR,
    RESULTS_DIR,
    ProcessGroup,
    _proc_ticks,
    find_wrk,
    free_port,
    git_revision,
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
WORK = BENCH_DIR / ".work" / "tracing"
BODY = b'{"model":"bench","messages":[{"role":"user","content":"Say hello"}]}'


class _Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver that accepts and discards (an empty ExportTraceServiceResponse)."""

    spans_bytes = 0

    def do_POST(self) -> None:
        size = int(self.headers.get("content-length") or 0)
        _Sink.spans_bytes += len(self.rfile.read(size))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return


def baseline_source(rev: str) -> Path:
    """The `src` folder of git revision `rev`, extracted once under bench/.work."""
    folder = WORK / f"baseline-{rev}"
    if not (folder / "src" / "shipyard").is_dir():
        archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "src"],
                                 capture_output=True, check=True).stdout
        folder.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=BytesIO(archive)) as tar:
            tar.extractall(folder, filter="data")
    return folder / "src"


def start_shipyard(group: ProcessGroup, name: str, upstream: int, api_key: str, *,
                   traces: str, pythonpath: Path) -> tuple[int, int]:
    work = WORK / name
    work.mkdir(parents=True, exist_ok=True)
    for old in work.glob("shipyard.db*"):
        old.unlink()
    config = work / "shipyard.yaml"
    config.write_text(f"""\
store: {{url: "sqlite:///{work / 'shipyard.db'}"}}
traces: {traces}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
providers:
  up: {{kind: openai, base_url: "http://127.0.0.1:{upstream}/v1"}}
models:
  bench: {{provider: up, model: fixed}}
""")
    port = free_port()
    env = {**os.environ, "SHIPYARD_API_KEY": api_key, "PYTHONPATH": str(pythonpath)}
    server = group.start(name, [sys.executable, "-m", "shipyard", "serve", "--config",
                                str(config), "--host", "127.0.0.1", "--port", str(port),
                                "--workers", "1"], env=env, cwd=work)
    error = wait_for_port(server, port, timeout=60)
    if error:
        raise SystemExit(f"{name} did not start: {error}\n{server.log_tail()}")
    return port, server.pid


def cpu_ticks(pid: int) -> int:
    """CPU time (user + system clock ticks) of a process tree."""
    return sum(_proc_ticks(p) for p in process_tree(pid))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per wrk run")
    parser.add_argument("--baseline", help="also measure the Shipyard of this git revision")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    wrk = find_wrk()
    if wrk is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    WORK.mkdir(parents=True, exist_ok=True)
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    otlp = f"http://127.0.0.1:{sink.server_address[1]}/v1/traces"
    api_key = "sk-bench-" + secrets.token_hex(12)
    script = write_wrk_script(WORK / "chat.lua", BODY, api_key)
    plain = write_wrk_script(WORK / "plain.lua", BODY, None)
    current = REPO / "src"
    targets: list[tuple[str, str, Path]] = [
        ("spans off", "{spans: false}", current),
        ("spans stored", "{}", current),
        ("spans stored + OTLP", f"{{otlp: {{endpoint: '{otlp}'}}}}", current),
    ]
    if args.baseline:
        targets.insert(0, (f"git {args.baseline} (before tracing)", "{}",
                           baseline_source(args.baseline)))
    p50: dict[str, list[float]] = {"upstream (direct)": []}
    # CPU per request (µs) of each Shipyard process: steadier than latency on a busy machine.
    cpu_us: dict[str, list[float]] = {}
    pids: dict[str, int] = {}
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    with managed_processes(WORK) as group:
        upstream_port = free_port()
        upstream = group.start("upstream", [sys.executable, str(BENCH_DIR / "upstream.py"),
                                            "--port", str(upstream_port)])
        if wait_for_port(upstream, upstream_port, timeout=20):
            raise SystemExit(f"the upstream did not start\n{upstream.log_tail()}")
        urls = {"upstream (direct)": (f"http://127.0.0.1:{upstream_port}/v1/chat/completions",
                                      plain)}
        for index, (name, traces, source) in enumerate(targets):
            port, pid = start_shipyard(group, f"shipyard-{index}", upstream_port, api_key,
                                       traces=traces, pythonpath=source)
            urls[name] = (f"http://127.0.0.1:{port}/v1/chat/completions", script)
            p50[name] = []
            cpu_us[name] = []
            pids[name] = pid
        for url, lua in urls.values():  # warm-up
            run_wrk(wrk, url, lua, connections=1, duration_s=1)
        for round_ in range(args.rounds):
            wait_for_quiet(max_wait_s=20)
            for name, (url, lua) in urls.items():
                before = cpu_ticks(pids[name]) if name in pids else 0
                result = run_wrk(wrk, url, lua, connections=1, duration_s=args.duration)
                if result.error_count:
                    raise SystemExit(f"{name}: errors {result.errors}")
                p50[name].append(result.p50_ms)
                if name in pids:
                    # Give the writer thread a moment to write the run's last batch.
                    time.sleep(0.5)
                    used = (cpu_ticks(pids[name]) - before) * tick_us
                    cpu_us[name].append(used / max(1, result.requests))
            log(f"round {round_ + 1}/{args.rounds}: " + ", ".join(
                f"{n} {v[-1]:.3f} ms" for n, v in p50.items()))
    sink.shutdown()
    direct = statistics.median(p50["upstream (direct)"])
    rows = []
    for name, values in p50.items():
        median = statistics.median(values)
        cpu = statistics.median(cpu_us[name]) if cpu_us.get(name) else None
        rows.append({"target": name, "p50_ms": median, "added_ms": median - direct,
                     "rounds": values, "cpu_us_per_request": cpu})
    lines = ["| target | c=1 p50 ms (median of rounds) | added p50 vs upstream | "
             "Shipyard CPU µs per request |", "|---|--:|--:|--:|"]
    for row in rows:
        added = "" if row["target"] == "upstream (direct)" else f"+{row['added_ms']:.3f} ms"
        cpu = "" if row["cpu_us_per_request"] is None else f"{row['cpu_us_per_request']:.0f}"
        lines.append(f"| {row['target']} | {row['p50_ms']:.3f} | {added} | {cpu} |")
    table = "\n".join(lines)
    print(table)
    info = machine_info()
    markdown = "\n\n".join([
        "## Tracing overhead",
        paragraph(f"Measured {now_iso()} on {info.get('cpu', '?')}, {info.get('cores', '?')} "
                  f"cores; shipyard git {git_revision() or '?'}; {args.rounds} interleaved "
                  f"rounds of `wrk -t1 -c1 -d{args.duration:g}s` per target, median p50."),
        paragraph("Each Shipyard is `shipyard serve --workers 1` with API-key auth and "
                  "`metadata` capture into SQLite, in front of `bench/upstream.py`. Spans are "
                  "always recorded as tuples during the request; 'spans stored' also writes them "
                  "to the `spans` table through the batched writer (the default); 'OTLP' also "
                  "exports them to a local OTLP/HTTP sink."),
        table,
        "Reproduce: `.venv/bin/python bench/tracing.py --baseline REV`",
    ])
    if not args.no_write:
        write_json(RESULTS_DIR / "tracing.json", {"measured": now_iso(), "rows": rows,
                                                   "machine": info})
        write_docs_section("tracing", markdown)


if __name__ == "__main__":
    main()
