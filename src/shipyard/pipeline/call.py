"""A call, its reply, and the stages between them.

A stage is an object with one method, `__call__(call, call_next)`, that may look at or change
the call, answer it itself, or pass it on and look at the reply. The innermost step is the
target's terminal: a model alias's failover over its deployments, or a hosted service's
function. Built-in stages (rate limits, admission, PII, guards, cache, escalation) use exactly
this interface, and so can a user's own stage (`stages:` in shipyard.yaml).

>>> class Tag(Stage):
...     async def __call__(self, call: Call, call_next: Handler) -> Reply:
...         call.headers["x-team"] = "search"
...         return await call_next(call)
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from shipyard.pipeline.context import RequestContext

__all__ = ["Call", "Endpoint", "Handler", "Reply", "Stage", "Target", "compose"]

# What a call asks of its target: the three OpenAI endpoints of a model alias, or the
# invocation of a hosted service.
Endpoint = Literal["chat/completions", "completions", "embeddings", "invoke"]


@dataclass(slots=True)
class Reply:
    """What a target answered.

    Non-streaming: `body` holds the JSON bytes and `data` the parsed object (a provider that
    parses anyway fills it; otherwise the gateway parses `body`). A service's reply carries its
    output in `data` and, when the function returned a `shipyard.Result`, the `context` it
    used; a service reply with a `body` is a complete answer envelope (a guard's refusal, a
    person's answer) that is sent as it is. Streaming: `stream` yields raw SSE bytes exactly
    as they should reach the client (`data: {...}\\n\\n` ... `data: [DONE]`).
    """

    status: int = 200
    body: bytes = b""
    data: Any = None
    stream: AsyncIterator[bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    upstream_ms: float = 0.0
    # Shipyard asked the upstream for stream usage the client did not ask for: drop that event.
    usage_injected: bool = False
    # The retrieved passages a service's answer was based on (for grounding and citations).
    context: list[str] | None = None
    citations: list[Any] | None = None
    # What the trace keeps of the answer when it differs from what the caller gets (the PII
    # stage restores the caller's own values; traces keep the placeholders).
    traced: Any = None


@dataclass(slots=True)
class Call:
    """One request on its way to a target."""

    ctx: RequestContext
    endpoint: Endpoint
    payload: Any  # the OpenAI request body (a dict), or a service's input
    stream: bool
    target: Target
    headers: dict[str, str] = field(default_factory=dict)
    deadline: float = math.inf  # time.monotonic() by which the answer must have started
    priority: int = 0  # 0 interactive, 1 batch
    client_wants_usage: bool = False
    served_by: str | None = None  # the alias that answered (a fallback, maybe)
    principal: Any = None  # the caller (shipyard.security.principal.Principal)
    conversation_id: str | None = None  # x-shipyard-conversation, when the caller sent one
    # What the trace keeps of the request when it differs from `payload` (PII cleaned for
    # traces only); stages that change the payload reset it.
    traced_payload: Any = None
    # (payload, argument): a service input already validated into its function's argument;
    # the terminal validates again only when a stage replaced the payload.
    validated: tuple[Any, Any] | None = None


Handler = Callable[[Call], Awaitable[Reply]]


class Stage:
    """Base class of pipeline stages; override `__call__`."""

    async def __call__(self, call: Call, call_next: Handler) -> Reply:
        return await call_next(call)


def compose(stages: Sequence[Stage], terminal: Handler) -> Handler:
    """Chain stages around `terminal`, first stage outermost."""
    handler = terminal
    for stage in reversed(stages):
        handler = _link(stage, handler)
    return handler


def _link(stage: Stage, call_next: Handler) -> Handler:
    async def handler(call: Call) -> Reply:
        return await stage(call, call_next)

    return handler


class Target:
    """Anything a request can reach (a model alias, a hosted service): a name, the stages of
    its chain, and the terminal step they wrap (a model's failover over its deployments, a
    service's function)."""

    kind: ClassVar[str] = "target"

    def __init__(self, name: str, terminal: Handler) -> None:
        self.name = name
        self.terminal = terminal
        self.stages: list[Stage] = []
        self.handler: Handler = self._reach

    async def _reach(self, call: Call) -> Reply:
        """The innermost step: the trace keeps the request as the target receives it (after
        every stage's changes, or as cleaned for traces only), then the terminal answers."""
        call.ctx.request_payload = (call.traced_payload if call.traced_payload is not None
                                    else call.payload)
        return await self.terminal(call)

    def use(self, *stages: Stage) -> None:
        """Add stages (outermost first) and recompose the chain."""
        self.stages.extend(stages)
        self.handler = compose(self.stages, self._reach)
