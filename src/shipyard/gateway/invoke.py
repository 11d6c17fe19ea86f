"""Calls that do not arrive over HTTP — jobs, batch lines, queue messages — through the same
chain as a synchronous request.

`Invoker.run` does what a route does for one request, minus the socket: it starts a traced
request, checks the caller's budget and key restrictions, validates the body, resolves the
target, runs its chain (rate limits, admission, escalation, PII, guards, cache, the target),
renders the answer exactly as the HTTP route would, and records the request. It never raises
for the request's own failures: the result carries the HTTP status and the body (the answer,
or the OpenAI-shaped error) a client would have received.

>>> result = await gateway.invoker.run(principal, "chat/completions",  # doctest: +SKIP
...                                    {"model": "demo", "messages": [...]}, route="job")
>>> result.status, result.body["choices"][0]["message"]["content"]  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from shipyard.errors import InvalidRequest, ShipyardError
from shipyard.gateway.auth import Principal
from shipyard.gateway.http import internal_error
from shipyard.gateway.openai_routes import answer, apply_limits
from shipyard.gateway.runtime import Gateway
from shipyard.gateway.service_routes import service_deadline, service_result
from shipyard.gateway.validation import validate_chat, validate_completion, validate_embeddings
from shipyard.pipeline import Call, Endpoint, RequestContext

__all__ = ["Invocation", "Invoker"]

_KINDS: dict[str, str] = {"chat/completions": "chat", "completions": "chat",
                          "embeddings": "embedding"}


@dataclass(slots=True)
class Invocation:
    """What one headless call ended with: the status and body a client would have got."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    trace_id: str = ""

    @property
    def ok(self) -> bool:
        return self.status < 400


class Invoker:
    """Run calls through a target's chain without HTTP (see the module docstring)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    async def run(self, principal: Principal, endpoint: Endpoint, body: dict[str, Any], *,
                  route: str, service: str | None = None, request_id: str | None = None,
                  traceparent: str | None = None, conversation_id: str | None = None,
                  priority: int = 1, deadline_s: float | None = None,
                  attributes: dict[str, Any] | None = None) -> Invocation:
        """One call. `endpoint` is an OpenAI endpoint (`body` its request; streaming is not
        available here) or `invoke` (`service` names the service, `body` is its input).
        `route` names the entry point on the trace (`job`, `batch`, a connector's name).
        Headless work is batch priority by default: interactive requests go first.
        `attributes` are kept on the trace (e.g. the connector a message came through)."""
        gw = self.gw
        ctx = gw.recorder.begin_call(route, request_id=request_id, traceparent=traceparent)
        if attributes:
            ctx.attributes = dict(attributes)
        ctx.tenant_id = principal.tenant_id
        ctx.key_id = principal.key_id
        try:
            gw.refuse_if_draining()
            gw.check_budget(ctx)
            ctx.request_payload = body
            if endpoint == "invoke":
                return await self._service(ctx, principal, service, body, priority,
                                           conversation_id, deadline_s)
            return await self._model(ctx, principal, endpoint, body, priority,
                                     conversation_id, deadline_s)
        except Exception as exc:
            error = exc if isinstance(exc, ShipyardError) else internal_error(exc,
                                                                            ctx.request_id)
            gw.fail(ctx, error)
            return Invocation(error.status, error.to_dict(), {**error.headers,
                                                              **gw.headers(ctx)},
                              ctx.trace_id)
        finally:
            gw.recorder.finish(ctx)

    async def _model(self, ctx: RequestContext, principal: Principal, endpoint: Endpoint,
                     body: dict[str, Any], priority: int, conversation_id: str | None,
                     deadline_s: float | None) -> Invocation:
        if body.get("stream"):
            raise InvalidRequest("'stream' is not available here (the answer is stored, not "
                                 "streamed); set it to false or leave it out.", param="stream")
        validate = {"chat/completions": validate_chat, "completions": validate_completion}
        bounds = self.gw.config.server.bounds
        if endpoint == "embeddings":
            alias = validate_embeddings(body, bounds)
        else:
            alias, _ = validate[endpoint](body, bounds)
        target = self.gw.model(alias, _KINDS[endpoint], ctx, principal)
        seconds = min(target.config.deadline_s, deadline_s or math.inf)
        call = Call(ctx, endpoint, apply_limits(target, body) if endpoint != "embeddings"
                    else dict(body), False, target, deadline=time.monotonic() + seconds,
                    priority=priority, principal=principal, conversation_id=conversation_id)
        reply = await target.handler(call)
        data, _, headers = answer(self.gw, ctx, call, endpoint, reply)
        return Invocation(200, data, headers, ctx.trace_id)

    async def _service(self, ctx: RequestContext, principal: Principal, service: str | None,
                       body: Any, priority: int, conversation_id: str | None,
                       deadline_s: float | None) -> Invocation:
        if not service:
            raise InvalidRequest("A service invocation needs the service's name.",
                                 param="service")
        target = self.gw.service(service, ctx, principal)
        deadline = service_deadline(target)
        if deadline_s is not None:
            deadline = min(deadline, time.monotonic() + deadline_s)
        call = Call(ctx, "invoke", body, False, target, deadline=deadline, priority=priority,
                    principal=principal, conversation_id=conversation_id,
                    validated=(body, target.validate(body)))
        reply = await target.handler(call)
        sent, headers = service_result(self.gw, ctx, target, reply)
        return Invocation(200, orjson.loads(sent), headers, ctx.trace_id)
