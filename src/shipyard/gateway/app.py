"""The ASGI app factory: `create_app(config)` returns a Starlette app serving the gateway."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from urllib.parse import parse_qsl

from sqlalchemy import Engine
from sqlalchemy.exc import DataError, InterfaceError, OperationalError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route

from shipyard.config import env
from shipyard.config.loader import install_python_path, load_config
from shipyard.config.schema import Config
from shipyard.config.server import CorsConfig
from shipyard.connectors.manager import Connectors
from shipyard.errors import (
    CapacityError,
    ClientError,
    ConfigError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    ShipyardError,
    StoreUnavailable,
)
from shipyard.gateway.admin_routes import admin_routes
from shipyard.gateway.anthropic_routes import anthropic_routes
from shipyard.gateway.batch_routes import batch_routes
from shipyard.gateway.escalation_routes import escalation_routes
from shipyard.gateway.feedback_routes import feedback_routes
from shipyard.gateway.health import health_routes
from shipyard.gateway.http import (
    ANTHROPIC_PREFIX,
    error_response,
    internal_error,
    raw_error_response,
)
from shipyard.gateway.invoke import Invoker
from shipyard.gateway.job_routes import attach_runners, job_routes
from shipyard.gateway.lifecycle_routes import lifecycle_routes
from shipyard.gateway.openai_routes import openai_routes
from shipyard.gateway.openapi import openapi_route
from shipyard.gateway.recorder import QUEUE_MS
from shipyard.gateway.responses_routes import responses_routes
from shipyard.gateway.runtime import Gateway
from shipyard.gateway.service_routes import service_routes
from shipyard.gateway.webhook_routes import webhook_routes
from shipyard.guards.embeddings import use_threads
from shipyard.resilience.admission import BATCH, INTERACTIVE
from shipyard.types import ASGIApp, Message, Receive, Scope, Send
from shipyard.ui.chat import chat_routes
from shipyard.ui.routes import ui_routes

__all__ = ["FastPath", "app_from_env", "create_app"]

# Endpoints that render all of their own errors, so they may skip Starlette's middleware.
_DIRECT = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                     "/v1/responses", "/v1/messages"})
# Paths that spend capacity, and their route names: the gateway-wide admission guards them.
_ADMITTED = {"/v1/chat/completions": "chat", "/v1/completions": "completions",
             "/v1/embeddings": "embeddings", "/v1/responses": "responses",
             "/v1/messages": "messages"}
_PROBES = frozenset({"/livez", "/readyz"})
_INVOKE = "/v1/services/{name}/invoke"  # its endpoint, too, renders all of its own errors

log = logging.getLogger("shipyard.gateway")


def create_app(config: Config, *, engine: Engine | None = None,
               migrate: bool = True, config_path: str | None = None) -> FastPath:
    """Build the gateway app for `config`.

    >>> from shipyard.config import parse_config
    >>> app = create_app(parse_config("auth: {disabled: true}"))  # doctest: +SKIP

    With `migrate=False` the store schema is assumed current (`shipyard serve` migrates before
    it starts the serving process).
    """
    install_python_path(config)
    use_threads(config.server.embedding_threads)
    gateway = Gateway(config, engine=engine, migrate=migrate, config_path=config_path)
    attach_runners(gateway)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        connectors = Connectors(gateway, Invoker(gateway))
        try:
            await connectors.start()  # those with autostart: true
            yield
        finally:
            await connectors.stop(grace_s=min(15.0, config.server.drain_timeout_s))
            await gateway.stop()

    async def shipyard_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, ShipyardError):  # pragma: no cover - registered for this type
            raise exc
        return error_response(exc, path=request.url.path)

    async def http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        if status == 404:
            error: ShipyardError = NotFound(
                f"There is no route {request.method} {request.url.path}. {catalogue[0]}",
                code="route_not_found")
        elif status == 405:
            allowed = _allowed_methods(app.routes, request.scope)
            error = MethodNotAllowed(
                f"{request.method} is not allowed on {request.url.path}; use "
                f"{' or '.join(allowed) or 'another route'}.",
                headers={"allow": ", ".join(allowed)})
        else:
            error = ClientError(str(getattr(exc, "detail", "Bad request.")))
            error.status = status
        return error_response(error, path=request.url.path)

    async def server_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, DataError) and "NUL" in str(exc.orig):
            return error_response(_nul_error(request.scope), path=request.url.path)
        if isinstance(exc, OperationalError | InterfaceError | TimeoutError | OSError):
            # The store (or another dependency) is down: the caller should retry, and it is
            # not an internal error of ours.
            log.warning("%s %s: the store cannot be reached (%s)", request.method,
                        request.url.path, type(exc).__name__)
            return error_response(StoreUnavailable(
                "The store cannot be reached right now; retry in a few seconds.",
                headers={"retry-after": "2"}), path=request.url.path)
        return error_response(internal_error(exc), path=request.url.path)

    routes = [*health_routes(gateway), *openai_routes(gateway), *responses_routes(gateway),
              *anthropic_routes(gateway),
              *service_routes(gateway), *job_routes(gateway), *batch_routes(gateway),
              *admin_routes(gateway), *feedback_routes(gateway), *escalation_routes(gateway),
              *webhook_routes(gateway), *lifecycle_routes(gateway),
              openapi_route(gateway), *ui_routes(gateway), *chat_routes(gateway)]
    catalogue = [_route_catalogue(routes)]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            ShipyardError: shipyard_error,
            HTTPException: http_error,
            Exception: server_error,
        },
    )
    app.state.gateway = gateway
    return FastPath(app, routes, cors=config.server.cors, gateway=gateway)


def _route_catalogue(routes: Sequence[BaseRoute]) -> str:
    """The sentence a 404 ends with: every API route with its methods, from the route table."""
    methods: dict[str, set[str]] = {}
    for route in routes:
        if isinstance(route, Route) and route.path.startswith("/v1/"):
            path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)  # {model:path} -> {model}
            methods.setdefault(path, set()).update((route.methods or set()) - {"HEAD"})
    listed = ", ".join(f"{'|'.join(sorted(m))} {p}" for p, m in methods.items())
    return (f"The API routes are: {listed}. Health probes are /livez and /readyz, the "
            "dashboard is /ui, and GET /openapi.json describes every route.")


def _allowed_methods(routes: Sequence[BaseRoute], scope: Scope) -> list[str]:
    """Every method some route accepts on this path (routes may split methods)."""
    allowed: set[str] = set()
    for route in routes:
        if isinstance(route, Route) and route.methods and \
                route.matches({**scope, "method": "GET"})[0] != Match.NONE:
            allowed |= route.methods
    return sorted(allowed)


def _nul_error(scope: Scope) -> InvalidRequest:
    """The 400 for a NUL character that reached the store, naming the parameter holding it.

    PostgreSQL text cannot hold a NUL and no Shipyard field needs one; a route that forgot to
    refuse one still answers a 400, after authentication (so a caller without the scope
    still gets its 401/403 first), never a 500."""
    if "\x00" in scope["path"]:
        return InvalidRequest(f"The path {scope['path']!r} contains a NUL character; remove it.")
    for name, value in parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True):
        if "\x00" in name or "\x00" in value:
            return InvalidRequest(f"Query parameter {name!r} contains a NUL character (%00); "
                                  "remove it.", param=name)
    return InvalidRequest("The request contains a NUL character (\\u0000 or %00), which the "
                          "store cannot hold; remove it.")


class FastPath:
    """Dispatch the hot, fixed-path routes straight to their endpoints.

    Starlette's middleware and router cost several percent per request at gateway rates. The
    inference endpoints catch and render every error themselves, so for exact-path routes this
    goes straight to the endpoint; everything else (path parameters, 404/405, lifespan) goes
    through the Starlette app unchanged.
    """

    def __init__(self, app: Starlette, routes: Sequence[BaseRoute], *,
                 cors: CorsConfig | None = None, gateway: Gateway | None = None) -> None:
        self.app = app
        self.state = app.state
        self.gateway = gateway
        self.routes = app.routes
        # CORS is closed unless origins are configured; then every response (fast path too)
        # goes through Starlette's CORS middleware, and preflights are answered there.
        self._entry: ASGIApp = self._dispatch
        self._cors = False
        # Pre-built refusals (`refuse_unread`), by (Anthropic shape, in flight, queued, wait).
        self._refusals: dict[tuple[bool, int, int, float], bytes] = {}
        if cors is not None and cors.allow_origins:
            self._cors = True
            self._entry = CORSMiddleware(
                self._dispatch, allow_origins=cors.allow_origins,
                allow_methods=cors.allow_methods, allow_headers=cors.allow_headers,
                allow_credentials=cors.allow_credentials, max_age=cors.max_age_s,
                expose_headers=["x-request-id", "x-shipyard-trace-id", "retry-after"])
        self._direct: dict[tuple[str, str], Callable[[Request], Awaitable[Response]]] = {}
        self._invoke: Route | None = None  # POST /v1/services/{name}/invoke
        for route in routes:
            if isinstance(route, Route) and route.path in _DIRECT and route.methods:
                for method in route.methods:
                    self._direct[(method, route.path)] = route.endpoint
            elif isinstance(route, Route) and route.path == _INVOKE and route.methods \
                    and "POST" in route.methods:
                self._invoke = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._entry(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            gateway = self.gateway
            if (gateway is not None and gateway.draining
                    and scope["path"] not in _PROBES):
                # Every route, not only the inference ones: 503 with Connection: close, so a
                # client on a kept-alive connection retries elsewhere instead of being reset.
                try:
                    gateway.refuse_if_draining()
                except CapacityError as exc:
                    await error_response(exc, path=scope["path"])(scope, receive, send)
                    return
            if (gateway is not None and scope["method"] == "POST"
                    and gateway.admission.max_in_flight is not None):
                route = _inference_route(scope["path"])
                if route is not None:
                    await self._admitted(gateway, route, scope, receive, send)
                    return
            await self._serve(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self._direct.get((scope["method"], scope["path"]))
        if endpoint is not None:
            scope["app"] = self.app
            response = await endpoint(Request(scope, receive, send))
            await response(scope, receive, send)
            return
        if self._invoke is not None and scope["method"] == "POST":
            name = _service_of(scope["path"])
            if name is not None:
                # What Starlette's router would set for this route (its `{name}` matches
                # one non-empty path segment), without walking the route table.
                scope["app"] = self.app
                scope["route"] = self._invoke
                scope["endpoint"] = self._invoke.endpoint
                scope["path_params"] = {"name": name}
                response = await self._invoke.endpoint(Request(scope, receive, send))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, _with_security_headers(send))

    async def _admitted(self, gateway: Gateway, route: tuple[str, str | None], scope: Scope,
                        receive: Receive, send: Send) -> None:
        """Hold a slot of the gateway-wide admission (`server.max_in_flight`) for the whole
        request — for streams, until the last byte. A request that finds no slot (queue full,
        or `max_queue_ms` waited) is refused with 503 and `Retry-After` before anything else
        is done: no authentication, no body read, no trace row (it is counted in metrics and
        in the rollups), so shedding costs far less than serving."""
        admission = gateway.admission
        try:
            waited = await admission.acquire(_priority(scope))
        except CapacityError as exc:
            gateway.recorder.shed(route[0], _known(gateway, route[1]))
            await error_response(exc, path=scope["path"])(scope, receive, send)
            return
        scope.setdefault("state", {})[QUEUE_MS] = waited
        status = 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.monotonic()
        try:
            await self._serve(scope, receive, sending)
        finally:
            # Overload signals (429, 503, 504) teach an adaptive limit to back off.
            admission.observe(time.monotonic() - started, overloaded=status in (429, 503, 504))
            admission.release()

    def refuse_unread(self, method: bytes, path: bytes) -> bytes | None:
        """The whole HTTP answer (a 503 with `Retry-After`) for a request that the
        gateway-wide admission has no room for, not even in its queue — decided from the
        request line alone, so the server can write it before the body is read, anyone is
        authenticated or the app is called (`gateway.protocol`). The refusal is counted as a
        shed, exactly as `_admitted` counts it. None when the request may be admitted or queued,
        or is not one admission guards, or CORS must decorate the answer: then the server goes
        on as usual and `_admitted` decides."""
        gateway = self.gateway
        if gateway is None or method != b"POST" or self._cors or gateway.draining:
            return None
        admission = gateway.admission
        if admission.max_in_flight is None:
            return None
        text = path.decode("latin-1")
        route = _inference_route(text)
        if route is None:
            return None
        if not admission.full():
            admission.expect()  # it will take a slot or a queue place: the next may not
            return None
        admission.refuse()
        gateway.recorder.shed(route[0], _known(gateway, route[1]))
        anthropic = text.startswith(ANTHROPIC_PREFIX)
        key = (anthropic, admission.in_flight, admission.queued, admission.max_queue_ms)
        answer = self._refusals.get(key)
        if answer is None:
            if len(self._refusals) >= 64:  # bounded: the keys come from config and load
                self._refusals.clear()
            answer = self._refusals[key] = raw_error_response(admission.full_error(),
                                                              path=text)
        return answer


def _known(gateway: Gateway, service: str | None) -> str | None:
    """The service a refused request named, if it is one: a name from an unauthenticated path
    must not become a metric label (every new label value is a new series, kept forever)."""
    return service if service is not None and service in gateway.services else None


def _service_of(path: str) -> str | None:
    """The service name of a `/v1/services/{name}/invoke` path, or None."""
    if path.startswith("/v1/services/") and path.endswith("/invoke"):
        name = path[13:-7]
        if name and "/" not in name:
            return name
    return None


def _inference_route(path: str) -> tuple[str, str | None] | None:
    """(route, service) of a path that spends capacity, or None (probes, admin, the UI)."""
    route = _ADMITTED.get(path)
    if route is not None:
        return route, None
    if path.startswith("/v1/services/") and path.endswith("/invoke"):
        return "invoke", path[len("/v1/services/"):-len("/invoke")] or None
    return None


def _priority(scope: Scope) -> int:
    for name, value in scope.get("headers", ()):
        if name == b"x-shipyard-priority":
            return BATCH if value == b"batch" else INTERACTIVE
    return INTERACTIVE


_HTML_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
]


def _with_security_headers(send: Send) -> Send:
    """Add security headers to HTML pages (the dashboard); API responses are JSON. A page
    that sets its own (the dashboard's stricter policy) keeps it."""

    async def sender(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = message.get("headers", [])
            if any(k == b"content-type" and v.startswith(b"text/html") for k, v in headers):
                present = {k for k, _ in headers}
                message["headers"] = [*headers, *(h for h in _HTML_HEADERS
                                                  if h[0] not in present)]
        await send(message)

    return sender


def app_from_env() -> FastPath:
    """Factory for `uvicorn --factory` and worker processes: config from SHIPYARD_CONFIG."""
    path = env.config_path_from_env()
    if not path:
        raise ConfigError("SHIPYARD_CONFIG is not set; start the gateway with "
                          "'shipyard serve --config PATH'.")
    return create_app(load_config(path), config_path=path)
