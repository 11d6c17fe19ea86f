"""The admin API: tenants, API keys and traces — every query scoped to the caller's tenant.

Admins of the platform tenant (`default`) may act on other tenants with `?tenant=ID`; everyone
else only ever sees and changes their own tenant's data: an id from another tenant is
answered exactly like an id that does not exist (404), so ids cannot be probed.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from shipyard.errors import InvalidRequest, NotFound, PermissionDenied
from shipyard.gateway.auth import Principal
from shipyard.gateway.http import json_response, read_json
from shipyard.gateway.runtime import Gateway
from shipyard.gateway.scopes import ScopedRoute
from shipyard.monitor import history as alert_history
from shipyard.monitor.slo import error_budget
from shipyard.store import tenants as store
from shipyard.store.traces import TraceFilter, get_trace, get_trace_tree, iter_traces

__all__ = ["acting_tenant", "admin_routes", "store_param"]


def acting_tenant(principal: Principal, request: Request) -> str:
    """The tenant a request acts on: the caller's own, or `?tenant=` for platform admins.

    Every route that reads the store by tenant passes here, so this also refuses a NUL
    character in its path parameters: PostgreSQL text cannot hold one.
    """
    for name, value in request.path_params.items():
        _no_nul(value, name)
    asked = store_param(request, "tenant")
    if asked is None or asked == principal.tenant_id:
        return principal.tenant_id
    if not principal.platform_admin:
        raise PermissionDenied(
            f"This key belongs to tenant '{principal.tenant_id}' and may not act on tenant "
            f"'{asked}'. Leave out ?tenant= to act on your own tenant.", param="tenant")
    return asked


# Bounds the store can hold: INTEGER columns are 32-bit on PostgreSQL, names VARCHAR(256), and
# a datetime past year 9999 overflows; beyond them a request is a 400, never a 500.
_INT_MAX = 2**31 - 1
_SECONDS_MAX = 100 * 365.25 * 86400
_NAME_MAX = 256


def _no_nul(value: str, name: str) -> None:
    if "\x00" in value:
        raise InvalidRequest(f"Parameter '{name}' contains a NUL character; remove it.",
                             param=name)


def store_param(request: Request, name: str) -> str | None:
    """A query parameter that goes to the store (so it may not hold a NUL character)."""
    value = request.query_params.get(name)
    if value is not None:
        _no_nul(value, name)
    return value


def _actor(principal: Principal) -> str:
    return f"key:{principal.key_id or 'anonymous'}"


def _str_list(body: dict[str, Any], name: str) -> list[str] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidRequest(f"Field '{name}' must be a list of names, e.g. [\"demo\"], or "
                             "null for no restriction.", param=name)
    return value


def _int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _INT_MAX:
        raise InvalidRequest(f"Field '{name}' is {value!r}; it must be a positive integer up "
                             f"to {_INT_MAX}.", param=name)
    return value


def _number(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or (
            abs(value) > _SECONDS_MAX):
        raise InvalidRequest(f"Field '{name}' is {value!r}; it must be a number of seconds, "
                             f"at most {_SECONDS_MAX:.0f} (100 years).", param=name)
    return float(value)


class AdminRoutes:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    async def _body(self, request: Request) -> dict[str, Any]:
        body, _ = await read_json(request, self.gw.config.server.max_body_bytes,
                                  max_depth=self.gw.config.server.max_json_depth)
        return body

    # -- tenants ----------------------------------------------------------------------------
    async def list_tenants(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "tenants:manage")
        rows = await asyncio.to_thread(store.list_tenants, self.gw.engine)
        if not principal.platform_admin:
            rows = [r for r in rows if r["id"] == principal.tenant_id]
        return json_response({"object": "list", "data": rows})

    async def create_tenant(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "tenants:manage")
        if not principal.platform_admin:
            raise PermissionDenied("Only admins of the platform tenant ('default') create "
                                   "tenants.")
        body = await self._body(request)
        tenant_id = body.get("id")
        if not isinstance(tenant_id, str):
            raise InvalidRequest("Field 'id' is required: the new tenant's id, e.g. \"acme\".",
                                 param="id")
        name = body.get("name")
        if isinstance(name, str):
            _no_nul(name, "name")
        if isinstance(name, str) and len(name) > _NAME_MAX:
            raise InvalidRequest(f"Field 'name' has {len(name)} characters; the limit is "
                                 f"{_NAME_MAX}.", param="name")
        row = await asyncio.to_thread(store.create_tenant, self.gw.engine, tenant_id,
                                      name=name if isinstance(name, str) else None)
        self.gw.audit(tenant_id=tenant_id, actor=_actor(principal), action="tenant.create",
                      target=tenant_id)
        return json_response(row, status=201)

    # -- keys -------------------------------------------------------------------------------
    async def list_keys(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "keys:manage")
        tenant = acting_tenant(principal, request)
        records = await asyncio.to_thread(store.list_keys, self.gw.engine, tenant_id=tenant)
        return json_response({"object": "list", "data": [r.public() for r in records]})

    async def create_key(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "keys:manage")
        tenant = acting_tenant(principal, request)
        body = await self._body(request)
        name = body.get("name")
        role = body.get("role", "client")
        if not isinstance(name, str) or not name.strip():
            raise InvalidRequest("Field 'name' is required: what the key is for, e.g. "
                                 "\"support-bot prod\".", param="name")
        _no_nul(name, "name")
        if len(name.strip()) > _NAME_MAX:
            raise InvalidRequest(f"Field 'name' has {len(name.strip())} characters; the limit "
                                 f"is {_NAME_MAX}.", param="name")
        if not isinstance(role, str):
            raise InvalidRequest("Field 'role' must be a role name.", param="role")
        if role == "admin" and principal.role != "admin":
            raise PermissionDenied("Only admins may create admin keys.", param="role")
        record, secret = await asyncio.to_thread(
            store.create_key, self.gw.engine, tenant_id=tenant, name=name.strip(), role=role,
            services=_str_list(body, "services"), models=_str_list(body, "models"),
            expires_in_s=_number(body, "expires_in_s"), created_by=_actor(principal),
            rpm=_int(body, "rpm"), tpm=_int(body, "tpm"),
            max_concurrent=_int(body, "max_concurrent"))
        self.gw.auth.remember(record)
        self.gw.audit(tenant_id=tenant, actor=_actor(principal), action="key.create",
                      target=record.id, details={"role": role, "name": record.name})
        return json_response({**record.public(), "secret": secret,
                              "note": "The secret is shown once; store it now."}, status=201)

    async def revoke_key(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "keys:manage")
        tenant = acting_tenant(principal, request)
        key_id = request.path_params["key_id"]
        try:
            record = await asyncio.to_thread(store.revoke_key, self.gw.engine, key_id,
                                             tenant_id=tenant)
        except NotFound:
            await self._other_tenants_key(principal, request, key_id, "revoke")
            raise
        self.gw.auth.remember(record)  # in force at once, and through a store outage
        self.gw.audit(tenant_id=tenant, actor=_actor(principal), action="key.revoke",
                      target=key_id)
        return json_response(record.public())

    async def rotate_key(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "keys:manage")
        tenant = acting_tenant(principal, request)
        key_id = request.path_params["key_id"]
        body = await self._body(request) if await request.body() else {}
        overlap = _number(body, "overlap_s")
        try:
            new, secret, old = await asyncio.to_thread(
                store.rotate_key, self.gw.engine, key_id, tenant_id=tenant,
                overlap_s=3600.0 if overlap is None else overlap, created_by=_actor(principal))
        except NotFound:
            await self._other_tenants_key(principal, request, key_id, "rotate")
            raise
        self.gw.auth.remember(new)
        self.gw.auth.remember(old)
        self.gw.audit(tenant_id=tenant, actor=_actor(principal), action="key.rotate",
                      target=key_id, details={"new_key": new.id,
                                              "old_expires_at": str(old.expires_at)})
        return json_response({**new.public(), "secret": secret, "replaces": old.public(),
                              "note": "The secret is shown once; store it now."}, status=201)

    async def _other_tenants_key(self, principal: Principal, request: Request, key_id: str,
                                 action: str) -> None:
        """A platform admin who names another tenant's key without `?tenant=` learns which
        tenant to name (they may see every tenant's keys anyway); others learn nothing."""
        if not principal.platform_admin or store_param(request, "tenant") is not None:
            return
        try:
            record = await asyncio.to_thread(store.get_key, self.gw.engine, key_id,
                                             tenant_id=None)
        except NotFound:
            return
        raise NotFound(f"Key '{key_id}' belongs to tenant '{record.tenant_id}'; a platform "
                       f"admin acts on it with ?tenant={record.tenant_id}, e.g. POST "
                       f"/v1/admin/keys/{key_id}/{action}?tenant={record.tenant_id}.",
                       param="tenant")

    # -- audit ----------------------------------------------------------------------------
    async def list_audit(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "audit:read")
        tenant = acting_tenant(principal, request)
        try:
            limit = min(1000, max(1, int(request.query_params.get("limit", "100"))))
        except ValueError:
            raise InvalidRequest("Query parameter 'limit' must be an integer.",
                                 param="limit") from None
        entries = await asyncio.to_thread(
            self.gw.audit_log.list, tenant_id=tenant,
            action=store_param(request, "action"), limit=limit)
        return json_response({"object": "list", "data": [e.to_dict() for e in entries]})

    # -- traces -----------------------------------------------------------------------------
    async def list_traces(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "traces:read")
        tenant = acting_tenant(principal, request)
        params = request.query_params
        try:
            limit = min(1000, max(1, int(params.get("limit", "50"))))
            status = int(params["status"]) if "status" in params else None
            since = datetime.fromisoformat(params["since"]) if "since" in params else None
        except ValueError:
            raise InvalidRequest("Query parameters 'limit' and 'status' must be integers and "
                                 "'since' an ISO time such as 2026-11-27T10:00:00Z.") from None
        if status is not None and not 100 <= status <= 599:
            raise InvalidRequest(f"Query parameter 'status' is {status}; it must be an HTTP "
                                 "status from 100 to 599.", param="status")
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        filters = TraceFilter(tenant_id=tenant, service=store_param(request, "service"),
                              model=store_param(request, "model"), status=status,
                              errors_only=params.get("errors") == "true", since=since,
                              text=store_param(request, "text"))
        rows = await asyncio.to_thread(
            lambda: list(iter_traces(self.gw.engine, filters, limit=limit)))
        readable = self.gw.recorder.readable
        return json_response({"object": "list", "data": [readable(r) for r in rows]})

    async def get_trace(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "traces:read")
        tenant = acting_tenant(principal, request)
        trace_id = request.path_params["trace_id"]
        row = await asyncio.to_thread(get_trace, self.gw.engine, trace_id, tenant_id=tenant)
        if row is None:
            raise NotFound(f"There is no trace '{trace_id}' in this tenant.", param="trace_id")
        return json_response(self.gw.recorder.readable(row))

    async def get_trace_tree(self, request: Request) -> Response:
        """A request with every request of its W3C trace (e.g. a service's calls back to the
        gateway) and all their spans."""
        principal = await self.gw.authorize(request, "traces:read")
        tenant = acting_tenant(principal, request)
        trace_id = request.path_params["trace_id"]
        tree = await asyncio.to_thread(get_trace_tree, self.gw.engine, trace_id,
                                       tenant_id=tenant)
        if tree is None:
            raise NotFound(f"There is no trace '{trace_id}' in this tenant.", param="trace_id")
        tree["records"] = [self.gw.recorder.readable(r) for r in tree["records"]]
        return json_response({"object": "trace.tree", **tree})

    # -- alerts -----------------------------------------------------------------------------
    async def list_alerts(self, request: Request) -> Response:
        """Open alerts and history (newest first), with each alert's events, and the error
        budget of every SLO. Platform admins see every tenant's alerts."""
        principal = await self.gw.authorize(request, "status:read")
        tenant = None if principal.platform_admin and "tenant" not in request.query_params \
            else acting_tenant(principal, request)
        state = store_param(request, "state")
        if state not in (None, "open", "pending", "firing", "resolved"):
            raise InvalidRequest(f"Query parameter 'state' is '{state}'; use open, pending, "
                                 "firing or resolved.", param="state")
        try:
            limit = min(1000, max(1, int(request.query_params.get("limit", "100"))))
        except ValueError:
            raise InvalidRequest("Query parameter 'limit' must be an integer.",
                                 param="limit") from None
        engine, config = self.gw.engine, self.gw.config

        def read() -> dict[str, Any]:
            rows = alert_history.list_alerts(engine, state=state, tenant_id=tenant, limit=limit)
            events = alert_history.alert_events_of(engine, [r["id"] for r in rows])
            now = datetime.now(UTC)
            slos = []
            for slo in config.slos:
                if tenant is not None and (slo.tenant or "default") != tenant:
                    continue
                budget = error_budget(engine, slo, now, time_scale=config.alerts.time_scale)
                slos.append({"name": slo.name, "sli": slo.sli, "objective": slo.objective,
                             "period_s": slo.period * config.alerts.time_scale,
                             "requests": budget.total, "bad": budget.bad,
                             "sli_value": budget.sli, "budget_remaining": budget.remaining})
            return {"object": "list",
                    "data": [{**r, "events": events[r["id"]]} for r in rows],
                    "slos": slos}

        return json_response(await asyncio.to_thread(read))


def admin_routes(gateway: Gateway) -> list[ScopedRoute]:
    routes = AdminRoutes(gateway)
    return [
        ScopedRoute("/v1/admin/tenants", routes.list_tenants, methods=["GET"],
                    scope="tenants:manage"),
        ScopedRoute("/v1/admin/tenants", routes.create_tenant, methods=["POST"],
                    scope="tenants:manage"),
        ScopedRoute("/v1/admin/keys", routes.list_keys, methods=["GET"], scope="keys:manage"),
        ScopedRoute("/v1/admin/keys", routes.create_key, methods=["POST"], scope="keys:manage"),
        ScopedRoute("/v1/admin/keys/{key_id}/revoke", routes.revoke_key, methods=["POST"],
                    scope="keys:manage"),
        ScopedRoute("/v1/admin/keys/{key_id}/rotate", routes.rotate_key, methods=["POST"],
                    scope="keys:manage"),
        ScopedRoute("/v1/admin/audit", routes.list_audit, methods=["GET"], scope="audit:read"),
        ScopedRoute("/v1/admin/alerts", routes.list_alerts, methods=["GET"],
                    scope="status:read"),
        ScopedRoute("/v1/traces", routes.list_traces, methods=["GET"], scope="traces:read"),
        ScopedRoute("/v1/traces/{trace_id}/tree", routes.get_trace_tree, methods=["GET"],
                    scope="traces:read"),
        ScopedRoute("/v1/traces/{trace_id}", routes.get_trace, methods=["GET"],
                    scope="traces:read"),
    ]
