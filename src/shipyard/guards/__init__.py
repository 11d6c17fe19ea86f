"""Guards: checks on what goes into a model or service and what comes out.

A guard returns a `Verdict` (`allow | fix | block | escalate`, a score, a reason). Models and
services list their guards in shipyard.yaml (`guards.input`, `guards.output`); the gateway runs
them around every request (see docs/guards.md).
"""

from __future__ import annotations

from shipyard.guards.answers import Escalation, EscalationHook, GuardHooks
from shipyard.guards.base import Action, FunctionGuard, Guard, Subject, Verdict
from shipyard.guards.registry import build_guard, build_guard_lists, known_guards, register
from shipyard.guards.runner import GuardList, GuardSlot, Outcome

__all__ = [
    "Action",
    "Escalation",
    "EscalationHook",
    "FunctionGuard",
    "Guard",
    "GuardHooks",
    "GuardList",
    "GuardSlot",
    "Outcome",
    "Subject",
    "Verdict",
    "build_guard",
    "build_guard_lists",
    "known_guards",
    "register",
]
