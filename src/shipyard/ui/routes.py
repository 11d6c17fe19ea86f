"""The dashboard's HTTP side: login and logout, static assets, and one route per page.

Every route but `/ui/login` and `/ui/static/*` needs a session cookie (see `ui.session`);
without one the browser is sent to the login form. Pages are rendered on the server (Jinja2)
and draw their charts with the plotly.js that ships inside the `plotly` package, served from
`/ui/static/` with long cache headers: nothing is fetched from anywhere else, and the content
security policy forbids it.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import orjson
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from shipyard._version import __version__
from shipyard.config.traces import default_spool_dir
from shipyard.errors import (
    AuthenticationFailed,
    PermissionDenied,
    RateLimited,
    ShipyardError,
    StoreUnavailable,
)
from shipyard.escalation import store as tickets
from shipyard.gateway.runtime import Gateway
from shipyard.gateway.scopes import ScopedRoute
from shipyard.security.roles import PLATFORM_TENANT, ROLE_SCOPES
from shipyard.store.tenants import KEY_PREFIX
from shipyard.ui import connector_pages as _connector_pages  # noqa: F401  (registers its pages)
from shipyard.ui import job_pages as _job_pages  # noqa: F401  (registers its pages)
from shipyard.ui import lifecycle_pages as _lifecycle_pages  # noqa: F401  (registers its pages)
from shipyard.ui import monitor_pages as _monitor_pages  # noqa: F401  (registers its pages)
from shipyard.ui import readiness_pages as _readiness_pages  # noqa: F401  (registers its pages)
from shipyard.ui import webhook_pages as _webhook_pages  # noqa: F401  (registers its pages)
from shipyard.ui.charts import figure_json
from shipyard.ui.pages import PAGES, RANGES, Page, PageContext, PageError, nav
from shipyard.ui.session import COOKIE, CSRF_COOKIE, Session, SessionSigner, load_secret

try:
    import jinja2
except ImportError:  # pragma: no cover - the `ui` extra is not installed
    jinja2 = None  # type: ignore[assignment]

__all__ = ["CSP", "ui_routes"]

log = logging.getLogger("shipyard.ui")

CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_PAGE_HEADERS = {"content-security-policy": CSP, "cache-control": "no-store",
                 "x-frame-options": "DENY", "referrer-policy": "no-referrer",
                 "x-content-type-options": "nosniff"}
_STATIC_DIR = Path(__file__).parent / "static"
_TEMPLATES = Path(__file__).parent / "templates"
_STATIC_TYPES = {"app.js": "text/javascript", "app.css": "text/css",
                 "favicon.svg": "image/svg+xml"}
_LOGIN_MAX_BYTES = 16_384
_MISSING = ("The dashboard needs the 'ui' extra, which is not installed; run: "
            "pip install 'shipyard[ui]'")


class _Asset:
    """One static file held in memory (and gzipped), named by a hash of its content."""

    def __init__(self, body: bytes, media_type: str) -> None:
        self.body = body
        self.media_type = media_type
        self.version = hashlib.sha256(body).hexdigest()[:12]

    @cached_property
    def gzipped(self) -> bytes:
        return gzip.compress(self.body, 6)


class Dashboard:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.config = gateway.config.ui
        self._signer: SessionSigner | None = None
        self._assets: dict[str, _Asset] = {}
        self.env: Any = None
        if jinja2 is not None:
            self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(_TEMPLATES)),
                                          autoescape=True, trim_blocks=True,
                                          lstrip_blocks=True)
            self.env.globals.update(static=self.static_url, figure_json=figure_json,
                                    ranges=list(RANGES), version=__version__)

    # -- plumbing ---------------------------------------------------------------------------
    @property
    def signer(self) -> SessionSigner:
        if self._signer is None:  # lazily: building an app must not write files
            configured = self.config.session_secret
            secret = load_secret(configured.get_secret_value() if configured else None,
                                 Path(default_spool_dir(self.gw.config)).parent)
            self._signer = SessionSigner(secret, ttl_s=self.config.session_ttl_s)
        return self._signer

    def asset(self, name: str) -> _Asset | None:
        asset = self._assets.get(name)
        if asset is None:
            if name == "plotly.min.js":
                # Imported on first use: plotly is heavy, and only browsers need its script.
                try:
                    from plotly.offline import get_plotlyjs
                except ImportError:  # the `ui` extra is not installed
                    return None
                asset = _Asset(get_plotlyjs().encode(), "text/javascript")
            elif name in _STATIC_TYPES:
                kind = _STATIC_TYPES[name]
                asset = _Asset((_STATIC_DIR / name).read_bytes(), kind)
            else:
                return None
            self._assets[name] = asset
        return asset

    def static_url(self, name: str) -> str:
        asset = self.asset(name)
        return f"/ui/static/{name}?v={asset.version if asset else __version__}"

    def html(self, template: str, status: int = 200, **context: Any) -> Response:
        if self.env is None:
            return HTMLResponse(f"<!doctype html><title>Shipyard</title><p>{_MISSING}</p>",
                                status_code=501, headers=_PAGE_HEADERS)
        body = self.env.get_template(template).render(**context)
        return HTMLResponse(body, status_code=status, headers=_PAGE_HEADERS)

    def _cookie(self, response: Response, name: str, value: str, request: Request,
                max_age: int) -> None:
        response.set_cookie(name, value, max_age=max_age, path="/ui", httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")

    # -- sessions ---------------------------------------------------------------------------
    async def session(self, request: Request) -> Session | None:
        if self.gw.auth.disabled:
            return Session(tenant_id=PLATFORM_TENANT, key_id=None, role="admin", kind="open",
                           expires=time.time() + 3600, csrf=self.signer.token("open"))
        session = self.signer.verify(request.cookies.get(COOKIE))
        if session is None:
            return None
        if session.kind == "stored" and session.key_id is not None and (
                not await self._key_active(session.key_id)):
            return None
        return session

    async def _key_active(self, key_id: str) -> bool:
        """The session's key is still active (the authenticator's key cache: cached for
        auth.key_cache_s, and through a store outage its last known record)."""
        keys = self.gw.auth.keys
        if keys is None:
            return False
        record = await keys.get(key_id)
        return record is not None and record.status() == "active"

    # -- login and logout -------------------------------------------------------------------
    def _login_form(self, request: Request, *, error: str | None = None, status: int = 200,
                    next_path: str | None = None) -> Response:
        nonce = secrets.token_urlsafe(24)
        target = _safe_next(next_path or request.query_params.get("next"))
        response = self.html("login.html", status, csrf=self.signer.token(nonce), error=error,
                             next=target)
        self._cookie(response, CSRF_COOKIE, nonce, request, 1800)
        return response

    async def login_page(self, request: Request) -> Response:
        if await self.session(request) is not None:
            return RedirectResponse(_safe_next(request.query_params.get("next")), 303)
        return self._login_form(request)

    async def login(self, request: Request) -> Response:
        form = await _form(request)
        back = form.get("next")
        nonce = request.cookies.get(CSRF_COOKIE, "")
        if not nonce or not hmac.compare_digest(form.get("csrf", ""), self.signer.token(nonce)):
            return self._login_form(request, status=400, next_path=back, error=(
                "The login form expired or was sent from elsewhere; try again."))
        secret = form.get("key", "").strip()
        if not secret:
            return self._login_form(request, status=401, next_path=back,
                                    error="Paste an API key (or OIDC token) to sign in.")
        try:
            principal = await self.gw.auth.authenticate(
                Headers({"authorization": f"Bearer {secret}"}), "traces:read",
                client=request.client.host if request.client else None, route="/ui/login")
        except (AuthenticationFailed, PermissionDenied, RateLimited, StoreUnavailable) as exc:
            return self._login_form(request, status=exc.status, next_path=back,
                                    error=exc.message)
        kind, not_after = "static", None
        if secret.startswith(KEY_PREFIX):
            kind = "stored"
        elif self.gw.auth.verifier is not None and secret.count(".") == 2:
            kind, not_after = "oidc", _jwt_expiry(secret)
        session = Session(tenant_id=principal.tenant_id, key_id=principal.key_id,
                          role=principal.role, kind=kind)
        target = _safe_next(request.query_params.get("next") or form.get("next"))
        response = RedirectResponse(target, 303)
        self._cookie(response, COOKIE, self.signer.sign(session, not_after=not_after), request,
                     int(self.config.session_ttl_s))
        response.delete_cookie(CSRF_COOKIE, path="/ui")
        self.gw.audit(tenant_id=principal.tenant_id, actor=f"key:{principal.key_id or 'oidc'}",
                      action="ui.login", target="/ui")
        return response

    async def logout(self, request: Request) -> Response:
        session = await self.session(request)
        form = await _form(request)
        if session is not None and not hmac.compare_digest(form.get("csrf", ""), session.csrf):
            return self.html("error.html", 400, title="Sign out", session=session, nav=[],
                             message="The sign-out form expired; reload the page and try again.")
        response = RedirectResponse("/ui/login", 303)
        response.delete_cookie(COOKIE, path="/ui")
        return response

    # -- escalation forms ------------------------------------------------------------------
    async def escalation_action(self, request: Request) -> Response:
        """Claim, answer or resolve a ticket from its page (CSRF token, escalations:manage)."""
        ticket_id = request.path_params["ticket_id"]
        back = f"/ui/escalations/{quote(ticket_id, safe='')}"
        session = await self.session(request)
        if session is None:
            return RedirectResponse(f"/ui/login?next={quote(back, safe='')}", 303)
        form = await _form(request)
        page = PAGES["/ui/escalations/{ticket_id}"]
        base: dict[str, Any] = {"session": session, "nav": nav(session.role), "page": page,
                                "path": back, "params": request.query_params}
        if not hmac.compare_digest(form.get("csrf", ""), session.csrf):
            return self.html("error.html", 400, title=page.title, **base, message=(
                "The form expired or was sent from elsewhere; reload the page and try again."))
        if "escalations:manage" not in ROLE_SCOPES.get(session.role, frozenset()):
            return self.html("error.html", 403, title=page.title, **base, message=(
                f"Acting on escalations needs scope 'escalations:manage', which the role "
                f"'{session.role}' does not have."))
        action = request.path_params["action"]
        reviewer = f"key:{session.key_id or session.kind}"
        engine, tenant = self.gw.engine, session.tenant_id
        try:
            if action == "claim":
                ticket = await asyncio.to_thread(tickets.claim_ticket, engine, ticket_id,
                                                 tenant_id=tenant, reviewer=reviewer,
                                                 force=form.get("force") == "1")
            elif action == "answer":
                text = form.get("answer", "").strip()
                if not text:
                    return self.html("error.html", 400, title=page.title, **base, message=(
                        "The answer is empty; write what the user should be told."))
                ticket = await asyncio.to_thread(
                    tickets.answer_ticket, engine, ticket_id, tenant_id=tenant,
                    reviewer=reviewer, answer=text[:20_000],
                    label=(form.get("label") or "reviewer_answer").strip()[:64])
                self.gw.escalations.note_answer(ticket)
            elif action == "resolve":
                ticket = await asyncio.to_thread(
                    tickets.resolve_ticket, engine, ticket_id, tenant_id=tenant,
                    reviewer=reviewer, resolution=form.get("resolution", "").strip() or None)
            else:
                return self.html("error.html", 404, title=page.title, **base, message=(
                    f"'{action}' is not an action on escalations; use claim, answer or "
                    "resolve."))
        except ShipyardError as exc:
            return self.html("error.html", exc.status, title=page.title, **base,
                             message=exc.message)
        self.gw.audit(tenant_id=tenant, actor=reviewer, action=f"escalation.{action}",
                      target=ticket.id)
        return RedirectResponse(f"{back}?done={action}", 303)

    # -- webhook redelivery ------------------------------------------------------------------
    async def webhook_redeliver(self, request: Request) -> Response:
        """Redeliver a finished webhook from the delivery log (CSRF token, webhooks:manage)."""
        delivery_id = request.path_params["delivery_id"]
        session = await self.session(request)
        if session is None:
            return RedirectResponse(f"/ui/login?next={quote('/ui/webhooks', safe='')}", 303)
        form = await _form(request)
        page = PAGES["/ui/webhooks"]
        base: dict[str, Any] = {"session": session, "nav": nav(session.role), "page": page,
                                "path": "/ui/webhooks", "params": request.query_params}
        if not hmac.compare_digest(form.get("csrf", ""), session.csrf):
            return self.html("error.html", 400, title=page.title, **base, message=(
                "The form expired or was sent from elsewhere; reload the page and try again."))
        if "webhooks:manage" not in ROLE_SCOPES.get(session.role, frozenset()):
            return self.html("error.html", 403, title=page.title, **base, message=(
                f"Redelivering webhooks needs scope 'webhooks:manage', which the role "
                f"'{session.role}' does not have."))
        try:
            await asyncio.to_thread(self.gw.webhooks.redeliver, delivery_id,
                                    tenant_id=session.tenant_id)
        except ShipyardError as exc:
            return self.html("error.html", exc.status, title=page.title, **base,
                             message=exc.message)
        actor = f"key:{session.key_id or session.kind}"
        self.gw.audit(tenant_id=session.tenant_id, actor=actor, action="webhook.redeliver",
                      target=delivery_id)
        quoted = quote(delivery_id, safe="")
        if form.get("back") == "detail":
            return RedirectResponse(f"/ui/webhooks/{quoted}?done=1", 303)
        return RedirectResponse(f"/ui/webhooks?done={quoted}", 303)

    # -- jobs and batches --------------------------------------------------------------------
    async def work_action(self, request: Request) -> Response:
        """Cancel or retry a job, or cancel a batch, from its page (CSRF token, and scope
        `inference`: what `POST /v1/jobs/{id}/cancel` and friends need)."""
        thing = "batch" if request.url.path.startswith("/ui/batches/") else "job"
        item_id = request.path_params["item_id"]
        action = request.path_params["action"]
        listing = "/ui/batches" if thing == "batch" else "/ui/jobs"
        quoted = quote(item_id, safe="")
        session = await self.session(request)
        if session is None:
            return RedirectResponse(f"/ui/login?next={quote(listing, safe='')}", 303)
        form = await _form(request)
        page = PAGES[listing]
        base: dict[str, Any] = {"session": session, "nav": nav(session.role), "page": page,
                                "path": listing, "params": request.query_params}
        if not hmac.compare_digest(form.get("csrf", ""), session.csrf):
            return self.html("error.html", 400, title=page.title, **base, message=(
                "The form expired or was sent from elsewhere; reload the page and try again."))
        if "inference" not in ROLE_SCOPES.get(session.role, frozenset()):
            return self.html("error.html", 403, title=page.title, **base, message=(
                f"Cancelling or retrying {thing}s needs scope 'inference', which the role "
                f"'{session.role}' does not have."))
        allowed = ("cancel",) if thing == "batch" else ("cancel", "retry")
        if action not in allowed or "\x00" in item_id:
            return self.html("error.html", 404, title=page.title, **base, message=(
                f"'{action}' is not an action on {thing}s; use {' or '.join(allowed)}."))
        tenant = self._tenant(session, request)
        try:
            if thing == "batch":
                await asyncio.to_thread(self.gw.batches.cancel, item_id, tenant_id=tenant)
            elif action == "cancel":
                await asyncio.to_thread(self.gw.jobs.cancel, item_id, tenant_id=tenant)
            else:
                await asyncio.to_thread(self.gw.jobs.retry, item_id, tenant_id=tenant)
        except ShipyardError as exc:
            return self.html("error.html", exc.status, title=page.title, **base,
                             message=exc.message)
        self.gw.audit(tenant_id=tenant, actor=f"key:{session.key_id or session.kind}",
                      action=f"{thing}.{action}", target=item_id)
        also = "" if tenant == session.tenant_id else f"&tenant={quote(tenant, safe='')}"
        if form.get("back") == "detail" and thing == "job":
            return RedirectResponse(f"/ui/jobs/{quoted}?done={action}{also}", 303)
        return RedirectResponse(f"{listing}?done={quoted}{also}", 303)

    async def file_content(self, request: Request) -> Response:
        """A batch's input, output or error file (scope `inference`, as
        `GET /v1/files/{id}/content`), for a browser that holds a session, not a key."""
        file_id = request.path_params["file_id"]
        session = await self.session(request)
        if session is None:
            return RedirectResponse(f"/ui/login?next={quote('/ui/batches', safe='')}", 303)
        page = PAGES["/ui/batches"]
        base: dict[str, Any] = {"session": session, "nav": nav(session.role), "page": page,
                                "path": "/ui/batches", "params": request.query_params}
        if "inference" not in ROLE_SCOPES.get(session.role, frozenset()):
            return self.html("error.html", 403, title=page.title, **base, message=(
                f"Downloading batch files needs scope 'inference', which the role "
                f"'{session.role}' does not have."))
        try:
            found = await asyncio.to_thread(self.gw.files.get, file_id,
                                            tenant_id=self._tenant(session, request))
        except ShipyardError as exc:
            return self.html("error.html", exc.status, title=page.title, **base,
                             message=exc.message)
        return FileResponse(self.gw.files.path_of(found), media_type="application/jsonl",
                            filename=found.filename,
                            headers={"cache-control": "no-store",
                                     "x-content-type-options": "nosniff"})

    @staticmethod
    def _tenant(session: Session, request: Request) -> str:
        """The session's tenant, or `?tenant=` for a platform admin."""
        asked = request.query_params.get("tenant")
        if asked and asked != session.tenant_id and session.role == "admin" and (
                session.tenant_id == PLATFORM_TENANT):
            return asked  # platform admins may look at any tenant
        return session.tenant_id

    # -- static assets ----------------------------------------------------------------------
    async def static(self, request: Request) -> Response:
        asset = self.asset(request.path_params["name"])
        if asset is None:
            return Response("not found", status_code=404, media_type="text/plain")
        headers = {"cache-control": "public, max-age=31536000, immutable",
                   "x-content-type-options": "nosniff", "vary": "accept-encoding"}
        body = asset.body
        if "gzip" in request.headers.get("accept-encoding", ""):
            body = asset.gzipped
            headers["content-encoding"] = "gzip"
        return Response(body, media_type=asset.media_type, headers=headers)

    # -- pages ------------------------------------------------------------------------------
    def page_endpoint(self, path: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            session = await self.session(request)
            if session is None:
                target = request.url.path + (f"?{request.url.query}" if request.url.query
                                             else "")
                return RedirectResponse(f"/ui/login?next={quote(target, safe='')}", 303)
            return await self.render(PAGES[path], request, session)

        return endpoint

    def _live(self, name: str) -> dict[str, Any] | None:
        """A service's state on Ray Serve, as this gateway process last read it."""
        service = self.gw.services.get(name)
        if self.gw.ray is None or service is None or service.config.engine != "ray":
            return None
        return self.gw.ray.status(name)

    async def render(self, page: Page, request: Request, session: Session) -> Response:
        base: dict[str, Any] = {"session": session, "nav": nav(session.role), "page": page,
                "path": request.url.path, "params": request.query_params}
        if page.scope not in ROLE_SCOPES.get(session.role, frozenset()):
            return self.html("error.html", 403, title=page.title, **base, message=(
                f"This page needs scope '{page.scope}', which the role '{session.role}' "
                "does not have. Sign in with another key to see it."))
        tenant = self._tenant(session, request)
        ctx = PageContext(engine=self.gw.engine, tenant_id=tenant, role=session.role,
                          params=request.query_params, path_params=request.path_params,
                          readable=self.gw.recorder.readable, config=self.gw.config,
                          live=self._live, connectors=self.gw.connectors,
                          jobs=self.gw.jobs, batches=self.gw.batches)
        try:
            data = await asyncio.to_thread(page.render, ctx)
        except PageError as exc:
            return self.html("error.html", exc.status, title=page.title, **base,
                             message=exc.message)
        title = data.pop("title", page.title)
        return self.html(page.template, title=title, tenant=tenant, range=ctx.range, **base,
                         **data)


def _safe_next(value: str | None) -> str:
    """Only ever redirect within the dashboard (no open redirects)."""
    if value and value.startswith("/ui") and not value.startswith("//") and "\\" not in value:
        return value
    return "/ui"


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form body (small; the dashboard's forms only)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _LOGIN_MAX_BYTES:
            break
    parsed = parse_qs(body[:_LOGIN_MAX_BYTES].decode("utf-8", "replace"))
    return {k: v[0] for k, v in parsed.items() if v}


def _jwt_expiry(token: str) -> float | None:
    """The `exp` claim of an already verified JWT (so a session never outlives its token)."""
    try:
        payload = token.split(".")[1]
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims.get("exp")
        return float(exp) if isinstance(exp, int | float) else None
    except (ValueError, IndexError, AttributeError):
        return None


def ui_routes(gateway: Gateway) -> list[ScopedRoute]:
    """The dashboard's routes (none when `ui.enabled` is false)."""
    if not gateway.config.ui.enabled:
        return []
    ui = Dashboard(gateway)
    routes = [
        ScopedRoute("/ui/login", ui.login_page, methods=["GET"], scope=None,
                    include_in_schema=False),
        ScopedRoute("/ui/login", ui.login, methods=["POST"], scope=None,
                    include_in_schema=False),
        ScopedRoute("/ui/logout", ui.logout, methods=["POST"], scope="traces:read",
                    include_in_schema=False),
        ScopedRoute("/ui/static/{name}", ui.static, methods=["GET"], scope=None,
                    include_in_schema=False),
    ]
    routes.append(ScopedRoute("/ui/escalations/{ticket_id}/{action}", ui.escalation_action,
                              methods=["POST"], scope="escalations:manage",
                              include_in_schema=False))
    routes.append(ScopedRoute("/ui/webhooks/{delivery_id}/redeliver", ui.webhook_redeliver,
                              methods=["POST"], scope="webhooks:manage",
                              include_in_schema=False))
    for prefix in ("/ui/jobs", "/ui/batches"):
        routes.append(ScopedRoute(prefix + "/{item_id}/{action}", ui.work_action,
                                  methods=["POST"], scope="inference",
                                  include_in_schema=False))
    routes.append(ScopedRoute("/ui/files/{file_id}", ui.file_content, methods=["GET"],
                              scope="inference", include_in_schema=False))
    for path, page in PAGES.items():
        routes.append(ScopedRoute(path, ui.page_endpoint(path), methods=["GET"],
                                  scope=page.scope, include_in_schema=False))
    return routes
