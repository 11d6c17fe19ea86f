"""The escalation review queue (admin API) and the caller's own view of its tickets.

Reviewers (scopes `escalations:read` / `escalations:manage`: admin and operator roles) list,
read, claim, answer and resolve the tickets of their tenant; platform admins may pass
`?tenant=`. A client polls its own tickets with its inference key: `GET /v1/escalations/ID`
answers only tickets opened by that same key or OIDC subject (another caller's ticket is a
404; with authentication disabled there is one caller).
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from shipyard.errors import InvalidRequest, ValidationFailed
from shipyard.escalation import STATUSES, Ticket, caller_of
from shipyard.escalation import store as tickets
from shipyard.gateway.admin_routes import acting_tenant, store_param
from shipyard.gateway.auth import Principal
from shipyard.gateway.http import json_response, read_json
from shipyard.gateway.runtime import Gateway
from shipyard.gateway.scopes import ScopedRoute

__all__ = ["escalation_routes", "reviewer_of"]

_ANSWER_MAX = 20_000
_LABEL_MAX = 64


def reviewer_of(principal: Principal) -> str:
    """Who acts: the OIDC subject when there is one, else the key id."""
    if principal.subject:
        return f"user:{principal.subject}"[:128]
    return f"key:{principal.key_id or 'anonymous'}"


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", "100")
    try:
        return min(1000, max(1, int(raw)))
    except ValueError:
        raise InvalidRequest(f"Query parameter 'limit' is {raw!r}; it must be an integer from "
                             "1 to 1000.", param="limit") from None


def _overdue(request: Request) -> bool | None:
    raw = request.query_params.get("overdue")
    if raw is None:
        return None
    if raw not in ("true", "false"):
        raise InvalidRequest(f"Query parameter 'overdue' is {raw!r}; use true or false.",
                             param="overdue")
    return raw == "true"


def _text(body: dict[str, Any], name: str, limit: int, *, required: bool,
          example: str) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValidationFailed(f"Field '{name}' is {value!r}; it must be a non-empty string, "
                               f"e.g. {{\"{name}\": \"{example}\"}}.", param=name)
    if "\x00" in value:
        raise ValidationFailed(f"Field '{name}' contains a NUL character; remove it.",
                               param=name)
    if len(value) > limit:
        raise ValidationFailed(f"Field '{name}' has {len(value)} characters; the limit is "
                               f"{limit}.", param=name)
    return value.strip()


class EscalationRoutes:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    async def _body(self, request: Request) -> dict[str, Any]:
        if not await request.body():
            return {}
        body, _ = await read_json(request, self.gw.config.server.max_body_bytes,
                                  max_depth=self.gw.config.server.max_json_depth)
        return body

    def _audit(self, principal: Principal, tenant: str, action: str, ticket: Ticket,
               **details: Any) -> None:
        self.gw.audit(tenant_id=tenant, actor=reviewer_of(principal),
                      action=f"escalation.{action}", target=ticket.id,
                      details={"service": ticket.service, **details})

    # -- the review queue -----------------------------------------------------------------
    async def list_queue(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "escalations:read")
        tenant = acting_tenant(principal, request)
        status = store_param(request, "status")
        if status is not None and status not in STATUSES:
            raise InvalidRequest(f"Query parameter 'status' is {status!r}; use one of "
                                 f"{', '.join(STATUSES)}.", param="status")
        rows = await asyncio.to_thread(
            tickets.list_tickets, self.gw.engine, tenant_id=tenant, status=status,
            service=store_param(request, "service"), overdue=_overdue(request),
            limit=_limit(request))
        return json_response({"object": "list",
                              "data": [t.public(conversation=False) for t in rows]})

    async def get(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "escalations:read")
        tenant = acting_tenant(principal, request)
        ticket = await asyncio.to_thread(tickets.get_ticket, self.gw.engine,
                                         request.path_params["escalation_id"],
                                         tenant_id=tenant)
        return json_response(ticket.public())

    async def claim(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "escalations:manage")
        tenant = acting_tenant(principal, request)
        body = await self._body(request)
        force = body.get("force", False)
        if not isinstance(force, bool):
            raise ValidationFailed(f"Field 'force' is {force!r}; it must be true or false.",
                                   param="force")
        ticket = await asyncio.to_thread(
            tickets.claim_ticket, self.gw.engine, request.path_params["escalation_id"],
            tenant_id=tenant, reviewer=reviewer_of(principal), force=force)
        self._audit(principal, tenant, "claim", ticket, force=force)
        return json_response(ticket.public())

    async def answer(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "escalations:manage")
        tenant = acting_tenant(principal, request)
        body = await self._body(request)
        text = _text(body, "answer", _ANSWER_MAX, required=True,
                     example="Your refund was sent today.")
        label = _text(body, "label", _LABEL_MAX, required=False,
                      example="model_was_wrong") or "reviewer_answer"
        ticket = await asyncio.to_thread(
            tickets.answer_ticket, self.gw.engine, request.path_params["escalation_id"],
            tenant_id=tenant, reviewer=reviewer_of(principal), answer=text or "", label=label)
        self.gw.escalations.note_answer(ticket)
        self._audit(principal, tenant, "answer", ticket, label=label)
        return json_response(ticket.public())

    async def resolve(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "escalations:manage")
        tenant = acting_tenant(principal, request)
        body = await self._body(request)
        note = _text(body, "resolution", _ANSWER_MAX, required=False, example="refunded")
        ticket = await asyncio.to_thread(
            tickets.resolve_ticket, self.gw.engine, request.path_params["escalation_id"],
            tenant_id=tenant, reviewer=reviewer_of(principal), resolution=note)
        self._audit(principal, tenant, "resolve", ticket)
        return json_response(ticket.public())

    # -- the caller's own tickets ---------------------------------------------------------
    async def mine(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "inference")
        rows = await asyncio.to_thread(
            tickets.list_tickets, self.gw.engine, tenant_id=principal.tenant_id,
            key_id=caller_of(principal), limit=_limit(request))
        return json_response({"object": "list", "data": [t.for_client() for t in rows]})

    async def poll(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "inference")
        ticket_id = request.path_params["escalation_id"]
        if "\x00" in ticket_id:
            raise InvalidRequest("Parameter 'escalation_id' contains a NUL character.",
                                 param="escalation_id")
        ticket = await asyncio.to_thread(tickets.get_ticket, self.gw.engine, ticket_id,
                                         tenant_id=principal.tenant_id,
                                         key_id=caller_of(principal))
        await self.gw.escalations.mark_delivered(ticket)  # the caller has it now
        return json_response(ticket.for_client())


def escalation_routes(gateway: Gateway) -> list[ScopedRoute]:
    routes = EscalationRoutes(gateway)
    base = "/v1/admin/escalations"
    return [
        ScopedRoute(base, routes.list_queue, methods=["GET"], scope="escalations:read"),
        ScopedRoute(base + "/{escalation_id}", routes.get, methods=["GET"],
                    scope="escalations:read"),
        ScopedRoute(base + "/{escalation_id}/claim", routes.claim, methods=["POST"],
                    scope="escalations:manage"),
        ScopedRoute(base + "/{escalation_id}/answer", routes.answer, methods=["POST"],
                    scope="escalations:manage"),
        ScopedRoute(base + "/{escalation_id}/resolve", routes.resolve, methods=["POST"],
                    scope="escalations:manage"),
        ScopedRoute("/v1/escalations", routes.mine, methods=["GET"], scope="inference"),
        ScopedRoute("/v1/escalations/{escalation_id}", routes.poll, methods=["GET"],
                    scope="inference"),
    ]
