"""Guards of a hosted Python service: they look at the strings of its JSON input and output.

The subject text is every string in the value, one per line (a plain string is itself). A fix
is applied to each string separately, so the JSON shape never changes. Grounding context for
output guards comes from the input's `context` (or `documents`) field when there is one.
"""

from __future__ import annotations

import logging
from typing import Any

from shipyard.config.trust import GuardsConfig
from shipyard.guards.answers import Escalation, GuardHooks, guard_metadata
from shipyard.guards.base import Subject
from shipyard.guards.registry import build_guard_lists
from shipyard.guards.runner import GuardList, GuardMetrics, Outcome

__all__ = ["ServiceGuards", "strings_of"]

log = logging.getLogger("shipyard.guards")

_CONTEXT_KEYS = ("context", "documents", "sources")


def strings_of(value: Any, out: list[str] | None = None) -> list[str]:
    """Every string inside a JSON value, depth first."""
    out = [] if out is None else out
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, dict):
        for item in value.values():
            strings_of(item, out)
    elif isinstance(value, list | tuple):
        for item in value:
            strings_of(item, out)
    return out


def _context_of(data: Any) -> list[str]:
    if isinstance(data, dict):
        for key in _CONTEXT_KEYS:
            if key in data:
                return strings_of(data[key])
    return []


class ServiceGuards:
    """The input and output guard lists of one service, and how they apply to JSON values."""

    def __init__(self, name: str, config: GuardsConfig, *,
                 metrics: GuardMetrics | None = None) -> None:
        self.name = name
        self.config = config
        self.inputs, self.outputs = build_guard_lists(
            config, f"services.{name}.guards", target=name, metrics=metrics)

    async def check(self, stage: str, value: Any, trace: dict[str, Any],
                    request: Any = None) -> tuple[Any, Outcome]:
        """Run the `stage` guards on `value`; returns the (possibly fixed) value and outcome."""
        guards = self.inputs if stage == "input" else self.outputs
        if not guards:
            return value, Outcome()
        context = _context_of(request if stage == "output" else value)
        subject = Subject("\n".join(strings_of(value)), stage, self.name,  # type: ignore[arg-type]
                          context=context, request=request if isinstance(request, dict)
                          else None)
        outcome = await guards.run(subject, trace)
        if outcome.action == "fix":
            value = await self._fix(guards, subject, value)
        return value, outcome

    async def _fix(self, guards: GuardList, subject: Subject, value: Any) -> Any:
        quiet = GuardList(guards.slots, guards.stage, target=guards.target)
        if isinstance(value, str):
            outcome = await quiet.run(subject.with_text(value))
            return outcome.text if outcome.action == "fix" and outcome.text is not None else value
        if isinstance(value, dict):
            return {k: await self._fix(guards, subject, v) for k, v in value.items()}
        if isinstance(value, list):
            return [await self._fix(guards, subject, v) for v in value]
        return value

    async def refusal(self, outcome: Outcome, stage: str, *, hooks: GuardHooks,
                      trace_id: str, request_id: str, tenant_id: str,
                      text: str = "", principal: Any = None,
                      conversation_id: str | None = None) -> dict[str, Any]:
        """The body of a blocked or escalated invocation (HTTP 200, `output: null`); see
        `Escalation` for `principal` and `conversation_id`."""
        meta = guard_metadata(stage, outcome.guard, outcome.verdict, outcome.action, trace_id)
        message = self.config.blocked_message
        if outcome.action == "escalate":
            message = self.config.escalated_message
            extra = None
            if hooks.on_escalate is not None and outcome.verdict is not None:
                try:
                    extra = await hooks.on_escalate(Escalation(
                        self.name, stage, outcome.guard, outcome.verdict, [], text, trace_id,
                        request_id, tenant_id, principal, conversation_id))
                except Exception:  # the caller still gets the escalated message
                    log.exception("escalation hook failed for request %s", request_id)
                if extra:
                    message = str(extra.pop("message", message))
                    meta["escalation"] = extra
        return {"id": trace_id, "object": "service.result", "service": self.name,
                "output": None, "blocked": True, "message": message, "shipyard": meta}


def make_service_guards(name: str, config: GuardsConfig,
                        metrics: GuardMetrics | None) -> ServiceGuards | None:
    """Service guards, or None when the service configures none (zero cost)."""
    if not config.input and not config.output:
        return None
    return ServiceGuards(name, config, metrics=metrics)
