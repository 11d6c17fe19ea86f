"""Chaos scenarios: break the upstream on purpose and measure what the *client* of a gateway sees.

Each scenario drives steady open-loop traffic (a fixed rate, a share of it streaming) at the
gateway's OpenAI API through three phases: a healthy **baseline**, one or more **fault** steps
(knobs of `shipyard sim` set with `PUT {sim}/_sim/faults`, or a user's command for faults a knob
cannot cause, such as the store going down) and a **recovery** phase after the faults are
removed. For each phase it reports the client-visible success rate, p50/p99 latency (measured
from each request's *scheduled* send time, so queueing cannot hide) and errors by kind; for the
scenario, the recovery time: from the removal of the faults until the sliding windows
(`window_s`) are back to the baseline success rate with p99 within `latency_factor` x baseline,
and stay back for `hold_s`.

Streams are checked for correctness as well as success: a stream must end with a
`finish_reason` and `data: [DONE]`. One that ends with an explicit error event is a visible
failure (`stream_error_event`); one cut without `[DONE]` is `stream_no_done`; one that ends with
a clean `[DONE]` but never finished its answer (`clean_done_after_cut`) is a correctness failure:
the client would take a truncated answer for a complete one.

>>> report = run_scenarios("http://127.0.0.1:8000", "sk-...", "demo",
...                        ["http://127.0.0.1:9100"], ["errors-30", "outage"],
...                        rate=20, baseline_s=5, fault_s=10, recovery_s=15)  # doctest: +SKIP
>>> report.scenarios[0].fault.success_rate, report.scenarios[0].recovery_time_s  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import html
import math
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import aiohttp
import orjson

from shipyard._version import __version__
from shipyard.errors import ConfigError, UpstreamUnavailable
from shipyard.readiness.loadtest import percentile
from shipyard.readiness.report import INSTALL_HINT
from shipyard.readiness.sse import sse_data

__all__ = [
    "BUILTIN_SCENARIOS",
    "ChaosProgress",
    "ChaosReport",
    "FaultStep",
    "PhaseResult",
    "Scenario",
    "ScenarioResult",
    "StreamCounts",
    "custom_scenario",
    "ensure_html_support",
    "render_html",
    "resolve_scenarios",
    "run_scenarios",
    "run_scenarios_async",
    "to_dict",
    "write_html",
    "write_json",
]

OK = "ok"
STREAM_ERROR_EVENT = "stream_error_event"
STREAM_NO_DONE = "stream_no_done"
CLEAN_DONE_AFTER_CUT = "clean_done_after_cut"
BAD_RESPONSE = "bad_response"
TIMEOUT = "timeout"
CONNECT_ERROR = "connect_error"
DISCONNECTED = "disconnected"
STORE_HOOK: Literal["store"] = "store"
CHAOS_TENANT = "chaos"
_HOOK_TIMEOUT_S = 120.0


# -- scenarios ----------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class FaultStep:
    """One fault phase: sim knobs to set (replacing all others), or a command hook.

    `share` is this step's share of the scenario's fault time (steps are scaled to add up).
    """

    name: str
    faults: Mapping[str, Any] = field(default_factory=dict)
    hook: Literal["store"] | None = None
    share: float = 1.0


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """A named fault drill: baseline, then `steps` in order, then recovery."""

    name: str
    description: str
    steps: tuple[FaultStep, ...]

    @property
    def needs_store_hooks(self) -> bool:
        return any(step.hook == STORE_HOOK for step in self.steps)


def _one(name: str, description: str, faults: Mapping[str, Any]) -> Scenario:
    return Scenario(name=name, description=description,
                    steps=(FaultStep(name="fault", faults=faults),))


BUILTIN_SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    _one("errors-30", "30% of upstream answers are 500s", {"error_rates": {"500": 0.3}}),
    _one("outage", "every upstream answer is a 503", {"error_rates": {"503": 1.0}}),
    _one("hangs", "5% of upstream requests hang for 60 s", {"hang_rate": 0.05, "hang_s": 60}),
    _one("resets", "20% of upstream connections are reset", {"reset_rate": 0.2}),
    _one("cut-streams", "50% of upstream answers are cut mid-way (streams after 2 chunks)",
         {"cut_rate": 0.5, "cut_after_chunks": 2}),
    _one("slow-streams", "150 ms between streamed chunks", {"token_delay_ms": 150}),
    _one("latency-spike", "upstream latency lognormal, median 300 ms, sigma 1",
         {"latency": "lognormal:300,1"}),
    _one("rate-limited", "50% of upstream answers are 429 with Retry-After: 1",
         {"error_rates": {"429": 0.5}, "retry_after_s": 1}),
    Scenario(name="store-down", description="the store is down (user's --store-down-cmd); "
             "traffic uses a fresh tenant key, which the store holds",
             steps=(FaultStep(name="fault", hook=STORE_HOOK),)),
)}


def custom_scenario(spec: str) -> Scenario:
    """A scenario from `NAME=JSON`, the JSON being sim knobs, e.g.
    `slow-and-flaky={"token_delay_ms": 50, "error_rates": {"502": 0.1}}`."""
    name, sep, text = spec.partition("=")
    name = name.strip()
    if not sep or not name:
        raise ConfigError(f"--custom is '{spec}'; write NAME=JSON with sim fault knobs, e.g. "
                          "--custom 'flaky={\"error_rates\": {\"502\": 0.1}}'.", param="custom")
    try:
        faults = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"--custom '{name}' has invalid JSON ({exc}); write the knobs as a "
                          "JSON object, e.g. {\"error_rates\": {\"502\": 0.1}}.",
                          param="custom") from None
    if not isinstance(faults, dict):
        raise ConfigError(f"--custom '{name}' must be a JSON object of sim fault knobs, got "
                          f"{text!r}.", param="custom")
    return _one(name, f"custom: {text.strip()}", faults)


def resolve_scenarios(names: Sequence[str]) -> list[Scenario]:
    """Built-in scenarios by name (`all` expands to every one), in the order given."""
    out: list[Scenario] = []
    for raw in names:
        name = raw.strip()
        picked = list(BUILTIN_SCENARIOS.values()) if name == "all" else [
            BUILTIN_SCENARIOS[name]] if name in BUILTIN_SCENARIOS else None
        if picked is None:
            raise ConfigError(f"--scenario is '{raw}', which is not a built-in scenario; use "
                              f"one of {', '.join(BUILTIN_SCENARIOS)} or all, or define one "
                              "with --custom NAME=JSON.", param="scenario")
        out.extend(s for s in picked if s not in out)
    return out


# -- results ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StreamCounts:
    """How the streams of a phase ended."""

    sent: int = 0
    ok: int = 0
    error_event: int = 0
    no_done: int = 0
    clean_done_after_cut: int = 0
    failed_before_start: int = 0


@dataclass(frozen=True)
class PhaseResult:
    """One phase; latencies in ms from the scheduled send time (NaN when nothing was measured).

    `status` is the gateway's `/v1/admin/status` digest at the end of the phase (circuits per
    deployment, retry budget, trace spool), or None when it was not read.
    """

    name: str
    faults: dict[str, Any]
    start_s: float
    end_s: float
    requests: int
    ok: int
    success_rate: float
    p50_ms: float
    p99_ms: float
    stream_ttft_p99_ms: float
    errors: dict[str, int]
    streams: StreamCounts
    status: dict[str, Any] | None = None


@dataclass(frozen=True)
class Second:
    """One second of a scenario's timeline (by scheduled send time)."""

    second: int
    requests: int
    ok: int
    p99_ms: float


@dataclass(frozen=True)
class ScenarioResult:
    """A scenario's phases, the fault steps combined (`fault`), and its recovery time.

    `recovery_time_s` is None when the scenario was skipped or did not recover before the end of
    the recovery phase (`recovered` tells which).
    """

    name: str
    description: str
    skipped: str | None = None
    phases: list[PhaseResult] = field(default_factory=list)
    fault: PhaseResult | None = None
    recovery_time_s: float | None = None
    recovered: bool = False
    timeline: list[Second] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def baseline(self) -> PhaseResult | None:
        return self.phases[0] if self.phases else None

    @property
    def recovery(self) -> PhaseResult | None:
        return self.phases[-1] if self.phases else None

    @property
    def p99_ratio(self) -> float:
        """Fault-phase p99 over baseline p99 (NaN when either is missing)."""
        if self.fault is None or self.baseline is None or not self.baseline.p99_ms:
            return math.nan
        return self.fault.p99_ms / self.baseline.p99_ms

    @property
    def clean_done_after_cut(self) -> int:
        return sum(p.streams.clean_done_after_cut for p in self.phases)


@dataclass(frozen=True)
class ChaosReport:
    """Everything one `run_scenarios` call measured."""

    gateway_url: str
    model: str
    sims: list[str]
    rate: float
    stream_share: float
    baseline_s: float
    fault_s: float
    recovery_s: float
    window_s: float
    hold_s: float
    latency_factor: float
    started_at: str
    scenarios: list[ScenarioResult]
    shipyard_version: str = __version__


@dataclass(frozen=True)
class ChaosProgress:
    """A live snapshot handed to `on_progress` about once a second and at each phase change."""

    scenario: str
    phase: str
    elapsed_s: float
    duration_s: float
    sent: int
    ok: int
    errors: int


# -- measuring ----------------------------------------------------------------------------------
@dataclass
class _Sample:
    at: float
    stream: bool
    outcome: str = OK
    latency: float | None = None
    ttft: float | None = None


def _ms(samples: Sequence[_Sample]) -> list[float]:
    return sorted(s.latency * 1000.0 for s in samples if s.latency is not None)


async def _read_stream(response: aiohttp.ClientResponse, sample: _Sample, scheduled: float,
                       loop: asyncio.AbstractEventLoop) -> str:
    finished = False
    async for data in sse_data(response):
        if data == b"[DONE]":
            return OK if finished else CLEAN_DONE_AFTER_CUT
        if sample.ttft is None:
            sample.ttft = loop.time() - scheduled
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return BAD_RESPONSE
        if not isinstance(event, dict):
            return BAD_RESPONSE
        if event.get("error"):
            return STREAM_ERROR_EVENT
        for choice in event.get("choices") or ():
            if isinstance(choice, dict) and choice.get("finish_reason"):
                finished = True
    return STREAM_NO_DONE


async def _send(session: aiohttp.ClientSession, url: str, body: bytes, sample: _Sample,
                scheduled: float, loop: asyncio.AbstractEventLoop,
                headers: Mapping[str, str] | None = None) -> None:
    try:
        async with session.post(url, data=body, headers=headers) as response:
            if response.status != 200:
                await response.read()
                sample.outcome = str(response.status)
            elif sample.stream:
                sample.outcome = await _read_stream(response, sample, scheduled, loop)
            else:
                try:
                    parsed = orjson.loads(await response.read())
                except orjson.JSONDecodeError:
                    parsed = None
                good = isinstance(parsed, dict) and bool(parsed.get("choices"))
                sample.outcome = OK if good else BAD_RESPONSE
    except TimeoutError:
        sample.outcome = TIMEOUT
    except aiohttp.ClientConnectorError:
        sample.outcome = CONNECT_ERROR
    except aiohttp.ClientPayloadError:
        sample.outcome = STREAM_NO_DONE if sample.stream else DISCONNECTED
    except (aiohttp.ClientError, OSError):
        sample.outcome = DISCONNECTED
    sample.latency = loop.time() - scheduled


def _stream_counts(samples: Sequence[_Sample]) -> StreamCounts:
    outcomes = Counter(s.outcome for s in samples if s.stream)
    sent = sum(outcomes.values())
    known = (OK, STREAM_ERROR_EVENT, STREAM_NO_DONE, CLEAN_DONE_AFTER_CUT)
    return StreamCounts(
        sent=sent, ok=outcomes[OK], error_event=outcomes[STREAM_ERROR_EVENT],
        no_done=outcomes[STREAM_NO_DONE], clean_done_after_cut=outcomes[CLEAN_DONE_AFTER_CUT],
        failed_before_start=sum(n for k, n in outcomes.items() if k not in known))


def _phase(name: str, faults: dict[str, Any], start: float, end: float,
           samples: Sequence[_Sample], status: dict[str, Any] | None) -> PhaseResult:
    latencies = _ms(samples)
    ttfts = sorted(s.ttft * 1000.0 for s in samples if s.stream and s.ttft is not None)
    errors = Counter(s.outcome for s in samples if s.outcome != OK)
    ok = len(samples) - sum(errors.values())
    return PhaseResult(
        name=name, faults=faults, start_s=round(start, 3), end_s=round(end, 3),
        requests=len(samples), ok=ok,
        success_rate=ok / len(samples) if samples else math.nan,
        p50_ms=percentile(latencies, 50), p99_ms=percentile(latencies, 99),
        stream_ttft_p99_ms=percentile(ttfts, 99),
        errors=dict(sorted(errors.items(), key=lambda kv: (-kv[1], kv[0]))),
        streams=_stream_counts(samples), status=status)


def _recovery_time(samples: Sequence[_Sample], baseline: PhaseResult, removed_at: float,
                   end: float, *, window_s: float, hold_s: float, latency_factor: float,
                   success_tolerance: float, latency_slack_ms: float,
                   full_hold: bool = False) -> float | None:
    """Seconds from `removed_at` until the sliding windows meet the baseline and keep meeting
    it for `hold_s` (or until the end of the phase, when that comes first; with `full_hold`,
    the whole `hold_s` before `end` is needed)."""
    success_floor = (baseline.success_rate if not math.isnan(baseline.success_rate) else 1.0)
    success_floor -= success_tolerance
    base_p99 = baseline.p99_ms if not math.isnan(baseline.p99_ms) else 0.0
    p99_ceiling = max(latency_factor * base_p99, base_p99 + latency_slack_ms)
    step = max(window_s / 10.0, 0.01)
    later = [s for s in samples if s.at >= removed_at]
    starts: list[float] = []
    t = removed_at
    while t + window_s <= end + 1e-9:
        starts.append(t)
        t += step
    good: list[bool] = []
    for start in starts:
        group = [s for s in later if start <= s.at < start + window_s]
        ok = sum(1 for s in group if s.outcome == OK)
        good.append(bool(group) and ok / len(group) >= success_floor
                    and percentile(_ms(group), 99) <= p99_ceiling)
    # A window is one sample of the state; a single lucky one is not a recovery.
    needed = max(1, round(max(hold_s - window_s, 0.0) / step) + 1)
    for i, start in enumerate(starts):
        if full_hold and i + needed > len(starts):
            break
        if all(good[i:i + needed]):
            return round(start - removed_at, 3)
    return None


def _timeline(samples: Sequence[_Sample], end: float) -> list[Second]:
    seconds = max(math.ceil(end), 1)
    groups: list[list[_Sample]] = [[] for _ in range(seconds)]
    for s in samples:
        groups[min(int(s.at), seconds - 1)].append(s)
    return [Second(second=i, requests=len(g), ok=sum(1 for s in g if s.outcome == OK),
                   p99_ms=percentile(_ms(g), 99)) for i, g in enumerate(groups)]


# -- the controls: sims, hooks, gateway status --------------------------------------------------
def _root(url: str, what: str) -> str:
    text = url.strip().rstrip("/")
    if not text.startswith(("http://", "https://")):
        raise ConfigError(f"{what} is '{url}'; it must be an http(s) URL such as "
                          "http://127.0.0.1:9100.", param=what)
    return text.removesuffix("/v1")


@dataclass
class _Controls:
    session: aiohttp.ClientSession
    gateway: str
    api_key: str | None
    sims: list[str]
    sim_token: str | None
    store_down_cmd: str | None
    store_up_cmd: str | None

    def _sim_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.sim_token}"} if self.sim_token else {}

    async def sim_call(self, method: str, sim: str, body: bytes | None = None) -> str:
        """One call to a sim's admin API, with errors that say what to fix."""
        url = f"{sim}/_sim/faults"
        try:
            async with self.session.request(method, url, data=body,
                                            headers=self._sim_headers()) as response:
                text, status = await response.text(), response.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise UpstreamUnavailable(
                f"The sim admin URL '{url}' cannot be reached ({exc or type(exc).__name__}); "
                "check --sim and that `shipyard sim` is running there.", param="sim") from None
        if status == 401:
            raise ConfigError(
                f"The sim at '{sim}' refused the admin token (401); pass the token it was "
                "started with (`shipyard sim --admin-token T`) as --sim-admin-token T.",
                param="sim_admin_token")
        if status == 422:
            raise ConfigError(f"The sim at '{sim}' refused the fault knobs "
                              f"{(body or b'').decode()}: {text.strip()}", param="faults")
        if status != 200:
            raise ConfigError(f"{method} {url} answered {status}: {text.strip()[:300]} --sim "
                              "must be the root URL of a `shipyard sim`, e.g. "
                              "http://127.0.0.1:9100.", param="sim")
        return text

    async def set_faults(self, faults: Mapping[str, Any]) -> None:
        """Replace the knobs of every sim (`PUT`: knobs not named go back to healthy)."""
        for sim in self.sims:
            await self.sim_call("PUT", sim, orjson.dumps(dict(faults)))

    async def run_hook(self, which: Literal["down", "up"]) -> str | None:
        """Run --store-down-cmd / --store-up-cmd; returns a note when it failed."""
        command = self.store_down_cmd if which == "down" else self.store_up_cmd
        if not command:
            return None
        option = f"--store-{which}-cmd"
        try:
            proc = await asyncio.create_subprocess_shell(
                command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            out, _ = await asyncio.wait_for(proc.communicate(), _HOOK_TIMEOUT_S)
        except TimeoutError:
            return f"{option} '{command}' did not finish within {_HOOK_TIMEOUT_S:g} s."
        if proc.returncode != 0:
            tail = out.decode(errors="replace").strip()[-300:]
            return f"{option} '{command}' exited with {proc.returncode}: {tail}"
        return None

    async def _admin(self, method: str, path: str, body: dict[str, Any] | None = None
                     ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        async with self.session.request(method, f"{self.gateway}{path}", headers=headers,
                                        data=orjson.dumps(body) if body is not None else None
                                        ) as response:
            text = await response.read()
            try:
                return response.status, orjson.loads(text) if text else None
            except orjson.JSONDecodeError:
                return response.status, text.decode(errors="replace")

    async def tenant_key(self) -> tuple[str, str] | str:
        """A fresh client key of tenant `chaos` (created through the admin API): (key id,
        secret), or a note saying why there is none. Stored keys are what a store outage
        can break; the static admin key never touches the store."""
        try:
            status, answer = await self._admin("POST", "/v1/admin/tenants",
                                               {"id": CHAOS_TENANT, "name": "chaos drills"})
            if status not in (201, 400):
                return f"creating tenant '{CHAOS_TENANT}' answered {status}: {answer}"
            status, answer = await self._admin(
                "POST", f"/v1/admin/keys?tenant={CHAOS_TENANT}",
                {"name": "chaos store-down", "role": "client"})
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return f"the admin API cannot be reached ({exc or type(exc).__name__})"
        if status != 201 or not isinstance(answer, dict):
            return f"creating a key of tenant '{CHAOS_TENANT}' answered {status}: {answer}"
        return str(answer["id"]), str(answer["secret"])

    async def revoke(self, key_id: str) -> None:
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            await self._admin("POST", f"/v1/admin/keys/{key_id}/revoke?tenant={CHAOS_TENANT}")

    async def status(self) -> dict[str, Any]:
        """A digest of `GET /v1/admin/status`: circuit per deployment, budget, trace spool."""
        url = f"{self.gateway}/v1/admin/status"
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            async with self.session.get(url, headers=headers) as response:
                if response.status != 200:
                    return {"error": f"GET {url} answered {response.status}"}
                data = await response.json(loads=orjson.loads)
        except (aiohttp.ClientError, OSError, TimeoutError, orjson.JSONDecodeError) as exc:
            return {"error": f"GET {url} failed: {exc or type(exc).__name__}"}
        circuits: dict[str, Any] = {}
        for alias, model in (data.get("models") or {}).items():
            circuits[alias] = {
                "deployments": {d["deployment"]: {"circuit": d["circuit"],
                                                  "times_opened": d["times_opened"]}
                                for d in model.get("deployments", [])},
                "retry_budget_exhausted": model.get("retry_budget_exhausted", 0)}
        return {"models": circuits, "traces": data.get("traces")}


# -- one scenario -------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Plan:
    rate: float
    stream_share: float
    baseline_s: float
    fault_s: float
    recovery_s: float
    window_s: float
    hold_s: float
    latency_factor: float
    success_tolerance: float
    latency_slack_ms: float
    status: bool
    seed: int | None
    stop_when_recovered: bool = False


async def _run_scenario(controls: _Controls, client: aiohttp.ClientSession, url: str,
                        model: str, scenario: Scenario, plan: _Plan,
                        on_progress: Callable[[ChaosProgress], None] | None) -> ScenarioResult:
    notes: list[str] = []
    if scenario.needs_store_hooks and not (controls.store_down_cmd and controls.store_up_cmd):
        return ScenarioResult(
            name=scenario.name, description=scenario.description,
            skipped="needs --store-down-cmd and --store-up-cmd (e.g. 'docker stop pg' / "
                    "'docker start pg'): no sim knob can take the gateway's store down.")
    headers: dict[str, str] | None = None
    key_id: str | None = None
    if scenario.needs_store_hooks:
        made = await controls.tenant_key()
        if isinstance(made, str):
            notes.append(f"Traffic used the --api-key, not a tenant key ({made}); a static "
                         "key never needs the store, so this measured less than it could.")
        else:
            key_id, secret = made
            headers = {"Authorization": f"Bearer {secret}"}
            notes.append(f"Traffic used a fresh key of tenant '{CHAOS_TENANT}' ({key_id}), "
                         "created for this scenario and revoked after it: a stored key is "
                         "what a store outage can break.")
    total_share = sum(step.share for step in scenario.steps) or 1.0
    plan_phases: list[tuple[str, dict[str, Any], FaultStep | None, float]] = [
        ("baseline", {}, None, plan.baseline_s)]
    for step in scenario.steps:
        label = step.name if len(scenario.steps) > 1 else "fault"
        knobs = dict(step.faults) if step.hook is None else {"hook": step.hook}
        plan_phases.append((label, knobs, step, plan.fault_s * step.share / total_share))
    plan_phases.append(("recovery", {}, None, plan.recovery_s))
    duration = sum(p[3] for p in plan_phases)
    ended = asyncio.Event()  # set when the recovery is certain (stop_when_recovered)

    await controls.set_faults({})
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    samples: list[_Sample] = []
    boundaries: list[float] = [0.0]
    statuses: list[dict[str, Any] | None] = []
    current = ["baseline"]
    tasks: set[asyncio.Task[None]] = set()
    rng = random.Random(plan.seed)

    def progress() -> None:
        if on_progress is not None:
            ok = sum(1 for s in samples if s.latency is not None and s.outcome == OK)
            errors = sum(1 for s in samples if s.latency is not None and s.outcome != OK)
            on_progress(ChaosProgress(scenario=scenario.name, phase=current[0],
                                      elapsed_s=max(loop.time() - start, 0.0),
                                      duration_s=duration, sent=len(samples), ok=ok,
                                      errors=errors))

    async def read_status() -> None:
        statuses.append(await controls.status() if plan.status else None)

    store_down = [False]

    async def store(which: Literal["down", "up"]) -> None:
        store_down[0] = which == "down"
        note = await controls.run_hook(which)
        if note:
            notes.append(note)

    async def control() -> None:
        planned = plan_phases[0][3]
        for name, _knobs, step, length in plan_phases[1:]:
            await asyncio.sleep(max(start + planned - loop.time(), 0.0))
            await read_status()
            # The phase starts when the change is sent: requests in flight then see it too.
            boundaries.append(loop.time() - start)
            if store_down[0]:
                await store("up")
            await controls.set_faults(dict(step.faults) if step and step.hook is None else {})
            if step is not None and step.hook == STORE_HOOK:
                await store("down")
            current[0] = name
            progress()
            planned += length
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ended.wait(), max(start + duration - loop.time(), 0.0))
        await read_status()

    async def watch_recovery() -> None:
        """End the recovery phase as soon as the recovery has held for `hold_s`, counting
        only requests that have ended, and every one sent before the held windows' end."""
        while True:
            await asyncio.sleep(0.1)
            if current[0] != "recovery":
                continue
            now, removed = loop.time() - start, boundaries[-1]
            # Requests of the fault phase may still hang: the windows do not need them.
            pending = [s.at for s in samples if s.latency is None
                       and (s.at >= removed or s.at < boundaries[1])]
            horizon = min([*pending, now])
            if horizon < removed:  # a baseline request has not ended yet
                continue
            done = [s for s in samples if s.at < horizon]
            base = _phase("baseline", {}, 0.0, boundaries[1],
                          [s for s in done if s.at < boundaries[1]], None)
            if _recovery_time(done, base, removed, horizon, window_s=plan.window_s,
                              hold_s=plan.hold_s, latency_factor=plan.latency_factor,
                              success_tolerance=plan.success_tolerance,
                              latency_slack_ms=plan.latency_slack_ms,
                              full_hold=True) is not None:
                end[0] = now
                ended.set()
                return

    async def ticker() -> None:
        while True:
            await asyncio.sleep(1.0)
            progress()

    async def one(sample: _Sample, scheduled: float) -> None:
        body = orjson.dumps({
            "model": model, "stream": sample.stream,
            "messages": [{"role": "user", "content": f"chaos {scenario.name} #{len(samples)}"}]})
        await _send(client, url, body, sample, scheduled, loop, headers)

    end = [duration]
    controller = asyncio.create_task(control())
    reporter = asyncio.create_task(ticker())
    watcher = asyncio.create_task(watch_recovery()) if plan.stop_when_recovered else None
    try:
        progress()
        index = 0
        while True:
            offset = index / plan.rate
            if offset >= end[0]:
                break
            index += 1
            await asyncio.sleep(max(start + offset - loop.time(), 0.0))
            sample = _Sample(at=offset, stream=rng.random() < plan.stream_share)
            samples.append(sample)
            task = loop.create_task(one(sample, start + offset))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await controller
        if tasks:
            await asyncio.wait(set(tasks))
    finally:
        reporter.cancel()
        if watcher is not None:
            watcher.cancel()
        if not controller.done():
            controller.cancel()
        for task in list(tasks):
            task.cancel()
        # Leave the upstream healthy whatever happened (a failed run must not leave it broken).
        await controls.set_faults({})
        if store_down[0]:
            await store("up")
        if key_id is not None:
            await controls.revoke(key_id)
    progress()
    if end[0] < duration:
        notes.append(f"The recovery phase ended {end[0] - boundaries[-1]:.1f} s after the "
                     f"faults were removed (of up to {plan.recovery_s:g} s), once the recovery "
                     f"had held for {plan.hold_s:g} s.")
        duration = max(end[0], max(s.at for s in samples) + 1e-6)
    edges = [*boundaries, duration]
    phases: list[PhaseResult] = []
    for i, (name, knobs, _step, _length) in enumerate(plan_phases):
        group = [s for s in samples if edges[i] <= s.at < edges[i + 1]]
        phases.append(_phase(name, knobs, edges[i], edges[i + 1], group,
                             statuses[i] if i < len(statuses) else None))
    fault_samples = [s for s in samples if edges[1] <= s.at < edges[-2]]
    fault = _phase("fault", {"steps": [p.faults for p in phases[1:-1]]}, edges[1], edges[-2],
                   fault_samples, phases[-2].status)
    baseline = phases[0]
    if baseline.success_rate < 0.99:
        notes.append(f"The baseline success rate was {baseline.success_rate:.1%}: the "
                     "deployment was not healthy before the fault; recovery is measured "
                     "against that baseline.")
    recovery = _recovery_time(samples, baseline, edges[-2], duration, window_s=plan.window_s,
                              hold_s=plan.hold_s,
                              latency_factor=plan.latency_factor,
                              success_tolerance=plan.success_tolerance,
                              latency_slack_ms=plan.latency_slack_ms)
    return ScenarioResult(name=scenario.name, description=scenario.description, phases=phases,
                          fault=fault, recovery_time_s=recovery, recovered=recovery is not None,
                          timeline=_timeline(samples, duration), notes=notes)


# -- the run ------------------------------------------------------------------------------------
def _check_number(value: float, what: str, fix: str, *, low: float = 0.0,
                  inclusive: bool = False) -> None:
    ok = isinstance(value, int | float) and math.isfinite(value) and (
        value >= low if inclusive else value > low)
    if not ok:
        raise ConfigError(f"{what} is {value!r}; {fix}")


async def _preflight(controls: _Controls, client: aiohttp.ClientSession, url: str,
                     model: str) -> None:
    for sim in controls.sims:
        await controls.sim_call("GET", sim)
    body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "ping"}]})
    try:
        async with client.post(url, data=body) as response:
            status, text = response.status, (await response.text())[:300]
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise UpstreamUnavailable(
            f"The gateway URL '{url}' cannot be reached ({exc or type(exc).__name__}); check "
            "--url and that the gateway is running.", param="url") from None
    if status in (401, 403):
        raise ConfigError(f"The gateway answered {status} (not authorized): {text.strip()} "
                          "Pass its key with --api-key or --api-key-env NAME.", param="api_key")
    if status == 404:
        raise ConfigError(f"The gateway answered 404 at '{url}': {text.strip()} --url must be "
                          "the gateway's root (e.g. http://127.0.0.1:8000) and --model an "
                          "alias it serves.", param="model")


async def run_scenarios_async(
    gateway_url: str, api_key: str | None, model: str, sim_admin_urls: Sequence[str],
    scenarios: Sequence[Scenario | str], *, rate: float = 20.0, stream_share: float = 0.2,
    baseline_s: float = 5.0, fault_s: float = 10.0, recovery_s: float = 15.0,
    window_s: float = 1.0, hold_s: float = 3.0, latency_factor: float = 2.0,
    success_tolerance: float = 0.01,
    latency_slack_ms: float = 10.0, settle_s: float = 1.0, timeout_s: float = 30.0,
    status: bool = True, sim_admin_token: str | None = None,
    store_down_cmd: str | None = None, store_up_cmd: str | None = None,
    seed: int | None = None, on_progress: Callable[[ChaosProgress], None] | None = None,
    on_scenario: Callable[[ScenarioResult], None] | None = None,
    stop_when_recovered: bool = False,
) -> ChaosReport:
    """`run_scenarios` for callers already inside an event loop."""
    gateway = _root(gateway_url, "url")
    sims = [_root(u, "sim") for u in sim_admin_urls]
    if not sims:
        raise ConfigError("No sim admin URL was given; pass --sim http://HOST:PORT (repeatable) "
                          "for each `shipyard sim` the faults go to.", param="sim")
    if not model:
        raise ConfigError("--model is empty; pass the alias the gateway serves, e.g. "
                          "--model demo.", param="model")
    _check_number(rate, "rate (--rate)", "it must be a positive number of requests per "
                  "second, e.g. 20.")
    for value, what in ((baseline_s, "baseline_s (--baseline)"), (fault_s, "fault_s (--fault)"),
                        (recovery_s, "recovery_s (--recovery)"), (window_s, "window_s (--window)"),
                        (hold_s, "hold_s (--hold)"),
                        (timeout_s, "timeout_s (--timeout)")):
        _check_number(value, what, "it must be a positive number of seconds, e.g. 5.")
    if window_s > recovery_s:
        raise ConfigError(f"window_s (--window) is {window_s:g} s, longer than recovery_s "
                          f"(--recovery) {recovery_s:g} s; the recovery phase must hold at "
                          "least one window.", param="window")
    if not (isinstance(stream_share, int | float) and 0.0 <= stream_share <= 1.0):
        raise ConfigError(f"stream_share (--stream-share) is {stream_share!r}; it must be a "
                          "fraction from 0 to 1, e.g. 0.2.", param="stream_share")
    _check_number(latency_factor, "latency_factor (--latency-factor)",
                  "it must be a number above 1, e.g. 2.", low=1.0)
    _check_number(settle_s, "settle_s (--settle)", "it must be 0 or more seconds.",
                  inclusive=True)
    resolved = [s if isinstance(s, Scenario) else resolve_scenarios([s])[0] for s in scenarios]
    if not resolved:
        raise ConfigError("No scenario was chosen; pass --scenario NAME (e.g. errors-30) or "
                          "--scenario all.", param="scenario")
    plan = _Plan(rate=float(rate), stream_share=float(stream_share), baseline_s=baseline_s,
                 fault_s=fault_s, recovery_s=recovery_s, window_s=window_s, hold_s=hold_s,
                 latency_factor=latency_factor, success_tolerance=success_tolerance,
                 latency_slack_ms=latency_slack_ms, status=status, seed=seed,
                 stop_when_recovered=stop_when_recovered)
    url = f"{gateway}/v1/chat/completions"
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    results: list[ScenarioResult] = []
    connector = aiohttp.TCPConnector(limit=2000, limit_per_host=2000)
    client_timeout = aiohttp.ClientTimeout(total=timeout_s)
    admin_timeout = aiohttp.ClientTimeout(total=10.0)
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout,
                                     headers=headers) as client, \
            aiohttp.ClientSession(timeout=admin_timeout) as admin:
        controls = _Controls(session=admin, gateway=gateway, api_key=api_key, sims=sims,
                             sim_token=sim_admin_token, store_down_cmd=store_down_cmd,
                             store_up_cmd=store_up_cmd)
        await _preflight(controls, client, url, model)
        for i, scenario in enumerate(resolved):
            if i and settle_s:
                await asyncio.sleep(settle_s)
            result = await _run_scenario(controls, client, url, model, scenario, plan,
                                         on_progress)
            results.append(result)
            if on_scenario is not None:
                on_scenario(result)
    return ChaosReport(gateway_url=gateway, model=model, sims=sims, rate=float(rate),
                       stream_share=float(stream_share), baseline_s=baseline_s, fault_s=fault_s,
                       recovery_s=recovery_s, window_s=window_s, hold_s=hold_s,
                       latency_factor=latency_factor, started_at=started_at, scenarios=results)


def run_scenarios(
    gateway_url: str, api_key: str | None, model: str, sim_admin_urls: Sequence[str],
    scenarios: Sequence[Scenario | str], **options: Any,
) -> ChaosReport:
    """Run each scenario (baseline, faults, recovery) against the gateway and report.

    `gateway_url` is the gateway's root (`/v1` optional); `sim_admin_urls` are the roots of the
    `shipyard sim` processes that receive the faults (a healthy fallback sim is simply left out).
    Options are those of `run_scenarios_async`: `rate`, `stream_share`, `baseline_s`,
    `fault_s`, `recovery_s`, `window_s`, `hold_s`, `latency_factor`, `timeout_s`, `status`,
    `sim_admin_token`, `store_down_cmd`, `store_up_cmd`, `seed`, `on_progress`, `on_scenario`,
    `stop_when_recovered` (end the recovery phase once the recovery has held for `hold_s`,
    counting only ended requests, instead of after all of `recovery_s`: `recovery_s` becomes
    the longest it waits).
    The sims are always left healthy (`PUT {}`) when a scenario ends, even on an error.

    >>> run_scenarios("http://127.0.0.1:8000", key, "demo", ["http://127.0.0.1:9100"],
    ...               ["outage"], rate=20).scenarios[0].recovery_time_s  # doctest: +SKIP
    """
    return asyncio.run(run_scenarios_async(gateway_url, api_key, model, sim_admin_urls,
                                           scenarios, **options))


# -- reports ------------------------------------------------------------------------------------
def _clean(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def to_dict(report: ChaosReport) -> dict[str, Any]:
    """The report as JSON-able data (NaN, for "nothing measured", becomes null)."""
    data = dataclasses.asdict(report)
    for raw, result in zip(data["scenarios"], report.scenarios, strict=True):
        raw["p99_ratio"] = result.p99_ratio
        raw["clean_done_after_cut"] = result.clean_done_after_cut
    return {"kind": "chaos", **_clean(data)}


def write_json(report: ChaosReport, path: Path) -> None:
    """Write `to_dict(report)` as indented JSON."""
    path.write_bytes(orjson.dumps(to_dict(report), option=orjson.OPT_INDENT_2) + b"\n")


def _plotly() -> Any:
    # plotly is the optional `report` extra (several MB of JavaScript): imported only when an
    # HTML report is asked for, with the install line when it is missing.
    try:
        import plotly.graph_objects as go
    except ImportError:
        raise ConfigError(f"The HTML report (--html) needs plotly, which is not installed; "
                          f"install it with: {INSTALL_HINT}", param="html") from None
    return go


def _fmt_ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.1f} ms"


def _fmt_rate(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1%}"


def _figure(go: Any, result: ScenarioResult) -> Any:
    seconds = [s.second for s in result.timeline]
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=seconds, y=[s.ok / s.requests * 100 if s.requests else None for s in result.timeline],
        name="success %", mode="lines+markers"))
    fig.add_trace(go.Scatter(
        x=seconds, y=[None if math.isnan(s.p99_ms) else s.p99_ms for s in result.timeline],
        name="p99 ms", mode="lines+markers", yaxis="y2"))
    for phase in result.phases[1:-1]:
        fig.add_vrect(x0=phase.start_s, x1=phase.end_s, fillcolor="#d62728", opacity=0.12,
                      line_width=0, annotation_text=phase.name, annotation_position="top left")
    fig.update_layout(
        title=f"{result.name}: {result.description}", xaxis_title="second (scheduled)",
        yaxis={"title": "success %", "range": [0, 105]},
        yaxis2={"title": "p99 ms", "overlaying": "y", "side": "right"},
        template="plotly_white", height=360, margin={"t": 50, "b": 40})
    return fig


def render_html(report: ChaosReport) -> str:
    """The report as one self-contained HTML page (plotly.js inline, nothing fetched)."""
    go = _plotly()
    rows = []
    for r in report.scenarios:
        if r.skipped:
            rows.append(f"<tr><td>{html.escape(r.name)}</td><td colspan='6'>skipped: "
                        f"{html.escape(r.skipped)}</td></tr>")
            continue
        base, fault = r.baseline, r.fault
        if base is None or fault is None:
            continue
        recovery = ("not recovered" if r.recovery_time_s is None
                    else f"{r.recovery_time_s:.1f} s")
        rows.append(
            f"<tr><td>{html.escape(r.name)}</td><td>{_fmt_rate(base.success_rate)}</td>"
            f"<td>{_fmt_rate(fault.success_rate)}</td><td>{_fmt_ms(base.p99_ms)}</td>"
            f"<td>{_fmt_ms(fault.p99_ms)}</td><td>{html.escape(recovery)}</td>"
            f"<td>{r.clean_done_after_cut}</td></tr>")
    head = ("<tr><th>scenario</th><th>baseline ok</th><th>fault ok</th><th>baseline p99</th>"
            "<th>fault p99</th><th>recovery</th><th>clean [DONE] after cut</th></tr>")
    plots: list[str] = []
    for r in report.scenarios:
        if r.skipped:
            continue
        plots.append(_figure(go, r).to_html(full_html=False, include_plotlyjs=not plots,
                                            config={"displaylogo": False}))
    title = "Shipyard chaos report"
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px}"
        "table{border-collapse:collapse}th,td{padding:.3rem .8rem;border-bottom:1px solid #ddd;"
        "text-align:left}</style></head>"
        f"<body><h1>{title}</h1><p>{html.escape(report.gateway_url)} model "
        f"{html.escape(report.model)}, {report.rate:g} req/s ({report.stream_share:.0%} "
        f"streams), phases {report.baseline_s:g}/{report.fault_s:g}/{report.recovery_s:g} s, "
        f"started {report.started_at}.</p><table>{head}{''.join(rows)}</table>"
        f"{''.join(plots)}<p>shipyard {__version__}</p></body></html>\n")


def ensure_html_support() -> None:
    """Raise `ConfigError` with the install line when plotly is missing (check before a run)."""
    _plotly()


def write_html(report: ChaosReport, path: Path) -> None:
    """Write `render_html(report)` to `path`."""
    path.write_text(render_html(report), encoding="utf-8")
