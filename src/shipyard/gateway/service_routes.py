"""Routes of hosted services: list them, and invoke one."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from shipyard.errors import CapacityError, NotFound, ServiceError, ShipyardError, UpstreamTimeout
from shipyard.gateway.auth import Principal
from shipyard.gateway.escalate import ServiceEscalation, conversation_of
from shipyard.gateway.http import error_response, json_response, read_json, request_priority
from shipyard.gateway.pii import PIISession
from shipyard.gateway.runtime import Gateway
from shipyard.gateway.scopes import ScopedRoute
from shipyard.guards.runner import Outcome
from shipyard.guards.service import ServiceGuards, strings_of
from shipyard.observe.tracing import span
from shipyard.pipeline import RequestContext
from shipyard.resilience.admission import Admission
from shipyard.targets.service import HostedService

__all__ = ["service_routes"]

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
            if principal.services is None or name in principal.services
        ]
        return json_response({"object": "list", "data": data})

    async def invoke(self, request: Request) -> Response:
        gw = self.gw
        ctx = gw.begin(request, "invoke")
        pii: PIISession | None = None
        escalation: ServiceEscalation | None = None
        try:
            principal = await gw.authorize(request, "inference", ctx)
            gw.check_budget(ctx)
            name = request.path_params["name"]
            service = gw.services.get(name)
            if service is None:
                known = ", ".join(sorted(gw.services)) or "none are configured"
                raise NotFound(f"The service '{name}' does not exist; available services: "
                               f"{known} (see GET /v1/services).", param="name")
            principal.may_use_service(name)
            ctx.service = name
            ctx.provider = "python"
            gw.set_capture(ctx, service.config.capture)
            body, ctx.request_bytes = await read_json(
                request, gw.config.server.max_body_bytes,
                max_depth=gw.config.server.max_json_depth)
            policy = gw.escalations.for_service(name)
            if policy is not None:
                escalation = ServiceEscalation(gw, ctx, policy, conversation_of(request),
                                               principal, name)
                early = await escalation.before(body)
                if early is not None:
                    return early
            pii = await gw.pii_session(ctx, gw.service_pii.get(name), request)
            if pii is not None:
                cleaned = pii.clean_json(body)
                ctx.request_body = gw.capture_body(
                    ctx, cleaned if pii.policy.clean_traces else body)
                body = cleaned if pii.policy.clean_request else body
            else:
                ctx.request_body = gw.capture_body(ctx, body)
            guards = service.guards
            if guards is not None:
                body, outcome = await guards.check("input", body, _trace(ctx))
                if outcome.stops:
                    return await self._refuse(ctx, guards, outcome, "input", body, principal,
                                              escalation)
            argument = service.validate(body)
            held = [a for a in (gw.admission, service.admission) if a.max_in_flight is not None]
            output = await self._admitted(ctx, held, service, argument,
                                          request_priority(request))
            if escalation is not None:
                handed_over = await escalation.after(output)
                if handed_over is not None:
                    return handed_over
            if guards is not None and guards.outputs:
                output, outcome = await guards.check("output", output, _trace(ctx), body)
                if outcome.stops:
                    return await self._refuse(ctx, guards, outcome, "output", output, principal,
                                              escalation)
            traced = output
            if pii is not None:
                traced, output = pii.answer_json(output)
                if not pii.policy.clean_traces:
                    traced = output
            result = {"id": ctx.trace_id, "object": "service.result", "service": name,
                      "output": output}
            try:
                payload = orjson.dumps(result)
            except TypeError as exc:
                raise ServiceError(
                    f"Service '{name}' returned a value that is not JSON serialisable ({exc}); "
                    "return dicts, lists, strings, numbers or a pydantic model.") from None
            ctx.response_bytes = len(payload)
            ctx.response_body = gw.capture_body(ctx, traced)
            ctx.status = 200
            return json_response(None, body=payload, headers=gw.headers(ctx))
        except ShipyardError as exc:
            gw.fail(ctx, exc)
            if isinstance(exc, ServiceError):
                log.warning("service %s failed: %s", ctx.service, exc.message)
            if escalation is not None:
                handed_over = await escalation.failed(exc)
                if handed_over is not None:
                    return handed_over
            return error_response(exc, headers=gw.headers(ctx))
        except Exception as exc:
            log.exception("internal error in request %s", ctx.request_id)
            error = ShipyardError(f"Shipyard hit an internal error ({type(exc).__name__}); "
                                  f"request id {ctx.request_id}.")
            gw.fail(ctx, error)
            return error_response(error, headers=gw.headers(ctx))
        finally:
            if pii is not None:
                await pii.close()
            gw.finish(ctx)

    async def _refuse(self, ctx: RequestContext, guards: ServiceGuards, outcome: Outcome,
                      stage: str, value: Any, principal: Principal,
                      escalation: ServiceEscalation | None) -> Response:
        """A guard blocked or escalated: a polite 200 answer with the reason in `shipyard`."""
        gw = self.gw
        result = await guards.refusal(
            outcome, stage, hooks=gw.guard_hooks, trace_id=ctx.trace_id,
            request_id=ctx.request_id, tenant_id=ctx.tenant_id,
            text="\n".join(strings_of(value)), principal=principal,
            conversation_id=escalation.conversation_id if escalation is not None else None)
        payload = orjson.dumps(result)
        ctx.response_bytes = len(payload)
        ctx.finish_reason = "content_filter"
        ctx.status = 200
        return json_response(None, body=payload, headers={
            **gw.headers(ctx), "x-shipyard-guard": f"{outcome.action}:{outcome.guard}"})

    async def _admitted(self, ctx: RequestContext, admissions: list[Admission],
                        service: HostedService, argument: Any, priority: int) -> Any:
        """Run the service inside its admission slots (global, then its own)."""
        held: list[Admission] = []
        try:
            if admissions:
                with span(ctx, "admission"):
                    for admission in admissions:
                        try:
                            waited = await admission.acquire(priority)
                        except CapacityError:
                            ctx.shed_by = ("global" if admission is self.gw.admission
                                           else service.name)
                            raise
                        ctx.queue_ms = (ctx.queue_ms or 0.0) + waited
                        held.append(admission)
            started = ctx.elapsed_ms()
            try:
                with span(ctx, "service", {"shipyard.service": service.name}):
                    output = await service.invoke(argument)
            except ShipyardError as exc:
                overloaded = isinstance(exc, UpstreamTimeout)
                for admission in held:
                    admission.observe((ctx.elapsed_ms() - started) / 1e3, overloaded=overloaded)
                raise
            ctx.upstream_ms = ctx.elapsed_ms() - started
            for admission in held:
                admission.observe(ctx.upstream_ms / 1e3, overloaded=False)
            return output
        finally:
            for admission in reversed(held):
                admission.release()


def _trace(ctx: RequestContext) -> dict[str, Any]:
    if ctx.attributes is None:
        ctx.attributes = {}
    attributes: dict[str, Any] = ctx.attributes
    return attributes


def service_routes(gateway: Gateway) -> list[ScopedRoute]:
    routes = ServiceRoutes(gateway)
    return [
        ScopedRoute("/v1/services", routes.list_services, methods=["GET"], scope="models:read"),
        ScopedRoute("/v1/services/{name}/invoke", routes.invoke, methods=["POST"],
                    scope="inference"),
    ]
