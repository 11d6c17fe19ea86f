"""The webhook delivery log and redelivery (admin API).

Scopes `webhooks:read` (list deliveries and endpoints, read one with its attempts) and
`webhooks:manage` (redeliver): admin and operator roles. Every query is scoped to the
caller's tenant (platform admins may pass `?tenant=`); another tenant's delivery is a 404.
Endpoints are listed by name, host and event types: never their URL path or secret.

```
curl $URL/v1/admin/webhooks/deliveries?status=dead -H "Authorization: Bearer $KEY"
curl -X POST $URL/v1/admin/webhooks/deliveries/msg_…/redeliver -H "Authorization: Bearer $KEY"
```
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from shipyard.errors import InvalidRequest
from shipyard.gateway.admin_routes import acting_tenant, store_param
from shipyard.gateway.auth import Principal
from shipyard.gateway.http import json_response
from shipyard.gateway.runtime import Gateway
from shipyard.gateway.scopes import ScopedRoute
from shipyard.work import STATUSES

__all__ = ["webhook_routes"]


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", "100")
    try:
        return min(1000, max(1, int(raw)))
    except ValueError:
        raise InvalidRequest(f"Query parameter 'limit' is {raw!r}; it must be an integer from "
                             "1 to 1000.", param="limit") from None


def _actor(principal: Principal) -> str:
    if principal.subject:
        return f"user:{principal.subject}"[:128]
    return f"key:{principal.key_id or 'anonymous'}"


class WebhookRoutes:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    async def deliveries(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "webhooks:read")
        tenant = acting_tenant(principal, request)
        status = store_param(request, "status")
        if status is not None and status not in STATUSES:
            raise InvalidRequest(f"Query parameter 'status' is {status!r}; use one of "
                                 f"{', '.join(STATUSES)}.", param="status")
        rows = await asyncio.to_thread(
            self.gw.webhooks.deliveries, tenant_id=tenant, status=status,
            endpoint=store_param(request, "endpoint"), limit=_limit(request))
        return json_response({"object": "list", "data": [d.public() for d in rows]})

    async def delivery(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "webhooks:read")
        tenant = acting_tenant(principal, request)
        delivery, attempts = await asyncio.to_thread(
            self.gw.webhooks.delivery, request.path_params["delivery_id"], tenant_id=tenant)
        return json_response({**delivery.public(),
                              "attempt_log": [a.public() for a in attempts]})

    async def redeliver(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "webhooks:manage")
        tenant = acting_tenant(principal, request)
        delivery_id = request.path_params["delivery_id"]
        await asyncio.to_thread(self.gw.webhooks.redeliver, delivery_id, tenant_id=tenant)
        delivery, _ = await asyncio.to_thread(self.gw.webhooks.delivery, delivery_id,
                                              tenant_id=tenant)
        self.gw.audit(tenant_id=tenant, actor=_actor(principal), action="webhook.redeliver",
                      target=delivery_id, details={"endpoint": delivery.endpoint})
        body = delivery.public()
        body.pop("body", None)
        return json_response(body, status=202)

    async def endpoints(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "webhooks:read")
        tenant = acting_tenant(principal, request)
        data = [{"name": ep.name, "object": "webhook.endpoint", "host": ep.where(),
                 "events": list(ep.events), "signed": ep.secret is not None,
                 "max_attempts": ep.max_attempts, "timeout_s": ep.timeout_s}
                for ep in sorted(self.gw.webhooks.endpoints.values(), key=lambda e: e.name)
                if ep.tenant is None or ep.tenant == tenant]
        return json_response({"object": "list", "data": data})


def webhook_routes(gateway: Gateway) -> list[ScopedRoute]:
    routes = WebhookRoutes(gateway)
    base = "/v1/admin/webhooks"
    return [
        ScopedRoute(base + "/deliveries", routes.deliveries, methods=["GET"],
                    scope="webhooks:read"),
        ScopedRoute(base + "/deliveries/{delivery_id}", routes.delivery, methods=["GET"],
                    scope="webhooks:read"),
        ScopedRoute(base + "/deliveries/{delivery_id}/redeliver", routes.redeliver,
                    methods=["POST"], scope="webhooks:manage"),
        ScopedRoute(base + "/endpoints", routes.endpoints, methods=["GET"],
                    scope="webhooks:read"),
    ]
