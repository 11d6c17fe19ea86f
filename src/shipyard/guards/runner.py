"""Run an ordered list of guards on one subject and combine their verdicts.

Sync guards run inline, in order, and a block from one of them stops the list at once (the
common, cheap case). Async guards and `threaded` guards run concurrently, each under its own
timeout. A guard that raises or times out gets its failure policy: `open` allows (and says
so on the trace), `closed` blocks. A guard that times out is never silent: its name is on
`Outcome.timed_out` and on the trace (`attributes["guards_timed_out"]`), for the response
header. (A guard with a slow layer, such as the injection guard's model, decides with its
cheap layers inline first and only then hands back an awaitable for the slow part, so a
timeout can never discard a cheap block.) Verdicts are then combined in list order: the first
`block` or `escalate` decides; otherwise fixes apply one after the other. Every verdict is
recorded on the trace (`attributes["guards"]`) and trips are counted in metrics.

>>> from shipyard.guards.base import FunctionGuard
>>> runner = GuardList([GuardSlot(FunctionGuard(lambda s: None, threaded=False))], "input")
>>> asyncio.run(runner.run(Subject("hi"))).action
'allow'
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from shipyard.guards.base import Action, Guard, Subject, Verdict

__all__ = ["GuardList", "GuardMetrics", "GuardSlot", "Outcome"]

log = logging.getLogger("shipyard.guards")

OnTrip = Literal["default", "block", "fix", "escalate", "flag"]


class GuardMetrics(Protocol):
    """Where a guard list reports; `shipyard.observe.metrics.Metrics` is the gateway's."""

    def count_guard_trip(self, target: str, stage: str, guard: str, action: str) -> None:
        """A verdict other than allow, or a failure (`timeout`, `error`)."""

    def guard_timer(self, target: str, stage: str, guard: str) -> Callable[[float], None]:
        """What to call with the seconds of each run of this guard; asked once per guard
        when the list is built, so a run costs no label lookup."""


@dataclass(slots=True)
class GuardSlot:
    """One configured guard: the guard plus its timeout, failure policy and trip action.

    `on_trip` overrides what a tripped verdict does: `flag` records it but allows (shadow
    mode), `block`/`escalate` turn any trip into that action; `default` keeps the verdict.
    """

    guard: Guard
    timeout_s: float = 0.1
    fail_closed: bool = False
    on_trip: OnTrip = "default"
    retries: int = 0  # re-asks of the model when this (output) guard blocks with feedback

    @property
    def name(self) -> str:
        return self.guard.name


@dataclass(slots=True)
class Outcome:
    """The combined decision of a guard list."""

    action: Action = "allow"
    text: str | None = None  # the fixed text, when a guard fixed it
    verdict: Verdict | None = None  # the deciding verdict of a block or escalate
    guard: str = ""
    slot: GuardSlot | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    # Guards that did not answer in time (or whose model refused more work): their verdict
    # is the failure policy's, which `records` also shows.
    timed_out: list[str] = field(default_factory=list)

    @property
    def stops(self) -> bool:
        return self.action in ("block", "escalate")


class GuardList:
    """An ordered list of guards for one stage (`input` or `output`) of one model or service."""

    def __init__(self, slots: Sequence[GuardSlot], stage: Literal["input", "output"],
                 *, target: str = "", metrics: GuardMetrics | None = None) -> None:
        self.slots = list(slots)
        self.stage = stage
        self.target = target
        self.metrics = metrics
        # One bound observer per slot, in slot order (None: not timed).
        self._timers: list[Callable[[float], None]] | None = None if metrics is None else [
            metrics.guard_timer(target, stage, slot.name) for slot in self.slots]

    def __bool__(self) -> bool:
        return bool(self.slots)

    def streamable(self) -> GuardList:
        """The guards that can judge a sentence window of a streaming answer."""
        return GuardList([s for s in self.slots if s.guard.streamable], self.stage,
                         target=self.target, metrics=self.metrics)

    async def run(self, subject: Subject, trace: dict[str, Any] | None = None) -> Outcome:
        """Run every guard on `subject`; records go to `trace["guards"]` when given."""
        slots = self.slots
        results: list[tuple[Verdict, float] | None] = [None] * len(slots)
        pending: dict[int, asyncio.Task[tuple[Verdict, float]]] = {}
        for i, slot in enumerate(slots):
            if slot.guard.threaded:
                pending[i] = asyncio.ensure_future(self._timed(
                    slot, asyncio.to_thread(slot.guard.check, subject)))
                continue
            started = time.perf_counter()
            try:
                result = slot.guard.check(subject)
            except Exception as exc:
                results[i] = (self._failed(slot, exc), _ms(started))
            else:
                if inspect.isawaitable(result):
                    pending[i] = asyncio.ensure_future(self._timed(slot, result))
                    continue
                results[i] = (self._effective(slot, result), _ms(started))
            if results[i] is not None and results[i][0].action in ("block", "escalate"):  # type: ignore[index]
                break  # a sync guard decided: skip the rest, cancel what is running
        decided = any(r is not None and r[0].action in ("block", "escalate") for r in results)
        if pending:
            if decided:
                for task in pending.values():
                    task.cancel()
            else:
                done = await asyncio.gather(*pending.values())
                for i, value in zip(pending, done, strict=True):
                    results[i] = value
        outcome = self._combine(results)
        if outcome.action == "fix" and sum(
                1 for r in results if r is not None and r[0].action == "fix") > 1:
            outcome = await self._refix(subject, results, outcome)
        self._record(outcome, results, trace)
        return outcome

    async def _timed(self, slot: GuardSlot, work: Awaitable[Any]) -> tuple[Verdict, float]:
        started = time.perf_counter()
        try:
            result = await asyncio.wait_for(_resolve(work), slot.timeout_s)
            return self._effective(slot, result), _ms(started)
        except TimeoutError as exc:  # the wait, or the guard's own (a model refusing work)
            failure: Exception = exc if str(exc) else TimeoutError(
                f"timed out after {slot.timeout_s * 1000:g} ms")
            return self._failed(slot, failure), _ms(started)
        except Exception as exc:
            return self._failed(slot, exc), _ms(started)

    def _effective(self, slot: GuardSlot, verdict: Any) -> Verdict:
        if not isinstance(verdict, Verdict):
            return self._failed(slot, TypeError(
                f"returned {type(verdict).__name__}, not a Verdict"))
        if verdict.action == "allow" or slot.on_trip == "default":
            return verdict
        if slot.on_trip == "flag":
            return Verdict("allow", verdict.score, "flagged: " + verdict.reason,
                           None, verdict.code, {**verdict.metadata, "flagged": True})
        if slot.on_trip == "fix" and verdict.fixed_text is None:
            return verdict  # nothing to fix with: keep what the guard said
        return Verdict(slot.on_trip, verdict.score, verdict.reason, verdict.fixed_text,
                       verdict.code, verdict.metadata)

    def _failed(self, slot: GuardSlot, exc: BaseException) -> Verdict:
        kind = "timeout" if isinstance(exc, TimeoutError) else "error"
        log.warning("guard %s (%s, %s) failed: %s: %s", slot.name, self.stage, self.target,
                    type(exc).__name__, exc)
        if self.metrics is not None:
            self.metrics.count_guard_trip(self.target, self.stage, slot.name, kind)
        policy = "closed" if slot.fail_closed else "open"
        reason = f"guard failed ({type(exc).__name__}: {str(exc)[:120]}); failing {policy}"
        meta = {"failure": kind}
        if slot.fail_closed:
            return Verdict("block", 1.0, reason, None, "guard_failed", meta)
        return Verdict("allow", 0.0, reason, None, "guard_failed", meta)

    def _combine(self, results: list[tuple[Verdict, float] | None]) -> Outcome:
        fixed: str | None = None
        for slot, result in zip(self.slots, results, strict=True):
            if result is None:
                continue
            verdict = result[0]
            if verdict.action in ("block", "escalate"):
                return Outcome(verdict.action, None, verdict, slot.name, slot)
            if verdict.action == "fix" and verdict.fixed_text is not None:
                fixed = verdict.fixed_text
        return Outcome("fix", fixed) if fixed is not None else Outcome()

    async def _refix(self, subject: Subject, results: list[tuple[Verdict, float] | None],
                     outcome: Outcome) -> Outcome:
        """Several guards fixed the same text: apply them one after the other."""
        text = subject.text
        timers = self._timers
        for i, (slot, result) in enumerate(zip(self.slots, results, strict=True)):
            if result is None or result[0].action != "fix":
                continue
            work = _resolve_sync(slot.guard, subject.with_text(text))
            verdict, ms = await self._timed(slot, work)
            if timers is not None:
                timers[i](ms / 1000.0)
            if verdict.action == "fix" and verdict.fixed_text is not None:
                text = verdict.fixed_text
        return Outcome("fix", text, records=outcome.records, timed_out=outcome.timed_out)

    def _record(self, outcome: Outcome, results: list[tuple[Verdict, float] | None],
                trace: dict[str, Any] | None) -> None:
        metrics, timers = self.metrics, self._timers
        for i, (slot, result) in enumerate(zip(self.slots, results, strict=True)):
            if result is None:
                continue  # skipped (or cancelled): an earlier sync guard decided
            verdict, ms = result
            if timers is not None:
                timers[i](ms / 1000.0)
            record: dict[str, Any] = {"stage": self.stage, "guard": slot.name,
                                      "action": verdict.action,
                                      "score": round(float(verdict.score), 4),
                                      "ms": round(ms, 3)}
            if verdict.reason:
                record["reason"] = verdict.reason
            if verdict.code:
                record["code"] = verdict.code
            if verdict.metadata.get("failure") == "timeout":
                record["timed_out"] = True
                outcome.timed_out.append(slot.name)
            outcome.records.append(record)
            if verdict.action != "allow" and metrics is not None:
                metrics.count_guard_trip(self.target, self.stage, slot.name, verdict.action)
        if trace is not None and outcome.records:
            trace.setdefault("guards", []).extend(outcome.records)
        if trace is not None and outcome.timed_out:
            trace.setdefault("guards_timed_out", []).extend(outcome.timed_out)


async def _resolve(work: Awaitable[Any]) -> Any:
    result = await work
    # A `threaded` guard whose check is async hands its awaitable back from the thread.
    return await result if inspect.isawaitable(result) else result


async def _resolve_sync(guard: Guard, subject: Subject) -> Any:
    if guard.threaded:
        result = await asyncio.to_thread(guard.check, subject)
    else:
        result = guard.check(subject)
    return await result if inspect.isawaitable(result) else result


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
