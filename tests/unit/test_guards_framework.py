"""The guard runner: ordering, concurrency, timeouts, failure policies, records, config."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from pydantic import ValidationError

from shipyard.config.trust import GuardsConfig, GuardSpec
from shipyard.errors import ConfigError
from shipyard.guards import FunctionGuard, Guard, GuardList, GuardSlot, Subject, Verdict
from shipyard.guards.registry import build_guard, build_guard_lists
from shipyard.observe.metrics import Metrics


class Sleepy(Guard):
    def __init__(self, name: str, seconds: float, verdict: Verdict | None = None) -> None:
        self.name = name
        self.seconds = seconds
        self.verdict = verdict or Verdict.allow()

    async def check(self, subject: Subject) -> Verdict:  # type: ignore[override]
        await asyncio.sleep(self.seconds)
        return self.verdict


class Upper(Guard):
    name = "upper"

    def check(self, subject: Subject) -> Verdict:
        return Verdict.fix(subject.text.upper(), "shouted")


class Exclaim(Guard):
    name = "exclaim"

    def check(self, subject: Subject) -> Verdict:
        return Verdict.fix(subject.text + "!", "excited")


class Boom(Guard):
    name = "boom"

    def check(self, subject: Subject) -> Verdict:
        raise RuntimeError("model file missing")


def run(guards: GuardList, text: str = "hello", trace: dict[str, Any] | None = None) -> Any:
    return asyncio.run(guards.run(Subject(text), trace))


def test_no_guards_allow() -> None:
    assert run(GuardList([], "input")).action == "allow"


def test_async_guards_run_concurrently() -> None:
    slots = [GuardSlot(Sleepy(f"s{i}", 0.2), timeout_s=1.0) for i in range(4)]
    started = time.perf_counter()
    outcome = run(GuardList(slots, "input"))
    assert outcome.action == "allow"
    assert time.perf_counter() - started < 0.6  # four 0.2 s guards, not 0.8 s in a row


def test_first_block_in_list_order_decides() -> None:
    slots = [GuardSlot(Sleepy("late", 0.05, Verdict.block("late one", code="a"))),
             GuardSlot(Sleepy("early", 0.0, Verdict.escalate("early one", code="b")))]
    outcome = run(GuardList(slots, "input"))
    assert (outcome.action, outcome.guard) == ("block", "late")


def test_sync_block_short_circuits_the_rest() -> None:
    calls: list[str] = []

    def blocker(subject: Subject) -> Verdict:
        calls.append("blocker")
        return Verdict.block("no")

    def after(subject: Subject) -> None:
        calls.append("after")

    slots = [GuardSlot(FunctionGuard(blocker, threaded=False)),
             GuardSlot(FunctionGuard(after, threaded=False))]
    assert run(GuardList(slots, "input")).action == "block"
    assert calls == ["blocker"]


def test_timeout_fails_open_or_closed() -> None:
    slow = Sleepy("slow", 5.0, Verdict.block("too late"))
    trace: dict[str, Any] = {}
    started = time.perf_counter()
    open_ = run(GuardList([GuardSlot(slow, timeout_s=0.05)], "input"), trace=trace)
    assert time.perf_counter() - started < 1.0
    assert open_.action == "allow"
    assert trace["guards"][0]["code"] == "guard_failed"
    assert "timed out after 50 ms" in trace["guards"][0]["reason"]
    closed = run(GuardList([GuardSlot(slow, timeout_s=0.05, fail_closed=True)], "input"))
    assert closed.action == "block" and closed.verdict is not None
    assert closed.verdict.code == "guard_failed"


def _sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_exceptions_follow_the_failure_policy_and_are_counted() -> None:
    metrics = Metrics()
    guards = GuardList([GuardSlot(Boom())], "output", target="svc", metrics=metrics)
    assert run(guards).action == "allow"
    assert _sample(metrics, "shipyard_guard_trips_total", target="svc", stage="output",
                   guard="boom", action="error") == 1
    closed = GuardList([GuardSlot(Boom(), fail_closed=True)], "output")
    assert run(closed).action == "block"


def test_every_guard_run_is_timed_except_the_skipped() -> None:
    metrics = Metrics()
    slow = Sleepy("slow", 5.0)
    guards = GuardList([GuardSlot(Upper()), GuardSlot(Boom()), GuardSlot(slow, timeout_s=0.02)],
                       "input", target="m", metrics=metrics)
    assert run(guards).action == "fix"
    blocker = FunctionGuard(lambda s: Verdict.block("no"), name="blocker", threaded=False)
    after = FunctionGuard(lambda s: None, name="after", threaded=False)
    blocked = GuardList([GuardSlot(blocker), GuardSlot(after), GuardSlot(Sleepy("async", 0.0))],
                        "input", target="m", metrics=metrics)
    assert run(blocked).action == "block"

    def count(guard: str) -> float | None:
        return _sample(metrics, "shipyard_guard_duration_seconds_count", target="m",
                       stage="input", guard=guard)

    # failed (boom) and timed-out (slow) runs are timed too; the runs skipped after a sync
    # block are not
    assert [count(g) for g in ("upper", "boom", "slow", "blocker")] == [1, 1, 1, 1]
    assert count("after") == 0 and count("async") == 0
    assert _sample(metrics, "shipyard_guard_trips_total", target="m", stage="input",
                   guard="slow", action="timeout") == 1


def test_reapplied_fixes_are_timed_as_runs() -> None:
    metrics = Metrics()
    guards = GuardList([GuardSlot(Upper()), GuardSlot(Exclaim())], "output", target="m",
                       metrics=metrics)
    assert run(guards, "hi").text == "HI!"
    assert _sample(metrics, "shipyard_guard_duration_seconds_count", target="m",
                   stage="output", guard="exclaim") == 2  # judged, then applied to "HI"


def test_threaded_function_guard_timeout() -> None:
    guard = FunctionGuard(lambda s: time.sleep(0.5), name="sleeper")
    outcome = run(GuardList([GuardSlot(guard, timeout_s=0.05, fail_closed=True)], "input"))
    assert outcome.action == "block"


def test_fixes_apply_in_order() -> None:
    outcome = run(GuardList([GuardSlot(Upper()), GuardSlot(Exclaim())], "input"), "hi")
    assert (outcome.action, outcome.text) == ("fix", "HI!")


def test_on_trip_flag_records_but_allows() -> None:
    trace: dict[str, Any] = {}
    guard = FunctionGuard(lambda s: Verdict.block("bad", code="x"), threaded=False)
    outcome = run(GuardList([GuardSlot(guard, on_trip="flag")], "input"), trace=trace)
    assert outcome.action == "allow"
    assert trace["guards"][0]["reason"] == "flagged: bad"


def test_every_verdict_is_recorded() -> None:
    trace: dict[str, Any] = {}
    run(GuardList([GuardSlot(Sleepy("a", 0)), GuardSlot(Upper())], "input"), trace=trace)
    assert [r["guard"] for r in trace["guards"]] == ["a", "upper"]
    assert {"stage", "action", "score", "ms"} <= set(trace["guards"][0])


def test_function_guard_must_return_a_verdict() -> None:
    guard = FunctionGuard(lambda s: "yes", threaded=False)
    outcome = run(GuardList([GuardSlot(guard, fail_closed=True)], "input"))
    assert outcome.action == "block"


def test_config_shorthand_and_flat_options() -> None:
    config = GuardsConfig.model_validate(
        {"input": ["injection", {"guard": "topics", "deny": ["weapons"]}]})
    assert config.input[0].guard == "injection"
    assert config.input[1].options == {"deny": ["weapons"]}


def test_config_rejects_unknown_guard_and_duplicates() -> None:
    with pytest.raises(ValidationError, match="neither a guard name"):
        GuardSpec.model_validate({"guard": "no-such-guard"})
    with pytest.raises(ValidationError, match="distinct 'name'"):
        GuardsConfig.model_validate({"input": ["injection", "injection"]})


def test_unknown_option_names_the_key() -> None:
    spec = GuardSpec.model_validate({"guard": "topics", "dney": ["x"]})
    with pytest.raises(ConfigError, match=r"models.m.guards.input\[0\].dney' is not an option"):
        build_guard(spec, "models.m.guards.input[0]")


def test_module_function_guard_from_config() -> None:
    spec = GuardSpec.model_validate({"guard": "shipyard.guards.base:text_of", "name": "t"})
    guard = build_guard(spec, "k")
    assert isinstance(guard, FunctionGuard) and guard.name == "t"


def test_build_lists_applies_defaults() -> None:
    config = GuardsConfig.model_validate(
        {"timeout_ms": 30, "on_error": "closed",
         "output": [{"guard": "banned", "terms": ["x"], "timeout_ms": 5, "on_error": "open"}],
         "input": ["length"]})
    inputs, outputs = build_guard_lists(config, "models.m.guards", target="m")
    assert inputs.slots[0].timeout_s == pytest.approx(0.03) and inputs.slots[0].fail_closed
    assert outputs.slots[0].timeout_s == pytest.approx(0.005)
    assert not outputs.slots[0].fail_closed


async def _late(subject: Subject) -> Verdict:
    await asyncio.sleep(5)
    return Verdict.allow()


async def _shouts(subject: Subject) -> Verdict | None:
    await asyncio.sleep(0)
    return Verdict.block("shouting", code="caps") if subject.text.isupper() else None


class AsyncButThreaded(Guard):
    name = "async_threaded"
    threaded = True

    async def check(self, subject: Subject) -> Verdict:  # type: ignore[override]
        return Verdict.block("no", code="x")


def test_async_function_guards_run_on_the_loop() -> None:
    """An async function (as `guard: module:function` builds it) is awaited, not handed to a
    thread that would only create its coroutine."""
    assert FunctionGuard(_shouts).threaded is False
    metrics = Metrics()
    guards = GuardList([GuardSlot(FunctionGuard(_shouts))], "input", target="m",
                       metrics=metrics)
    assert run(guards, "HELLO").action == "block"
    assert run(guards, "hello").action == "allow"
    late = GuardList([GuardSlot(FunctionGuard(_late), timeout_s=0.02)], "input", target="m",
                     metrics=metrics)
    assert run(late).action == "allow"
    assert _sample(metrics, "shipyard_guard_trips_total", target="m", stage="input",
                   guard="_late", action="timeout") == 1
    assert run(GuardList([GuardSlot(AsyncButThreaded())], "input")).action == "block"


def test_every_built_in_guard_is_documented_from_the_one_table() -> None:
    from pathlib import Path

    from shipyard.config.trust import GUARD_KINDS

    doc = (Path(__file__).resolve().parents[2] / "docs" / "guards.md").read_text()
    for name, kind in GUARD_KINDS.items():
        assert f"| `{name}` | {kind.stages} | {kind.help} |" in doc, name


def test_every_built_in_guard_builds_from_the_table() -> None:
    from shipyard.config.trust import GUARD_KINDS, GuardSpec
    from shipyard.guards import Guard, build_guard

    required = {"json_schema": {"schema": {"type": "object"}}, "banned": {"terms": ["x"]}}
    for name in GUARD_KINDS:
        options = required.get(name, {})
        guard = build_guard(GuardSpec(guard=name, options=options), f"guards.input[{name}]")
        assert isinstance(guard, Guard) and guard.name == name


def test_a_registered_guard_is_used_by_name_and_unknown_names_fail_clearly() -> None:
    import pytest

    from shipyard.config import parse_config
    from shipyard.errors import ConfigError
    from shipyard.guards import Guard, Subject, Verdict, build_guard_lists, register

    class Shouting(Guard):
        name = "shouting"

        def __init__(self, *, ratio: float = 0.8) -> None:
            self.ratio = ratio

        def check(self, subject: Subject) -> Verdict:
            letters = [c for c in subject.text if c.isalpha()]
            upper = sum(c.isupper() for c in letters) / max(1, len(letters))
            return Verdict.block("All capitals.") if upper >= self.ratio else Verdict.allow()

    register("shouting_test", Shouting)
    config = parse_config("""
providers: {p: {kind: sim}}
models:
  m:
    provider: p
    guards: {input: [{guard: shouting_test, ratio: 0.5}]}
""")
    inputs, _ = build_guard_lists(config.models["m"].guards, "models.m.guards", target="m")
    import asyncio

    assert asyncio.run(inputs.run(Subject("STOP SHOUTING"))).action == "block"
    assert asyncio.run(inputs.run(Subject("calm words"))).action == "allow"
    typo = parse_config("""
providers: {p: {kind: sim}}
models: {m: {provider: p, guards: {input: [shoutting]}}}
""")
    with pytest.raises(ConfigError, match=r"models\.m\.guards\.input\[0\]\.guard.*shoutting.*"
                       r"shouting_test"):
        build_guard_lists(typo.models["m"].guards, "models.m.guards", target="m")
    with pytest.raises(ConfigError, match="built-in guard"):
        register("pii", Shouting)
