"""Escalation to a human: triggers, tickets, the review queue's store, webhooks, SLA alerts.

>>> from shipyard.escalation import asks_for_person
>>> asks_for_person("I want a real person"), asks_for_person("the person I talked to")
(True, False)

The gateway holds one `Escalations` (`gateway.escalations`); see docs/escalation.md.
"""

from __future__ import annotations

from shipyard.escalation.service import (
    EscalationPolicy,
    Escalations,
    OverdueChecker,
    RequestInfo,
    Trigger,
    caller_of,
)
from shipyard.escalation.store import STATUSES, TRIGGERS, Ticket
from shipyard.escalation.triggers import asks_for_person, read_confidence
from shipyard.escalation.webhook import sign, verify

__all__ = [
    "STATUSES",
    "TRIGGERS",
    "EscalationPolicy",
    "Escalations",
    "OverdueChecker",
    "RequestInfo",
    "Ticket",
    "Trigger",
    "asks_for_person",
    "caller_of",
    "read_confidence",
    "sign",
    "verify",
]
