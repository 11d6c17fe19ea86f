"""Routes of hosted services: list them, and invoke one through its chain of stages — the
same rate limits, admission, escalation, PII, guards, cache and recording as a model alias."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from shipyard.errors import ServiceError
from shipyard.gateway.http import conversation_of, json_response, read_json, request_priority
from shipyard.gateway.idempotent import idempotent
from shipyard.gateway.runtime import Gateway
from shipyard.gateway.scopes import ScopedRoute
from shipyard.pipeline import Call, Reply, RequestContext
from shipyard.targets.service import ServiceTarget

__all__ = ["service_deadline", "service_result", "service_routes"]

log = logging.getLogger("shipyard.gateway")


class ServiceRoutes:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    async def list_services(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "models:read")
        data = [
            {"id": name, "object": "service", "description": svc.config.description,
             "input_schema": svc.input_schema(),
             "invoke_url": f"/v1/services/{name}/invoke"}
            for name, svc in sorted(self.gw.services.items())
            if principal.may_list_service(name)
        ]
        return json_response({"object": "list", "data": data})

    async def invoke(self, request: Request) -> Response:
        gw = self.gw
        ctx = gw.recorder.begin(request, "invoke")
        try:
            gw.refuse_if_draining()
            principal = await gw.authorize(request, "inference", ctx)
            gw.check_budget(ctx)
            target = gw.service(request.path_params["name"], ctx, principal)
            body, ctx.request_bytes = await read_json(
                request, gw.config.server.max_body_bytes,
                max_depth=gw.config.server.max_json_depth)
            ctx.request_payload = body
            call = Call(ctx, "invoke", body, False, target, deadline=service_deadline(target),
                        priority=request_priority(request), principal=principal,
                        conversation_id=conversation_of(request),
                        validated=(body, target.validate(body)))
            reply = await target.handler(call)
            return self._result(ctx, target, reply)
        except ServiceError as exc:
            log.warning("service %s failed: %s", ctx.service, exc.message)
            return gw.error(ctx, exc)
        except Exception as exc:
            return gw.error(ctx, exc)
        finally:
            gw.recorder.finish(ctx)

    def _result(self, ctx: RequestContext, target: ServiceTarget, reply: Reply) -> Response:
        body, headers = service_result(self.gw, ctx, target, reply)
        return json_response(None, body=body, headers=headers)


def service_result(gw: Gateway, ctx: RequestContext, target: ServiceTarget,
                   reply: Reply) -> tuple[bytes, dict[str, str]]:
    """The answer of a service invocation, and its headers:
    `{"id", "object": "service.result", "service", "output"}` around the output, or the
    complete envelope a stage answered with (a guard's refusal, a person's answer)."""
    headers = {**gw.headers(ctx), **{k: v for k, v in reply.headers.items()
                                     if k.startswith(("x-shipyard-", "x-ratelimit-"))}}
    if reply.body:
        body = reply.body
        ctx.response_payload = reply.data
        if reply.data is not None and reply.data.get("blocked"):
            ctx.finish_reason = "content_filter"
    else:
        result: dict[str, Any] = {"id": ctx.trace_id, "object": "service.result",
                                  "service": target.name, "output": reply.data}
        try:
            body = orjson.dumps(result)
        except TypeError as exc:
            raise ServiceError(
                f"Service '{target.name}' returned a value that is not JSON serialisable "
                f"({exc}); return dicts, lists, strings, numbers or a pydantic model."
            ) from None
        ctx.response_payload = reply.traced if reply.traced is not None else reply.data
        if reply.citations:
            attributes = ctx.attributes if ctx.attributes is not None else {}
            attributes["citations"] = reply.citations[:20]
            ctx.attributes = attributes
    ctx.response_bytes = len(body)
    ctx.status = 200
    headers["x-shipyard-overhead-ms"] = f"{ctx.overhead_ms():.3f}"
    return body, headers


def service_deadline(target: ServiceTarget) -> float:
    seconds = target.config.timeout_s
    return time.monotonic() + seconds if math.isfinite(seconds) else math.inf


def service_routes(gateway: Gateway) -> list[ScopedRoute]:
    routes = ServiceRoutes(gateway)
    return [
        ScopedRoute("/v1/services", routes.list_services, methods=["GET"], scope="models:read"),
        ScopedRoute("/v1/services/{name}/invoke", idempotent(gateway, routes.invoke),
                    methods=["POST"], scope="inference"),
    ]
