"""Open-loop load generation against any OpenAI-compatible URL, and the SLO capacity search.

Open loop means requests are *scheduled* from the profile (constant, step or ramp; uniform or
Poisson arrivals) and each one is launched at its scheduled time whether or not earlier ones have
answered. Latency is measured from the scheduled time, not from the moment the client got round to
sending, so a stalled server (or a stalled client) cannot hide its queueing delay: this is what
"free of coordinated omission" means. Requests that the client refuses to launch because
`max_in_flight` are already outstanding are counted as errors of kind `client_overload`, never
delayed silently.

>>> target = Target(url="http://127.0.0.1:9100/v1", model="sim-chat")  # doctest: +SKIP
>>> result = run_load(target, parse_profile("ramp:50->500", duration_s=30))  # doctest: +SKIP
>>> result.latency.p99_ms, result.error_rate  # doctest: +SKIP
>>> search = find_max_rate(target, SLO(p99_ms=500, error_rate=0.01), low=10, high=2000,
...                        step_duration_s=5)  # doctest: +SKIP
>>> search.max_rate  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp
import orjson

from shipyard.errors import ConfigError, UpstreamUnavailable
from shipyard.readiness.sse import sse_data

__all__ = [
    "SLO",
    "Bucket",
    "LatencyStats",
    "LoadResult",
    "Probe",
    "Profile",
    "Progress",
    "SearchResult",
    "Target",
    "check_target",
    "find_max_rate",
    "parse_profile",
    "percentile",
    "run_load",
    "run_load_async",
]

Arrivals = Literal["uniform", "poisson"]
ProfileKind = Literal["constant", "step", "ramp"]

# Error kinds besides HTTP statuses (which are reported as "500", "429", ...).
TIMEOUT = "timeout"
CONNECT_ERROR = "connect_error"
DISCONNECTED = "disconnected"
CLIENT_OVERLOAD = "client_overload"
STREAM_ERROR = "stream_error"
BAD_RESPONSE = "bad_response"
OK = "ok"
# Not an error: still unanswered when the run stopped waiting, because its latency objective
# was already certainly missed (`slo_p99_ms` of `run_load`). Its latency is a lower bound.
UNFINISHED = "unfinished"

_NUMBER = r"\d+(?:\.\d+)?(?:[eE][+-]?\d+)?"
_RAMP = re.compile(rf"^\s*({_NUMBER})\s*(?:->|-|\.\.)\s*>?\s*({_NUMBER})\s*$")
_PROFILE_HELP = "write a rate (100), constant:100, step:100,200,400 or 'ramp:50->500' (quoted)"


def _positive(value: float, what: str, fix: str) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{what} is {value!r}; {fix}")


# -- what to send -----------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Target:
    """Where to send load: an OpenAI-compatible base URL and the request to repeat.

    `url` is the API base (`http://127.0.0.1:8000/v1`). With `model`, requests go to
    `{url}/chat/completions`: `body`, when given, is sent as is (its `model` and `stream` are
    overridden by `model` and `stream` when those are set); otherwise a one-message chat with
    `prompt` is sent. With `service`, requests go to a Shipyard hosted service,
    `{url}/services/{service}/invoke`, with `body` (or each of `bodies` in turn) as its input.
    """

    url: str
    model: str | None = None
    service: str | None = None
    api_key: str | None = None
    prompt: str = "Say hello in one short sentence."
    body: Any = None
    bodies: tuple[Any, ...] = ()
    stream: bool = False
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not re.match(r"^https?://[^/\s]+", self.url):
            raise ConfigError(f"The URL is '{self.url}'; it must be an http(s) API base such "
                              "as http://127.0.0.1:8000/v1.", param="url")
        _positive(self.timeout_s, "timeout_s (--timeout)",
                  "it must be a positive number of seconds, e.g. 30.")
        if self.service is not None:
            if self.model is not None:
                raise ConfigError("Both a model (--model) and a service (--service) are set; "
                                  "load-test one target at a time.", param="service")
            if self.stream:
                raise ConfigError("--stream is for model aliases; a service answers in one "
                                  "piece. Drop --stream.", param="stream")
            if self.body is None and not self.bodies:
                raise ConfigError(f"Service '{self.service}' needs an input: pass --body FILE "
                                  "(one JSON input) or a .jsonl file with one input per line.",
                                  param="body")
            return
        if self.bodies:
            raise ConfigError("A JSONL file of bodies is for --service; for a model pass one "
                              "JSON body.", param="body")
        if self.body is not None and not isinstance(self.body, dict):
            raise ConfigError(f"The request body is a JSON {type(self.body).__name__}; for a "
                              "model it must be one JSON object (a chat completions request "
                              "body).", param="body")
        model = self.model or (self.body or {}).get("model")
        if not isinstance(model, str) or not model:
            raise ConfigError("No model is set; pass --model (Target.model) or put \"model\" in "
                              "the JSON body, e.g. --model sim-chat, or --service NAME for a "
                              "hosted service.", param="model")

    @property
    def endpoint(self) -> str:
        if self.service is not None:
            return f"{self.url.rstrip('/')}/services/{self.service}/invoke"
        return self.url.rstrip("/") + "/chat/completions"

    @property
    def name(self) -> str:
        """What is under load, for reports: `model demo` or `service triage`."""
        if self.service is not None:
            return f"service {self.service}"
        return f"model {self.model or (self.body or {}).get('model')}"

    def payload(self) -> bytes:
        """The JSON body every request sends (the first one, with `bodies`)."""
        return self.payloads()[0]

    def payloads(self) -> list[bytes]:
        """The JSON bodies requests send, in turn."""
        if self.service is not None:
            return [orjson.dumps(b) for b in (self.bodies or (self.body,))]
        body: dict[str, Any] = dict(self.body) if self.body is not None else {
            "messages": [{"role": "user", "content": self.prompt}]}
        if self.model:
            body["model"] = self.model
        if self.stream:
            body["stream"] = True
        elif self.body is None:
            body["stream"] = False
        return [orjson.dumps(body)]

    @property
    def streams(self) -> bool:
        return self.service is None and (
            self.stream or bool((self.body or {}).get("stream")))

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers


# -- when to send -----------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Profile:
    """The offered load over time.

    - `constant`: `rates[0]` requests per second for `duration_s`;
    - `step`: each rate in `rates` for `duration_s / len(rates)` seconds, in order;
    - `ramp`: linearly from `rates[0]` to `rates[1]` over `duration_s`.

    `arrivals="uniform"` spaces requests evenly; `"poisson"` draws exponential gaps (a
    non-homogeneous Poisson process following the same rate curve), which is how independent
    users arrive. `seed` makes Poisson schedules reproducible.
    """

    kind: ProfileKind
    rates: tuple[float, ...]
    duration_s: float
    arrivals: Arrivals = "uniform"
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("constant", "step", "ramp"):
            raise ConfigError(f"Profile kind is '{self.kind}'; {_PROFILE_HELP}.", param="profile")
        needed = {"constant": 1, "ramp": 2}.get(self.kind)
        if (needed is not None and len(self.rates) != needed) or not self.rates:
            raise ConfigError(f"A {self.kind} profile needs {needed or 'at least one'} rate(s), "
                              f"got {list(self.rates)}; {_PROFILE_HELP}.", param="profile")
        for rate in self.rates:
            _positive(rate, f"The rate {rate!r} in the {self.kind} profile",
                      "every rate must be a positive number of requests per second, e.g. 50.")
        _positive(self.duration_s, "duration_s (--duration)",
                  "it must be a positive number of seconds, e.g. 30.")
        if self.arrivals not in ("uniform", "poisson"):
            raise ConfigError(f"arrivals (--arrivals) is '{self.arrivals}'; use uniform or "
                              "poisson.", param="arrivals")

    @property
    def spec(self) -> str:
        """The profile in the `--profile` syntax."""
        rates = [f"{r:g}" for r in self.rates]
        if self.kind == "ramp":
            return f"ramp:{rates[0]}->{rates[1]}"
        return f"{self.kind}:{','.join(rates)}"

    @property
    def step_s(self) -> float:
        return self.duration_s / len(self.rates)

    def rate_at(self, t: float) -> float:
        """Offered rate (requests per second) at `t` seconds into the run."""
        t = min(max(t, 0.0), self.duration_s)
        if self.kind == "constant":
            return self.rates[0]
        if self.kind == "step":
            return self.rates[min(int(t / self.step_s), len(self.rates) - 1)]
        start, end = self.rates
        return start + (end - start) * t / self.duration_s

    def expected(self, t: float | None = None) -> float:
        """Requests the profile offers from 0 to `t` (default: the whole run)."""
        t = self.duration_s if t is None else min(max(t, 0.0), self.duration_s)
        if self.kind == "constant":
            return self.rates[0] * t
        if self.kind == "step":
            whole = min(int(t / self.step_s), len(self.rates))
            done = sum(self.rates[:whole]) * self.step_s
            if whole < len(self.rates):
                done += self.rates[whole] * (t - whole * self.step_s)
            return done
        start, end = self.rates
        return start * t + (end - start) * t * t / (2 * self.duration_s)

    def _time_of(self, count: float) -> float:
        """Inverse of `expected`: when the profile has offered `count` requests."""
        if self.kind == "constant":
            return count / self.rates[0]
        if self.kind == "step":
            elapsed = 0.0
            for rate in self.rates:
                span = rate * self.step_s
                if count <= span:
                    return elapsed + count / rate
                count -= span
                elapsed += self.step_s
            return math.inf
        start, end = self.rates
        slope = (end - start) / self.duration_s
        if slope == 0:
            return count / start
        disc = start * start + 2 * slope * count
        return math.inf if disc < 0 else (math.sqrt(disc) - start) / slope

    def schedule(self) -> Iterator[float]:
        """Send times (seconds from the start), in order, for the whole run.

        Uniform arrivals put request i at the time the profile has offered i requests; Poisson
        arrivals do the same with cumulative unit-exponential draws (time rescaling), so both
        follow the rate curve exactly.
        """
        rng = random.Random(self.seed)
        count = 0.0
        while True:
            at = self._time_of(count)
            if at >= self.duration_s:
                return
            yield at
            count += rng.expovariate(1.0) if self.arrivals == "poisson" else 1.0


def parse_profile(spec: str, *, duration_s: float, step_duration_s: float | None = None,
                  arrivals: Arrivals = "uniform", seed: int | None = None,
                  option: str = "--profile") -> Profile:
    """Parse `100`, `constant:100`, `step:100,200,400` or `ramp:50->500` into a `Profile`.

    For a step profile, `step_duration_s` (when given) sets how long each step lasts and the
    total duration becomes `len(steps) * step_duration_s`. `option` names the input in error
    messages.

    >>> parse_profile("step:10,20", duration_s=60, step_duration_s=5).duration_s
    10.0
    """
    text = spec.strip()
    kind, sep, rest = text.partition(":")
    kind = kind.strip().lower()
    if not sep:
        kind, rest = "constant", text
    if kind not in ("constant", "step", "ramp"):
        raise ConfigError(f"{option} is '{spec}'; {_PROFILE_HELP}.", param="profile")
    rates: tuple[float, ...]
    try:
        if kind == "ramp":
            match = _RAMP.match(rest)
            if match is None:
                raise ValueError(rest)
            rates = (float(match[1]), float(match[2]))
        else:
            rates = tuple(float(part) for part in rest.split(","))
    except ValueError:
        if kind == "ramp" and rest.rstrip().endswith("-"):  # `--profile ramp:50->500` in a shell
            raise ConfigError(
                f"{option} is '{spec}': the shell took '>' for a redirect (and wrote a file "
                "named after the end rate); quote the profile: --profile 'ramp:50->500'.",
                param="profile") from None
        raise ConfigError(f"{option} is '{spec}'; {_PROFILE_HELP}.", param="profile") from None
    for rate in rates:
        if not math.isfinite(rate) or rate <= 0:
            raise ConfigError(f"{option} is '{spec}'; every rate must be a positive number of "
                              f"requests per second ({rate:g} is not), e.g. 50.", param="profile")
    if kind == "constant" and len(rates) != 1:
        raise ConfigError(f"{option} is '{spec}'; a constant profile has one rate — for "
                          "several, write step:100,200,400.", param="profile")
    if kind == "step" and step_duration_s is not None:
        _positive(step_duration_s, "step_duration_s (--step-duration)",
                  "it must be a positive number of seconds, e.g. 10.")
        duration_s = step_duration_s * len(rates)
    return Profile(kind=kind, rates=rates, duration_s=float(duration_s),  # type: ignore[arg-type]
                   arrivals=arrivals, seed=seed)


# -- results ----------------------------------------------------------------------------------
def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an already sorted list; NaN when empty."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True)
class LatencyStats:
    """Latency percentiles in milliseconds over `count` measured requests (NaN when none)."""

    count: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, seconds: list[float]) -> LatencyStats:
        ordered = sorted(s * 1000.0 for s in seconds)
        mean = sum(ordered) / len(ordered) if ordered else math.nan
        return cls(len(ordered), mean, percentile(ordered, 50), percentile(ordered, 90),
                   percentile(ordered, 95), percentile(ordered, 99),
                   ordered[-1] if ordered else math.nan)


@dataclass(frozen=True)
class Bucket:
    """One second of the run. Requests belong to the second they were *scheduled* in, so a slow
    answer is charged to the load that caused it; `completed` counts answers that arrived in
    this second (achieved throughput)."""

    second: int
    offered_rate: float
    scheduled: int
    ok: int
    errors: int
    completed: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    error_kinds: dict[str, int]


@dataclass(frozen=True)
class LoadResult:
    """What one open-loop run measured. Rates are per second; latencies in milliseconds.

    `latency` covers every request that was sent and ended (answered, failed or timed out),
    measured from its scheduled send time; `client_overload` requests were never sent and have
    no latency, but count as errors. `unfinished` requests (only with `slo_p99_ms`) were not
    waited for once the p99 objective was certainly missed; neither ok nor errors, their
    latency up to that moment (already over the objective) is in `latency` as a lower bound.
    `send_lag` shows how late the client itself launched
    requests: large values mean the load generator, not the target, was the bottleneck.
    """

    url: str
    model: str
    profile: str
    arrivals: str
    target: str  # what was under load: "model demo" or "service triage"
    endpoint: str
    stream: bool
    started_at: str
    duration_s: float
    elapsed_s: float
    scheduled: int
    sent: int
    ok: int
    errors: dict[str, int]
    offered_rate: float
    throughput: float
    goodput: float
    latency: LatencyStats
    ttft: LatencyStats | None
    send_lag: LatencyStats
    buckets: list[Bucket]
    max_in_flight: int
    connections: int
    unfinished: int = 0  # not waited for: the p99 objective was already missed (lower bound)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def error_rate(self) -> float:
        return self.error_count / self.scheduled if self.scheduled else 0.0

    @property
    def client_limited(self) -> bool:
        """True when the client launched requests late (send lag p99 over 50 ms): the load
        generator, not only the target, was saturated; the latency numbers include that."""
        return not math.isnan(self.send_lag.p99_ms) and self.send_lag.p99_ms > 50.0


@dataclass(frozen=True)
class Progress:
    """A live snapshot handed to `on_progress` a few times a second."""

    elapsed_s: float
    duration_s: float
    scheduled: int
    sent: int
    ok: int
    errors: int
    in_flight: int
    recent_p99_ms: float


@dataclass
class _Sample:
    at: float  # scheduled offset from the start, seconds
    outcome: str = OK
    latency: float | None = None  # from scheduled time to the end, seconds
    ttft: float | None = None
    lag: float = 0.0  # actual launch minus scheduled time
    done_at: float | None = None  # completion offset from the start


# -- the runner -------------------------------------------------------------------------------
async def _read_stream(response: aiohttp.ClientResponse, sample: _Sample, started: float,
                       loop: asyncio.AbstractEventLoop) -> str:
    """Consume an SSE answer; notes the time to first token; returns the outcome."""
    async for data in sse_data(response):
        if data == b"[DONE]":
            return OK
        if sample.ttft is None:
            sample.ttft = loop.time() - started
        if data.startswith(b"{") and b'"error"' in data:
            try:
                event = orjson.loads(data)
            except orjson.JSONDecodeError:
                return STREAM_ERROR
            if isinstance(event, dict) and event.get("error"):
                return STREAM_ERROR
    return STREAM_ERROR  # ended without [DONE]


async def _send(session: aiohttp.ClientSession, target: Target, payload: bytes,
                headers: dict[str, str], sample: _Sample, scheduled: float,
                loop: asyncio.AbstractEventLoop) -> None:
    try:
        async with session.post(target.endpoint, data=payload, headers=headers) as response:
            if response.status != 200:
                await response.read()
                sample.outcome = str(response.status)
            elif target.streams:
                sample.outcome = await _read_stream(response, sample, scheduled, loop)
            else:
                body = await response.read()
                try:
                    parsed = orjson.loads(body)
                except orjson.JSONDecodeError:
                    parsed = None
                ok = isinstance(parsed, dict) and "error" not in parsed
                sample.outcome = OK if ok else BAD_RESPONSE
    except (TimeoutError, aiohttp.ServerTimeoutError):
        sample.outcome = TIMEOUT
    except aiohttp.ClientConnectorError:
        sample.outcome = CONNECT_ERROR
    except aiohttp.ClientPayloadError:
        sample.outcome = STREAM_ERROR if target.streams else DISCONNECTED
    except (aiohttp.ClientError, OSError):
        sample.outcome = DISCONNECTED
    sample.latency = loop.time() - scheduled


def _summarize(samples: list[_Sample], profile: Profile, target: Target, *, started_at: str,
               elapsed_s: float, max_in_flight: int, connections: int) -> LoadResult:
    # Seconds after the schedule ends (the drain) are kept: answers still arrive there.
    seconds = max(math.ceil(profile.duration_s), math.ceil(elapsed_s), 1)
    by_second: list[list[_Sample]] = [[] for _ in range(seconds)]
    completed = [0] * seconds
    for s in samples:
        by_second[min(int(s.at), seconds - 1)].append(s)
        if s.done_at is not None:
            completed[min(int(s.done_at), seconds - 1)] += 1
    buckets = []
    for second, group in enumerate(by_second):
        lat = sorted(s.latency * 1000.0 for s in group if s.latency is not None)
        kinds = Counter(s.outcome for s in group if s.outcome not in (OK, UNFINISHED))
        buckets.append(Bucket(
            second=second, scheduled=len(group),
            offered_rate=profile.rate_at(second + 0.5) if second < profile.duration_s else 0.0,
            ok=sum(1 for s in group if s.outcome == OK), errors=sum(kinds.values()),
            completed=completed[second], p50_ms=percentile(lat, 50),
            p90_ms=percentile(lat, 90), p99_ms=percentile(lat, 99), error_kinds=dict(kinds)))
    errors = Counter(s.outcome for s in samples if s.outcome not in (OK, UNFINISHED))
    sent = sum(1 for s in samples if s.outcome != CLIENT_OVERLOAD)
    ok = sum(1 for s in samples if s.outcome == OK)
    unfinished = sum(1 for s in samples if s.outcome == UNFINISHED)
    ended = sum(1 for s in samples if s.latency is not None and s.outcome != UNFINISHED)
    window = max(elapsed_s, 1e-9)
    ttfts = [s.ttft for s in samples if s.ttft is not None]
    return LoadResult(
        url=target.url, model=str(target.model or (target.body or {}).get("model")),
        target=target.name, endpoint=target.endpoint,
        profile=profile.spec, arrivals=profile.arrivals, stream=target.streams,
        started_at=started_at, duration_s=profile.duration_s, elapsed_s=elapsed_s,
        scheduled=len(samples), sent=sent, ok=ok,
        errors=dict(sorted(errors.items(), key=lambda kv: (-kv[1], kv[0]))),
        offered_rate=len(samples) / profile.duration_s, throughput=ended / window,
        goodput=ok / window,
        latency=LatencyStats.of([s.latency for s in samples if s.latency is not None]),
        ttft=LatencyStats.of(ttfts) if target.streams else None,
        send_lag=LatencyStats.of([s.lag for s in samples if s.outcome != CLIENT_OVERLOAD]),
        buckets=buckets, max_in_flight=max_in_flight, connections=connections,
        unfinished=unfinished)


async def run_load_async(target: Target, profile: Profile, *, max_in_flight: int = 5000,
                         connections: int = 1000,
                         on_progress: Callable[[Progress], None] | None = None,
                         progress_interval_s: float = 0.25,
                         slo_p99_ms: float | None = None) -> LoadResult:
    """`run_load` for callers already inside an event loop."""
    if not isinstance(max_in_flight, int) or max_in_flight < 1:
        raise ConfigError(f"max_in_flight (--max-in-flight) is {max_in_flight!r}; it must be "
                          "a whole number of requests, at least 1, e.g. 5000.")
    if not isinstance(connections, int) or connections < 1:
        raise ConfigError(f"connections (--connections) is {connections!r}; it must be a whole "
                          "number of sockets, at least 1, e.g. 1000.")
    loop = asyncio.get_running_loop()
    payloads, headers = target.payloads(), target.headers()
    samples: list[_Sample] = []
    in_flight = sent = ok = errors = 0
    tasks: set[asyncio.Task[None]] = set()
    sample_of: dict[asyncio.Task[None], tuple[_Sample, float]] = {}
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    # The pool is the only client-side queue: a request waiting for a socket is still on the
    # clock, because its latency runs from the scheduled time.
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections,
                                     ttl_dns_cache=300, force_close=False)
    timeout = aiohttp.ClientTimeout(total=target.timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     skip_auto_headers=("User-Agent",)) as session:
        start = loop.time() + 0.02

        async def one(sample: _Sample, scheduled: float, payload: bytes) -> None:
            nonlocal in_flight, ok, errors
            try:
                await _send(session, target, payload, headers, sample, scheduled, loop)
            finally:
                in_flight -= 1
                if sample.outcome == OK:
                    ok += 1
                elif sample.outcome != UNFINISHED:
                    errors += 1
                if sample.outcome != UNFINISHED:
                    sample.done_at = loop.time() - start

        def snapshot() -> Progress:
            recent = sorted(s.latency for s in samples[-2000:] if s.latency is not None)
            return Progress(
                elapsed_s=max(loop.time() - start, 0.0), duration_s=profile.duration_s,
                scheduled=len(samples), sent=sent, ok=ok, errors=errors, in_flight=in_flight,
                recent_p99_ms=percentile(recent, 99) * 1000.0)

        async def report() -> None:
            while True:
                await asyncio.sleep(progress_interval_s)
                if on_progress is not None:
                    on_progress(snapshot())

        reporter = asyncio.create_task(report())
        try:
            for offset in profile.schedule():
                scheduled = start + offset
                delay = scheduled - loop.time()
                # When behind schedule, still yield so launched requests make progress; the
                # lateness is recorded in send_lag and already counts in their latency.
                await asyncio.sleep(max(delay, 0.0))
                sample = _Sample(at=offset)
                samples.append(sample)
                if in_flight >= max_in_flight:
                    sample.outcome = CLIENT_OVERLOAD
                    errors += 1
                    continue
                in_flight += 1
                sent += 1
                sample.lag = max(loop.time() - scheduled, 0.0)
                task = loop.create_task(one(sample, scheduled,
                                            payloads[(len(samples) - 1) % len(payloads)]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sample_of[task] = (sample, scheduled)
            if tasks and slo_p99_ms is not None:
                await _stop_waiting_once_missed(tasks, sample_of, sent, loop,
                                                start + profile.duration_s + slo_p99_ms / 1000)
            if tasks:
                await asyncio.wait(set(tasks))
        finally:
            reporter.cancel()
            for task in tasks:
                task.cancel()
        elapsed = max(loop.time() - start, profile.duration_s)
        if on_progress is not None:
            on_progress(snapshot())
    return _summarize(samples, profile, target, started_at=started_at, elapsed_s=elapsed,
                      max_in_flight=max_in_flight, connections=connections)


async def _stop_waiting_once_missed(tasks: set[asyncio.Task[None]],
                                    sample_of: dict[asyncio.Task[None], tuple[_Sample, float]],
                                    sent: int, loop: asyncio.AbstractEventLoop,
                                    cutoff: float) -> None:
    """At `cutoff` (the objective's p99 after the schedule's end), every request still in
    flight is already slower than the objective. When they are more than the nearest-rank p99
    allows (`sent - ceil(0.99 sent) + 1` of them), the p99 is over the objective whatever they
    end up taking: stop waiting (up to the timeout) for them and count them `unfinished`.
    Otherwise the run waits for every answer as usual, so a run that may pass is unchanged."""
    _, pending = await asyncio.wait(set(tasks), timeout=max(cutoff - loop.time(), 0.0))
    if len(pending) < sent - math.ceil(0.99 * sent) + 1:
        return
    now = loop.time()
    for task in pending:
        sample, scheduled = sample_of[task]
        sample.outcome, sample.latency = UNFINISHED, now - scheduled
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


def run_load(target: Target, profile: Profile, *, max_in_flight: int = 5000,
             connections: int = 1000,
             on_progress: Callable[[Progress], None] | None = None,
             slo_p99_ms: float | None = None) -> LoadResult:
    """Drive `target` with `profile` (open loop) and return what was measured.

    `max_in_flight` caps outstanding requests (memory, file descriptors): arrivals beyond it are
    not sent and count as `client_overload` errors. `connections` caps sockets; requests waiting
    for one are still timed from their scheduled send time. With `slo_p99_ms`, the run stops
    waiting for answers as soon as its p99 is certain to be at or over it (more requests still
    in flight, `slo_p99_ms` after the last send, than the p99 allows): those are `unfinished`.

    >>> run_load(Target(url="http://127.0.0.1:9100/v1", model="sim-chat"),
    ...          parse_profile("100", duration_s=10)).throughput  # doctest: +SKIP
    """
    return asyncio.run(run_load_async(target, profile, max_in_flight=max_in_flight,
                                      connections=connections, on_progress=on_progress,
                                      slo_p99_ms=slo_p99_ms))


# -- preflight --------------------------------------------------------------------------------
async def _check(target: Target) -> tuple[int, str]:
    timeout = aiohttp.ClientTimeout(total=min(target.timeout_s, 15.0))
    async with aiohttp.ClientSession(timeout=timeout) as session, session.post(
            target.endpoint, data=target.payload(), headers=target.headers()) as response:
        return response.status, (await response.text())[:300]


def check_target(target: Target) -> tuple[int, str]:
    """Send one request and explain, in a `ShipyardError`, why the target cannot be load-tested.

    Raises `UpstreamUnavailable` when the URL cannot be reached and `ConfigError` when it
    answers 401/403/404 (wrong key or wrong base URL). Otherwise returns the status and the
    start of the body: other failures are the run's business (they are what it measures).
    """
    try:
        status, text = asyncio.run(_check(target))
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        reason = str(exc) or type(exc).__name__
        raise UpstreamUnavailable(
            f"The URL '{target.url}' cannot be reached ({reason}); check the URL and that the "
            "server is running, e.g. start one with 'shipyard demo' or 'shipyard sim'.",
            param="url") from None
    if status in (401, 403):
        raise ConfigError(
            f"'{target.endpoint}' answered {status} (not authorized): {text.strip()} Pass the "
            "key with --api-key or --api-key-env NAME (default $OPENAI_API_KEY).",
            param="api_key")
    if status == 404:
        raise ConfigError(
            f"'{target.endpoint}' answered 404: {text.strip()} The URL must be the API base "
            "that ends before /chat/completions (often .../v1), and --model (or --service) "
            "must exist there.",
            param="url")
    return status, text


# -- the SLO search ---------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class SLO:
    """A service level objective for one probe: p99 latency below `p99_ms` and an error rate
    (errors / scheduled requests, client_overload included) below `error_rate`."""

    p99_ms: float
    error_rate: float = 0.01

    def __post_init__(self) -> None:
        _positive(self.p99_ms, "p99_ms (--slo-p99-ms)",
                  "it must be a positive number of milliseconds, e.g. 500.")
        if not (math.isfinite(self.error_rate) and 0 <= self.error_rate < 1):
            raise ConfigError(f"error_rate (--slo-error-rate) is {self.error_rate!r}; it must be "
                              "a fraction from 0 to below 1, e.g. 0.01 for 1%.")

    def violations(self, result: LoadResult) -> list[str]:
        """Why `result` misses the SLO (empty when it meets it)."""
        out = []
        p99 = result.latency.p99_ms
        if math.isnan(p99) or p99 >= self.p99_ms:
            out.append(f"p99 {p99:.0f} ms >= {self.p99_ms:g} ms" + (
                f" ({result.unfinished:,} requests still unanswered then, not waited for)"
                if result.unfinished else ""))
        # "errors < Y": an error-free run always passes, even against a 0% objective.
        if result.error_count and result.error_rate >= self.error_rate:
            out.append(f"errors {result.error_rate:.2%} >= {self.error_rate:.2%}")
        return out


@dataclass(frozen=True)
class Probe:
    """One constant-rate step of the search."""

    rate: float
    passed: bool
    reasons: list[str]
    result: LoadResult


@dataclass(frozen=True)
class SearchResult:
    """The highest constant rate that met the SLO, and every probe that led there.

    `max_rate` is None when even `low` misses the SLO. `limited_by` is `"slo"` (a higher rate
    failed), `"high"` (the upper bound itself passed: raise `high`) or `"low"` (nothing passed).
    """

    slo: SLO
    low: float
    high: float
    step_duration_s: float
    max_rate: float | None
    limited_by: Literal["slo", "high", "low"]
    probes: list[Probe] = field(default_factory=list)

    @property
    def best(self) -> Probe | None:
        passing = [p for p in self.probes if p.passed and p.rate == self.max_rate]
        return passing[-1] if passing else None


def find_max_rate(target: Target, slo: SLO, *, low: float, high: float, step_duration_s: float,
                  tolerance: float = 0.05, max_probes: int = 20, arrivals: Arrivals = "uniform",
                  seed: int | None = None, max_in_flight: int = 5000, connections: int = 1000,
                  cooldown_s: float = 0.5,
                  on_probe: Callable[[Probe], None] | None = None,
                  on_progress: Callable[[float, Progress], None] | None = None) -> SearchResult:
    """Search the highest constant rate in [low, high] that meets `slo`.

    Each probe is a fresh open-loop run of `step_duration_s` at one rate. The search doubles
    from `low` until a probe fails (or `high` is reached), then bisects between the last pass
    and the first failure until they are within `tolerance` (relative) of each other or
    `max_probes` have run. `on_probe` sees each finished probe; `on_progress(rate, progress)`
    sees live progress.

    >>> find_max_rate(Target(url="http://127.0.0.1:9100/v1", model="sim-chat"),
    ...               SLO(p99_ms=500, error_rate=0.01), low=10, high=2000,
    ...               step_duration_s=5).max_rate  # doctest: +SKIP
    """
    _positive(low, "low (--low)", "it must be a positive rate in requests per second, e.g. 10.")
    _positive(high, "high (--high)", "it must be a positive rate, e.g. 2000.")
    if high < low:
        raise ConfigError(f"high (--high) is {high:g} but low (--low) is {low:g}; high must be "
                          "at least low.")
    _positive(step_duration_s, "step_duration_s (--step-duration)",
              "it must be a positive number of seconds, e.g. 5.")
    _positive(tolerance, "tolerance (--tolerance)", "it must be a positive fraction, e.g. 0.05.")
    probes: list[Probe] = []

    def probe(rate: float) -> bool:
        profile = Profile(kind="constant", rates=(rate,), duration_s=step_duration_s,
                          arrivals=arrivals, seed=seed)
        callback = None if on_progress is None else (lambda p: on_progress(rate, p))
        # A probe that has certainly missed the p99 objective ends there, instead of waiting
        # up to the timeout for its slowest answers (a saturated target's queue).
        result = run_load(target, profile, max_in_flight=max_in_flight,
                          connections=connections, on_progress=callback,
                          slo_p99_ms=slo.p99_ms)
        reasons = slo.violations(result)
        done = Probe(rate=rate, passed=not reasons, reasons=reasons, result=result)
        probes.append(done)
        if on_probe is not None:
            on_probe(done)
        # Let the target drain queues the probe left behind before the next one starts.
        time.sleep(cooldown_s)
        return done.passed

    def finish(best: float | None, why: Literal["slo", "high", "low"]) -> SearchResult:
        return SearchResult(slo=slo, low=low, high=high, step_duration_s=step_duration_s,
                            max_rate=best, limited_by=why, probes=probes)

    if not probe(low):
        return finish(None, "low")
    passed, failed = low, None
    rate = low
    while failed is None and len(probes) < max_probes:
        rate = min(rate * 2, high)
        if probe(rate):
            passed = rate
            if rate >= high:
                return finish(high, "high")
        else:
            failed = rate
    if failed is None:
        return finish(passed, "slo")
    while (failed - passed) / failed > tolerance and len(probes) < max_probes:
        middle = round((passed + failed) / 2, 1)
        if middle in (passed, failed):
            break
        if probe(middle):
            passed = middle
        else:
            failed = middle
    return finish(passed, "slo")
