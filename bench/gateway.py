"""Gateway overhead benchmark: Shipyard vs a bare proxy vs LiteLLM, in front of one fast upstream.

    .venv/bin/python bench/gateway.py [--duration 10] [--only a,b,c,d] [--no-write]

Targets, all on 127.0.0.1 and measured in one run on the same machine:

  a  the fake upstream directly (bench/upstream.py)
  b  a bare pass-through proxy (bench/bare_proxy.py: Starlette + pooled aiohttp, the floor)
  c  Shipyard (`shipyard serve`, one worker, trace recording on with `metadata` capture)
  d  LiteLLM proxy (litellm[proxy]==1.100.0, one worker, no database), in bench/.venv-litellm

Each target is validated with one real request, then measured with wrk at concurrency 1 and 16
(a warm-up run before each measured run) while the peak RSS of its process tree is sampled.
Results go to stdout, `bench/results/gateway.json` and `docs/benchmarks.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    BENCH_DIR,
    RESULTS_DIR,
    ForeignCpu,
    HttpResult,
    ProcessGroup,
    RssSampler,
    Server,
    WrkResult,
    command_line,
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

LITELLM_VERSION = "1.100.0"
LITELLM_VENV = BENCH_DIR / ".venv-litellm"
WORK_ROOT = BENCH_DIR / ".work"
PATH = "/v1/chat/completions"
REQUEST_BODY = json.dumps(
    {"model": "bench", "messages": [{"role": "user", "content": "Say hello"}]},
    separators=(",", ":"),
).encode()
CONCURRENCIES = (1, 16)
SERVICE_PATH = "/v1/services/echo/invoke"
SERVICE_BODY = b'{"text":"Say hello"}'
TARGET_NAMES = {
    "a": "upstream (direct)",
    "b": "bare proxy (Starlette + aiohttp)",
    "c": "Shipyard",
    "d": f"LiteLLM {LITELLM_VERSION}",
    "e": "bare service (Starlette calling the function)",
    "f": "Shipyard service (the same function)",
}
SERVICES = ("e", "f")
# Goals printed next to the results.
GOAL_ADDED_P50_MS = 0.35
GOAL_RPS_VS_BARE = 0.6
GOAL_RSS_VS_LITELLM = 1 / 3
GOAL_RSS_MIB = 100.0  # the `shipyard` process at c=16
FOREIGN_CPU_WARN = 0.05  # share of the machine used by processes outside the benchmark


class Unavailable(Exception):
    """A target that cannot be measured; the message says why."""


@dataclass
class TargetResult:
    key: str
    name: str
    available: bool = False
    reason: str | None = None
    version: str | None = None
    runs: dict[str, WrkResult] = field(default_factory=dict)
    peak_rss_mib: float | None = None
    start_rss_mib: float | None = None
    hwm_sum_mib: float | None = None
    processes: int | None = None
    notes: list[str] = field(default_factory=list)
    traces: dict[str, float] = field(default_factory=dict)  # Shipyard's trace writer counters

    def run(self, connections: int) -> WrkResult | None:
        return self.runs.get(f"c{connections}")


@dataclass
class Context:
    args: argparse.Namespace
    wrk: str
    group: ProcessGroup
    work_dir: Path
    upstream: Server
    upstream_port: int


# --------------------------------------------------------------------------------------------
# Targets


def start_upstream(group: ProcessGroup) -> tuple[Server, int]:
    port = free_port()
    server = group.start(
        "upstream",
        [sys.executable, str(BENCH_DIR / "upstream.py"), "--port", str(port)],
    )
    error = wait_for_port(server, port, timeout=20)
    if error:
        raise SystemExit(f"the upstream did not start: {error}\n{server.log_tail()}")
    return server, port


def start_bare_proxy(ctx: Context) -> tuple[Server, int, str | None]:
    port = free_port()
    server = ctx.group.start(
        "bare_proxy",
        [
            sys.executable,
            str(BENCH_DIR / "bare_proxy.py"),
            "--port",
            str(port),
            "--upstream",
            f"http://127.0.0.1:{ctx.upstream_port}",
        ],
    )
    return _ready(server, port, timeout=30), port, None


def start_bare_service(ctx: Context) -> tuple[Server, int, str | None]:
    port = free_port()
    server = ctx.group.start(
        "bare_service", [sys.executable, str(BENCH_DIR / "bare_service.py"), "--port",
                         str(port)])
    return _ready(server, port, timeout=30), port, None


def start_shipyard(ctx: Context) -> tuple[Server, int, str | None]:
    shipyard = Path(sys.executable).with_name("shipyard")
    if not shipyard.exists():
        raise Unavailable(f"{shipyard} not found: run `.venv/bin/pip install -e .`")
    probe = subprocess.run(
        [str(shipyard), "serve", "--help"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        raise Unavailable(
            "`shipyard serve --help` failed: " + _last_lines(probe.stderr or probe.stdout)
        )
    api_key = "sk-bench-" + secrets.token_hex(12)
    work = ctx.work_dir / "shipyard"
    work.mkdir(parents=True, exist_ok=True)
    config = work / "shipyard.yaml"
    config.write_text(
        f"""\
store:
  url: sqlite:///{work / "shipyard.db"}
auth:
  api_keys:
    - {{$env: SHIPYARD_API_KEY}}
providers:
  up:
    kind: openai
    base_url: http://127.0.0.1:{ctx.upstream_port}/v1
models:
  bench:
    provider: up
    model: fixed
python_path: ["{BENCH_DIR}"]
services:
  echo:
    function: bench_services:echo
"""
    )
    port = free_port()
    env = {**os.environ, "SHIPYARD_API_KEY": api_key}
    server = ctx.group.start(
        "shipyard",
        [
            str(shipyard),
            "serve",
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=env,
        cwd=work,
    )
    return _ready(server, port, timeout=60), port, api_key


def ensure_litellm() -> Path:
    """The LiteLLM venv's `litellm` executable; creates or repairs the venv with pip."""
    python = LITELLM_VENV / "bin" / "python"
    if not python.exists():
        log(f"creating {LITELLM_VENV.relative_to(BENCH_DIR.parent)}")
        created = subprocess.run(
            [sys.executable, "-m", "venv", str(LITELLM_VENV)],
            capture_output=True,
            text=True,
            check=False,
        )
        if created.returncode != 0:
            raise Unavailable("could not create the venv: " + _last_lines(created.stderr))
    shown = subprocess.run(
        [str(python), "-m", "pip", "show", "litellm"], capture_output=True, text=True, check=False
    )
    installed = next(
        (
            line.split(":", 1)[1].strip()
            for line in shown.stdout.splitlines()
            if line.startswith("Version:")
        ),
        None,
    )
    if installed != LITELLM_VERSION:
        log(f"installing litellm[proxy]=={LITELLM_VERSION} (found {installed}); this takes a while")
        install_log = LITELLM_VENV / "pip-install.log"
        with install_log.open("w") as handle:
            try:
                done = subprocess.run(
                    [
                        str(python),
                        "-m",
                        "pip",
                        "install",
                        "--disable-pip-version-check",
                        f"litellm[proxy]=={LITELLM_VERSION}",
                    ],
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    timeout=1200,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise Unavailable("pip install timed out after 20 min") from exc
        if done.returncode != 0:
            raise Unavailable(
                f"pip install litellm[proxy]=={LITELLM_VERSION} failed: "
                + _last_lines(install_log.read_text(errors="replace"))
            )
    executable = LITELLM_VENV / "bin" / "litellm"
    if not executable.exists():
        raise Unavailable(f"{executable} missing after install")
    return executable


def start_litellm(ctx: Context) -> tuple[Server, int, str | None]:
    executable = ensure_litellm()
    master_key = "sk-bench-" + secrets.token_hex(12)
    work = ctx.work_dir / "litellm"
    work.mkdir(parents=True, exist_ok=True)
    config = work / "config.yaml"
    config.write_text(
        f"""\
model_list:
  - model_name: bench
    litellm_params:
      model: openai/fixed
      api_base: http://127.0.0.1:{ctx.upstream_port}/v1
      api_key: sk-dummy-upstream-key
general_settings:
  master_key: {master_key}
litellm_settings:
  telemetry: false
"""
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "VIRTUAL_ENV"}}
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_TELEMETRY="False")
    server = ctx.group.start(
        "litellm",
        [
            str(executable),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
            "--telemetry",
            "False",
        ],
        env=env,
        cwd=work,
    )
    return _ready(server, port, timeout=180), port, master_key


def _ready(server: Server, port: int, *, timeout: float) -> Server:
    error = wait_for_port(server, port, timeout)
    if error:
        raise Unavailable(f"{error}; log tail:\n{server.log_tail()}")
    return server


def _last_lines(text: str, lines: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# --------------------------------------------------------------------------------------------
# Measuring


def validate(url: str, api_key: str | None, deadline_s: float = 30.0,
             body: bytes = REQUEST_BODY) -> dict[str, Any]:
    """One real request; retries while the server finishes starting. Returns the completion
    (or, for a service, the result)."""
    headers = {"content-type": "application/json"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    deadline = time.monotonic() + deadline_s
    result = HttpResult(0, b"", "not tried")
    while time.monotonic() < deadline:
        result = http_request(url, body=body, headers=headers)
        if result.status == 200:
            break
        time.sleep(0.5)
    if result.status != 200:
        detail = result.error or result.body.decode(errors="replace")[:2000]
        raise Unavailable(f"validation request got HTTP {result.status}: {detail}")
    if body is SERVICE_BODY:
        answer = result.json()
        if not isinstance(answer, dict) or answer.get("output") != {"answer": "Say hello"}:
            raise Unavailable(f"validation request got 200 but not the output: {result.body!r}")
        return {"choices": [{"message": {"content": "service output ok"}}]}
    try:
        completion = result.json()
        content = completion["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise Unavailable(
            f"validation request got 200 but no completion ({exc!r}): {result.body[:2000]!r}"
        ) from exc
    if not isinstance(content, str) or not content:
        raise Unavailable(f"validation completion has no content: {result.body[:2000]!r}")
    return dict(completion)


def measure(
    ctx: Context, result: TargetResult, server: Server, port: int, api_key: str | None
) -> None:
    service = result.key in SERVICES
    url = f"http://127.0.0.1:{port}{SERVICE_PATH if service else PATH}"
    body = SERVICE_BODY if service else REQUEST_BODY
    completion = validate(url, api_key, body=body)
    result.available = True
    result.notes.append(f"validated: {completion['choices'][0]['message']['content']!r}")
    script = write_wrk_script(ctx.work_dir / f"wrk-{result.key}.lua", body, api_key)
    with RssSampler(server.pid) as sampler:
        for connections in CONCURRENCIES:
            run_wrk(ctx.wrk, url, script, connections=connections, duration_s=ctx.args.warmup)
            best: WrkResult | None = None
            for attempt in range(1 + ctx.args.retries):
                if attempt:
                    log(f"  {result.key} c={connections}: skewed by other work, measuring again")
                    wait_for_quiet(max_wait_s=30)
                run = measured_run(ctx, result, server, url, script, connections)
                if best is None or run.foreign_cpu < best.foreign_cpu:
                    best = run
                if run.foreign_cpu <= FOREIGN_CPU_WARN or not server.alive():
                    break
            assert best is not None
            best.attempts = attempt + 1
            result.runs[f"c{connections}"] = best
            if not server.alive():
                raise Unavailable(f"{server.name} died during the run:\n{server.log_tail()}")
        if result.key in ("c", "f"):
            result.traces = shipyard_trace_metrics(port, api_key)
    result.peak_rss_mib = round(sampler.peak_mib, 1)
    result.start_rss_mib = round(sampler.first_mib, 1)
    result.hwm_sum_mib = round(sampler.hwm_sum_mib, 1)
    result.processes = sampler.processes
    log(
        f"  {result.key} peak RSS {result.peak_rss_mib} MiB (after start-up "
        f"{result.start_rss_mib} MiB; {sampler.processes} processes)"
    )


def measured_run(
    ctx: Context, result: TargetResult, server: Server, url: str, script: Path, connections: int
) -> WrkResult:
    with ForeignCpu([server.pid, ctx.upstream.pid]) as foreign:
        run = run_wrk(ctx.wrk, url, script, connections=connections, duration_s=ctx.args.duration)
    run.foreign_cpu = round(foreign.foreign, 3)
    log(
        f"  {result.key} c={connections}: {run.rps:,.0f} req/s, "
        f"p50 {run.p50_ms:.3f} ms, p99 {run.p99_ms:.3f} ms"
        + (f", ERRORS {run.errors}" if run.errors else "")
        + (
            f", WARNING: {run.foreign_cpu:.0%} of the CPU went to other processes"
            if run.foreign_cpu > FOREIGN_CPU_WARN
            else ""
        )
    )
    return run


def shipyard_trace_metrics(port: int, api_key: str | None) -> dict[str, float]:
    """The trace writer's counters from Shipyard's /metrics, read while it is still up."""
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    response = http_request(f"http://127.0.0.1:{port}/metrics", headers=headers)
    if response.status != 200:
        log(f"  /metrics answered HTTP {response.status}; trace counters unknown")
        return {}
    names = {
        "shipyard_traces_written_total": "written",
        "shipyard_trace_queue_dropped_total": "dropped",
        "shipyard_trace_queue_depth": "queued",
    }
    values: dict[str, float] = {}
    for line in response.body.decode(errors="replace").splitlines():
        name, _, value = line.partition(" ")
        if name in names:
            values[names[name]] = float(value)
    log(
        f"  trace writer after the runs: {values.get('written', 0):,.0f} written, "
        f"{values.get('dropped', 0):,.0f} dropped (queue full), "
        f"{values.get('queued', 0):,.0f} still queued"
    )
    return values


def count_traces(db_path: Path) -> tuple[str, int] | None:
    """Rows in the Shipyard store's trace table, to check tracing really was on."""
    if not db_path.exists():
        return None
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name LIKE '%trace%'"
            )
        ]
        if not tables:
            return None
        table = "traces" if "traces" in tables else tables[0]
        return table, int(conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])


def bench_target(ctx: Context, key: str) -> TargetResult:
    result = TargetResult(key=key, name=TARGET_NAMES[key])
    log(f"target {key}: {result.name}")
    starters: dict[str, Callable[[Context], tuple[Server, int, str | None]]] = {
        "b": start_bare_proxy,
        "c": start_shipyard,
        "d": start_litellm,
        "e": start_bare_service,
        "f": start_shipyard,
    }
    server: Server | None = None
    try:
        if key == "a":
            server, port, api_key = ctx.upstream, ctx.upstream_port, None
        else:
            server, port, api_key = starters[key](ctx)
        measure(ctx, result, server, port, api_key)
    except Unavailable as exc:
        result.available = False
        result.runs.clear()
        result.reason = str(exc)
        log(f"  {key} UNAVAILABLE: {exc}")
    finally:
        if server is not None and server is not ctx.upstream:
            ctx.group.stop(server)
    if key == "c" and result.available:
        sent = sum(run.requests for run in result.runs.values())
        counted = count_traces(ctx.work_dir / "shipyard" / "shipyard.db")
        if counted is None:
            result.notes.append("no trace table found in the store after the run")
        else:
            table, rows = counted
            result.notes.append(
                f"{rows:,} rows in `{table}` after stop; measured runs sent {sent:,} requests "
                "(plus validation and warm-up)"
            )
        log(f"  {result.notes[-1]}")
    return result


# --------------------------------------------------------------------------------------------
# Report


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def comparisons(results: dict[str, TargetResult]) -> dict[str, Any]:
    def p50_c1(key: str) -> float | None:
        run = results[key].run(1) if key in results else None
        return run.p50_ms if run else None

    def rps_c16(key: str) -> float | None:
        run = results[key].run(16) if key in results else None
        return run.rps if run else None

    def rss(key: str) -> float | None:
        return results[key].peak_rss_mib if key in results else None

    direct = p50_c1("a")
    added = {
        key: round(p50_c1(key) - direct, 3)  # type: ignore[operator]
        for key in ("b", "c", "d")
        if direct is not None and p50_c1(key) is not None
    }
    out: dict[str, Any] = {"added_p50_ms_c1_vs_direct": added}
    out["shipyard_rps_c16_vs_bare"] = _ratio(rps_c16("c"), rps_c16("b"))
    out["service_rps_c16_vs_bare"] = _ratio(rps_c16("f"), rps_c16("e"))
    bare_service, shipyard_service = p50_c1("e"), p50_c1("f")
    out["service_added_p50_ms_c1"] = (round(shipyard_service - bare_service, 3)
                                      if bare_service is not None
                                      and shipyard_service is not None else None)
    out["shipyard_rps_c16_vs_litellm"] = _ratio(rps_c16("c"), rps_c16("d"))
    out["shipyard_rss_vs_litellm"] = _ratio(rss("c"), rss("d"))
    counters = results["c"].traces if "c" in results else {}
    dropped = counters.get("dropped")
    recorded = sum(counters.values())
    out["shipyard_traces"] = counters
    out["goals"] = [
        _goal(
            "Shipyard added p50 latency at c=1 vs direct upstream",
            f"≤ {GOAL_ADDED_P50_MS:g} ms",
            added.get("c"),
            lambda v: f"{v:.3f} ms",
            lambda v: v <= GOAL_ADDED_P50_MS,
        ),
        _goal(
            "Shipyard req/s at c=16 vs bare proxy",
            f"≥ {GOAL_RPS_VS_BARE:g}x",
            out["shipyard_rps_c16_vs_bare"],
            lambda v: f"{v:.2f}x",
            lambda v: v >= GOAL_RPS_VS_BARE,
        ),
        _goal(
            "Shipyard service added p50 latency at c=1 vs the bare service",
            f"≤ {GOAL_ADDED_P50_MS:g} ms",
            out["service_added_p50_ms_c1"],
            lambda v: f"{v:.3f} ms",
            lambda v: v <= GOAL_ADDED_P50_MS,
        ),
        _goal(
            "Shipyard service req/s at c=16 vs the bare service",
            f"≥ {GOAL_RPS_VS_BARE:g}x",
            out["service_rps_c16_vs_bare"],
            lambda v: f"{v:.2f}x",
            lambda v: v >= GOAL_RPS_VS_BARE,
        ),
        _goal(
            "Shipyard peak RSS (one worker, through c=16)",
            f"≤ {GOAL_RSS_MIB:g} MiB",
            rss("c"),
            lambda v: f"{v:.1f} MiB",
            lambda v: v <= GOAL_RSS_MIB,
        ),
        _goal(
            "Shipyard peak RSS vs LiteLLM",
            "≤ 1/3 (0.33x)",
            out["shipyard_rss_vs_litellm"],
            lambda v: f"{v:.2f}x",
            lambda v: v <= GOAL_RSS_VS_LITELLM,
        ),
        _goal(
            "Shipyard traces dropped under load (queue full), all runs",
            "0",
            dropped,
            lambda v: f"{v:,.0f} of {recorded:,.0f} ({v / recorded:.0%})" if recorded else "0",
            lambda v: v == 0,
        ),
    ]
    return out


def _goal(
    name: str,
    goal: str,
    value: float | None,
    fmt: Callable[[float], str],
    ok: Callable[[float], bool],
) -> dict[str, Any]:
    if value is None:
        return {"name": name, "goal": goal, "measured": None, "status": "n/a"}
    return {
        "name": name,
        "goal": goal,
        "measured": fmt(value),
        "status": "met" if ok(value) else "MISSED",
    }


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def results_table(results: dict[str, TargetResult]) -> str:
    lines = [
        "| target | c=1 req/s | c=1 p50 ms | c=1 p99 ms | c=16 req/s | c=16 p50 ms "
        "| c=16 p99 ms | RSS idle MiB | peak RSS MiB |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for key, result in results.items():
        label = f"({key}) {result.name}"
        if not result.available:
            reason = (result.reason or "unavailable").splitlines()[0][:160].replace("|", "/")
            lines.append(f"| {label} | unavailable: {reason} | | | | | | | |")
            continue
        one, sixteen = result.run(1), result.run(16)
        cells = [
            _num(one.rps if one else None, ",.0f"),
            _num(one.p50_ms if one else None, ".3f"),
            _num(one.p99_ms if one else None, ".3f"),
            _num(sixteen.rps if sixteen else None, ",.0f"),
            _num(sixteen.p50_ms if sixteen else None, ".3f"),
            _num(sixteen.p99_ms if sixteen else None, ".3f"),
            _num(result.start_rss_mib, ".1f"),
            _num(result.peak_rss_mib, ".1f"),
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goals_table(summary: dict[str, Any]) -> str:
    lines = ["| goal | target | measured | status |", "|---|---|--:|---|"]
    for goal in summary["goals"]:
        lines.append(
            f"| {goal['name']} | {goal['goal']} | {goal['measured'] or '-'} | {goal['status']} |"
        )
    added = summary["added_p50_ms_c1_vs_direct"]
    extra = []
    if added:
        extra.append(
            "Added p50 latency at c=1 vs direct upstream: "
            + ", ".join(f"({k}) {TARGET_NAMES[k]} {v:+.3f} ms" for k, v in added.items())
            + "."
        )
    if summary["shipyard_rps_c16_vs_litellm"] is not None:
        extra.append(
            f"Shipyard req/s at c=16 vs LiteLLM: {summary['shipyard_rps_c16_vs_litellm']:.2f}x."
        )
    return "\n".join(lines) + ("\n\n" + "\n".join(extra) if extra else "")


def markdown(
    report: dict[str, Any], results: dict[str, TargetResult], summary: dict[str, Any]
) -> str:
    machine, versions = report["machine"], report["versions"]
    shown = {k: v for k, v in versions.items() if k != "shipyard_git"}
    if versions.get("shipyard_git"):
        shown["shipyard"] = f"{shown['shipyard']} (git {versions['shipyard_git']})"
    version_text = ", ".join(f"{name} {ver or 'not installed'}" for name, ver in shown.items())
    notes = [
        f"- ({key}) {note}"
        for key, result in results.items()
        for note in result.notes
        if not note.startswith("validated")
    ]
    errors = [
        f"- ({key}) c={run.connections}: wrk counted errors {run.errors}"
        for key, result in results.items()
        for run in result.runs.values()
        if run.errors
    ] + [
        f"- ({key}) c={run.connections}: {run.foreign_cpu:.0%} of the machine's CPU went to "
        "processes outside the benchmark during this run; its numbers are skewed"
        for key, result in results.items()
        for run in result.runs.values()
        if run.foreign_cpu > FOREIGN_CPU_WARN
    ]
    intro = paragraph(
        f"Measured {report['date']} on {machine['cpu']}, {machine['cores']} cores,",
        f"{machine['ram_gib']} GiB RAM, Linux {machine['kernel']}, Python {machine['python']};",
        f"{version_text}.",
    )
    method = paragraph(
        "One fake upstream (`bench/upstream.py`, a raw asyncio HTTP/1.1 server returning a",
        "fixed chat completion) is called directly (a), through a bare pass-through proxy",
        "(b: `bench/bare_proxy.py`, Starlette + a pooled `aiohttp` client under uvicorn),",
        "through Shipyard (c: `shipyard serve --workers 1`, API-key auth, traces recorded with",
        "`metadata` capture into SQLite) and through the LiteLLM proxy (d: one worker, no",
        "database, master key auth). A trivial function (`bench/bench_services.py`) is hosted",
        "by a bare Starlette endpoint calling it in the thread pool (e:",
        "`bench/bare_service.py`) and as a Shipyard service through its whole chain (f).",
        f"Load: `wrk` POSTing `{REQUEST_BODY.decode()}` (services: `{SERVICE_BODY.decode()}`) with",
        f"`-t1 -c1` and `-t2 -c16`, {report['warmup_s']:g} s warm-up then",
        f"{report['duration_s']:g} s measured for each. Peak RSS is the summed resident memory",
        "of the target's process tree, sampled every 100 ms (for (a) the upstream's); idle is",
        "its RSS after start-up and one validation request, before any load. The load",
        f"generator, the upstream and the proxy share the machine's {machine['cores']} cores,",
        "so absolute numbers are only comparable within one run.",
    )
    listed = "\n".join(notes + errors)
    where = paragraph(
        "Where Shipyard's time goes, counted rather than timed (instructions and function",
        "calls per request, Shipyard vs the bare proxy and the bare service, with the top",
        "functions): see the hot-path section below (`bench/hotpath.py`); uvicorn vs granian:",
        "the ASGI servers section (`bench/servers.py`).",
    )
    return "\n\n".join(
        part
        for part in (
            "## Gateway overhead",
            intro,
            method,
            results_table(results),
            goals_table(summary),
            listed,
            where,
            f"Reproduce: `{report['command']}`",
        )
        if part
    )


def print_summary(results: dict[str, TargetResult], summary: dict[str, Any]) -> None:
    print()
    print(results_table(results))
    print()
    print(goals_table(summary))
    for key, result in results.items():
        if not result.available:
            print(f"\n({key}) {result.name} unavailable:\n{result.reason}")


# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Gateway overhead benchmark (upstream, bare proxy, Shipyard, LiteLLM).",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds per run")
    parser.add_argument(
        "--only", default="a,b,c,d,e,f",
        help="comma-separated targets among a,b,c,d,e,f (default all)"
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        help="measure a run again (keeping the least skewed) when more than 5%% of the CPU "
        "went to other processes",
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print only; leave docs/ and results/ alone"
    )
    args = parser.parse_args(argv)
    keys = [key.strip() for key in args.only.split(",") if key.strip()]
    unknown = [key for key in keys if key not in TARGET_NAMES]
    if unknown or not keys:
        parser.error(f"--only takes a comma-separated subset of a-f, got {args.only!r}")
    args.targets = sorted(set(keys))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wrk = find_wrk()
    if wrk is None:
        print("wrk is not installed: `apt-get install -y wrk`", file=sys.stderr)
        return 2
    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    work_dir = WORK_ROOT / f"gateway-{time.strftime('%Y%m%d-%H%M%S')}"
    work_dir.mkdir()
    log(f"work dir (logs, configs, store): {work_dir}")
    load = load_average()
    busy = wait_for_quiet()
    results: dict[str, TargetResult] = {}
    with managed_processes(work_dir) as group:
        upstream, upstream_port = start_upstream(group)
        ctx = Context(args, wrk, group, work_dir, upstream, upstream_port)
        validate(f"http://127.0.0.1:{upstream_port}{PATH}", None)
        for key in args.targets:
            results[key] = bench_target(ctx, key)
    for key in ("c", "d"):
        if key in results and results[key].available:
            results[key].version = dist_version("shipyard") if key == "c" else LITELLM_VERSION

    summary = comparisons(results)
    report: dict[str, Any] = {
        "benchmark": "gateway",
        "date": now_iso(),
        "command": command_line(),
        "load_average_at_start": load,
        "cpu_busy_before_start": round(busy, 3),
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "machine": machine_info(),
        "versions": {
            "shipyard": dist_version("shipyard"),
            "shipyard_git": git_revision(),
            "uvicorn": dist_version("uvicorn"),
            "aiohttp": dist_version("aiohttp"),
            "starlette": dist_version("starlette"),
            "litellm": litellm_version(),
            "wrk": wrk_version(wrk),
        },
        "request_body": REQUEST_BODY.decode(),
        "targets": results,
        "summary": summary,
    }
    print_summary(results, summary)
    if not args.no_write:
        write_json(RESULTS_DIR / "gateway.json", report)
        write_docs_section("gateway", markdown(report, results, summary))
        log("wrote bench/results/gateway.json and docs/benchmarks.md")
    for db_file in (work_dir / "shipyard").glob("shipyard.db*"):
        db_file.unlink()  # the logs and configs stay in bench/.work for inspection
    return 0


def litellm_version() -> str | None:
    python = LITELLM_VENV / "bin" / "python"
    if not python.exists():
        return None
    shown = subprocess.run(
        [str(python), "-m", "pip", "show", "litellm"], capture_output=True, text=True, check=False
    )
    for line in shown.stdout.splitlines():
        if line.startswith("Version:"):
            return line.split(":", 1)[1].strip()
    return None


def wrk_version(wrk: str) -> str | None:
    done = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
    first = (done.stdout or done.stderr).strip().splitlines()
    return first[0].split(" Copyright")[0].removeprefix("wrk ") if first else None


if __name__ == "__main__":
    sys.exit(main())
