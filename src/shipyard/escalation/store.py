"""Escalation tickets and reviewer feedback: tables and the queries that read and change them.

A ticket moves `open → claimed → answered → resolved` (answering an open ticket claims it;
any unresolved ticket may be resolved). Every state change is one conditional UPDATE, so two
reviewers (or two replicas) can never both win; the loser gets a 409 that names the state.
Every query is scoped by tenant; a ticket of another tenant is answered like a missing one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
    and_,
    false,
    func,
    or_,
    select,
    update,
)

from shipyard.errors import Conflict, InvalidRequest, NotFound
from shipyard.store.tables import metadata

__all__ = [
    "STATUSES",
    "TRIGGERS",
    "Ticket",
    "answer_ticket",
    "claim_ticket",
    "create_ticket",
    "escalation_feedback",
    "escalations",
    "get_ticket",
    "iter_feedback",
    "list_tickets",
    "mark_delivered",
    "mark_overdue_notified",
    "new_ticket_id",
    "overdue_unnotified",
    "pending_answers",
    "resolve_ticket",
    "take_answer",
    "waiting_ticket",
]

STATUSES = ("open", "claimed", "answered", "resolved")
TRIGGERS = ("user_request", "low_confidence", "repeated_failures", "guard")
_WAITING = ("open", "claimed")  # a reviewer still owes an answer: these can be overdue

escalations = Table(
    "escalations",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("key_id", String(64), nullable=True),
    Column("conversation_id", String(128), nullable=True),
    Column("request_id", String(128), nullable=False),
    Column("trace_id", String(32), nullable=True),
    Column("kind", String(16), nullable=False),  # model | service
    Column("service", String(128), nullable=False),  # the model alias or service name
    Column("trigger", String(32), nullable=False),
    Column("reason", Text, nullable=False),
    Column("score", Float, nullable=True),
    Column("status", String(16), nullable=False),
    Column("conversation", Text, nullable=False),  # JSON list of messages, cleaned per policy
    Column("pii_cleaned", Boolean, nullable=False, server_default=false()),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("due_at", DateTime(timezone=True), nullable=False),
    Column("claimed_by", String(128), nullable=True),
    Column("claimed_at", DateTime(timezone=True), nullable=True),
    Column("answer", Text, nullable=True),
    Column("answered_by", String(128), nullable=True),
    Column("answered_at", DateTime(timezone=True), nullable=True),
    Column("resolved_by", String(128), nullable=True),
    Column("resolved_at", DateTime(timezone=True), nullable=True),
    Column("resolution", Text, nullable=True),
    Column("delivered_at", DateTime(timezone=True), nullable=True),
    Column("overdue_notified_at", DateTime(timezone=True), nullable=True),
    Index(None, "tenant_id", "status", "created_at"),
    Index(None, "tenant_id", "conversation_id"),
    Index(None, "status", "due_at"),
)

escalation_feedback = Table(
    "escalation_feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant_id", String(64), nullable=False),
    Column("escalation_id", String(32), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("service", String(128), nullable=False),
    Column("trigger", String(32), nullable=False),
    Column("conversation", Text, nullable=False),
    Column("answer", Text, nullable=False),
    Column("label", String(64), nullable=False),
    Column("reviewer", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index(None, "tenant_id", "created_at"),
)


def _utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


@dataclass(frozen=True)
class Ticket:
    """One escalation: who, what, why, and where the review stands."""

    id: str
    tenant_id: str
    key_id: str | None
    conversation_id: str | None
    request_id: str
    trace_id: str | None
    kind: str
    service: str
    trigger: str
    reason: str
    score: float | None
    status: str
    conversation: list[Any]
    pii_cleaned: bool
    created_at: datetime
    due_at: datetime
    claimed_by: str | None = None
    claimed_at: datetime | None = None
    answer: str | None = None
    answered_by: str | None = None
    answered_at: datetime | None = None
    resolved_by: str | None = None
    resolved_at: datetime | None = None
    resolution: str | None = None
    delivered_at: datetime | None = None
    overdue_notified_at: datetime | None = None

    def overdue(self, now: datetime | None = None) -> bool:
        """Still waiting for a reviewer's answer past its SLA (`due_at`)."""
        return self.status in _WAITING and (now or datetime.now(UTC)) >= self.due_at

    def public(self, *, conversation: bool = True) -> dict[str, Any]:
        """The ticket for the review queue (with its cleaned conversation)."""
        now = datetime.now(UTC)
        out: dict[str, Any] = {
            "id": self.id, "object": "escalation", "tenant_id": self.tenant_id,
            "key_id": self.key_id, "conversation_id": self.conversation_id,
            "request_id": self.request_id, "trace_id": self.trace_id, "kind": self.kind,
            "service": self.service, "trigger": self.trigger, "reason": self.reason,
            "score": self.score, "status": self.status, "overdue": self.overdue(now),
            "pii_cleaned": self.pii_cleaned, "created_at": self.created_at,
            "due_at": self.due_at,
            # SLA timer: seconds left to answer (negative when overdue); None once answered
            "due_in_s": (round((self.due_at - now).total_seconds(), 1)
                         if self.status in _WAITING else None),
            "claimed_by": self.claimed_by, "claimed_at": self.claimed_at,
            "answer": self.answer, "answered_by": self.answered_by,
            "answered_at": self.answered_at, "resolved_by": self.resolved_by,
            "resolved_at": self.resolved_at, "resolution": self.resolution,
            "delivered_at": self.delivered_at,
            "overdue_notified_at": self.overdue_notified_at,
        }
        if conversation:
            out["conversation"] = self.conversation
        return out

    def for_client(self) -> dict[str, Any]:
        """What the caller that was escalated may see: status and the reviewer's answer."""
        answered = self.status in ("answered", "resolved") and self.answer is not None
        return {"id": self.id, "object": "escalation", "status": self.status,
                "conversation_id": self.conversation_id, "created_at": self.created_at,
                "answer": self.answer if answered else None,
                "answered_at": self.answered_at if answered else None}


def _ticket(row: Any) -> Ticket:
    m = dict(row._mapping)
    return _ticket_from(m, orjson.loads(m["conversation"]))


def _ticket_from(m: dict[str, Any], conversation: list[Any]) -> Ticket:
    values: dict[str, Any] = dict(m)
    for name in ("created_at", "due_at", "claimed_at", "answered_at", "resolved_at",
                 "delivered_at", "overdue_notified_at"):
        values[name] = _utc(values.get(name))
    values["conversation"] = conversation
    return Ticket(**values)


def new_ticket_id() -> str:
    return "esc_" + os.urandom(12).hex()


def create_ticket(engine: Engine, *, tenant_id: str, key_id: str | None,
                  conversation_id: str | None, request_id: str, trace_id: str | None,
                  kind: str, service: str, trigger: str, reason: str, score: float | None,
                  conversation: list[Any], pii_cleaned: bool, sla_s: float,
                  ticket_id: str | None = None) -> Ticket:
    """Insert an open ticket due `sla_s` seconds from now."""
    if trigger not in TRIGGERS:
        raise InvalidRequest(f"Escalation trigger '{trigger}' is not known; use one of "
                             f"{', '.join(TRIGGERS)}.", param="trigger")
    now = datetime.now(UTC)
    row = {"id": ticket_id or new_ticket_id(), "tenant_id": tenant_id, "key_id": key_id,
           "conversation_id": conversation_id, "request_id": request_id,
           "trace_id": trace_id, "kind": kind, "service": service, "trigger": trigger,
           "reason": reason, "score": score, "status": "open",
           "conversation": orjson.dumps(conversation).decode(), "pii_cleaned": pii_cleaned,
           "created_at": now, "due_at": now + timedelta(seconds=sla_s)}
    with engine.begin() as connection:
        connection.execute(escalations.insert(), row)
    return _ticket_from(row, conversation)


def get_ticket(engine: Engine, ticket_id: str, *, tenant_id: str | None,
               key_id: str | None = None) -> Ticket:
    """One ticket of `tenant_id` (any tenant when None; only `key_id`'s when given)."""
    query = select(escalations).where(escalations.c.id == ticket_id)
    if tenant_id is not None:
        query = query.where(escalations.c.tenant_id == tenant_id)
    if key_id is not None:
        query = query.where(escalations.c.key_id == key_id)
    with engine.connect() as connection:
        row = connection.execute(query).first()
    if row is None:
        raise NotFound(f"There is no escalation '{ticket_id}' in this tenant; list them with "
                       "GET /v1/admin/escalations or 'shipyard escalations list'.",
                       param="escalation_id")
    return _ticket(row)


def list_tickets(engine: Engine, *, tenant_id: str | None, status: str | None = None,
                 service: str | None = None, overdue: bool | None = None,
                 key_id: str | None = None, limit: int = 100) -> list[Ticket]:
    """Tickets newest first, filtered; `overdue=True` keeps only waiting tickets past due."""
    if status is not None and status not in STATUSES:
        raise InvalidRequest(f"Parameter 'status' is '{status}'; use one of "
                             f"{', '.join(STATUSES)}.", param="status")
    query = select(escalations).order_by(escalations.c.created_at.desc()).limit(limit)
    c = escalations.c
    if tenant_id is not None:
        query = query.where(c.tenant_id == tenant_id)
    if status is not None:
        query = query.where(c.status == status)
    if service is not None:
        query = query.where(c.service == service)
    if key_id is not None:
        query = query.where(c.key_id == key_id)
    now = datetime.now(UTC)
    if overdue is True:
        query = query.where(c.status.in_(_WAITING), c.due_at <= now)
    elif overdue is False:
        query = query.where(or_(c.status.not_in(_WAITING), c.due_at > now))
    with engine.connect() as connection:
        return [_ticket(r) for r in connection.execute(query)]


def _transition(engine: Engine, ticket_id: str, tenant_id: str | None, allowed: Any,
                values: dict[str, Any], action: str, extra: Any = None) -> Ticket:
    c = escalations.c
    where = [c.id == ticket_id, allowed]
    if tenant_id is not None:
        where.append(c.tenant_id == tenant_id)
    with engine.begin() as connection:
        done = connection.execute(update(escalations).where(and_(*where)).values(**values))
        if done.rowcount == 1 and extra is not None:
            extra(connection)
    ticket = get_ticket(engine, ticket_id, tenant_id=tenant_id)
    if done.rowcount != 1:
        owner = f" by '{ticket.claimed_by}'" if ticket.status == "claimed" else ""
        hint = {
            "resolved": "it is closed; open a new ticket if the user needs more help",
            "answered": "its answer is already given; resolve it",
            "claimed": "another reviewer owns it; pass force=true (--force) to take it over",
        }.get(ticket.status, "reload it and try again")
        raise Conflict(f"Escalation '{ticket_id}' cannot be {action}: its status is "
                       f"'{ticket.status}'{owner}; {hint}.", param="status",
                       code="escalation_" + ticket.status)
    return ticket


def claim_ticket(engine: Engine, ticket_id: str, *, tenant_id: str | None, reviewer: str,
                 force: bool = False) -> Ticket:
    """Claim an open ticket for `reviewer` (again by the same reviewer is a no-op; `force`
    takes over a ticket another reviewer claimed)."""
    c = escalations.c
    allowed = or_(c.status == "open",
                  and_(c.status == "claimed", c.claimed_by == reviewer) if not force
                  else c.status == "claimed")
    return _transition(engine, ticket_id, tenant_id, allowed,
                       {"status": "claimed", "claimed_by": reviewer,
                        "claimed_at": datetime.now(UTC)}, "claimed")


def answer_ticket(engine: Engine, ticket_id: str, *, tenant_id: str | None, reviewer: str,
                  answer: str, label: str = "reviewer_answer") -> Ticket:
    """Record the reviewer's answer and save it as labelled feedback, in one transaction."""
    c = escalations.c
    now = datetime.now(UTC)
    allowed = or_(c.status == "open", and_(c.status == "claimed", c.claimed_by == reviewer))
    values = {"status": "answered", "answer": answer, "answered_by": reviewer,
              "answered_at": now, "claimed_by": reviewer,
              "claimed_at": func.coalesce(c.claimed_at, now)}

    def feedback(connection: Any) -> None:
        row = connection.execute(select(escalations).where(c.id == ticket_id)).first()
        ticket = _ticket(row)
        connection.execute(escalation_feedback.insert(), {
            "tenant_id": ticket.tenant_id, "escalation_id": ticket.id, "kind": ticket.kind,
            "service": ticket.service, "trigger": ticket.trigger,
            "conversation": orjson.dumps(ticket.conversation).decode(), "answer": answer,
            "label": label, "reviewer": reviewer, "created_at": now})

    return _transition(engine, ticket_id, tenant_id, allowed, values, "answered", feedback)


def resolve_ticket(engine: Engine, ticket_id: str, *, tenant_id: str | None, reviewer: str,
                   resolution: str | None = None) -> Ticket:
    """Close a ticket (from any state but resolved)."""
    return _transition(engine, ticket_id, tenant_id, escalations.c.status != "resolved",
                       {"status": "resolved", "resolved_by": reviewer,
                        "resolved_at": datetime.now(UTC), "resolution": resolution},
                       "resolved")


def take_answer(engine: Engine, *, tenant_id: str, conversation_id: str) -> Ticket | None:
    """The oldest reviewer answer in a conversation not yet delivered, now marked delivered
    (atomically: one request gets it)."""
    c = escalations.c
    query = (select(escalations)
             .where(c.tenant_id == tenant_id, c.conversation_id == conversation_id,
                    c.answer.is_not(None), c.delivered_at.is_(None))
             .order_by(c.answered_at).limit(1))
    with engine.begin() as connection:
        row = connection.execute(query).first()
        if row is None:
            return None
        done = connection.execute(update(escalations)
                                  .where(c.id == row.id, c.delivered_at.is_(None))
                                  .values(delivered_at=datetime.now(UTC)))
    return _ticket(row) if done.rowcount == 1 else None


def waiting_ticket(engine: Engine, *, tenant_id: str, conversation_id: str) -> Ticket | None:
    """The conversation's ticket still waiting for a reviewer (open or claimed), if any."""
    c = escalations.c
    query = (select(escalations)
             .where(c.tenant_id == tenant_id, c.conversation_id == conversation_id,
                    c.status.in_(_WAITING))
             .order_by(c.created_at.desc()).limit(1))
    with engine.connect() as connection:
        row = connection.execute(query).first()
    return None if row is None else _ticket(row)


def pending_answers(engine: Engine, *, max_age_s: float = 7 * 86400) -> set[tuple[str, str]]:
    """(tenant, conversation) pairs with a reviewer's answer not yet delivered (answered in the
    last `max_age_s`): the gateway checks requests against this set instead of the store."""
    c = escalations.c
    query = (select(c.tenant_id, c.conversation_id)
             .where(c.status.in_(("answered", "resolved")), c.conversation_id.is_not(None),
                    c.answer.is_not(None), c.delivered_at.is_(None),
                    c.answered_at >= datetime.now(UTC) - timedelta(seconds=max_age_s)))
    with engine.connect() as connection:
        return {(row[0], row[1]) for row in connection.execute(query)}


def mark_delivered(engine: Engine, ticket_id: str) -> bool:
    """Note that the caller has the answer (it polled it); True when this call marked it."""
    c = escalations.c
    with engine.begin() as connection:
        done = connection.execute(update(escalations)
                                  .where(c.id == ticket_id, c.answer.is_not(None),
                                         c.delivered_at.is_(None))
                                  .values(delivered_at=datetime.now(UTC)))
    return bool(done.rowcount == 1)


def overdue_unnotified(engine: Engine, *, limit: int = 500) -> list[Ticket]:
    """Waiting tickets past due whose overdue alert has not been sent."""
    c = escalations.c
    query = (select(escalations)
             .where(c.status.in_(_WAITING), c.due_at <= datetime.now(UTC),
                    c.overdue_notified_at.is_(None))
             .order_by(c.due_at).limit(limit))
    with engine.connect() as connection:
        return [_ticket(r) for r in connection.execute(query)]


def mark_overdue_notified(engine: Engine, ticket_id: str) -> bool:
    """Claim the right to send a ticket's overdue alert; True for exactly one caller."""
    c = escalations.c
    with engine.begin() as connection:
        done = connection.execute(update(escalations)
                                  .where(c.id == ticket_id, c.overdue_notified_at.is_(None))
                                  .values(overdue_notified_at=datetime.now(UTC)))
    return bool(done.rowcount == 1)


def iter_feedback(engine: Engine, *, tenant_id: str | None = None,
                  since: datetime | None = None) -> Iterator[dict[str, Any]]:
    """Reviewer answers saved as labelled feedback, oldest first (for evals and retraining)."""
    f = escalation_feedback.c
    query = select(escalation_feedback).order_by(f.id)
    if tenant_id is not None:
        query = query.where(f.tenant_id == tenant_id)
    if since is not None:
        query = query.where(f.created_at >= since)
    with engine.connect() as connection:
        for row in connection.execute(query):
            m = {str(k): v for k, v in row._mapping.items()}  # orjson wants plain str keys
            m["created_at"] = _utc(m["created_at"])
            m["conversation"] = orjson.loads(m["conversation"])
            yield m
