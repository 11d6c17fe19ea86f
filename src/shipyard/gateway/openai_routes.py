"""The OpenAI-compatible routes: chat and legacy completions, embeddings, models."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from shipyard.config.server import BoundsConfig
from shipyard.errors import InvalidRequest, ModelNotFound, ShipyardError, UpstreamError
from shipyard.gateway.escalate import ChatEscalation, conversation_of
from shipyard.gateway.http import error_response, json_response, read_json, request_priority
from shipyard.gateway.pii import PIISession
from shipyard.gateway.runtime import Gateway
from shipyard.gateway.scopes import ScopedRoute
from shipyard.gateway.streaming import relay_sse
from shipyard.gateway.validation import validate_chat, validate_completion, validate_embeddings
from shipyard.observe.tokens import estimate_chat_prompt, estimate_text
from shipyard.pipeline import Call, Endpoint, Reply, RequestContext
from shipyard.targets.model import ModelTarget

__all__ = ["openai_routes"]

log = logging.getLogger("shipyard.gateway")
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class OpenAIRoutes:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    async def chat(self, request: Request) -> Response:
        return await self._generate(request, "chat/completions", "chat", validate_chat)

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, "completions", "completions", validate_completion)

    async def _generate(
        self,
        request: Request,
        endpoint: Endpoint,
        route: str,
        validate: Callable[[dict[str, Any], BoundsConfig], tuple[str, bool]],
    ) -> Response:
        gw = self.gw
        ctx = gw.begin(request, route)
        streaming = False
        pii: PIISession | None = None
        escalation: ChatEscalation | None = None
        try:
            gw.refuse_if_draining()
            principal = await gw.authorize(request, "inference", ctx)
            gw.check_budget(ctx)
            body, ctx.request_bytes = await read_json(
                request, gw.config.server.max_body_bytes,
                max_depth=gw.config.server.max_json_depth)
            alias, stream = validate(body, gw.config.server.bounds)
            target = gw.model(alias, "chat", ctx, principal)
            ctx.stream = stream
            policy = gw.escalations.for_model(alias) if endpoint == "chat/completions" else None
            if policy is not None:
                escalation = ChatEscalation(
                    gw, ctx, policy, conversation_of(request), principal, body, stream=stream,
                    include_usage=bool((body.get("stream_options") or {}).get("include_usage")))
                early = await escalation.before()
                if early is not None:
                    return early
            payload = _apply_limits(target, body)
            pii = await gw.pii_session(ctx, gw.model_pii.get(alias), request)
            payload = self._protect(ctx, pii, body, payload)
            wants_usage = stream and bool((body.get("stream_options") or {}).get("include_usage"))
            call = Call(ctx, endpoint, payload, stream, target, client_wants_usage=wants_usage,
                        deadline=_deadline(request, target), priority=request_priority(request),
                        principal=principal, conversation_id=escalation.conversation_id
                        if escalation is not None else None)
            started = time.perf_counter()
            reply = await target.handler(call)
            if escalation is not None:
                handed_over = await escalation.after(reply)
                if handed_over is not None:
                    return handed_over
            if stream and reply.stream is not None:
                ctx.upstream_ms = reply.upstream_ms
                headers = {**_SSE_HEADERS, **gw.headers(ctx), **_shipyard_headers(reply),
                           "x-shipyard-model": call.served_by or alias}
                streaming = True
                return StreamingResponse(
                    self._stream(ctx, reply.stream, payload, wants_usage,
                                 reply.usage_injected, started, pii),
                    media_type="text/event-stream", headers=headers)
            return self._complete(ctx, call, endpoint, payload, reply, pii)
        except ShipyardError as exc:
            gw.fail(ctx, exc)
            if escalation is not None:
                handed_over = await escalation.failed(exc)
                if handed_over is not None:
                    return handed_over
            return error_response(exc, headers=gw.headers(ctx))
        except Exception as exc:
            return self._internal(ctx, exc)
        finally:
            if not streaming:
                if pii is not None:
                    await pii.close()
                gw.finish(ctx)

    def _protect(self, ctx: RequestContext, pii: PIISession | None, body: dict[str, Any],
                 payload: dict[str, Any]) -> dict[str, Any]:
        """Capture the request for the trace and return what the upstream gets, both cleaned
        of personal data as the alias's `pii` policy says."""
        if pii is None:
            ctx.request_body = self.gw.capture_body(ctx, body)
            return payload
        cleaned = pii.clean_chat(payload)
        ctx.request_body = self.gw.capture_body(
            ctx, cleaned if pii.policy.clean_traces else body)
        return cleaned if pii.policy.clean_request else payload

    def _internal(self, ctx: RequestContext, exc: Exception) -> Response:
        log.exception("internal error in request %s", ctx.request_id)
        error = ShipyardError(
            f"Shipyard hit an internal error ({type(exc).__name__}); it has been logged with "
            f"request id {ctx.request_id}. Retry, and report it if it persists.")
        self.gw.fail(ctx, error)
        return error_response(error, headers=self.gw.headers(ctx))

    async def _stream(self, ctx: RequestContext, source: AsyncIterator[bytes],
                      payload: dict[str, Any], wants_usage: bool, drop_usage: bool,
                      started: float, pii: PIISession | None) -> AsyncIterator[bytes]:
        sent = 0
        rewriter = pii.stream() if pii is not None else None
        try:
            async for chunk in relay_sse(
                source, ctx, payload=payload, client_wants_usage=wants_usage,
                drop_usage_event=drop_usage, keep_text=ctx.capture == "full",
                upstream_started=started, rewrite=rewriter,
            ):
                sent += len(chunk)
                yield chunk
        except BaseException:
            if ctx.status == 0 or ctx.status == 200:
                ctx.status = 499  # the client went away before the end
                ctx.error_type = "ClientDisconnected"
            raise
        finally:
            ctx.response_bytes = sent
            if ctx.response_body is not None:
                if rewriter is not None and rewriter.session.policy.clean_traces:
                    ctx.response_body = rewriter.trace_text()
                ctx.response_body = self.gw.capture_body(ctx, ctx.response_body)
            if pii is not None:
                await pii.close()
            self.gw.finish(ctx)

    def _complete(self, ctx: RequestContext, call: Call, endpoint: Endpoint,
                  payload: dict[str, Any], reply: Reply,
                  pii: PIISession | None = None) -> Response:
        ctx.upstream_ms = reply.upstream_ms
        body = reply.body
        data = reply.data
        if data is None:
            try:
                data = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise UpstreamError(
                    f"The upstream '{ctx.provider}' answered with malformed JSON.",
                    upstream_status=200) from None
            if not isinstance(data, dict):
                raise UpstreamError(
                    f"The upstream '{ctx.provider}' answered with a JSON "
                    f"{type(data).__name__}, not an object.", upstream_status=200)
        choices = data.get("choices")
        if endpoint != "embeddings" and isinstance(choices, list) and choices:
            first = choices[0]
            if isinstance(first, dict) and first.get("finish_reason"):
                ctx.finish_reason = str(first["finish_reason"])
        headers = {**self.gw.headers(ctx), **_shipyard_headers(reply),
                   "x-shipyard-model": call.served_by or call.target.name}
        usage = data.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("total_tokens"), int):
            ctx.set_usage(usage)
        else:
            data["usage"] = _estimate_usage(endpoint, payload, data)
            ctx.set_usage(data["usage"], estimated=True)
            body = orjson.dumps(data)
        if ctx.tokens_estimated:
            headers["x-shipyard-usage-estimated"] = "true"
        traced = data
        if pii is not None and endpoint != "embeddings":
            traced, data = pii.answer_chat(data)
            if not pii.policy.clean_traces:
                traced = data
            body = orjson.dumps(data)
        ctx.response_bytes = len(body)
        ctx.response_body = self.gw.capture_body(ctx, traced)
        ctx.status = 200
        headers["x-shipyard-overhead-ms"] = f"{ctx.overhead_ms():.3f}"
        return json_response(None, body=body, headers=headers)

    async def embeddings(self, request: Request) -> Response:
        gw = self.gw
        ctx = gw.begin(request, "embeddings")
        pii: PIISession | None = None
        try:
            gw.refuse_if_draining()
            principal = await gw.authorize(request, "inference", ctx)
            gw.check_budget(ctx)
            body, ctx.request_bytes = await read_json(
                request, gw.config.server.max_body_bytes,
                max_depth=gw.config.server.max_json_depth)
            alias = validate_embeddings(body, gw.config.server.bounds)
            target = gw.model(alias, "embedding", ctx, principal)
            pii = await gw.pii_session(ctx, gw.model_pii.get(alias), request)
            payload = self._protect(ctx, pii, body, dict(body))
            call = Call(ctx, "embeddings", payload, False, target,
                        deadline=_deadline(request, target), priority=request_priority(request),
                        principal=principal)
            reply = await target.handler(call)
            return self._complete(ctx, call, "embeddings", payload, reply)
        except ShipyardError as exc:
            gw.fail(ctx, exc)
            return error_response(exc, headers=gw.headers(ctx))
        except Exception as exc:
            return self._internal(ctx, exc)
        finally:
            if pii is not None:
                await pii.close()
            gw.finish(ctx)

    def _model_card(self, target: ModelTarget) -> dict[str, Any]:
        return {"id": target.alias, "object": "model", "created": self.gw.created,
                "owned_by": target.config.owned_by}

    async def list_models(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "models:read")
        cards = [self._model_card(t) for alias, t in sorted(self.gw.models.items())
                 if principal.models is None or alias in principal.models]
        return json_response({"object": "list", "data": cards})

    async def get_model(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "models:read")
        alias = request.path_params["model"]
        target = self.gw.models.get(alias)
        if target is None or (principal.models is not None and alias not in principal.models):
            raise ModelNotFound(f"The model '{alias}' does not exist; see GET /v1/models for "
                                "the available models.", param="model")
        return json_response(self._model_card(target))


def _shipyard_headers(reply: Reply) -> dict[str, str]:
    return {k: v for k, v in reply.headers.items()
            if k.startswith(("x-shipyard-", "x-ratelimit-"))}


def _deadline(request: Request, target: ModelTarget) -> float:
    """When the answer must have started: the alias's deadline, or the client's own shorter
    timeout (the OpenAI SDK sends it as `x-stainless-timeout`, in seconds)."""
    seconds = target.config.deadline_s
    given = request.headers.get("x-stainless-timeout")
    if given:
        try:
            client = float(given)
        except ValueError:
            client = math.inf
        if 0 < client < seconds:
            seconds = client
    return time.monotonic() + seconds


def _apply_limits(target: ModelTarget, body: dict[str, Any]) -> dict[str, Any]:
    """Enforce the alias's request limits; returns the payload to send (a copy)."""
    limits = target.config.limits
    payload = dict(body)
    messages = body.get("messages")
    if limits.max_messages is not None and isinstance(messages, list) and (
            len(messages) > limits.max_messages):
        raise InvalidRequest(
            f"The request has {len(messages)} messages; model '{target.alias}' accepts at most "
            f"{limits.max_messages} (models.{target.alias}.limits.max_messages). Shorten the "
            "conversation.", param="messages", code="too_many_messages")
    if limits.max_tokens is not None:
        for name in ("max_tokens", "max_completion_tokens"):
            asked = body.get(name)
            if isinstance(asked, int) and asked > limits.max_tokens:
                raise InvalidRequest(
                    f"Parameter '{name}' is {asked}; model '{target.alias}' allows at most "
                    f"{limits.max_tokens} (models.{target.alias}.limits.max_tokens). Ask for "
                    "fewer tokens.", param=name, code="max_tokens_exceeded")
        if "max_tokens" not in body and "max_completion_tokens" not in body:
            payload["max_tokens"] = limits.max_tokens
    return payload


def _estimate_usage(endpoint: Endpoint, payload: dict[str, Any],
                    data: dict[str, Any]) -> dict[str, Any]:
    if endpoint == "embeddings":
        value = payload.get("input")
        texts = value if isinstance(value, list) else [value]
        tokens = sum(estimate_text(t) if isinstance(t, str) else
                     (len(t) if isinstance(t, list) else 1) for t in texts)
        return {"prompt_tokens": tokens, "total_tokens": tokens, "estimated": True}
    if endpoint == "chat/completions":
        prompt = estimate_chat_prompt(payload.get("messages") or [])
    else:
        text = payload.get("prompt")
        prompt = estimate_text(text if isinstance(text, str) else str(text))
    completion = 0
    for choice in data.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        content = message.get("content") if isinstance(message, dict) else choice.get("text")
        if isinstance(content, str):
            completion += estimate_text(content)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion, "estimated": True}


def openai_routes(gateway: Gateway) -> list[ScopedRoute]:
    routes = OpenAIRoutes(gateway)
    return [
        ScopedRoute("/v1/chat/completions", routes.chat, methods=["POST"], scope="inference"),
        ScopedRoute("/v1/completions", routes.completions, methods=["POST"],
                    scope="inference"),
        ScopedRoute("/v1/embeddings", routes.embeddings, methods=["POST"], scope="inference"),
        ScopedRoute("/v1/models", routes.list_models, methods=["GET"], scope="models:read"),
        ScopedRoute("/v1/models/{model:path}", routes.get_model, methods=["GET"],
                    scope="models:read"),
    ]
