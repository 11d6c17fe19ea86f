"""Resilience benchmark: Shipyard vs LiteLLM in front of the same faulty upstream.

    .venv/bin/python bench/resilience.py [--rate 20] [--only shipyard,litellm] [--no-write]

Two `shipyard sim` processes play the upstreams: a primary that gets faults and a healthy
fallback. Each gateway (Shipyard, then LiteLLM proxy `litellm[proxy]==1.100.0` from
bench/.venv-litellm) is configured with equivalent retry, fallback and circuit/cooldown settings
and driven with the same open-loop load (the `shipyard.readiness.chaos` engine: 20% streams)
through one drill: healthy baseline -> 30% 500s -> full outage (503) -> recovery. Reported for
both: client success rate and p99 per phase, time to recover, and how many calls the upstreams
saw (retry amplification). Results go to stdout, `bench/results/resilience.json` and
`docs/benchmarks.md`. Never part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    RESULTS_DIR,
    ForeignCpu,
    ProcessGroup,
    Server,
    command_line,
    dist_version,
    free_port,
    git_revision,
    http_request,
    log,
    machine_info,
    managed_processes,
    now_iso,
    wait_for_port,
    wait_for_quiet,
    write_docs_section,
    write_json,
)
from gateway import LITELLM_VERSION, Unavailable, ensure_litellm, litellm_version
from shipyard.readiness.chaos import (
    ChaosReport,
    FaultStep,
    Scenario,
    run_scenarios_async,
    to_dict,
)

WORK_ROOT = Path(__file__).resolve().parent / ".work"
SIM_TOKEN = "sim-bench-" + secrets.token_hex(8)
MODEL = "demo"
TARGETS = {"shipyard": "Shipyard", "litellm": f"LiteLLM {LITELLM_VERSION}"}
# The equivalent resilience settings, in one place (both configs are generated from these).
ATTEMPTS = 3  # per alias, the first included = LiteLLM num_retries 2
OPEN_S = 5.0  # circuit open / cooldown time
ALLOWED_FAILS = 5  # LiteLLM: failures per minute before a cooldown
TIMEOUT_S = 10.0


@dataclass
class Drill:
    rate: float
    stream_share: float
    baseline_s: float
    errors_s: float
    outage_s: float
    recovery_s: float

    @property
    def total_s(self) -> float:
        return self.baseline_s + self.errors_s + self.outage_s + self.recovery_s

    def scenario(self) -> Scenario:
        return Scenario(
            name="errors-then-outage",
            description="30% 500s, then every answer a 503, then healthy again",
            steps=(
                FaultStep(
                    name="errors-30", faults={"error_rates": {"500": 0.3}}, share=self.errors_s
                ),
                FaultStep(name="outage", faults={"error_rates": {"503": 1.0}}, share=self.outage_s),
            ),
        )


@dataclass
class TargetResult:
    key: str
    name: str
    available: bool = False
    reason: str | None = None
    version: str | None = None
    report: ChaosReport | None = None
    upstream_calls: dict[str, int] = field(default_factory=dict)
    foreign_cpu: float = 0.0
    config: str = ""


# -- the upstreams ------------------------------------------------------------------------------
def start_sim(group: ProcessGroup, name: str, *flags: str) -> int:
    port = free_port()
    server = group.start(
        name, [sys.executable, "-m", "shipyard", "sim", "--port", str(port), *flags]
    )
    error = wait_for_port(server, port, timeout=30)
    if error:
        raise SystemExit(f"the {name} sim did not start: {error}\n{server.log_tail()}")
    return port


def sim_stats(port: int, *, reset: bool = False) -> dict[str, int]:
    headers = {"Authorization": f"Bearer {SIM_TOKEN}"}
    url = f"http://127.0.0.1:{port}/_sim/{'reset' if reset else 'stats'}"
    result = http_request(url, body=b"{}" if reset else None, headers=headers)
    if result.status != 200:
        raise SystemExit(f"{url} answered {result.status}: {result.body[:300]!r}")
    return {k: int(v) for k, v in result.json().items()}


# -- the gateways -------------------------------------------------------------------------------
def shipyard_config(work: Path, primary: int, backup: int) -> str:
    return f"""\
store:
  url: sqlite:///{work / "shipyard.db"}
auth:
  api_keys:
    - {{$env: SHIPYARD_API_KEY}}
providers:
  primary:
    kind: openai
    base_url: http://127.0.0.1:{primary}/v1
    timeout_s: {TIMEOUT_S:g}
    circuit: {{window_s: 10, min_requests: 10, failure_rate: 0.5, open_s: {OPEN_S:g}}}
  secondary:
    kind: openai
    base_url: http://127.0.0.1:{backup}/v1
    timeout_s: {TIMEOUT_S:g}
models:
  {MODEL}:
    deployments: [{{provider: primary, model: sim-chat}}]
    fallbacks: [backup]
    retry: {{attempts: {ATTEMPTS}}}
  backup:
    provider: secondary
    model: sim-chat
"""


def litellm_config(primary: int, backup: int, master_key: str) -> str:
    return f"""\
model_list:
  - model_name: {MODEL}
    litellm_params:
      model: openai/sim-chat
      api_base: http://127.0.0.1:{primary}/v1
      api_key: sk-sim-not-checked
      timeout: {TIMEOUT_S:g}
      max_retries: 0
  - model_name: backup
    litellm_params:
      model: openai/sim-chat
      api_base: http://127.0.0.1:{backup}/v1
      api_key: sk-sim-not-checked
      timeout: {TIMEOUT_S:g}
      max_retries: 0
router_settings:
  num_retries: {ATTEMPTS - 1}
  fallbacks: [{{"{MODEL}": ["backup"]}}]
  allowed_fails: {ALLOWED_FAILS}
  cooldown_time: {OPEN_S:g}
general_settings:
  master_key: {master_key}
litellm_settings:
  telemetry: false
"""


def start_target(
    key: str, group: ProcessGroup, work: Path, primary: int, backup: int
) -> tuple[Server, int, str, str]:
    """(server, port, api key, config text) of a started gateway."""
    port = free_port()
    api_key = "sk-bench-" + secrets.token_hex(12)
    folder = work / key
    folder.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "VIRTUAL_ENV"}}
    if key == "shipyard":
        text = shipyard_config(folder, primary, backup)
        (folder / "shipyard.yaml").write_text(text)
        env["SHIPYARD_API_KEY"] = api_key
        argv = [
            sys.executable,
            "-m",
            "shipyard",
            "serve",
            "--config",
            str(folder / "shipyard.yaml"),
            "--port",
            str(port),
            "--workers",
            "1",
        ]
        startup = 60.0
    else:
        executable = ensure_litellm()
        text = litellm_config(primary, backup, api_key)
        (folder / "config.yaml").write_text(text)
        env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_TELEMETRY="False")
        argv = [
            str(executable),
            "--config",
            str(folder / "config.yaml"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
            "--telemetry",
            "False",
        ]
        startup = 180.0
    server = group.start(key, argv, env=env, cwd=folder)
    error = wait_for_port(server, port, timeout=startup)
    if error:
        raise Unavailable(f"{error}; log tail:\n{server.log_tail()}")
    validate(port, api_key)
    warm_up(port, api_key)
    return server, port, api_key, text


def warm_up(port: int, api_key: str, requests: int = 40) -> None:
    """Sequential requests, every other one streaming, so first-request costs (imports, pools)
    do not land in the baseline of either gateway."""
    headers = {"content-type": "application/json", "authorization": f"Bearer {api_key}"}
    for i in range(requests):
        body = orjson.dumps(
            {
                "model": MODEL,
                "stream": bool(i % 2),
                "messages": [{"role": "user", "content": f"warm-up {i}"}],
            }
        )
        http_request(f"http://127.0.0.1:{port}/v1/chat/completions", body=body, headers=headers)


def validate(port: int, api_key: str, deadline_s: float = 60.0) -> None:
    """One real completion through the gateway (retried while it finishes starting)."""
    body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hello"}]})
    headers = {"content-type": "application/json", "authorization": f"Bearer {api_key}"}
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    deadline = time.monotonic() + deadline_s
    while True:
        result = http_request(url, body=body, headers=headers)
        if result.status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if result.status != 200:
        detail = result.error or result.body.decode(errors="replace")[:1000]
        raise Unavailable(f"validation request got HTTP {result.status}: {detail}")
    content = result.json().get("choices", [{}])[0].get("message", {}).get("content")
    if not isinstance(content, str) or not content:
        raise Unavailable(f"validation got 200 but no completion: {result.body[:500]!r}")


def bench_target(
    key: str, group: ProcessGroup, work: Path, drill: Drill, primary: int, backup: int
) -> TargetResult:
    out = TargetResult(key=key, name=TARGETS[key])
    log(f"{out.name}: starting")
    try:
        server, port, api_key, config = start_target(key, group, work, primary, backup)
    except Unavailable as exc:
        out.reason = str(exc)
        log(f"{out.name}: unavailable: {out.reason}")
        return out
    out.config = config.replace(api_key, "<random key of the run>")
    out.version = dist_version("shipyard") if key == "shipyard" else litellm_version()
    try:
        sim_stats(primary, reset=True)
        sim_stats(backup, reset=True)
        log(f"{out.name}: drill of {drill.total_s:g} s at {drill.rate:g} req/s")
        with ForeignCpu([server.pid]) as foreign:
            report = asyncio.run(
                run_scenarios_async(
                    f"http://127.0.0.1:{port}",
                    api_key,
                    MODEL,
                    [f"http://127.0.0.1:{primary}"],
                    [drill.scenario()],
                    rate=drill.rate,
                    stream_share=drill.stream_share,
                    baseline_s=drill.baseline_s,
                    fault_s=drill.errors_s + drill.outage_s,
                    recovery_s=drill.recovery_s,
                    status=key == "shipyard",
                    sim_admin_token=SIM_TOKEN,
                    seed=1,
                )
            )
        out.foreign_cpu = round(foreign.foreign, 3)
        out.report = report
        primary_stats, backup_stats = sim_stats(primary), sim_stats(backup)
        out.upstream_calls = {
            "primary": primary_stats.get("requests", 0),
            "fallback": backup_stats.get("requests", 0),
        }
        out.available = True
    except Exception as exc:  # a crashed target is a result, not a crash of the benchmark
        out.reason = f"{type(exc).__name__}: {exc}\nlog tail:\n{server.log_tail()}"
        log(f"{out.name}: failed: {out.reason}")
    finally:
        group.stop(server)
    return out


# -- reporting ----------------------------------------------------------------------------------
def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or math.isnan(a) or math.isnan(b) or b == 0:
        return None
    return a / b


def metrics(result: TargetResult) -> dict[str, float | None]:
    """The compared numbers of one target, by metric name (empty when unavailable)."""
    if not result.available or result.report is None:
        return {}
    scenario = result.report.scenarios[0]
    out: dict[str, float | None] = {}
    for phase in scenario.phases:
        out[f"success, {phase.name}"] = phase.success_rate
    for phase in scenario.phases:
        out[f"p99, {phase.name}"] = phase.p99_ms
    out["time to recover"] = scenario.recovery_time_s
    requests = sum(p.requests for p in scenario.phases)
    out["upstream calls per request"] = sum(result.upstream_calls.values()) / max(1, requests)
    return out


def _unit(metric: str) -> str:
    if metric.startswith("success"):
        return "%"
    if metric.startswith("p99"):
        return "ms"
    return "s" if metric == "time to recover" else "x"


def rows(results: dict[str, TargetResult]) -> list[tuple[str, float | None, float | None, str]]:
    """(metric, shipyard, litellm, unit) rows of the side-by-side table."""
    ship = metrics(results["shipyard"]) if "shipyard" in results else {}
    lite = metrics(results["litellm"]) if "litellm" in results else {}
    names = list(dict.fromkeys([*ship, *lite]))
    return [(name, ship.get(name), lite.get(name), _unit(name)) for name in names]


def _fmt(value: float | None, unit: str) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    if unit == "%":
        return f"{value:.2%}"
    if unit == "ms":
        return f"{value:,.1f} ms"
    if unit == "s":
        return f"{value:.1f} s"
    return f"{value:.2f}x"


def table(results: dict[str, TargetResult]) -> str:
    lines = [
        f"| metric | {TARGETS['shipyard']} | {TARGETS['litellm']} | Shipyard / LiteLLM |",
        "|---|--:|--:|--:|",
    ]
    for metric, ship, lite, unit in rows(results):
        ratio = _ratio(ship, lite)
        lines.append(
            f"| {metric} | {_fmt(ship, unit)} | {_fmt(lite, unit)} | "
            f"{'n/a' if ratio is None else f'{ratio:.2f}'} |"
        )
    return "\n".join(lines)


def errors_table(results: dict[str, TargetResult]) -> str:
    lines = ["| target | phase | requests | errors by kind |", "|---|---|--:|---|"]
    for result in results.values():
        if result.report is None:
            continue
        for p in result.report.scenarios[0].phases:
            kinds = ", ".join(f"{k}: {v}" for k, v in p.errors.items()) or "none"
            lines.append(f"| {result.name} | {p.name} | {p.requests} | {kinds} |")
    return "\n".join(lines)


def circuits(result: TargetResult) -> str:
    if result.report is None:
        return ""
    states = []
    for p in result.report.scenarios[0].phases:
        deployments = ((p.status or {}).get("models") or {}).get(MODEL, {}).get("deployments", {})
        for name, d in deployments.items():
            states.append(f"end of {p.name}: {name} {d['circuit']} (opened {d['times_opened']}x)")
    return "; ".join(states)


def markdown(report: dict[str, Any], results: dict[str, TargetResult], drill: Drill) -> str:
    machine, versions = report["machine"], dict(report["versions"])
    git = versions.pop("shipyard_git", None)
    if git:
        versions["shipyard"] = f"{versions['shipyard']} (git {git})"
    version_text = ", ".join(f"{k} {v or 'not installed'}" for k, v in versions.items())
    notes = [
        f"- {r.name} unavailable: {(r.reason or '').splitlines()[0]}"
        for r in results.values()
        if not r.available
    ]
    notes += [
        f"- {r.name}: {r.foreign_cpu:.0%} of the machine's CPU went to other processes "
        "during its run; its numbers are skewed"
        for r in results.values()
        if r.foreign_cpu > 0.05
    ]
    ship = results.get("shipyard")
    if ship is not None and ship.available:
        notes.append(f"- Shipyard circuit of the primary: {circuits(ship)}.")
        notes.append("- Shipyard waits the 503s' `Retry-After: 1` before each retry of the "
                     f"primary, so until the primary's circuit opens a request can spend "
                     f"{ATTEMPTS - 1} s on retries before it reaches the fallback (the outage "
                     "p99); once the circuit is open, calls go straight to the fallback.")
    return f"""\
## Resilience: Shipyard vs LiteLLM in front of a faulty upstream

Measured {report["date"]} on {machine["cpu"]}, {machine["cores"]} cores, {machine["ram_gib"]} GiB
RAM, Linux {machine["kernel"]}, Python {machine["python"]}; {version_text}.

Two `shipyard sim` processes are the upstreams: a primary that gets faults through
`PUT /_sim/faults`, and a healthy fallback. Each gateway in turn (the other one stopped) gets
{drill.rate:g} requests/s open loop, {drill.stream_share:.0%} of them streaming, through one
drill: {drill.baseline_s:g} s healthy, {drill.errors_s:g} s with 30% of the primary's answers
500, {drill.outage_s:g} s with every answer 503 (`Retry-After: 1`), {drill.recovery_s:g} s
healthy again. Load and measurement: `shipyard.readiness.chaos` (latency from each request's
scheduled send time; a stream counts as a success only when it ends with its `finish_reason`
and `[DONE]`). Time to recover: from the removal of the faults until every 1 s window is back to
the baseline success rate with p99 within 2x baseline.

Equivalent settings: {ATTEMPTS} attempts per model (Shipyard `retry.attempts: {ATTEMPTS}`;
LiteLLM router `num_retries: {ATTEMPTS - 1}` with the SDK's own `max_retries: 0`), a fallback
model on the healthy upstream (`fallbacks: [backup]` / `fallbacks: [{{"{MODEL}": ["backup"]}}]`),
a {OPEN_S:g} s break for a failing upstream (Shipyard circuit `open_s: {OPEN_S:g}` after 50%
failures of at least 10 calls in 10 s; LiteLLM `cooldown_time: {OPEN_S:g}` after
`allowed_fails: {ALLOWED_FAILS}` in a minute), {TIMEOUT_S:g} s upstream timeout. Everything
else at each gateway's defaults (Shipyard's retry budget of 20% extra attempts included).
Configs: `bench/results/resilience.json`.

{table(results)}

Ratios are Shipyard / LiteLLM: above 1 is better for success, below 1 is better for p99, time to
recover and upstream calls. "Upstream calls per request" counts what both sims received per
client request: retry amplification.

{errors_table(results)}
{chr(10) + chr(10).join(notes) + chr(10) if notes else ""}
Reproduce: `{report["command"]}`
"""


def print_summary(results: dict[str, TargetResult]) -> None:
    print()
    print(table(results))
    print()
    print(errors_table(results))
    for result in results.values():
        if not result.available:
            print(f"\n{result.name} unavailable:\n{result.reason}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Resilience benchmark: Shipyard vs LiteLLM in front of one faulty upstream "
        "(30%% 500s, then an outage, then recovery).",
        epilog="example: .venv/bin/python bench/resilience.py --rate 30 --only shipyard",
    )
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second")
    parser.add_argument("--stream-share", type=float, default=0.2, help="share that streams")
    parser.add_argument("--baseline", type=float, default=10.0, help="healthy seconds first")
    parser.add_argument("--errors", type=float, default=10.0, help="seconds of 30%% 500s")
    parser.add_argument("--outage", type=float, default=10.0, help="seconds of 100%% 503s")
    parser.add_argument("--recovery", type=float, default=20.0, help="healthy seconds after")
    parser.add_argument(
        "--only", default="shipyard,litellm", help="comma-separated targets among shipyard,litellm"
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print only; leave docs/ and bench/results/ alone"
    )
    args = parser.parse_args(argv)
    args.targets = [k.strip() for k in args.only.split(",") if k.strip()]
    if not args.targets or any(k not in TARGETS for k in args.targets):
        parser.error(
            f"--only takes a comma-separated subset of shipyard,litellm, got {args.only!r}"
        )
    for name in ("rate", "baseline", "errors", "outage", "recovery"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name} is {getattr(args, name)!r}; it must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    drill = Drill(
        rate=args.rate,
        stream_share=args.stream_share,
        baseline_s=args.baseline,
        errors_s=args.errors,
        outage_s=args.outage,
        recovery_s=args.recovery,
    )
    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    work = WORK_ROOT / f"resilience-{time.strftime('%Y%m%d-%H%M%S')}"
    work.mkdir()
    log(f"work dir (logs, configs, store): {work}")
    busy = wait_for_quiet()
    results: dict[str, TargetResult] = {}
    with managed_processes(work) as group:
        primary = start_sim(group, "sim-primary", "--admin-token", SIM_TOKEN)
        backup = start_sim(group, "sim-fallback", "--admin-token", SIM_TOKEN)
        for key in args.targets:
            results[key] = bench_target(key, group, work, drill, primary, backup)
    report: dict[str, Any] = {
        "benchmark": "resilience",
        "date": now_iso(),
        "command": command_line(),
        "cpu_busy_before_start": round(busy, 3),
        "drill": drill,
        "machine": machine_info(),
        "versions": {
            "shipyard": dist_version("shipyard"),
            "shipyard_git": git_revision(),
            "aiohttp": dist_version("aiohttp"),
            "litellm": litellm_version(),
        },
        "settings": {
            "attempts": ATTEMPTS,
            "open_s": OPEN_S,
            "allowed_fails": ALLOWED_FAILS,
            "timeout_s": TIMEOUT_S,
        },
        "targets": {key: _target_json(r) for key, r in results.items()},
        "comparison": [
            {"metric": m, "shipyard": s, "litellm": lt, "unit": u, "ratio": _ratio(s, lt)}
            for m, s, lt, u in rows(results)
        ],
    }
    print_summary(results)
    if not args.no_write:
        write_json(RESULTS_DIR / "resilience.json", report)
        write_docs_section("resilience", markdown(report, results, drill))
        log("wrote bench/results/resilience.json and docs/benchmarks.md")
    for db_file in (work / "shipyard").glob("shipyard.db*"):
        db_file.unlink()  # logs and configs stay in bench/.work for inspection
    return 0


def _target_json(result: TargetResult) -> dict[str, Any]:
    return {
        "name": result.name,
        "available": result.available,
        "reason": result.reason,
        "version": result.version,
        "upstream_calls": result.upstream_calls,
        "foreign_cpu": result.foreign_cpu,
        "config": result.config,
        "chaos": None if result.report is None else to_dict(result.report),
    }


if __name__ == "__main__":
    sys.exit(main())
