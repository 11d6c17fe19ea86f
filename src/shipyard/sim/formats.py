"""`shipyard sim --format anthropic|gemini|bedrock|ollama|azure`: the simulated model speaking
another provider's wire API, with the same fault knobs and admin API as the OpenAI one.

Each format translates the native request to an OpenAI one (the reverse translators of
`shipyard.providers.formats`), asks the engine for a complete answer, and writes it back in
the native shape: a JSON answer, or the native stream (Anthropic's named SSE events, Gemini's
SSE `GenerateContentResponse`s, Bedrock's binary event stream, Ollama's NDJSON). Faults come
out in the native error shapes (Anthropic's 503 is its own 529 `overloaded_error`).

The engine is used through one method, `chat(body, text=...)` (see `ChatEngine`). Until the
engine answers tools and `response_format` itself, `_shape` makes the answer a tool call when
the request forces one (or offers exactly one tool for the user's question), and JSON when
JSON is asked for, so every kind's tool and JSON paths can be tested end to end.
"""

from __future__ import annotations

import asyncio
import hmac
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from aiohttp import web

from shipyard.errors import ShipyardError
from shipyard.providers.formats import anthropic, bedrock, gemini, ollama
from shipyard.providers.formats.openai import ChunkWriter, json_output, new_id, sse, tool_call

if TYPE_CHECKING:
    from shipyard.sim.server import SimServer

__all__ = ["FORMATS", "ChatEngine", "FormatSim", "answer_chunks"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ChatEngine(Protocol):
    """What a format simulator needs of the engine: one complete OpenAI chat answer."""

    def chat(self, body: dict[str, Any], *, omit_usage: bool = False,
             text: str | None = None) -> dict[str, Any]: ...


# -- answers ---------------------------------------------------------------------------------
def _sample(schema: Any) -> Any:
    """A value that fits a JSON Schema (enough of it for tool arguments and JSON output)."""
    if not isinstance(schema, dict):
        return "sim"
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        return {k: _sample(v) for k, v in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [_sample(schema.get("items"))]
    return {"integer": 1, "number": 1.5, "boolean": True, "null": None}.get(str(kind), "sim")


def _shape(request: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    message = answer["choices"][0]["message"]
    if message.get("tool_calls"):
        return answer
    tools = [t["function"] for t in request.get("tools") or [] if isinstance(t, dict)]
    choice = request.get("tool_choice")
    forced = None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        forced = next((t for t in tools if t.get("name") == name), None)
    elif choice == "required" and tools:
        forced = tools[0]
    elif choice in (None, "auto") and len(tools) == 1 and (
            (request.get("messages") or [{}])[-1].get("role") == "user"):
        forced = tools[0]  # one tool offered for the user's question: the sim calls it
    if forced is not None:
        message["content"] = None
        message["tool_calls"] = [tool_call(new_id("call_"), str(forced.get("name")),
                                           _sample(forced.get("parameters")))]
        answer["choices"][0]["finish_reason"] = "tool_calls"
        return answer
    wanted = json_output(request)
    if wanted is not None:
        try:
            orjson.loads(message.get("content") or "")
        except orjson.JSONDecodeError:
            value = _sample(wanted[1]) if wanted[1].get("properties") else {
                "answer": message.get("content")}
            message["content"] = orjson.dumps(value).decode()
    return answer


def answer_chunks(answer: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A complete `chat.completion` as the chunks of its stream (words, then tool calls,
    the finish reason and usage)."""
    writer = ChunkWriter(id=answer["id"], model=answer["model"], created=answer["created"])
    choice = answer["choices"][0]
    message = choice["message"]
    yield writer.role()
    words = (message.get("content") or "").split(" ")
    for i, word in enumerate(words if message.get("content") else []):
        yield writer.text(word if i == 0 else " " + word)
    for i, call in enumerate(message.get("tool_calls") or []):
        yield writer.tool_start(i, call["id"], call["function"]["name"])
        arguments = call["function"]["arguments"]
        half = len(arguments) // 2
        for piece in (arguments[:half], arguments[half:]):
            if piece:
                yield writer.tool_arguments(i, piece)
    yield writer.finish(choice["finish_reason"])
    if answer.get("usage"):
        yield writer.usage(answer["usage"])


# -- the formats -------------------------------------------------------------------------
class FormatSim:
    """One wire format over a `SimServer`'s engine, faults and counters."""

    name = "format"
    content_type = "text/event-stream"

    def __init__(self, server: SimServer) -> None:
        self.server = server

    # What each format defines.
    def routes(self) -> list[tuple[str, str, Handler]]:
        raise NotImplementedError

    def error(self, status: int, message: str, headers: dict[str, str] | None = None
              ) -> web.Response:
        raise NotImplementedError

    def authorized(self, request: web.Request, body: bytes) -> bool:
        return _bearer(request, self.server.api_key)

    def encode(self, event: Any) -> bytes:
        raise NotImplementedError

    def stream_events(self, request: dict[str, Any], answer: dict[str, Any]) -> Iterator[Any]:
        raise NotImplementedError

    # Shared.
    async def serve(self, request: web.Request, *, model: str, stream: bool,
                    to_openai: Callable[[dict[str, Any]], dict[str, Any]],
                    to_native: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]],
                    ) -> web.StreamResponse:
        raw = await request.read()
        if not self.authorized(request, raw):
            return self.error(401, "Invalid API key or signature.")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self.error(400, "The request body is not valid JSON.")
        if not isinstance(body, dict):
            return self.error(400, "The request body must be a JSON object.")
        try:
            chat = to_openai({**body, "model": model} if model else body)
        except (ShipyardError, TypeError, AttributeError, KeyError) as exc:
            message = exc.message if isinstance(exc, ShipyardError) else repr(exc)
            return self.error(400, f"Invalid request: {message}")
        fault = await self.server.fault(request, f"{self.name}", stream, self.error)
        if isinstance(fault, web.StreamResponse):
            return fault
        faults = self.server.faults
        text = faults.replies.pop(0) if faults.replies else None
        answer = _shape(chat, self.server.model.chat(chat, text=text))
        if not stream:
            payload = orjson.dumps(to_native(chat, answer))
            if fault == "cut":
                return await self.server.cut_plain(request, payload)
            return web.Response(body=payload, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": self.content_type,
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        delay = faults.token_delay_ms / 1000.0
        for i, event in enumerate(self.stream_events(chat, answer)):
            if fault == "cut" and i >= faults.cut_after_chunks:
                if request.transport is not None:
                    request.transport.abort()
                return response
            if delay and i:
                await asyncio.sleep(delay)
            await response.write(self.encode(event))
        await response.write_eof()
        return response


def _bearer(request: web.Request, secret: str | None) -> bool:
    if secret is None:
        return True
    header = request.headers.get("Authorization", "")
    given = header[7:] if header.lower().startswith("bearer ") else ""
    return hmac.compare_digest(given.encode(), secret.encode())


def _prompt_tokens(answer: dict[str, Any]) -> int:
    return int((answer.get("usage") or {}).get("prompt_tokens") or 0)


class AnthropicSim(FormatSim):
    name = "messages"

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [("POST", "/v1/messages", self.messages)]

    def authorized(self, request: web.Request, body: bytes) -> bool:
        # `x-api-key`, or a bearer token as recent Anthropic SDKs send the key.
        key = self.server.api_key
        if key is None or "x-api-key" not in request.headers:
            return _bearer(request, key)
        return hmac.compare_digest(request.headers["x-api-key"].encode(), key.encode())

    def error(self, status: int, message: str, headers: dict[str, str] | None = None
              ) -> web.Response:
        status = 529 if status == 503 else status  # Anthropic's own "overloaded"
        return web.Response(body=orjson.dumps(anthropic.error_body(status, message)),
                            status=status, content_type="application/json", headers=headers)

    async def messages(self, request: web.Request) -> web.StreamResponse:
        if "anthropic-version" not in request.headers:
            return self.error(400, "anthropic-version: header is required")
        return await self.serve(
            request, model="", stream=bool(await self._stream_flag(request)),
            to_openai=anthropic.to_openai,
            to_native=lambda chat, answer: anthropic.to_anthropic_response(
                answer, model=str(chat.get("model"))))

    @staticmethod
    async def _stream_flag(request: web.Request) -> bool:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return False
        return isinstance(body, dict) and bool(body.get("stream"))

    def encode(self, event: Any) -> bytes:
        name, data = event
        return sse(data, name)

    def stream_events(self, request: dict[str, Any], answer: dict[str, Any]) -> Iterator[Any]:
        writer = anthropic.StreamWriter(model=str(request.get("model")),
                                        input_tokens=_prompt_tokens(answer))
        for n, chunk in enumerate(answer_chunks(answer)):
            yield from writer.feed(chunk)
            if n == 0:
                yield ("ping", {"type": "ping"})
        yield from writer.end()


_GEMINI_PATH = re.compile(r"^(?P<model>[^:]+):(?P<method>generateContent|streamGenerateContent)$")


class GeminiSim(FormatSim):
    name = "generate"

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [("POST", "/v1beta/models/{call}", self.generate),
                ("POST", "/v1/models/{call}", self.generate)]

    def authorized(self, request: web.Request, body: bytes) -> bool:
        key = self.server.api_key
        given = request.headers.get("x-goog-api-key") or request.query.get("key") or ""
        return key is None or hmac.compare_digest(given.encode(), key.encode())

    def error(self, status: int, message: str, headers: dict[str, str] | None = None
              ) -> web.Response:
        return web.Response(body=orjson.dumps(gemini.error_body(status, message)),
                            status=status, content_type="application/json", headers=headers)

    async def generate(self, request: web.Request) -> web.StreamResponse:
        match = _GEMINI_PATH.match(request.match_info["call"])
        if match is None:
            return self.error(404, f"Method not found: {request.match_info['call']}.")
        model = match["model"]
        stream = match["method"] == "streamGenerateContent"
        if stream and request.query.get("alt") != "sse":
            return self.error(400, "This simulator streams with ?alt=sse only.")
        return await self.serve(
            request, model=model, stream=stream,
            to_openai=lambda body: gemini.to_openai(body, model=model, stream=stream),
            to_native=lambda chat, answer: gemini.to_gemini_response(answer, model=model))

    def encode(self, event: Any) -> bytes:
        return sse(event)

    def stream_events(self, request: dict[str, Any], answer: dict[str, Any]) -> Iterator[Any]:
        writer = gemini.StreamWriter(model=str(request.get("model")))
        for chunk in answer_chunks(answer):
            yield from writer.feed(chunk)
        yield from writer.end()


class BedrockSim(FormatSim):
    name = "converse"
    content_type = "application/vnd.amazon.eventstream"

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [("POST", "/model/{model}/converse", self.converse),
                ("POST", "/model/{model}/converse-stream", self.converse)]

    def authorized(self, request: web.Request, body: bytes) -> bool:
        secret = self.server.api_key
        if secret is None:
            return True
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("bearer "):
            return _bearer(request, secret)
        return verify_sigv4(request, body, secret)

    def error(self, status: int, message: str, headers: dict[str, str] | None = None
              ) -> web.Response:
        kind = ("UnrecognizedClientException" if status == 401
                else bedrock.ERROR_TYPES.get(status, "InternalServerException"))
        status = 403 if status == 401 else status  # AWS answers bad signatures with 403
        return web.Response(body=orjson.dumps({"message": message}), status=status,
                            content_type="application/json",
                            headers={**(headers or {}), "x-amzn-ErrorType": f"{kind}:http://"
                                     "internal.amazon.com/coral/com.amazon.bedrock/"})

    async def converse(self, request: web.Request) -> web.StreamResponse:
        model = request.match_info["model"]
        stream = request.path.endswith("/converse-stream")
        return await self.serve(
            request, model=model, stream=stream,
            to_openai=lambda body: bedrock.to_openai(body, model=model, stream=stream),
            to_native=lambda chat, answer: bedrock.to_converse_response(answer, latency_ms=1))

    def encode(self, event: Any) -> bytes:
        return bedrock.encode_event(*event)

    def stream_events(self, request: dict[str, Any], answer: dict[str, Any]) -> Iterator[Any]:
        writer = bedrock.StreamWriter()
        for chunk in answer_chunks(answer):
            yield from writer.feed(chunk)
        yield from writer.end(latency_ms=1)


class OllamaSim(FormatSim):
    name = "api_chat"
    content_type = "application/x-ndjson"

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [("POST", "/api/chat", self.chat), ("GET", "/api/tags", self.tags)]

    def error(self, status: int, message: str, headers: dict[str, str] | None = None
              ) -> web.Response:
        return web.Response(body=orjson.dumps({"error": message}), status=status,
                            content_type="application/json", headers=headers)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = {}
        stream = not isinstance(body, dict) or body.get("stream", True) is not False
        return await self.serve(
            request, model="", stream=stream, to_openai=ollama.to_openai,
            to_native=lambda chat, answer: ollama.to_ollama_response(
                answer, model=str(chat.get("model")), started=started))

    async def tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": m, "model": m}
                                             for m in self.server.models]})

    def encode(self, event: Any) -> bytes:
        return ollama.encode_line(event)

    def stream_events(self, request: dict[str, Any], answer: dict[str, Any]) -> Iterator[Any]:
        writer = ollama.StreamWriter(model=str(request.get("model")),
                                     started=time.perf_counter())
        for chunk in answer_chunks(answer):
            yield from writer.feed(chunk)
        yield from writer.end()


class AzureSim(FormatSim):
    """Azure OpenAI: the OpenAI wire format at Azure's URLs, with Azure's auth —
    `/openai/deployments/NAME/...` with a required `api-version`, the v1 API at
    `/openai/v1/...`, and the key in `api-key` (or an Entra ID bearer token)."""

    name = "azure"

    def routes(self) -> list[tuple[str, str, Handler]]:
        server = self.server
        routes: list[tuple[str, str, Handler]] = []
        for endpoint, handler in (("chat/completions", self.chat),
                                  ("completions", server.completions),
                                  ("embeddings", server.embeddings)):
            routes.append(("POST", f"/openai/deployments/{{deployment}}/{endpoint}",
                           self._versioned(handler)))
            routes.append(("POST", f"/openai/v1/{endpoint}", handler))
        return routes

    def authorized(self, request: web.Request, body: bytes) -> bool:
        key = self.server.api_key
        if key is None or "api-key" not in request.headers:
            return _bearer(request, key)
        return hmac.compare_digest(request.headers["api-key"].encode(), key.encode())

    def error(self, status: int, message: str, headers: dict[str, str] | None = None
              ) -> web.Response:
        body = {"error": {"message": message, "type": "invalid_request_error" if status < 500
                          else "server_error", "param": None, "code": str(status)}}
        return web.Response(body=orjson.dumps(body), status=status,
                            content_type="application/json", headers=headers)

    def _versioned(self, handler: Handler) -> Handler:
        async def versioned(request: web.Request) -> web.StreamResponse:
            if "api-version" not in request.query:
                return self.error(404, "Resource not found")
            return await handler(request)
        return versioned

    async def chat(self, request: web.Request) -> web.StreamResponse:
        deployment = request.match_info.get("deployment")
        try:
            stream = bool(orjson.loads(await request.read()).get("stream"))
        except (orjson.JSONDecodeError, AttributeError):
            stream = False

        def to_openai(body: dict[str, Any]) -> dict[str, Any]:
            return {**body, "model": deployment or body.get("model")}

        return await self.serve(request, model="", stream=stream, to_openai=to_openai,
                                to_native=lambda chat, answer: answer)

    def encode(self, event: Any) -> bytes:
        return b"data: [DONE]\n\n" if event is None else sse(event)

    def stream_events(self, request: dict[str, Any], answer: dict[str, Any]) -> Iterator[Any]:
        wants_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        for chunk in answer_chunks(answer):
            if chunk["choices"] or wants_usage:
                yield chunk
        yield None


FORMATS: dict[str, type[FormatSim]] = {
    "anthropic": AnthropicSim, "gemini": GeminiSim, "bedrock": BedrockSim, "ollama": OllamaSim,
    "azure": AzureSim}

_SIGV4 = re.compile(r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)"
                    r"/(?P<service>[^/]+)/aws4_request, ?SignedHeaders=(?P<signed>[^,]+), ?"
                    r"Signature=(?P<signature>[0-9a-f]{64})")


def verify_sigv4(request: web.Request, body: bytes, secret: str) -> bool:
    """Check a request's AWS Signature Version 4 with botocore, as AWS would: recompute it
    from the signed headers, the path as sent and the body, and compare in constant time."""
    from botocore.auth import SigV4Auth  # the `bedrock` extra; --format bedrock needs it
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    match = _SIGV4.fullmatch(request.headers.get("Authorization", ""))
    stamp = request.headers.get("X-Amz-Date", "")
    if match is None or not stamp.startswith(match["date"]):
        return False
    headers = {name: request.headers[name] for name in match["signed"].split(";")
               if name in request.headers}
    aws = AWSRequest(method=request.method, url=f"http://{request.host}{request.raw_path}",
                     data=body, headers=headers)
    aws.context["timestamp"] = stamp
    credentials = Credentials(match["key"], secret, request.headers.get("X-Amz-Security-Token"))
    auth = SigV4Auth(credentials, match["service"], match["region"])
    expected = auth.signature(auth.string_to_sign(aws, auth.canonical_request(aws)), aws)
    return hmac.compare_digest(expected.encode(), match["signature"].encode())
