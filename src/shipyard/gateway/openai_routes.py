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
from shipyard.errors import InvalidRequest, ModelNotFound, UpstreamError
from shipyard.gateway.http import conversation_of, json_response, read_json, request_priority
from shipyard.gateway.idempotent import idempotent
from shipyard.gateway.runtime import Gateway
from shipyard.gateway.scopes import ScopedRoute
from shipyard.gateway.streaming import relay_sse
from shipyard.gateway.validation import validate_chat, validate_completion, validate_embeddings
from shipyard.observe.tokens import estimate_chat_prompt, estimate_text
from shipyard.pipeline import Call, Endpoint, Reply, RequestContext
from shipyard.targets.model import ModelTarget

__all__ = ["SSE_HEADERS", "answer", "apply_limits", "deadline_for", "estimate_usage",
           "openai_routes", "shipyard_headers"]

log = logging.getLogger("shipyard.gateway")
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class OpenAIRoutes:
    """Map the OpenAI endpoints to calls on model targets, and their replies back to HTTP.

    Everything between (limits, admission, escalation, PII, guards, cache, failover) is the
    target's chain; a route only authenticates, reads and validates the body, resolves the
    alias, and renders the reply or the error."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    async def chat(self, request: Request) -> Response:
        return await self._generate(request, "chat/completions", "chat", validate_chat)

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, "completions", "completions", validate_completion)

    async def embeddings(self, request: Request) -> Response:
        return await self._generate(request, "embeddings", "embeddings", _validate_embeddings)

    async def _generate(
        self,
        request: Request,
        endpoint: Endpoint,
        route: str,
        validate: Callable[[dict[str, Any], BoundsConfig], tuple[str, bool]],
    ) -> Response:
        gw = self.gw
        ctx = gw.recorder.begin(request, route)
        streaming = False
        try:
            gw.refuse_if_draining()
            principal = await gw.authorize(request, "inference", ctx)
            gw.check_budget(ctx)
            body, ctx.request_bytes = await read_json(
                request, gw.config.server.max_body_bytes,
                max_depth=gw.config.server.max_json_depth)
            alias, stream = validate(body, gw.config.server.bounds)
            target = gw.model(alias, "embedding" if endpoint == "embeddings" else "chat", ctx,
                              principal)
            ctx.stream = stream
            ctx.request_payload = body
            wants_usage = stream and bool((body.get("stream_options") or {}).get("include_usage"))
            call = Call(ctx, endpoint, apply_limits(target, body), stream, target,
                        client_wants_usage=wants_usage, deadline=deadline_for(request, target),
                        priority=request_priority(request), principal=principal,
                        conversation_id=conversation_of(request))
            started = time.perf_counter()
            reply = await target.handler(call)
            if stream and reply.stream is not None:
                if ctx.provider is not None:  # an upstream answered (not a guard, cache, ...)
                    ctx.upstream_ms = reply.upstream_ms
                headers = {**SSE_HEADERS, **gw.headers(ctx), **shipyard_headers(reply),
                           "x-shipyard-model": call.served_by or alias}
                streaming = True
                return StreamingResponse(
                    self._stream(ctx, reply.stream, call.payload, wants_usage,
                                 reply.usage_injected, started),
                    media_type="text/event-stream", headers=headers)
            return self._complete(ctx, call, endpoint, reply)
        except Exception as exc:
            return gw.error(ctx, exc)
        finally:
            if not streaming:
                gw.recorder.finish(ctx)

    async def _stream(self, ctx: RequestContext, source: AsyncIterator[bytes],
                      payload: dict[str, Any], wants_usage: bool, drop_usage: bool,
                      started: float) -> AsyncIterator[bytes]:
        sent = 0
        try:
            async for chunk in relay_sse(
                source, ctx, payload=payload, client_wants_usage=wants_usage,
                drop_usage_event=drop_usage, keep_text=ctx.capture == "full",
                upstream_started=started,
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
            self.gw.recorder.finish(ctx)

    def _complete(self, ctx: RequestContext, call: Call, endpoint: Endpoint,
                  reply: Reply) -> Response:
        _, body, headers = answer(self.gw, ctx, call, endpoint, reply)
        return json_response(None, body=body, headers=headers)

    def _model_card(self, target: ModelTarget) -> dict[str, Any]:
        return {"id": target.alias, "object": "model", "created": self.gw.created,
                "owned_by": target.config.owned_by}

    async def list_models(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "models:read")
        cards = [self._model_card(t) for alias, t in sorted(self.gw.models.items())
                 if principal.may_list_model(alias)]
        return json_response({"object": "list", "data": cards})

    async def get_model(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "models:read")
        alias = request.path_params["model"]
        target = self.gw.models.get(alias)
        if target is None or not principal.may_list_model(alias):
            raise ModelNotFound(f"The model '{alias}' does not exist; see GET /v1/models for "
                                "the available models.", param="model")
        return json_response(self._model_card(target))


def answer(gw: Gateway, ctx: RequestContext, call: Call, endpoint: Endpoint,
           reply: Reply) -> tuple[dict[str, Any], bytes, dict[str, str]]:
    """A complete (non-streamed) answer of a model target: its parsed body, the bytes to
    send and the response headers; usage estimated when the upstream gave none, and the
    request's context filled in (finish reason, usage, sizes, what the trace keeps)."""
    if ctx.provider is not None:  # an upstream answered (not a guard, cache, ...)
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
    elif not body:
        body = orjson.dumps(data)
    choices = data.get("choices")
    if endpoint != "embeddings" and isinstance(choices, list) and choices:
        first = choices[0]
        if isinstance(first, dict) and first.get("finish_reason"):
            ctx.finish_reason = str(first["finish_reason"])
    headers = {**gw.headers(ctx), **shipyard_headers(reply),
               "x-shipyard-model": call.served_by or call.target.name}
    usage = data.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("total_tokens"), int):
        ctx.set_usage(usage)
    else:
        data["usage"] = estimate_usage(endpoint, call.payload, data)
        ctx.set_usage(data["usage"], estimated=True)
        body = orjson.dumps(data)
    if ctx.tokens_estimated:
        headers["x-shipyard-usage-estimated"] = "true"
    ctx.response_bytes = len(body)
    ctx.response_payload = reply.traced if reply.traced is not None else data
    ctx.status = 200
    headers["x-shipyard-overhead-ms"] = f"{ctx.overhead_ms():.3f}"
    return data, body, headers


def _validate_embeddings(body: dict[str, Any], bounds: BoundsConfig) -> tuple[str, bool]:
    return validate_embeddings(body, bounds), False


def shipyard_headers(reply: Reply) -> dict[str, str]:
    return {k: v for k, v in reply.headers.items()
            if k.startswith(("x-shipyard-", "x-ratelimit-"))}


def deadline_for(request: Request, target: ModelTarget) -> float:
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


def apply_limits(target: ModelTarget, body: dict[str, Any]) -> dict[str, Any]:
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


def estimate_usage(endpoint: Endpoint, payload: dict[str, Any],
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
        ScopedRoute("/v1/chat/completions", idempotent(gateway, routes.chat), methods=["POST"],
                    scope="inference"),
        ScopedRoute("/v1/completions", idempotent(gateway, routes.completions), methods=["POST"],
                    scope="inference"),
        ScopedRoute("/v1/embeddings", idempotent(gateway, routes.embeddings), methods=["POST"],
                    scope="inference"),
        ScopedRoute("/v1/models", routes.list_models, methods=["GET"], scope="models:read"),
        ScopedRoute("/v1/models/{model:path}", routes.get_model, methods=["GET"],
                    scope="models:read"),
    ]
