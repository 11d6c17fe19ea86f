"""A chat page for one hosted service at `/chat` (`ui.chat.service` in shipyard.yaml).

Server-rendered HTML (no script, no template engine: it works on the base install), signed in
with an API key like the dashboard (`/chat/login` sets a signed session cookie; the key is
never stored in it). A message runs through the service's whole chain with the signed-in
key's rights — limits, PII, guards, escalation, traces — exactly as
`POST /v1/services/NAME/invoke` would (`gateway.invoke.Invoker`, route `chat`). The page
shows:

- the answer (`output.answer`, else `output.message`, else the output as text), and the
  citations the service returned in `output.citations` (`{"n", "id", "title"}` or strings);
- a guard's polite message when the input or answer was blocked;
- thumbs up / down, stored as feedback on the answer's trace (`POST /v1/feedback` does the
  same);
- "Talk to a person", which sends a request for a person through the escalation stage: a
  ticket opens (with the conversation) and its reference is shown.

The conversation so far travels with each form (a hidden field, re-rendered escaped), so any
worker can answer the next message; each message carries the page's conversation id as
`x-shipyard-conversation`, so a reviewer's answer is delivered to the next message.
"""

from __future__ import annotations

import asyncio
import hmac
import html
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import orjson
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from shipyard.config.traces import default_spool_dir
from shipyard.errors import (
    AuthenticationFailed,
    ConfigError,
    PermissionDenied,
    RateLimited,
    StoreUnavailable,
)
from shipyard.gateway.auth import Principal
from shipyard.gateway.invoke import Invocation, Invoker
from shipyard.gateway.runtime import Gateway
from shipyard.gateway.scopes import ScopedRoute
from shipyard.security.roles import PLATFORM_TENANT, ROLE_SCOPES
from shipyard.store.feedback import add_feedback
from shipyard.store.traces import get_trace
from shipyard.ui.session import Session, SessionSigner, load_secret

__all__ = ["PERSON_REQUEST", "chat_routes"]

COOKIE = "shipyard_chat"
LOGIN_CSRF = "shipyard_chat_csrf"
PERSON_REQUEST = "I want to talk to a person, please."
MAX_TURNS = 20
MAX_FORM_BYTES = 131_072
HEADERS = {"content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; "
           "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
           "cache-control": "no-store", "x-frame-options": "DENY",
           "referrer-policy": "no-referrer", "x-content-type-options": "nosniff"}

_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem;
color:#1d2330}h1{font-size:1.3rem}.turn{margin:1rem 0}.you{background:#eef2f8;padding:.6rem
.8rem;border-radius:.5rem}.bot{border-left:3px solid #4a7bd0;padding:.3rem .8rem;
white-space:pre-wrap}.blocked{border-color:#c0392b}.person{border-color:#d39e00}
.cites{font-size:.85rem;color:#4b5568;margin:.3rem .8rem}.row{display:flex;gap:.5rem;
margin:.3rem .8rem;align-items:center}form.inline{display:inline}textarea{width:100%;
box-sizing:border-box;font:inherit;padding:.5rem}button{font:inherit;cursor:pointer}
.note{color:#4b5568;font-size:.85rem}.error{color:#c0392b}
"""


class ChatPage:
    """The `/chat` routes of one gateway (see the module docstring)."""

    def __init__(self, gateway: Gateway, service: str, title: str) -> None:
        self.gw = gateway
        self.service = service
        self.title = title
        self.invoker = Invoker(gateway)
        self._signer: SessionSigner | None = None

    @property
    def signer(self) -> SessionSigner:
        if self._signer is None:  # lazily: building the app must not write files
            configured = self.gw.config.ui.session_secret
            secret = load_secret(configured.get_secret_value() if configured else None,
                                 Path(default_spool_dir(self.gw.config)).parent)
            self._signer = SessionSigner(secret, ttl_s=self.gw.config.ui.session_ttl_s)
        return self._signer

    # -- sessions ---------------------------------------------------------------------------
    async def principal(self, request: Request) -> tuple[Session, Principal] | None:
        if self.gw.auth.disabled:
            session = Session(tenant_id=PLATFORM_TENANT, key_id=None, role="admin",
                              kind="open", expires=time.time() + 3600,
                              csrf=self.signer.token("open-chat"))
            return session, Principal(tenant_id=PLATFORM_TENANT, key_id=None, role="admin")
        signed = self.signer.verify(request.cookies.get(COOKIE))
        if signed is None:
            return None
        session = signed
        if session.kind == "stored" and session.key_id is not None:
            keys = self.gw.auth.keys
            record = await keys.get(session.key_id) if keys is not None else None
            if record is None or record.status() != "active":
                return None  # a revoked or expired key ends its chat session at once
            return session, Principal(
                tenant_id=record.tenant_id, key_id=record.id, role=record.role,
                services=record.services, models=record.models, rpm=record.rpm,
                tpm=record.tpm, max_concurrent=record.max_concurrent)
        return session, Principal(tenant_id=session.tenant_id, key_id=session.key_id,
                                  role=session.role)

    # -- routes -----------------------------------------------------------------------------
    async def page(self, request: Request) -> Response:
        found = await self.principal(request)
        if found is None:
            return self._login_form(request)
        session, _ = found
        return self._page(session, [], conversation=secrets.token_hex(8))

    async def login(self, request: Request) -> Response:
        form = await _form(request)
        nonce = request.cookies.get(LOGIN_CSRF, "")
        if not nonce or not hmac.compare_digest(form.get("csrf", ""), self.signer.token(nonce)):
            return self._login_form(request, status=400, error=(
                "The sign-in form expired or was sent from elsewhere; try again."))
        secret = form.get("key", "").strip()
        if not secret:
            return self._login_form(request, status=401, error="Paste an API key to sign in.")
        try:
            principal = await self.gw.auth.authenticate(
                Headers({"authorization": f"Bearer {secret}"}), "inference",
                client=request.client.host if request.client else None, route="/chat/login")
        except (AuthenticationFailed, PermissionDenied, RateLimited, StoreUnavailable) as exc:
            return self._login_form(request, status=exc.status, error=exc.message)
        kind = ("stored" if principal.key_id and secret.startswith("sk-sy-")
                else "static" if principal.key_id else "oidc")
        session = Session(tenant_id=principal.tenant_id, key_id=principal.key_id,
                          role=principal.role, kind=kind)
        response = RedirectResponse("/chat", 303)
        response.set_cookie(COOKIE, self.signer.sign(session), max_age=int(self.signer.ttl_s),
                            path="/chat", httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        response.delete_cookie(LOGIN_CSRF, path="/chat")
        return response

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse("/chat", 303)
        response.delete_cookie(COOKIE, path="/chat")
        return response

    async def send(self, request: Request) -> Response:
        """A message (`message`), a request for a person (`person`), or feedback on an
        earlier answer (`feedback` = up/down, `trace`)."""
        found = await self.principal(request)
        if found is None:
            return RedirectResponse("/chat", 303)
        session, principal = found
        form = await _form(request)
        turns = _turns(form.get("history", ""))
        conversation = _conversation(form.get("conversation", ""))
        if not hmac.compare_digest(form.get("csrf", ""), session.csrf):
            return self._page(session, turns, conversation, status=400, error=(
                "The form expired or was sent from elsewhere; reload the page and try again."))
        if "inference" not in ROLE_SCOPES.get(principal.role, frozenset()):
            return self._page(session, turns, conversation, status=403, error=(
                f"The role '{principal.role}' may not call services (scope 'inference')."))
        if form.get("feedback") in ("up", "down"):
            error = await self._feedback(principal, turns, form.get("trace", ""),
                                         form["feedback"])
            return self._page(session, turns, conversation, error=error,
                              status=200 if error is None else 404)
        message = PERSON_REQUEST if "person" in form else form.get("message", "").strip()
        if not message:
            return self._page(session, turns, conversation, status=400,
                              error="Write a message first.")
        result = await self.invoker.run(
            principal, "invoke", {"question": message}, route="chat", service=self.service,
            conversation_id=conversation, priority=0)
        turns.append(_turn(message, result))
        return self._page(session, turns[-MAX_TURNS:], conversation)

    async def _feedback(self, principal: Principal, turns: list[dict[str, Any]],
                        trace_id: str, vote: str) -> str | None:
        turn = next((t for t in turns if t.get("trace") == trace_id and trace_id), None)
        if turn is None:
            return "That answer is not part of this conversation."
        engine = self.gw.engine
        trace = None
        for _ in range(40):  # traces are written off the hot path: give the writer a moment
            trace = await asyncio.to_thread(get_trace, engine, trace_id,
                                            tenant_id=principal.tenant_id)
            if trace is not None:
                break
            await asyncio.sleep(0.05)
        if trace is None:
            return "That answer's trace is not stored (yet); try again in a few seconds."
        await asyncio.to_thread(add_feedback, engine, tenant_id=principal.tenant_id,
                                trace=trace, score=1.0 if vote == "up" else 0.0,
                                label="helpful" if vote == "up" else "unhelpful",
                                author="chat", key_id=principal.key_id)
        turn["feedback"] = vote
        return None

    # -- rendering --------------------------------------------------------------------------
    def _login_form(self, request: Request, *, error: str | None = None,
                    status: int = 200) -> Response:
        nonce = secrets.token_urlsafe(24)
        problem = f'<p class="error" role="alert">{_e(error)}</p>' if error else ""
        body = (f"<h1>{_e(self.title)}</h1>{problem}"
                '<form method="post" action="/chat/login">'
                f'<input type="hidden" name="csrf" value="{self.signer.token(nonce)}">'
                '<label>API key <input type="password" name="key" size="40" '
                'autocomplete="off" autofocus></label> <button>Sign in</button></form>'
                '<p class="note">Sign in with a key that may call services (scope '
                "<code>inference</code>).</p>")
        response = _html(self.title, body, status)
        response.set_cookie(LOGIN_CSRF, nonce, max_age=1800, path="/chat", httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")
        return response

    def _page(self, session: Session, turns: list[dict[str, Any]], conversation: str, *,
              status: int = 200, error: str | None = None) -> Response:
        history = _e(orjson.dumps(turns).decode())
        hidden = (f'<input type="hidden" name="csrf" value="{_e(session.csrf)}">'
                  f'<input type="hidden" name="history" value="{history}">'
                  f'<input type="hidden" name="conversation" value="{_e(conversation)}">')
        parts = [f"<h1>{_e(self.title)}</h1>"]
        if error:
            parts.append(f'<p class="error" role="alert">{_e(error)}</p>')
        for turn in turns:
            parts.append(_render_turn(turn, hidden))
        parts.append(
            f'<form method="post" action="/chat">{hidden}'
            '<textarea name="message" rows="3" maxlength="2000" aria-label="Your message" '
            'placeholder="Ask about orders, delivery, returns…" autofocus></textarea>'
            '<div class="row"><button name="send" value="1">Send</button>'
            '<button name="person" value="1">Talk to a person</button></div></form>'
            '<form method="post" action="/chat/logout"><button class="note">Sign out'
            "</button></form>")
        return _html(self.title, "".join(parts), status)


def _render_turn(turn: dict[str, Any], hidden: str) -> str:
    kind = turn.get("kind", "answer")
    out = [f'<div class="turn"><div class="you">{_e(turn.get("q", ""))}</div>',
           f'<div class="bot {_e(kind)}" data-kind="{_e(kind)}">{_e(turn.get("a", ""))}</div>']
    citations = turn.get("citations") or []
    if citations:
        items = "; ".join(_e(c) for c in citations)
        out.append(f'<div class="cites">Sources: {items}</div>')
    trace = turn.get("trace")
    if trace and kind == "answer":
        vote = turn.get("feedback")
        if vote:
            out.append(f'<div class="row note">Thanks for the feedback ({_e(vote)}).</div>')
        else:
            out.append(
                f'<div class="row"><form class="inline" method="post" action="/chat">{hidden}'
                f'<input type="hidden" name="trace" value="{_e(trace)}">'
                '<button name="feedback" value="up" aria-label="Helpful">👍</button>'
                '<button name="feedback" value="down" aria-label="Not helpful">👎</button>'
                "</form></div>")
    out.append("</div>")
    return "".join(out)


def _turn(message: str, result: Invocation) -> dict[str, Any]:
    """What the page keeps of one exchange: the question, the answer text, its kind
    (answer, blocked, person, error), the citations and the trace id for feedback."""
    body = result.body
    found = body.get("shipyard")
    shipyard: dict[str, Any] = found if isinstance(found, dict) else {}
    turn: dict[str, Any] = {"q": message, "trace": result.trace_id}
    if not result.ok:
        problem = body.get("error")
        error: dict[str, Any] = problem if isinstance(problem, dict) else {}
        turn.update(kind="error", a=str(error.get("message") or f"HTTP {result.status}"))
        return turn
    output = body.get("output")
    if body.get("blocked"):
        turn.update(kind="blocked", a=str(body.get("message", "")))
    elif shipyard.get("escalation"):
        ticket = shipyard["escalation"]
        text = output.get("message") if isinstance(output, dict) else None
        turn.update(kind="person", a=str(text or "A person will reply."),
                    ticket=str(ticket.get("id", "")))
    elif isinstance(output, dict):
        text = output.get("answer", output.get("message"))
        turn.update(kind="answer", a=str(text if text is not None else
                                         orjson.dumps(output).decode()))
        turn["citations"] = [_citation(c) for c in output.get("citations") or []][:10]
    else:
        turn.update(kind="answer", a="" if output is None else str(output))
    return turn


def _citation(item: Any) -> str:
    if isinstance(item, dict):
        label = str(item.get("title") or item.get("id") or "")
        number = item.get("n")
        return f"[{number}] {label}" if number is not None else label
    return str(item)


def _turns(value: str) -> list[dict[str, Any]]:
    """The conversation the form carried back (the user's own text; shown escaped)."""
    try:
        data = orjson.loads(value) if value else []
    except orjson.JSONDecodeError:
        return []
    if not isinstance(data, list):
        return []
    return [t for t in data if isinstance(t, dict)][-MAX_TURNS:]


def _conversation(value: str) -> str:
    value = value.strip()
    return value if value.isalnum() and len(value) <= 64 else secrets.token_hex(8)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _html(title: str, body: str, status: int) -> HTMLResponse:
    page = (f'<!doctype html><html lang="en"><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width,initial-scale=1"><title>{_e(title)}</title>'
            f"<style>{_STYLE}</style><body>{body}</body></html>")
    return HTMLResponse(page, status_code=status, headers=HEADERS)


async def _form(request: Request) -> dict[str, str]:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            break
    parsed = parse_qs(body[:MAX_FORM_BYTES].decode("utf-8", "replace"))
    return {k: v[0] for k, v in parsed.items() if v}


def chat_routes(gateway: Gateway) -> list[ScopedRoute]:
    """`/chat` for `ui.chat.service` (none when it is not set)."""
    chat = gateway.config.ui.chat
    if chat.service is None:
        return []
    if chat.service not in gateway.config.services:
        raise ConfigError(f"Config key 'ui.chat.service' is '{chat.service}', which is not a "
                          f"service; use one of: {', '.join(gateway.config.services) or '(none)'}"
                          " or remove the key.")
    page = ChatPage(gateway, chat.service, chat.title)
    return [
        ScopedRoute("/chat", page.page, methods=["GET"], scope=None, include_in_schema=False),
        ScopedRoute("/chat", page.send, methods=["POST"], scope=None, include_in_schema=False),
        ScopedRoute("/chat/login", page.login, methods=["POST"], scope=None,
                    include_in_schema=False),
        ScopedRoute("/chat/logout", page.logout, methods=["POST"], scope=None,
                    include_in_schema=False),
    ]
