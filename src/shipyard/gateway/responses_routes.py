"""The OpenAI Responses API (`/v1/responses`) over any chat model alias.

A Responses request is translated to a chat completion (`providers.formats.responses`) and
sent through the alias's chain exactly like `POST /v1/chat/completions` — rate limits, guards,
PII, cache, failover, traces and cost all apply — then translated back: a `response` object,
or the API's typed stream events. Answers are stored per tenant (unless `store: false`), so
`GET /v1/responses/{id}` and `previous_response_id` work.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from shipyard.errors import InvalidRequest, NotFound
from shipyard.gateway.http import conversation_of, json_response, read_json, request_priority
from shipyard.gateway.idempotent import idempotent
from shipyard.gateway.openai_routes import (
    SSE_HEADERS,
    answer,
    apply_limits,
    deadline_for,
    shipyard_headers,
)
from shipyard.gateway.runtime import Gateway
from shipyard.gateway.scopes import ScopedRoute
from shipyard.gateway.streaming import relay_sse
from shipyard.gateway.validation import validate_chat
from shipyard.observe.tokens import estimate_chat_prompt
from shipyard.pipeline import Call, RequestContext
from shipyard.pipeline.sse import chunks
from shipyard.providers.formats.responses import (
    EventWriter,
    conversation,
    new_response_id,
    to_chat,
    to_response,
)
from shipyard.store.responses import delete_response, get_response, save_response

__all__ = ["responses_routes"]

log = logging.getLogger("shipyard.gateway")


class ResponsesRoutes:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    async def _history(self, ctx: RequestContext, body: dict[str, Any]) -> list[dict[str, Any]]:
        previous = body.get("previous_response_id")
        if previous is None:
            return []
        if not isinstance(previous, str):
            raise NotFound("'previous_response_id' must be the id of an earlier response.",
                           param="previous_response_id")
        if "\x00" in previous:  # the store cannot hold one (PostgreSQL text)
            raise InvalidRequest("Field 'previous_response_id' contains a NUL character; "
                                 "remove it.", param="previous_response_id")
        found = await asyncio.to_thread(get_response, self.gw.engine, previous,
                                        tenant_id=ctx.tenant_id)
        if found is None:
            raise NotFound(f"There is no stored response '{previous}' in this tenant; "
                           "responses created with store: false cannot be continued.",
                           param="previous_response_id")
        return found[1]

    async def create(self, request: Request) -> Response:
        gw = self.gw
        ctx = gw.recorder.begin(request, "responses")
        streaming = False
        try:
            gw.refuse_if_draining()
            principal = await gw.authorize(request, "inference", ctx)
            gw.check_budget(ctx)
            body, ctx.request_bytes = await read_json(
                request, gw.config.server.max_body_bytes,
                max_depth=gw.config.server.max_json_depth)
            chat = to_chat(body, await self._history(ctx, body))
            alias, stream = validate_chat(chat, gw.config.server.bounds)
            target = gw.model(alias, "chat", ctx, principal)
            ctx.stream = stream
            ctx.request_payload = body
            call = Call(ctx, "chat/completions", apply_limits(target, chat), stream, target,
                        client_wants_usage=stream, deadline=deadline_for(request, target),
                        priority=request_priority(request), principal=principal,
                        conversation_id=conversation_of(request))
            started = time.perf_counter()
            reply = await target.handler(call)
            response_id = new_response_id()
            if stream and reply.stream is not None:
                headers = {**SSE_HEADERS, **gw.headers(ctx), **shipyard_headers(reply),
                           "x-shipyard-model": call.served_by or alias}
                streaming = True
                source = relay_sse(reply.stream, ctx, payload=call.payload,
                                   client_wants_usage=True, drop_usage_event=False,
                                   keep_text=ctx.capture == "full", upstream_started=started)
                return StreamingResponse(self._stream(ctx, source, body, call, response_id),
                                         media_type="text/event-stream", headers=headers)
            completion, _, headers = answer(gw, ctx, call, "chat/completions", reply)
            response = to_response(completion, body, response_id=response_id)
            await self._store(ctx, body, call, response)
            sent = orjson.dumps(response)
            ctx.response_bytes = len(sent)
            return json_response(None, body=sent, headers=headers)
        except Exception as exc:
            return gw.error(ctx, exc)
        finally:
            if not streaming:
                gw.recorder.finish(ctx)

    async def _store(self, ctx: RequestContext, body: dict[str, Any], call: Call,
                     response: dict[str, Any]) -> None:
        if body.get("store", True) is False:
            return
        # Before the answer goes out: a client may continue it at once.
        await asyncio.to_thread(save_response, self.gw.engine, tenant_id=ctx.tenant_id,
                                response=response, conversation=conversation(call.payload,
                                                                              response),
                                trace_id=ctx.trace_id)

    async def _stream(self, ctx: RequestContext, source: AsyncIterator[bytes],
                      body: dict[str, Any], call: Call,
                      response_id: str) -> AsyncIterator[bytes]:
        writer = EventWriter(body, response_id=response_id, model=str(body.get("model", "")))
        sent = 0
        try:
            first = writer.start()
            sent += len(first)
            yield first
            async for obj in chunks(source):
                error = obj.get("error")
                if isinstance(error, dict):
                    out = writer.failed(str(error.get("message", "")), error.get("code"))
                    sent += len(out)
                    yield out
                    return
                out = writer.chunk(obj)
                if out:
                    sent += len(out)
                    yield out
            out = writer.finish_events()
            sent += len(out)
            try:
                await self._store(ctx, body, call, writer.response())
            except Exception:  # the answer reached the client; a failed store is loud
                log.exception("storing response %s failed", response_id)
            yield out
        except BaseException:
            if ctx.status in (0, 200):
                ctx.status = 499
                ctx.error_type = "ClientDisconnected"
            raise
        finally:
            ctx.response_bytes = sent
            self.gw.recorder.finish(ctx)

    async def retrieve(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "inference")
        response_id = request.path_params["response_id"]
        found = await asyncio.to_thread(get_response, self.gw.engine, response_id,
                                        tenant_id=principal.tenant_id)
        if found is None:
            raise NotFound(f"There is no stored response '{response_id}' in this tenant.",
                           param="response_id")
        return json_response(found[0])

    async def delete(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "inference")
        response_id = request.path_params["response_id"]
        if not await asyncio.to_thread(delete_response, self.gw.engine, response_id,
                                       tenant_id=principal.tenant_id):
            raise NotFound(f"There is no stored response '{response_id}' in this tenant.",
                           param="response_id")
        return json_response({"id": response_id, "object": "response.deleted",
                              "deleted": True})

    async def input_tokens(self, request: Request) -> Response:
        """`POST /v1/responses/input_tokens`: the input's size in tokens (estimated offline,
        as the gateway does when an upstream reports no usage)."""
        gw = self.gw
        principal = await gw.authorize(request, "inference")
        body, _ = await read_json(request, gw.config.server.max_body_bytes,
                                  max_depth=gw.config.server.max_json_depth)
        ctx = RequestContext("count", "responses", "count")
        ctx.tenant_id = principal.tenant_id
        chat = to_chat({k: v for k, v in body.items() if k != "stream"},
                       await self._history(ctx, body))
        alias, _ = validate_chat(chat, gw.config.server.bounds)
        principal.may_use_model(alias)
        return json_response({"object": "response.input_tokens",
                              "input_tokens": estimate_chat_prompt(chat["messages"])})


def responses_routes(gateway: Gateway) -> list[ScopedRoute]:
    routes = ResponsesRoutes(gateway)
    return [
        ScopedRoute("/v1/responses", idempotent(gateway, routes.create), methods=["POST"],
                    scope="inference"),
        ScopedRoute("/v1/responses/input_tokens", routes.input_tokens, methods=["POST"],
                    scope="inference"),
        ScopedRoute("/v1/responses/{response_id}", routes.retrieve, methods=["GET"],
                    scope="inference"),
        ScopedRoute("/v1/responses/{response_id}", routes.delete, methods=["DELETE"],
                    scope="inference"),
    ]
