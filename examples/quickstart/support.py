"""A prototype 'model' for the quick start: routes a support ticket to a team.

Hosted by Shipyard at POST /v1/services/triage/invoke (see shipyard.yaml beside this file).
"""

from __future__ import annotations

from typing import Any

_TEAMS = {
    "billing": ("refund", "invoice", "charge", "payment", "price"),
    "technical": ("error", "crash", "bug", "login", "password", "slow"),
    "shipping": ("delivery", "package", "tracking", "shipped", "address"),
}


def triage(ticket: dict[str, Any]) -> dict[str, Any]:
    text = f"{ticket.get('subject', '')} {ticket['body']}".lower()
    scores = {team: sum(word in text for word in words) for team, words in _TEAMS.items()}
    team, hits = max(scores.items(), key=lambda item: item[1])
    return {"team": team if hits else "general", "confidence": min(1.0, 0.4 + 0.2 * hits)}
