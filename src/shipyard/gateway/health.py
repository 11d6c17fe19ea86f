"""Health probes (unauthenticated by design) and Prometheus metrics."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from shipyard.gateway.http import json_response
from shipyard.gateway.runtime import Gateway
from shipyard.gateway.scopes import ScopedRoute
from shipyard.observe.metrics import CONTENT_TYPE_LATEST

__all__ = ["health_routes"]


def health_routes(gateway: Gateway) -> list[ScopedRoute]:
    async def livez(request: Request) -> Response:
        return json_response({"status": "ok"})

    async def readyz(request: Request) -> Response:
        state = await gateway.state_status()
        checks = {
            "config": True,
            "started": gateway.started,
            "draining": gateway.draining,
            "store": await gateway.store_reachable(),
            "state": state["reachable"],
        }
        ready = checks["started"] and checks["store"] and not checks["draining"]
        status = "ready"
        if not state["reachable"]:
            # Redis is down: each feature follows its outage policy (fail open locally, or
            # 503 with Retry-After); readiness says so, and fails unless told not to.
            if gateway.config.state.required_for_ready:
                ready = False
            else:
                status = "degraded"
        body = {"status": status, "checks": checks, "state": state}
        if gateway.ray is not None:
            # Services on Ray: a cluster that cannot be read or a version that cannot be
            # deployed degrades this gateway (its other targets still serve).
            problems = gateway.ray.problems()
            checks["ray"] = not problems
            if problems:
                body["ray"] = problems
                status = "degraded"
        body["status"] = status if ready else "not ready"
        return json_response(body, status=200 if ready else 503)

    async def metrics(request: Request) -> Response:
        if not gateway.config.server.metrics_public:
            await gateway.authorize(request, "metrics:read")
        return Response(gateway.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def status(request: Request) -> Response:
        await gateway.authorize(request, "status:read")
        return json_response(gateway.status())

    return [
        ScopedRoute("/v1/admin/status", status, methods=["GET"], scope="status:read"),
        ScopedRoute("/livez", livez, methods=["GET"], scope=None),
        ScopedRoute("/readyz", readyz, methods=["GET"], scope=None),
        ScopedRoute("/metrics", metrics, methods=["GET"], scope="metrics:read"),
    ]
