"""ASGI servers side by side: uvicorn (what `shipyard serve` runs) vs granian, for Shipyard and
for the bare proxy, in front of the fast upstream of bench/gateway.py.

    .venv/bin/pip install 'granian>=2.5,<3'     # only for this benchmark
    .venv/bin/python bench/servers.py [--requests 2000] [--duration 5] [--rounds 2] [--no-write]

For each (app, server) pair, one worker (uvloop, HTTP/1.1): a client process sends
`--requests` requests one at a time on a kept-alive connection after a warm-up, while the
CPU time of the server's process tree is read from /proc; that gives CPU µs per request, the
measure that other work on a shared machine disturbs least. Then wrk at c=16 and c=1 for
`--duration` seconds each. The pairs run in `--rounds` interleaved rounds and the median is
reported. Results go to stdout, `bench/results/servers.json` and `docs/benchmarks.md`.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    BENCH_DIR,
    RESULTS_DIR,
    _proc_ticks,
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
    process_tree,
    run_wrk,
    wait_for_port,
    write_docs_section,
    write_json,
    write_wrk_script,
)

WORK = BENCH_DIR / ".work" / "servers"
BODY = b'{"model":"bench","messages":[{"role":"user","content":"Say hello"}]}'
PATH = "/v1/chat/completions"
PAIRS = ("bare/uvicorn", "bare/granian", "shipyard/uvicorn", "shipyard/granian")
CLIENT = r"""
import http.client, sys
port, path, n, key, body = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
headers = {"content-type": "application/json"}
if key:
    headers["authorization"] = "Bearer " + key
conn = http.client.HTTPConnection("127.0.0.1", port)
for _ in range(n):
    conn.request("POST", path, body=body.encode(), headers=headers)
    response = conn.getresponse()
    data = response.read()
    if response.status != 200:
        sys.exit(f"HTTP {response.status}: {data[:300]!r}")
"""
BARE_APP = """\
import os
from bare_proxy import build_app
app = build_app(os.environ["BENCH_UPSTREAM"])
"""


def config_text(upstream_port: int) -> str:
    return f"""\
store:
  url: sqlite:///{WORK / "shipyard.db"}
auth:
  api_keys:
    - {{$env: SHIPYARD_API_KEY}}
providers:
  up:
    kind: openai
    base_url: http://127.0.0.1:{upstream_port}/v1
models:
  bench:
    provider: up
    model: fixed
"""


def command(pair: str, port: int, config: Path) -> list[str]:
    app, server = pair.split("/")
    bindir = Path(sys.executable).parent
    if server == "uvicorn":
        if app == "bare":
            return [sys.executable, str(BENCH_DIR / "bare_proxy.py"), "--port", str(port),
                    "--upstream", os.environ["BENCH_UPSTREAM"]]
        return [str(bindir / "shipyard"), "serve", "--config", str(config), "--host",
                "127.0.0.1", "--port", str(port), "--workers", "1"]
    target = ["bench_bare_app:app"] if app == "bare" else [
        "--factory", "shipyard.gateway.server:worker_app"]
    return [str(bindir / "granian"), "--interface", "asgi", "--host", "127.0.0.1", "--port",
            str(port), "--workers", "1", "--loop", "uvloop", "--http", "1", "--no-ws",
            "--log-level", "warning", *target]


def cpu_per_request(pid: int, port: int, key: str, n: int) -> float:
    def ticks() -> int:
        return sum(_proc_ticks(p) for p in process_tree(pid))

    client = [sys.executable, "-c", CLIENT, str(port), PATH]
    subprocess.run([*client, "300", key, BODY.decode()], check=True)  # warm-up
    before = ticks()
    subprocess.run([*client, str(n), key, BODY.decode()], check=True)
    time.sleep(0.5)  # the trace writer's share
    return (ticks() - before) / os.sysconf("SC_CLK_TCK") * 1e6 / n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    wrk = find_wrk()
    if wrk is None:
        print("wrk is not installed: `apt-get install -y wrk`", file=sys.stderr)
        return 2
    if not (Path(sys.executable).parent / "granian").exists():
        print("granian is not installed: `.venv/bin/pip install 'granian>=2.5,<3'`",
              file=sys.stderr)
        return 2
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "bench_bare_app.py").write_text(BARE_APP)
    for old in WORK.glob("shipyard.db*"):
        old.unlink()
    load = load_average()
    samples: dict[str, dict[str, list[float]]] = {p: {} for p in PAIRS}
    with managed_processes(WORK) as group:
        upstream_port = free_port()
        upstream = group.start("upstream", [sys.executable, str(BENCH_DIR / "upstream.py"),
                                            "--port", str(upstream_port)])
        if wait_for_port(upstream, upstream_port, 20):
            raise SystemExit("the upstream did not start")
        os.environ["BENCH_UPSTREAM"] = f"http://127.0.0.1:{upstream_port}"
        config = WORK / "shipyard.yaml"
        config.write_text(config_text(upstream_port))
        key = "sk-bench-" + secrets.token_hex(12)
        env = {**os.environ, "SHIPYARD_API_KEY": key, "SHIPYARD_CONFIG": str(config),
               "PYTHONPATH": os.pathsep.join(p for p in (
                   str(WORK), str(BENCH_DIR), os.environ.get("PYTHONPATH")) if p)}
        subprocess.run([str(Path(sys.executable).parent / "shipyard"), "serve", "--help"],
                       capture_output=True, check=False)
        for round_ in range(args.rounds):
            for pair in PAIRS:
                port = free_port()
                server = group.start(pair.replace("/", "-"), command(pair, port, config),
                                     env=env, cwd=WORK)
                error = wait_for_port(server, port, 60)
                if error:
                    raise SystemExit(f"{pair}: {error}\n{server.log_tail()}")
                api_key = key if pair.startswith("shipyard") else ""
                cpu = cpu_per_request(server.pid, port, api_key, args.requests)
                script = write_wrk_script(WORK / "wrk.lua", BODY, api_key or None)
                url = f"http://127.0.0.1:{port}{PATH}"
                c16 = run_wrk(wrk, url, script, connections=16, duration_s=args.duration)
                c1 = run_wrk(wrk, url, script, connections=1, duration_s=args.duration)
                for name, value in (("cpu_us", cpu), ("rps_c16", c16.rps),
                                    ("p50_c1_ms", c1.p50_ms), ("rps_c1", c1.rps)):
                    samples[pair].setdefault(name, []).append(value)
                log(f"round {round_ + 1} {pair}: {cpu:,.0f} CPU µs/request, c=16 "
                    f"{c16.rps:,.0f} req/s, c=1 p50 {c1.p50_ms:.3f} ms")
                group.stop(server)
    medians = {pair: {k: statistics.median(v) for k, v in values.items()}
               for pair, values in samples.items()}
    report: dict[str, Any] = {
        "benchmark": "servers", "date": now_iso(), "git": git_revision(),
        "machine": machine_info(), "load_average_at_start": load,
        "versions": {"uvicorn": dist_version("uvicorn"), "granian": dist_version("granian")},
        "requests": args.requests, "duration_s": args.duration, "rounds": args.rounds,
        "samples": samples, "medians": medians,
        "command": "python bench/servers.py " + " ".join(argv or sys.argv[1:]),
    }
    text = markdown(report)
    print(text)
    if not args.no_write:
        write_json(RESULTS_DIR / "servers.json", report)
        write_docs_section("servers", text)
    return 0


def markdown(report: dict[str, Any]) -> str:
    machine, medians = report["machine"], report["medians"]
    rows = ["| app / server | CPU µs / request | c=16 req/s | c=1 req/s | c=1 p50 ms |",
            "|---|--:|--:|--:|--:|"]
    for pair, m in medians.items():
        rows.append(f"| {pair} | {m['cpu_us']:,.0f} | {m['rps_c16']:,.0f} | "
                    f"{m['rps_c1']:,.0f} | {m['p50_c1_ms']:.3f} |")
    intro = paragraph(
        f"Measured {report['date']} on {machine['cpu']}, {machine['cores']} cores, shared with",
        "other agents' work (the wall-clock columns are skewed by it; CPU per request much less",
        "so); Python",
        f"{machine['python']}, uvicorn {report['versions']['uvicorn']}, granian",
        f"{report['versions']['granian']}, shipyard git {report['git']}. One worker each, uvloop,",
        f"HTTP/1.1; {report['requests']:,} sequential requests for the CPU column, then wrk",
        f"for {report['duration_s']:g} s at c=16 and c=1; median of {report['rounds']}",
        "interleaved rounds.")
    return "\n\n".join(["## ASGI servers: uvicorn vs granian", intro, "\n".join(rows),
                        f"Reproduce: `{report['command']}`"])


if __name__ == "__main__":
    sys.exit(main())
