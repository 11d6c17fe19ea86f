"""`shipyard sim`: the simulated model over HTTP, with faults that can be flipped mid-run.

It speaks OpenAI's API, or with `format` another provider's (`shipyard.sim.formats`).

Built on aiohttp's server because chaos needs what ASGI hides: the raw transport, to reset a
connection or cut a stream mid-answer.

Admin endpoints (for tests and chaos drills):
- `GET /_sim/faults` shows the knobs, `PATCH /_sim/faults` changes some (JSON object),
  `PUT /_sim/faults` replaces all (missing knobs go back to defaults);
- `replies` (a fault knob) scripts the next chat answers, one per request, in order;
- `GET /_sim/stats` counts requests by route and outcome; `POST /_sim/reset` zeroes them.
When started with `--admin-token`, the admin endpoints need `Authorization: Bearer <token>`;
with `--api-key`, the model endpoints need it too, like a real provider.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import orjson
from aiohttp import web

from shipyard.sim.engine import Faults, SimModel, SimRequestError
from shipyard.sim.formats import FORMATS

__all__ = ["SIM_FORMATS", "SimServer", "build_sim_app", "run_sim"]

log = logging.getLogger("shipyard.sim")
SIM_FORMATS = ("openai", *FORMATS)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str, type_: str = "invalid_request_error",
           code: str | None = None, headers: dict[str, str] | None = None,
           param: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return web.Response(body=orjson.dumps(body), status=status,
                        content_type="application/json", headers=headers)


class SimServer:
    """State of one simulated upstream: the model, the faults and the counters."""

    def __init__(self, faults: Faults | None = None, *, api_key: str | None = None,
                 admin_token: str | None = None, seed: int | None = None,
                 models: tuple[str, ...] = ("sim-chat", "sim-embed")) -> None:
        self.faults = faults or Faults()
        self.model = SimModel(seed=seed)
        self.api_key = api_key
        self.admin_token = admin_token
        self.models = models
        self.stats: Counter[str] = Counter()

    # -- auth -------------------------------------------------------------------------------
    @staticmethod
    def _bearer_ok(request: web.Request, secret: str | None) -> bool:
        if secret is None:
            return True
        header = request.headers.get("Authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else ""
        return hmac.compare_digest(given.encode(), secret.encode())

    # -- model routes -----------------------------------------------------------------------
    def _key_ok(self, request: web.Request) -> bool:
        """A bearer key, or Azure OpenAI's `api-key` header."""
        if self.api_key is not None and "api-key" in request.headers:
            return hmac.compare_digest(request.headers["api-key"].encode(),
                                       self.api_key.encode())
        return self._bearer_ok(request, self.api_key)

    async def _body(self, request: web.Request) -> dict[str, Any] | web.Response:
        if not self._key_ok(request):
            return _error(401, "Incorrect API key provided.", "authentication_error",
                          "invalid_api_key")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "We could not parse the JSON body of your request.")
        if not isinstance(body, dict):
            return _error(400, "The request body must be a JSON object.")
        return body

    async def fault(self, request: web.Request, route: str, stream: bool,
                    error: Callable[..., web.Response] | None = None
                    ) -> web.StreamResponse | str | None:
        """Apply latency and maybe a fault; returns a response to send, a mode, or None.

        `error(status, message, headers)` writes error answers in the wire format being
        served (the OpenAI shape by default)."""
        faults = self.faults
        delay = self.model.latency_s(faults)
        if delay > 0:
            await asyncio.sleep(delay)
        fault = self.model.draw_fault(faults)
        self.stats[f"{route}:{fault or 'ok'}"] += 1
        self.stats["requests"] += 1
        if fault is None:
            return None
        if fault.isdigit():
            status = int(fault)
            headers = {}
            if status in (429, 503) and faults.retry_after_s is not None:
                headers["Retry-After"] = f"{faults.retry_after_s:g}"
            if error is not None:
                return error(status, f"Simulated {status} error.", headers)
            return _error(status, f"Simulated {status} error.", "server_error"
                          if status >= 500 else "rate_limit_error", f"sim_{status}", headers)
        if fault == "hang":
            await asyncio.sleep(faults.hang_s)
            if error is not None:
                return error(504, "Simulated hang ended.")
            return _error(504, "Simulated hang ended.", "server_error")
        if fault == "reset":
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionResetError("simulated reset")
        if fault == "malformed":
            return web.Response(body=b'{"id": "broken", "choices": [', status=200,
                                content_type="application/json")
        return fault  # "cut": handled by the streaming/non-streaming writers

    async def _respond(self, request: web.Request, route: str,
                       make: Callable[[dict[str, Any]], dict[str, Any]],
                       chunks: Callable[[dict[str, Any]], Iterator[dict[str, Any]]] | None
                       ) -> web.StreamResponse:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        try:
            self.model.check(route, body)  # absurd sizes and bad options: 400, like a real one
        except SimRequestError as exc:
            self.stats[f"{route}:invalid"] += 1
            self.stats["requests"] += 1
            return _error(400, exc.message, code=exc.code, param=exc.param)
        stream = bool(body.get("stream")) and chunks is not None
        fault = await self.fault(request, route, stream)
        if isinstance(fault, web.StreamResponse):
            return fault
        try:
            if not stream or chunks is None:
                payload = orjson.dumps(make(body))
            else:  # the first chunk now, so a refused request is still a plain 400
                iterator = chunks(body)
                first = next(iterator, None)
        except SimRequestError as exc:
            return _error(400, exc.message, code=exc.code, param=exc.param)
        if not stream or chunks is None:
            if fault == "cut":
                return await self.cut_plain(request, payload)
            return web.Response(body=payload, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        delay = self.faults.token_delay_ms / 1000.0
        for i, chunk in enumerate(itertools.chain([first] if first else [], iterator)):
            if fault == "cut" and i >= self.faults.cut_after_chunks:
                if request.transport is not None:
                    request.transport.abort()
                return response
            if delay and i:
                await asyncio.sleep(delay)
            await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def cut_plain(self, request: web.Request, payload: bytes) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(payload)
        await response.prepare(request)
        await response.write(payload[: len(payload) // 2])
        if request.transport is not None:
            request.transport.abort()
        return response

    async def chat(self, request: web.Request) -> web.StreamResponse:
        omit = self.faults.omit_usage
        scripted: list[str | None] = []

        def text() -> str | None:  # one scripted reply per request, taken once
            if not scripted:
                scripted.append(self.faults.replies.pop(0) if self.faults.replies else None)
            return scripted[0]

        return await self._respond(
            request, "chat", lambda b: self.model.chat(b, omit_usage=omit, text=text()),
            lambda b: self.model.chat_chunks(b, omit_usage=omit, text=text()))

    async def completions(self, request: web.Request) -> web.StreamResponse:
        omit = self.faults.omit_usage
        return await self._respond(
            request, "completions", lambda b: self.model.completion(b, omit_usage=omit),
            lambda b: self.model.completion_chunks(b, omit_usage=omit))

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        omit = self.faults.omit_usage
        return await self._respond(
            request, "embeddings", lambda b: self.model.embeddings(b, omit_usage=omit), None)

    async def list_models(self, request: web.Request) -> web.Response:
        if not self._bearer_ok(request, self.api_key):
            return _error(401, "Incorrect API key provided.", "authentication_error")
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "shipyard-sim"}
                for m in self.models]
        return web.json_response({"object": "list", "data": data})

    # -- admin routes -----------------------------------------------------------------------
    def _admin(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            if not self._bearer_ok(request, self.admin_token):
                return _error(401, "The sim admin API needs 'Authorization: Bearer <token>' "
                              "with the --admin-token it was started with.",
                              "authentication_error")
            return await handler(request)
        return guarded

    async def get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self.faults.to_dict())

    async def change_faults(self, request: web.Request) -> web.Response:
        try:
            changes = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "Send the fault knobs as a JSON object, e.g. "
                          '{"error_rates": {"500": 0.3}}.')
        if not isinstance(changes, dict):
            return _error(400, "Send the fault knobs as a JSON object.")
        try:
            if request.method == "PUT":
                self.faults.update({**Faults().to_dict(), **changes})
            else:
                self.faults.update(changes)
        except (TypeError, ValueError) as exc:
            return _error(422, f"Fault knobs not changed: {exc}.")
        log.info("faults changed: %s", changes)
        return web.json_response(self.faults.to_dict())

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(dict(self.stats))

    async def reset_stats(self, request: web.Request) -> web.Response:
        self.stats.clear()
        return web.json_response({})

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "simulated": True})


def build_sim_app(server: SimServer, *, format: str = "openai") -> web.Application:
    """The sim's routes: the OpenAI API, or another wire format (`FORMATS`), plus the
    health probe and the admin API shared by all."""
    app = web.Application(client_max_size=16 * 1024 * 1024)
    if format == "openai":
        app.router.add_post("/v1/chat/completions", server.chat)
        app.router.add_post("/v1/completions", server.completions)
        app.router.add_post("/v1/embeddings", server.embeddings)
        app.router.add_get("/v1/models", server.list_models)
    elif format in FORMATS:
        for method, path, handler in FORMATS[format](server).routes():
            app.router.add_route(method, path, handler)
    else:
        raise ValueError(f"format '{format}' is not one of openai, {', '.join(FORMATS)}")
    app.router.add_get("/livez", server.health)
    app.router.add_get("/_sim/faults", server._admin(server.get_faults))
    app.router.add_patch("/_sim/faults", server._admin(server.change_faults))
    app.router.add_put("/_sim/faults", server._admin(server.change_faults))
    app.router.add_get("/_sim/stats", server._admin(server.get_stats))
    app.router.add_post("/_sim/reset", server._admin(server.reset_stats))
    app["sim"] = server
    return app


def run_sim(server: SimServer, *, host: str = "127.0.0.1", port: int = 9100,
            format: str = "openai") -> None:
    """Serve until interrupted (SIGINT/SIGTERM)."""
    # A short shutdown timeout: hanging requests (a fault on purpose) must not hold the exit.
    web.run_app(build_sim_app(server, format=format), host=host, port=port, print=None,
                access_log=None, handle_signals=True, shutdown_timeout=1.0)
