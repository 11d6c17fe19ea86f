"""What a guard is: one small method that looks at a subject and returns a verdict.

A guard inspects a request (`stage="input"`) or an answer (`stage="output"`) and says
`allow`, `fix` (with the fixed text), `block` or `escalate`, with a score from 0 to 1 and a
short human-readable reason. Built-in guards and a team's own guards use this same interface.

>>> class NoShouting(Guard):
...     name = "no_shouting"
...     def check(self, subject: Subject) -> Verdict:
...         if subject.text.isupper():
...             return Verdict.block("The message is all capitals.", code="shouting")
...         return Verdict.allow()
>>> NoShouting().check(Subject("HELLO")).action
'block'

A plain function works too (`guard: mypkg.checks:no_shouting` in shipyard.yaml); it takes the
subject and returns a `Verdict` (or `None` for allow), sync or async.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Action", "FunctionGuard", "Guard", "Subject", "Verdict", "text_of"]

Action = Literal["allow", "fix", "block", "escalate"]
Stage = Literal["input", "output"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """A guard's decision. `fixed_text` is the corrected text when `action == "fix"`;
    `code` is a short machine-readable reason (`prompt_injection`, `pii`, ...)."""

    action: Action = "allow"
    score: float = 0.0
    reason: str = ""
    fixed_text: str | None = None
    code: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def allow(cls, score: float = 0.0, reason: str = "") -> Verdict:
        return cls("allow", score, reason)

    @classmethod
    def block(cls, reason: str, *, score: float = 1.0, code: str = "",
              metadata: dict[str, Any] | None = None) -> Verdict:
        return cls("block", score, reason, None, code, metadata or {})

    @classmethod
    def fix(cls, fixed_text: str, reason: str, *, score: float = 1.0, code: str = "") -> Verdict:
        return cls("fix", score, reason, fixed_text, code)

    @classmethod
    def escalate(cls, reason: str, *, score: float = 1.0, code: str = "") -> Verdict:
        return cls("escalate", score, reason, None, code)

    @property
    def tripped(self) -> bool:
        return self.action != "allow"


@dataclass(slots=True)
class Subject:
    """What a guard looks at.

    `text` is the text under check: the last user message (input) or the answer (output).
    `messages` is the whole chat, `context` the documents an answer must be grounded in,
    `system_prompt` the service's instructions, `request` the request body. `partial` is true
    for a window of a streaming answer (a guard that needs the whole answer skips it).
    """

    text: str
    stage: Stage = "input"
    target: str = ""
    messages: list[dict[str, Any]] = field(default_factory=list)
    context: list[str] = field(default_factory=list)
    system_prompt: str | None = None
    request: dict[str, Any] | None = None
    partial: bool = False

    def with_text(self, text: str) -> Subject:
        return Subject(text, self.stage, self.target, self.messages, self.context,
                       self.system_prompt, self.request, self.partial)


class Guard:
    """Base class of guards: override `check` (sync, or `async def`).

    Class attributes tune how the runner treats the guard: `threaded` runs a sync `check` in a
    worker thread (for slow, CPU-heavy checks such as a model), `streamable` says the guard can
    judge a sentence window of a streaming answer (false for checks that need the complete
    answer, such as a JSON schema), `timeout_ms` is the guard's own default timeout when the
    config sets none for it (a model needs longer than a regex).
    """

    name: str = "guard"
    threaded: bool = False
    streamable: bool = True
    timeout_ms: float | None = None

    def check(self, subject: Subject) -> Verdict | Awaitable[Verdict]:
        return Verdict.allow()


class FunctionGuard(Guard):
    """A guard around `fn(subject) -> Verdict | None` (sync or async; `None` means allow).

    Sync functions run in a worker thread by default, so a slow one cannot stall the event loop
    and its timeout is enforced; pass `threaded=False` for tiny checks. Async functions run on
    the event loop (`threaded` does not apply to them).
    """

    def __init__(self, fn: Callable[[Subject], Any], *, name: str | None = None,
                 threaded: bool = True) -> None:
        self.fn = fn
        self.name = name or str(getattr(fn, "__name__", "function"))
        # In a worker thread an async function would only create its coroutine, never run it.
        self.threaded = threaded and not inspect.iscoroutinefunction(fn)

    def check(self, subject: Subject) -> Verdict | Awaitable[Verdict]:
        result = self.fn(subject)
        if isinstance(result, Awaitable):
            return _await_verdict(result, self.name)
        return _coerce(result, self.name)


async def _await_verdict(result: Awaitable[Any], name: str) -> Verdict:
    return _coerce(await result, name)


def _coerce(value: Any, name: str) -> Verdict:
    if value is None:
        return Verdict.allow()
    if isinstance(value, Verdict):
        return value
    raise TypeError(f"guard '{name}' returned {type(value).__name__}; return a "
                    "shipyard.guards.Verdict (or None to allow)")


def text_of(content: Any) -> str:
    """The text of a chat message's `content` (a string or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        return "\n".join(p for p in parts if isinstance(p, str))
    return "" if content is None else str(content)
