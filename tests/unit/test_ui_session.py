"""Dashboard sessions: signed cookies that cannot be forged or outlive their expiry, the login
form's CSRF check, and no open redirects."""

from __future__ import annotations

import re
import stat
import time
from pathlib import Path

from starlette.testclient import TestClient

from shipyard.config import parse_config
from shipyard.gateway.app import create_app
from shipyard.ui.routes import _safe_next
from shipyard.ui.session import Session, SessionSigner, load_secret

KEY = "sk-test-" + "s" * 24


def test_cookies_are_signed_and_expire() -> None:
    signer = SessionSigner(b"x" * 32, ttl_s=60)
    session = Session(tenant_id="acme", key_id="k1", role="viewer", kind="stored")
    cookie = signer.sign(session)
    back = signer.verify(cookie)
    assert back is not None and (back.tenant_id, back.role, back.csrf) == (
        "acme", "viewer", session.csrf)
    payload, mac = cookie.split(".")
    forged = payload.replace(payload[5], "A" if payload[5] != "A" else "B") + "." + mac
    assert signer.verify(forged) is None
    assert SessionSigner(b"y" * 32, ttl_s=60).verify(cookie) is None  # another server secret
    assert signer.verify(signer.sign(session, not_after=time.time() - 1)) is None
    assert signer.verify("") is None and signer.verify("a.b.c") is None
    assert signer.verify(None) is None


def test_secret_is_created_once_and_private(tmp_path: Path) -> None:
    first = load_secret(None, tmp_path)
    assert load_secret(None, tmp_path) == first and len(first) >= 32
    assert stat.S_IMODE((tmp_path / "ui_session.key").stat().st_mode) == 0o600
    assert load_secret("configured-secret", tmp_path) == b"configured-secret"


def test_only_redirects_within_the_dashboard() -> None:
    assert _safe_next("/ui/traces?status=errors") == "/ui/traces?status=errors"
    for bad in (None, "", "https://evil.example/ui", "//evil.example/ui", "/v1/admin/keys",
                "/ui\\@evil.example"):
        assert _safe_next(bad) == "/ui"


def test_login_needs_the_forms_csrf_token(tmp_path: Path) -> None:
    app = create_app(parse_config(f'store: {{url: "sqlite:///{tmp_path}/s.db"}}\n'
                                  f'auth: {{api_keys: ["{KEY}"]}}\n'))
    with TestClient(app, base_url="http://127.0.0.1") as client:  # type: ignore[arg-type]
        assert client.get("/ui", follow_redirects=False).headers["location"] == (
            "/ui/login?next=%2Fui")
        page = client.get("/ui/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf is not None
        refused = client.post("/ui/login", data={"csrf": "forged", "key": KEY},
                              follow_redirects=False)
        assert refused.status_code == 400 and "shipyard_session" not in refused.cookies
        csrf = re.search(r'name="csrf" value="([^"]+)"', refused.text)  # a fresh form
        assert csrf is not None
        done = client.post("/ui/login", data={"csrf": csrf[1], "key": KEY,
                                              "next": "https://evil.example/"},
                           follow_redirects=False)
        assert done.status_code == 303 and done.headers["location"] == "/ui"
        cookie = done.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
        assert KEY not in cookie
        assert client.get("/ui").status_code == 200
        # Sign-out needs the session's CSRF token too.
        assert client.post("/ui/logout", data={"csrf": "nope"}).status_code == 400
        page = client.get("/ui").text
        token = re.search(r'name="csrf" value="([^"]+)"', page)
        assert token is not None
        out = client.post("/ui/logout", data={"csrf": token[1]}, follow_redirects=False)
        assert out.headers["location"] == "/ui/login"
        client.cookies.clear()
        assert client.get("/ui", follow_redirects=False).status_code == 303
