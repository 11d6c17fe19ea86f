"""Dashboard sessions: a signed, expiring cookie that names the principal, plus CSRF tokens.

Browsers cannot send bearer headers, so `/ui/login` takes an API key (or OIDC token), checks
it with the gateway's own authenticator and hands back a cookie holding the principal (tenant,
key id, role), an expiry and a CSRF token, signed with HMAC-SHA256. The key itself is never
stored in the cookie. Stored keys are re-checked on every page (a revoked key's session ends
at once); static keys and OIDC tokens last until the session expires (an OIDC session never
outlives its token).

>>> signer = SessionSigner(b"k" * 32, ttl_s=60)
>>> cookie = signer.sign(Session(tenant_id="acme", key_id="k1", role="viewer", kind="stored"))
>>> signer.verify(cookie).role
'viewer'
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import orjson

__all__ = ["COOKIE", "CSRF_COOKIE", "Session", "SessionSigner", "load_secret"]

COOKIE = "shipyard_session"
CSRF_COOKIE = "shipyard_login_csrf"


@dataclass(frozen=True)
class Session:
    """Who is logged in to the dashboard, until when."""

    tenant_id: str
    key_id: str | None
    role: str
    kind: str  # "stored" (an sk-sy- key), "static" (auth.api_keys), "oidc" or "open"
    expires: float = 0.0
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionSigner:
    """Signs and verifies session cookies with a server secret (HMAC-SHA256)."""

    def __init__(self, secret: bytes, *, ttl_s: float) -> None:
        if len(secret) < 16:
            raise ValueError("the session secret must be at least 16 bytes")
        self._key = hashlib.sha256(b"shipyard-ui-session\x00" + secret).digest()
        self.ttl_s = ttl_s

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def sign(self, session: Session, *, not_after: float | None = None) -> str:
        """The cookie value for `session`, expiring in `ttl_s` (or at `not_after`, if sooner)."""
        expires = time.time() + self.ttl_s
        if not_after is not None:
            expires = min(expires, not_after)
        payload = _b64(orjson.dumps(asdict(replace(session, expires=expires))))
        return f"{payload}.{self._mac(payload)}"

    def verify(self, cookie: str | None) -> Session | None:
        """The session in `cookie`, or None when it is missing, forged or expired."""
        if not cookie or cookie.count(".") != 1:
            return None
        payload, mac = cookie.split(".")
        if not hmac.compare_digest(mac, self._mac(payload)):
            return None
        try:
            session = Session(**orjson.loads(_unb64(payload)))
        except (ValueError, TypeError):
            return None
        return session if session.expires > time.time() else None

    def token(self, nonce: str) -> str:
        """A login-form CSRF token bound to `nonce` (the pre-login cookie)."""
        return self._mac("csrf:" + nonce)


def load_secret(configured: str | None, folder: str | Path) -> bytes:
    """`ui.session_secret` if set; else a random secret kept in `folder/ui_session.key`
    (created once, mode 0600), shared by every worker on this machine."""
    if configured:
        return configured.encode()
    path = Path(folder) / "ui_session.key"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another worker wrote it first
        for _ in range(50):
            data = path.read_bytes()
            if data:
                return data
            time.sleep(0.02)
        return path.read_bytes()
    secret = secrets.token_hex(32).encode()
    with os.fdopen(fd, "wb") as handle:
        handle.write(secret)
    return secret
