"""The Anthropic-format front door: `POST /v1/messages` and `POST /v1/messages/count_tokens`.

`anthropic.Anthropic(base_url="http://shipyard:8000")` works unchanged against any chat model
alias. A Messages request is checked, translated to an OpenAI chat request
(`providers.formats.anthropic.to_openai`) and sent through the alias's chain exactly like
`POST /v1/chat/completions` — rate limits, budgets, admission, PII, guards, cache, failover,
traces and cost all apply — then translated back: a `message` object, or Anthropic's named
stream events (`message_start`, `ping`, `content_block_start` / `_delta` / `_stop` with
`text_delta` and `input_json_delta`, `message_delta`, `message_stop`). An alias whose
upstream is itself of kind `anthropic` gets a Messages request again (the provider translates
back), so one shape — OpenAI's — is what every stage sees.

Errors have Anthropic's shape, `{"type": "error", "error": {"type", "message"}}`, with the
same status codes as the OpenAI routes (`gateway.http.error_response`); a failure after the
stream started is an `error` event. The caller's key may come as `x-api-key` (what the SDK
sends) or as `Authorization: Bearer`.

Request fields the OpenAI shape cannot carry are refused with a 400 naming them (`thinking`,
`top_k`, document and thinking blocks) rather than dropped; `cache_control` marks are a
provider-side caching hint and are ignored.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from shipyard.errors import InvalidRequest, ShipyardError
from shipyard.gateway.http import (
    ANTHROPIC_PREFIX,
    anthropic_error_body,
    conversation_of,
    json_response,
    read_json,
    request_priority,
)
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
from shipyard.observe.tokens import estimate_chat_prompt, estimate_text
from shipyard.pipeline import Call, RequestContext
from shipyard.pipeline.sse import chunks
from shipyard.providers.formats.anthropic import StreamWriter, to_anthropic_response, to_openai
from shipyard.providers.formats.openai import sse

__all__ = ["anthropic_routes", "check_messages_request"]

_BLOCKS = {"user": frozenset({"text", "image", "tool_result"}),
           "assistant": frozenset({"text", "tool_use"})}
# Fields the OpenAI shape cannot carry: refused, never silently dropped.
_UNSUPPORTED = {
    "thinking": "extended thinking is not available through Shipyard's front door (requests "
                "travel in the OpenAI shape); leave 'thinking' out",
    "top_k": "'top_k' has no OpenAI equivalent; leave it out (use 'top_p')",
    "container": "code-execution containers are not available; leave 'container' out",
    "mcp_servers": "remote MCP servers are not available; leave 'mcp_servers' out",
}


def _bad(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def _text_blocks(value: Any, where: str) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        raise _bad(f"'{where}' must be a string or a list of text blocks.", where)
    for i, block in enumerate(value):
        if not (isinstance(block, dict) and block.get("type") == "text"
                and isinstance(block.get("text"), str)):
            raise _bad(f"'{where}[{i}]' must be a text block: "
                       '{"type": "text", "text": "..."}.', f"{where}[{i}]")


def check_messages_request(body: dict[str, Any], *, count_only: bool = False) -> None:
    """Refuse a malformed Messages API request with a 400 naming the field and the fix (the
    checks Anthropic's API makes, so a client sees the same answer here as there)."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _bad("Missing required parameter 'model'; name a model alias (see GET "
                   "/v1/models).", "model")
    if not count_only:
        tokens = body.get("max_tokens")
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1:
            raise _bad(f"'max_tokens' is {tokens!r}; it is required and must be a positive "
                       "integer, e.g. 1024.", "max_tokens")
    for name, why in _UNSUPPORTED.items():
        if body.get(name) is not None and not (name == "thinking" and isinstance(
                body[name], dict) and body[name].get("type") == "disabled"):
            raise _bad(f"Parameter '{name}' is set, but {why}.", name)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty list such as "
                   '[{"role": "user", "content": "Hello"}].', "messages")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _bad(f"'{where}' must be an object with 'role' and 'content'.", where)
        role = message.get("role")
        if role not in _BLOCKS:
            raise _bad(f"'{where}.role' is {role!r}; it must be 'user' or 'assistant' (the "
                       "system prompt goes in the top-level 'system').", f"{where}.role")
        content = message.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise _bad(f"'{where}.content' must be a string or a list of content blocks.",
                       f"{where}.content")
        for n, block in enumerate(content):
            kind = block.get("type") if isinstance(block, dict) else None
            if kind not in _BLOCKS[role]:
                raise _bad(f"'{where}.content[{n}].type' is {kind!r}; a {role} turn may hold "
                           f"{', '.join(sorted(_BLOCKS[role]))} blocks here.",
                           f"{where}.content[{n}].type")
            if kind == "text" and not isinstance(block.get("text"), str):
                raise _bad(f"'{where}.content[{n}].text' must be a string.",
                           f"{where}.content[{n}].text")
            if kind == "tool_use" and not isinstance(block.get("input", {}), dict):
                raise _bad(f"'{where}.content[{n}].input' must be an object.",
                           f"{where}.content[{n}].input")
    if body.get("system") is not None:
        _text_blocks(body["system"], "system")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _bad("'tools' must be a list of tools with 'name' and 'input_schema'.",
                       "tools")
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                raise _bad(f"'tools[{i}].name' is required (a string).", f"tools[{i}].name")
            if tool.get("type") not in (None, "custom"):
                raise _bad(f"'tools[{i}].type' is {tool['type']!r}; only your own tools "
                           "(with an input_schema) are available, not Anthropic's server "
                           "tools.", f"tools[{i}].type")
    choice = body.get("tool_choice")
    if choice is not None and not (isinstance(choice, dict) and choice.get("type") in (
            "auto", "any", "none", "tool")):
        raise _bad("'tool_choice' must be {\"type\": \"auto\" | \"any\" | \"none\"} or "
                   "{\"type\": \"tool\", \"name\": ...}.", "tool_choice")
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        raise _bad(f"'stream' is {body['stream']!r}; it must be true or false.", "stream")


def _count(chat: dict[str, Any]) -> int:
    tokens = estimate_chat_prompt(chat.get("messages") or [])
    if chat.get("tools"):
        tokens += estimate_text(orjson.dumps(chat["tools"]).decode())
    return tokens


class AnthropicRoutes:
    """Map the Messages API onto calls on chat model targets (see the module docstring)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    async def messages(self, request: Request) -> Response:
        gw = self.gw
        ctx = gw.recorder.begin(request, "messages")
        streaming = False
        try:
            gw.refuse_if_draining()
            principal = await gw.authorize(request, "inference", ctx)
            gw.check_budget(ctx)
            body, ctx.request_bytes = await read_json(
                request, gw.config.server.max_body_bytes,
                max_depth=gw.config.server.max_json_depth)
            check_messages_request(body)
            chat = to_openai(body)
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
            if stream and reply.stream is not None:
                if ctx.provider is not None:
                    ctx.upstream_ms = reply.upstream_ms
                headers = {**SSE_HEADERS, **gw.headers(ctx), **shipyard_headers(reply),
                           "x-shipyard-model": call.served_by or alias,
                           "request-id": ctx.request_id}
                streaming = True
                source = relay_sse(reply.stream, ctx, payload=call.payload,
                                   client_wants_usage=True, drop_usage_event=False,
                                   keep_text=ctx.capture == "full", upstream_started=started)
                writer = StreamWriter(model=alias, input_tokens=_count(call.payload))
                return StreamingResponse(self._stream(ctx, source, writer),
                                         media_type="text/event-stream", headers=headers)
            completion, _, headers = answer(gw, ctx, call, "chat/completions", reply)
            sent = orjson.dumps(to_anthropic_response(completion, model=alias))
            ctx.response_bytes = len(sent)
            headers["request-id"] = ctx.request_id
            return json_response(None, body=sent, headers=headers)
        except Exception as exc:
            return gw.error(ctx, exc, path=ANTHROPIC_PREFIX)
        finally:
            if not streaming:
                gw.recorder.finish(ctx)

    async def _stream(self, ctx: RequestContext, source: AsyncIterator[bytes],
                      writer: StreamWriter) -> AsyncIterator[bytes]:
        sent = 0
        pinged = False
        try:
            async for obj in chunks(source):
                error = obj.get("error")
                if isinstance(error, dict):
                    out = sse(_stream_error(ctx, error), "error")
                    sent += len(out)
                    yield out
                    return
                out = b"".join(sse(payload, name) for name, payload in writer.feed(obj))
                if not pinged and out:
                    out += sse({"type": "ping"}, "ping")
                    pinged = True
                if out:
                    sent += len(out)
                    yield out
            out = b"".join(sse(payload, name) for name, payload in writer.end())
            sent += len(out)
            yield out
        except BaseException:
            if ctx.status in (0, 200):
                ctx.status = 499  # the client went away before the end
                ctx.error_type = "ClientDisconnected"
            raise
        finally:
            ctx.response_bytes = sent
            self.gw.recorder.finish(ctx)

    async def count_tokens(self, request: Request) -> Response:
        """`POST /v1/messages/count_tokens`: the request's input size in tokens (estimated
        offline, as the gateway does when an upstream reports no usage)."""
        gw = self.gw
        ctx = RequestContext("count", "messages", "count")
        try:
            principal = await gw.authorize(request, "inference")
            body, _ = await read_json(request, gw.config.server.max_body_bytes,
                                      max_depth=gw.config.server.max_json_depth)
            check_messages_request(body, count_only=True)
            chat = to_openai({k: v for k, v in body.items() if k != "stream"})
            chat["max_tokens"] = 1
            alias, _ = validate_chat(chat, gw.config.server.bounds)
            ctx.tenant_id = principal.tenant_id
            gw.model(alias, "chat", ctx, principal)
            return json_response({"input_tokens": _count(chat)})
        except Exception as exc:
            return gw.error(ctx, exc, path=ANTHROPIC_PREFIX)


def _stream_error(ctx: RequestContext, error: dict[str, Any]) -> dict[str, Any]:
    """The `error` event of a stream that failed after it started."""
    exc = ShipyardError(str(error.get("message") or "The upstream failed mid-stream."))
    exc.status = ctx.status if ctx.status >= 400 else 502
    return anthropic_error_body(exc)


def anthropic_routes(gateway: Gateway) -> list[ScopedRoute]:
    routes = AnthropicRoutes(gateway)
    return [
        ScopedRoute("/v1/messages", routes.messages, methods=["POST"], scope="inference"),
        ScopedRoute("/v1/messages/count_tokens", routes.count_tokens, methods=["POST"],
                    scope="inference"),
    ]

