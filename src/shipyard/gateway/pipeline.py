"""The request pipeline: small stages composed per model or service.

A stage is an object with one method, `__call__(call, call_next)`, that may look at or change
the call, answer it itself, or pass it on and look at the reply. The last step sends the call
to the provider. Built-in stages (admission, guards, cache, retries, ...) use exactly this
interface, and so can a user's own stage.

>>> class Tag(Stage):
...     async def __call__(self, call: Call, call_next: Handler) -> Reply:
...         call.headers["x-team"] = "search"
...         return await call_next(call)
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shipyard.config.targets import ModelConfig
from shipyard.gateway.context import RequestContext
from shipyard.providers.base import Endpoint, Reply
from shipyard.resilience.admission import Admission
from shipyard.resilience.failover import Deployment, failover
from shipyard.resilience.retry import RetryBudget

__all__ = ["Call", "Handler", "ModelTarget", "Stage", "compose"]


@dataclass(slots=True)
class Call:
    """One request on its way to an upstream."""

    ctx: RequestContext
    endpoint: Endpoint
    payload: dict[str, Any]
    stream: bool
    target: ModelTarget
    headers: dict[str, str] = field(default_factory=dict)
    deadline: float = math.inf  # time.monotonic() by which the answer must have started
    priority: int = 0  # 0 interactive, 1 batch
    client_wants_usage: bool = False
    served_by: str | None = None  # the alias that answered (a fallback, maybe)
    principal: Any = None  # the caller (shipyard.gateway.auth.Principal)
    conversation_id: str | None = None  # x-shipyard-conversation, when escalation is enabled


Handler = Callable[[Call], Awaitable[Reply]]


class Stage:
    """Base class of pipeline stages; override `__call__`."""

    async def __call__(self, call: Call, call_next: Handler) -> Reply:
        return await call_next(call)


def compose(stages: Sequence[Stage], terminal: Handler = failover) -> Handler:
    """Chain stages around `terminal`, first stage outermost."""
    handler = terminal
    for stage in reversed(stages):
        handler = _link(stage, handler)
    return handler


def _link(stage: Stage, call_next: Handler) -> Handler:
    async def handler(call: Call) -> Reply:
        return await stage(call, call_next)

    return handler


@dataclass(slots=True, eq=False)
class ModelTarget:
    """A model alias and everything needed to serve it."""

    alias: str
    config: ModelConfig
    deployments: list[Deployment]
    budget: RetryBudget
    fallback_targets: list[ModelTarget] = field(default_factory=list)
    handler: Handler = failover
    stages: list[Stage] = field(default_factory=list)
    admissions: list[Admission] = field(default_factory=list)

    def use(self, *stages: Stage) -> None:
        """Add stages (outermost first) and recompose the handler."""
        self.stages.extend(stages)
        self.handler = compose(self.stages)
