"""Per-request cost of the hot path, counted rather than timed: Python function calls per request
(deterministic, whatever else the machine runs) and server CPU µs per request.

    .venv/bin/python bench/hotpath.py [--requests 2000] [--only chat,service,bare,bare_service]
                                      [--top 25] [--server uvicorn|granian] [--no-write]

Each target runs in its own child process under a real server on 127.0.0.1 (uvicorn with uvloop
and httptools, exactly as `shipyard serve` and the bench/gateway.py peers run it), in front of the
fake upstream of bench/gateway.py:

  chat          Shipyard, POST /v1/chat/completions, the bench/gateway.py config (API-key auth,
                trace recording into SQLite with `metadata` capture, spans, metrics)
  service       Shipyard, POST /v1/services/echo/invoke (the trivial bench_services:echo)
  bare          bench/bare_proxy.py (Starlette + pooled aiohttp): the floor for a proxy
  bare_service  bench/bare_service.py (Starlette calling the same function in the thread pool)

A client process sends `--requests` warm-up requests, then `--requests` measured ones, one at a
time on one kept-alive connection. During the measured ones the server counts every Python and C
function call in every thread (`sys.setprofile` / `threading.setprofile`), and cProfile on the
event loop's thread names the functions. A second, unprofiled pass gives CPU time per request
(the server process's user+system time over the same number of requests): less noisy than wall
clock on a shared machine, but still raised by cache contention.

Results go to stdout, `bench/results/hotpath.json` and `docs/benchmarks.md` (section hotpath).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    BENCH_DIR,
    RESULTS_DIR,
    free_port,
    git_revision,
    log,
    machine_info,
    managed_processes,
    now_iso,
    paragraph,
    wait_for_port,
    write_docs_section,
    write_json,
)

TARGETS = ("chat", "service", "bare", "bare_service")
PEERS = {"chat": "bare", "service": "bare_service"}
CHAT_PATH = "/v1/chat/completions"
CHAT_BODY = b'{"model":"bench","messages":[{"role":"user","content":"Say hello"}]}'
SERVICE_PATH = "/v1/services/echo/invoke"
SERVICE_BODY = b'{"text":"Say hello"}'

CLIENT = r"""
import http.client, sys
port, path, n, key = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
body = sys.stdin.buffer.readline().rstrip(b"\n")
headers = {"content-type": "application/json"}
if key:
    headers["authorization"] = "Bearer " + key
conn = http.client.HTTPConnection("127.0.0.1", port)
for _ in range(n):
    conn.request("POST", path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    if response.status != 200:
        sys.exit(f"HTTP {response.status}: {data[:500]!r}")
print("done", flush=True)
"""


# --------------------------------------------------------------------------------------------
# Child: one target under a real server, counted


class CallCounter:
    """Counts function calls (Python and C) in threads other than the event loop's."""

    def __init__(self) -> None:
        self.calls = 0
        self.on = False

    def __call__(self, frame: Any, event: str, arg: Any) -> None:
        if self.on and (event == "call" or event == "c_call"):
            self.calls += 1


def build_target(target: str, upstream_port: int, work: Path) -> tuple[Any, str, bytes, str]:
    """(ASGI app, path, body, api key)."""
    if target == "bare":
        from bare_proxy import build_app

        return build_app(f"http://127.0.0.1:{upstream_port}"), CHAT_PATH, CHAT_BODY, ""
    if target == "bare_service":
        from bare_service import build_app as build_service

        return build_service(), SERVICE_PATH, SERVICE_BODY, ""
    from shipyard.config.loader import load_config
    from shipyard.gateway.app import create_app

    api_key = "sk-bench-" + secrets.token_hex(12)
    os.environ["SHIPYARD_API_KEY"] = api_key
    config = work / "shipyard.yaml"
    config.write_text(shipyard_config(work, upstream_port))
    app = create_app(load_config(str(config)), config_path=str(config))
    if target == "chat":
        return app, CHAT_PATH, CHAT_BODY, api_key
    return app, SERVICE_PATH, SERVICE_BODY, api_key


def shipyard_config(work: Path, upstream_port: int) -> str:
    """The bench/gateway.py config (the quick-start one with a fast upstream)."""
    return f"""\
store:
  url: sqlite:///{work / "shipyard.db"}
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
python_path: ["{BENCH_DIR}"]
# Background loops tick by the clock, not per request: keep them out of the counts (a slowed-
# down, profiled run would otherwise charge each request for many more ticks).
lifecycle:
  tick_s: 60
work:
  poll_interval_s: 60
services:
  echo:
    function: bench_services:echo
"""


async def drive(port: int, path: str, body: bytes, key: str, n: int) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT, str(port), path, str(n), key,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(body + b"\n")
    await proc.stdin.drain()
    line = await proc.stdout.readline()
    await proc.wait()
    if proc.returncode != 0 or line.strip() != b"done":
        raise SystemExit(f"the client failed (exit {proc.returncode})")


def child(args: argparse.Namespace) -> None:
    import gc

    import uvicorn

    work = Path(args.work)
    mode = os.environ.get("HOTPATH_MODE", "count")
    counter = CallCounter()
    if mode == "count":
        threading.setprofile(counter)  # threads started from now on: writer, thread pool
    app, path, body, key = build_target(args.child, args.upstream_port, work)
    gc.collect()
    gc.freeze()  # as `shipyard serve` does after building the app
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                            access_log=False, log_level="warning", server_header=False,
                            date_header=False)
    server = uvicorn.Server(config)
    result: dict[str, Any] = {}

    async def main() -> None:
        serving = asyncio.ensure_future(server.serve())
        while not server.started:
            await asyncio.sleep(0.05)
        n = args.requests
        await drive(port, path, body, key, n)  # warm-up
        await asyncio.sleep(0.3)  # let the trace writer flush the warm-up
        if mode == "callgrind":
            await callgrind_windows(port, path, body, key, n)
        elif mode == "cpu":
            result.update(await cpu_window(port, path, body, key, n))
        else:
            profile = cProfile.Profile()
            counter.on = True
            profile.enable()
            await drive(port, path, body, key, n)
            await asyncio.sleep(0.3)
            profile.disable()
            counter.on = False
            stats = pstats.Stats(profile)
            if os.environ.get("HOTPATH_INCLUSIVE"):
                result["inclusive"] = await inclusive_calls(port, path, body, key, n)
            if os.environ.get("HOTPATH_PSTATS"):  # for a closer look: python -m pstats FILE
                stats.dump_stats(f"{os.environ['HOTPATH_PSTATS']}.{args.child}")
            result["loop_calls_per_request"] = stats.total_calls / n  # type: ignore[attr-defined]
            result["thread_calls_per_request"] = counter.calls / n
            result["top"] = top_functions(stats, n, args.top)
        server.should_exit = True
        await serving

    import uvloop

    uvloop.run(main())
    Path(args.out).write_text(json.dumps(result))


async def inclusive_calls(port: int, path: str, body: bytes, key: str,
                          n: int) -> dict[str, float]:
    """Calls per request made inside each function (itself and everything below it), for
    the functions of shipyard, starlette, uvicorn and aiohttp on the event loop's thread."""
    counts: dict[Any, int] = {}
    wanted: dict[Any, bool] = {}

    def keep(code: Any) -> bool:
        known = wanted.get(code)
        if known is None:
            name = code.co_filename
            known = wanted[code] = any(m in name for m in (
                "/shipyard/", "/starlette/", "/uvicorn/", "/aiohttp/", "/prometheus_client/"))
        return known

    def tracer(frame: Any, event: str, arg: Any) -> None:
        if event != "call" and event != "c_call":
            return
        seen = set()
        while frame is not None:
            code = frame.f_code
            if code not in seen and keep(code):
                seen.add(code)
                counts[code] = counts.get(code, 0) + 1
            frame = frame.f_back

    sys.setprofile(tracer)
    await drive(port, path, body, key, n)
    await asyncio.sleep(0.3)
    sys.setprofile(None)
    out = {}
    for code, count in counts.items():
        label = code.co_filename.split("site-packages/")[-1].split("/src/")[-1]
        out[f"{label}:{code.co_firstlineno}({code.co_name})"] = count / n
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


async def cpu_window(port: int, path: str, body: bytes, key: str, n: int) -> dict[str, Any]:
    """CPU time of n requests, in all and per thread (no profiler in the process)."""
    cpu0, threads0 = time.process_time(), thread_cpu_ns()
    await drive(port, path, body, key, n)
    await asyncio.sleep(0.3)  # the trace writer's share of these requests
    cpu = (time.process_time() - cpu0) * 1e6 / n
    threads1 = thread_cpu_ns()
    names = {t.native_id: t.name for t in threading.enumerate()}
    loop_tid = threading.get_native_id()
    per_thread: dict[str, float] = {}
    for tid, ns in threads1.items():
        name = "event loop" if tid == loop_tid else names.get(tid, "other")
        name = name.split("_")[0] if name.startswith("AnyIO") else name
        used = (ns - threads0.get(tid, 0)) / 1e3 / n
        per_thread[name] = per_thread.get(name, 0.0) + used
    return {"cpu_us_per_request": cpu,
            "cpu_us_per_thread": {k: round(v, 1) for k, v in per_thread.items() if v >= 0.5}}


async def callgrind_windows(port: int, path: str, body: bytes, key: str,
                            n: int) -> list[int]:
    """Under `valgrind --tool=callgrind --instr-atstart=no`: instructions executed by the
    whole process (every thread) over n and then 2n requests, each window switched on and
    dumped with callgrind_control. The difference of the two is what n requests cost, free
    of the fixed cost of switching."""
    pid = str(os.getpid())
    for count in (n, 2 * n):
        await _callgrind_control("-i", "on", pid)
        await drive(port, path, body, key, count)
        await asyncio.sleep(0.5)  # the trace writer's share
        await _callgrind_control("-i", "off", pid)
        await _callgrind_control("-d", pid)
    return []


async def _callgrind_control(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec("callgrind_control", *args,
                                                stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL)
    await proc.wait()


def callgrind_total(path: Path) -> int:
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(("totals:", "summary:")):
            value = int(line.split()[1])
            if value:
                return value
    return 0


def thread_cpu_ns() -> dict[int, int]:
    """CPU time (ns) each thread of this process has used (/proc/self/task/*/schedstat)."""
    out = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            out[int(task.name)] = int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return out


def top_functions(stats: pstats.Stats, n: int, top: int) -> list[dict[str, Any]]:
    raw = stats.stats  # type: ignore[attr-defined]
    total_tt = sum(v[2] for v in raw.values()) or 1.0
    rows = []
    for (file, line, name), (_cc, nc, tt, ct, _callers) in raw.items():
        if file.endswith(("asyncio/subprocess.py", "bench/hotpath.py")):
            continue  # the harness starting its client, not the server's work
        short = file
        for marker in ("/site-packages/", "/src/", "/bench/", "/lib/python3"):
            if marker in file:
                short = file.split(marker, 1)[1]
                break
        label = f"{short}:{line}({name})" if line else name
        rows.append({"function": label, "calls_per_request": nc / n,
                     "own_share": tt / total_tt, "cum_share": ct / total_tt})
    rows.sort(key=lambda r: r["own_share"], reverse=True)
    return rows[:top]


# --------------------------------------------------------------------------------------------
# Parent


def run_target(target: str, upstream_port: int, args: argparse.Namespace, *,
               mode: str) -> dict[str, Any]:
    """Run one target in a child process in `mode`: count (calls), cpu, or callgrind."""
    with tempfile.TemporaryDirectory(prefix=f"hotpath-{target}-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, __file__, "--child", target, "--upstream-port",
               str(upstream_port), "--work", tmp, "--out", str(out),
               "--requests", str(args.requests), "--top", str(args.top)]
        env = {**os.environ, "HOTPATH_MODE": mode, "PYTHONPATH": os.pathsep.join(
            p for p in (args.src, os.environ.get("PYTHONPATH")) if p)}
        if mode == "callgrind":
            cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                   "--separate-threads=yes", f"--callgrind-out-file={tmp}/cg.out", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        if done.returncode != 0 or not out.exists():
            raise SystemExit(f"{target} failed:\n{done.stderr[-3000:]}")
        result = dict(json.loads(out.read_text()))
        if mode == "callgrind":
            if os.environ.get("HOTPATH_KEEP"):  # for callgrind_annotate
                for dumped in Path(tmp).glob("cg.out*"):
                    shutil.copy(dumped, f"{os.environ['HOTPATH_KEEP']}.{target}.{dumped.name}")
            windows = []
            for i in (1, 2):
                loop = other = 0
                for dumped in Path(tmp).glob(f"cg.out.{i}-*"):
                    count = callgrind_total(dumped)
                    if dumped.name.endswith("-01"):
                        loop += count  # the main thread: the event loop
                    else:
                        other += count
                windows.append((loop, other))
            (loop1, other1), (loop2, other2) = windows
            result["instructions_loop"] = (loop2 - loop1) / args.requests
            result["instructions_other"] = (other2 - other1) / args.requests
        return result


def markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    results = report["targets"]
    before = (report.get("before") or {}).get("targets", {})
    counted = all("instructions_loop" in r for r in results.values())

    def cell(res: dict[str, Any] | None, key: str, peer: dict[str, Any] | None) -> str:
        if res is None or key not in res:
            return "-"
        text = f"{res[key]:,.0f}"
        if peer is not None and key in peer and peer[key]:
            text += f" ({res[key] / peer[key]:.2f}x)"
        return text

    head = ["target"]
    if counted:
        head += ["instructions / request, event loop (vs bare)", "other threads"]
        if before:
            head += ["event loop, before"]
    head += ["Python+C calls / request, event loop (vs bare)"]
    if before:
        head += ["calls, before"]
    head += ["CPU µs / request (noisy)"]
    rows = ["| " + " | ".join(head) + " |", "|---|" + "--:|" * (len(head) - 1)]
    for target, res in results.items():
        peer_name = PEERS.get(target)
        peer = results.get(peer_name) if peer_name else None
        old = before.get(target)
        old_peer = before.get(peer_name) if peer_name else None
        cells = [target]
        if counted:
            cells += [cell(res, "instructions_loop", peer),
                      cell(res, "instructions_other", None)]
            if before:
                cells += [cell(old, "instructions_loop", old_peer)]
        cells += [cell(res, "loop_calls_per_request", peer)]
        if before:
            cells += [cell(old, "loop_calls_per_request", old_peer)]
        cells += [cell(res, "cpu_us_per_request", peer)]
        rows.append("| " + " | ".join(cells) + " |")
    tops = []
    for target in ("chat", "service"):
        if target not in results:
            continue
        tops.append(f"Top functions of `{target}` by own time on the event loop (cProfile; "
                    "share of the loop thread's profiled time, calls per request)"
                    + (". The thread lock's `release` is the hand-off to the thread pool "
                       "that runs the function, inflated here by the call counter in that "
                       "thread" if target == "service" else "") + ":\n")
        tops.append("| function | calls / request | own share | cumulative share |\n"
                    "|---|--:|--:|--:|")
        for row in results[target]["top"][:report["top_shown"]]:
            tops.append(f"| `{row['function']}` | {row['calls_per_request']:.1f} | "
                        f"{row['own_share']:.1%} | {row['cum_share']:.1%} |")
        tops.append("")
    intro = paragraph(
        f"Measured {report['date']} on {machine['cpu']}, {machine['cores']} cores (shared with",
        "other agents' work while this ran: instruction and call counts do not depend on that,",
        f"the CPU times do), Python {machine['python']}; shipyard git {report['git']}"
        + (f" (before: git {report['before']['git']}, measured with the same harness, `--src`"
           " on that revision's tree from `git archive`)." if before else "."),
        f"{report['requests']:,} requests per target, one at a time on one kept-alive",
        "connection, after as many warm-up ones, under uvicorn (uvloop, httptools) in front of",
        "the fake upstream of bench/gateway.py. Instructions: valgrind callgrind over n and",
        "2n requests, the difference divided by n, main thread (the event loop) and the other",
        "threads apart. The other threads are mostly the trace writer, whose cost per request",
        "depends on its batch size: under valgrind requests are ~50x slower, batches much",
        "smaller, so that column overstates it (CPU time without valgrind: about a tenth of the",
        "event loop's). Calls: `sys.setprofile` counts every Python and C function call.",
        "See the docstring of `bench/hotpath.py`.")
    return "\n\n".join([
        "## Hot path: instructions and calls per request",
        intro,
        "\n".join(rows),
        "\n".join(tops),
        f"Reproduce: `{report['command']}`",
    ])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--only", default=",".join(TARGETS))
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--callgrind", action="store_true",
                        help="count instructions per request under valgrind (slow; use "
                        "--requests 200)")
    parser.add_argument("--src", default=str(BENCH_DIR.parent / "src"),
                        help="the shipyard source tree to measure (e.g. an older revision's, "
                        "from `git archive REV src | tar -x -C DIR`)")
    parser.add_argument("--before", help="a --dump of an earlier run to show beside this one")
    parser.add_argument("--render", help="only render docs from a --dump (with --before)")
    parser.add_argument("--dump", help="also write the full report (JSON) to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--upstream-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child(args)
        return 0
    if args.render:
        report = json.loads(Path(args.render).read_text())
        if args.before:
            report["before"] = json.loads(Path(args.before).read_text())
        text = markdown(report)
        print(text)
        if not args.no_write:
            write_json(RESULTS_DIR / "hotpath.json", report)
            write_docs_section("hotpath", text)
        return 0
    targets = [t.strip() for t in args.only.split(",") if t.strip()]
    unknown = set(targets) - set(TARGETS)
    if unknown:
        raise SystemExit(f"--only takes targets among {', '.join(TARGETS)}, got {unknown}")
    results: dict[str, Any] = {}
    work = BENCH_DIR / ".work"
    work.mkdir(exist_ok=True)
    with managed_processes(work) as group:
        upstream_port = free_port()
        upstream = group.start("upstream", [sys.executable, str(BENCH_DIR / "upstream.py"),
                                            "--port", str(upstream_port)])
        error = wait_for_port(upstream, upstream_port, timeout=20)
        if error:
            raise SystemExit(f"the upstream did not start: {error}")
        for target in targets:
            log(f"{target}: {args.requests} warm-up + 2 x {args.requests} measured requests")
            res = run_target(target, upstream_port, args, mode="count")
            res.update(run_target(target, upstream_port, args, mode="cpu"))
            if args.callgrind:
                res.update(run_target(target, upstream_port, args, mode="callgrind"))
                log(f"  {target}: {res['instructions_loop']:,.0f} instructions/request on "
                    f"the event loop, {res['instructions_other']:,.0f} in other threads")
            results[target] = res
            log(f"  {target}: {res['loop_calls_per_request']:,.0f} calls/request on the loop, "
                f"{res['thread_calls_per_request']:,.0f} in other threads, "
                f"{res['cpu_us_per_request']:,.0f} CPU µs/request {res['cpu_us_per_thread']}")
    report = {
        "benchmark": "hotpath", "date": now_iso(), "git": git_revision(),
        "command": "python bench/hotpath.py " + " ".join(argv or sys.argv[1:]),
        "machine": machine_info(), "requests": args.requests, "top_shown": 15,
        "targets": results,
    }
    if args.before:
        report["before"] = json.loads(Path(args.before).read_text())
    text = markdown(report)
    print(text)
    if args.dump:
        write_json(Path(args.dump), report)
    if not args.no_write:
        write_json(RESULTS_DIR / "hotpath.json", report)
        write_docs_section("hotpath", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
