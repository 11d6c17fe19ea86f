"""Security through a real gateway: the route table, the auth matrix, key lifecycle, tenant
isolation (property-based) and rate limits (one process, and two replicas sharing Redis)."""

from __future__ import annotations

import http.client
import ipaddress
import json
import ssl
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loadgen import burst
from test_openai_sdk import _http

from conftest import API_KEY, Proc, launch_gateway, launch_sim
from shipyard.config import parse_config
from shipyard.gateway.app import create_app
from shipyard.gateway.scopes import PUBLIC_PATHS, ScopedRoute
from shipyard.security.audit import AuditLog
from shipyard.store import create_store_engine, migrate
from shipyard.store import tenants as store
from shipyard.store.traces import new_trace_record, usage
from shipyard.store.writer import TraceWriter

CHAT = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}


def test_every_route_declares_its_scope(tmp_path: Path) -> None:
    config = parse_config(f"""
store: {{url: "sqlite:///{tmp_path}/s.db"}}
auth: {{api_keys: ["{API_KEY}"]}}
""")
    app = create_app(config)
    seen = set()
    for route in app.routes:
        assert isinstance(route, ScopedRoute), f"{route} declares no scope"
        if route.scope is None:
            assert route.path in PUBLIC_PATHS, f"{route.path} is unauthenticated"
        seen.add(route.path)
    assert {"/v1/chat/completions", "/v1/admin/keys", "/v1/traces"} <= seen
    assert seen >= PUBLIC_PATHS


def _key(engine: Any, tenant: str, role: str, **kw: Any) -> str:
    _, secret = store.create_key(engine, tenant_id=tenant, name=f"{tenant}-{role}", role=role,
                                 **kw)
    return secret


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("security")
    url = f"sqlite:///{folder}/store.db"
    engine = create_store_engine(url)
    migrate(engine)
    for tenant in ("acme", "globex"):
        store.create_tenant(engine, tenant)
    keys = {f"{t}:{r}": _key(engine, t, r) for t in ("acme", "globex")
            for r in ("admin", "operator", "developer", "client", "viewer")}
    keys["acme:client-demo-only"] = _key(engine, "acme", "client", models=["demo"],
                                         services=["echo"])
    keys["acme:expired"] = _key(engine, "acme", "admin", expires_in_s=0.001)
    revoked_record, keys["acme:revoked"] = store.create_key(engine, tenant_id="acme",
                                                            name="r", role="admin")
    store.revoke_key(engine, revoked_record.id, tenant_id="acme")
    writer = TraceWriter(engine)
    writer.start()
    trace_ids: dict[str, list[str]] = {"acme": [], "globex": []}
    for tenant in trace_ids:
        for i in range(5):
            record = new_trace_record(route="chat", status=200, tenant_id=tenant,
                                      request_id=f"{tenant}-req-{i}", service="demo",
                                      total_ms=1.0)
            trace_ids[tenant].append(record["id"])
            writer.submit(record)
    writer.stop()
    sim = launch_sim(folder)
    gateway = launch_gateway(folder, f"""
store: {{url: "{url}"}}
# The auth matrix sends hundreds of bad keys from one address on purpose; lockout has its own
# tests (test_auth_hardening.py).
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}],
        lockout: {{max_failures_per_address: 1000000, max_failures_per_key: 1000000}}}}
python_path: ["{Path(__file__).parent.parent / 'fixtures'}"]
providers:
  sim: {{kind: openai, base_url: "{sim.url}/v1"}}
models:
  demo: {{provider: sim, model: sim-chat}}
  other: {{provider: sim, model: sim-chat}}
services:
  echo: {{function: "sample_services:classify"}}
""")
    time.sleep(0.01)
    try:
        yield {"gateway": gateway, "keys": keys, "engine": engine, "traces": trace_ids}
    finally:
        gateway.stop()
        sim.stop()
        engine.dispose()


def call(world: dict[str, Any], method: str, path: str, key: str | None,
         body: Any = None, header: str | None = None) -> tuple[int, Any]:
    headers = {}
    if header is not None:
        headers["authorization"] = header
    elif key is not None:
        headers["authorization"] = f"Bearer {world['keys'].get(key, key)}"
    parsed = None if body is None else json.dumps(body).encode()
    return _http(method, f"{world['gateway'].url}{path}", parsed, headers=headers, auth=False)


ROUTES = [  # method, path, body, scope
    ("POST", "/v1/chat/completions", CHAT, "inference"),
    ("POST", "/v1/completions", {"model": "demo", "prompt": "hi"}, "inference"),
    ("POST", "/v1/services/echo/invoke", {"text": "refund"}, "inference"),
    ("GET", "/v1/models", None, "models:read"),
    ("GET", "/v1/models/demo", None, "models:read"),
    ("GET", "/v1/services", None, "models:read"),
    ("GET", "/v1/traces", None, "traces:read"),
    ("GET", "/v1/admin/status", None, "status:read"),
    ("GET", "/metrics", None, "metrics:read"),
    ("GET", "/v1/admin/keys", None, "keys:manage"),
    ("GET", "/v1/admin/tenants", None, "tenants:manage"),
    ("GET", "/v1/admin/audit", None, "audit:read"),
    ("POST", "/v1/feedback", {"trace_id": "acme-req-0", "score": 1}, "feedback:write"),
    ("GET", "/v1/feedback", None, "feedback:read"),
    ("GET", "/v1/feedback/summary", None, "feedback:read"),
    ("GET", "/v1/admin/escalations", None, "escalations:read"),
    ("GET", "/v1/escalations", None, "inference"),
]
ROLE_CAN = {
    "admin": {"inference", "models:read", "traces:read", "status:read", "metrics:read",
              "keys:manage", "tenants:manage", "audit:read", "feedback:write",
              "feedback:read", "escalations:read"},
    "operator": {"inference", "models:read", "traces:read", "status:read", "metrics:read",
                 "audit:read", "feedback:write", "feedback:read", "escalations:read"},
    "developer": {"inference", "models:read", "traces:read", "status:read", "feedback:write"},
    "client": {"inference", "models:read", "feedback:write"},
    "viewer": {"models:read", "traces:read", "status:read", "metrics:read"},
}


@pytest.mark.parametrize(("method", "path", "body", "scope"), ROUTES,
                         ids=[f"{m} {p}" for m, p, _, _ in ROUTES])
def test_auth_matrix(world: dict[str, Any], method: str, path: str, body: Any,
                     scope: str) -> None:
    for header, expected in ((None, "No API key"), ("Basic abc", "malformed"),
                             ("Bearer sk-sy-000000000000-nope", "not valid"),
                             ("Bearer wrong-static-key", "not valid")):
        status, answer = call(world, method, path, None, body, header=header)
        assert status == 401 and expected in answer["error"]["message"], (header, answer)
    status, answer = call(world, method, path, "acme:expired", body)
    assert status == 401 and "expired" in answer["error"]["message"]
    status, answer = call(world, method, path, "acme:revoked", body)
    assert status == 401 and "revoked" in answer["error"]["message"]
    for role, scopes in ROLE_CAN.items():
        status, answer = call(world, method, path, f"acme:{role}", body)
        if scope in scopes:
            assert status < 400, (role, status, answer)
        else:
            assert status == 403, (role, status, answer)
            assert f"scope '{scope}'" in answer["error"]["message"]


def test_model_and_service_restrictions(world: dict[str, Any]) -> None:
    status, answer = call(world, "POST", "/v1/chat/completions", "acme:client-demo-only", CHAT)
    assert status == 200
    status, answer = call(world, "POST", "/v1/chat/completions", "acme:client-demo-only",
                          {**CHAT, "model": "other"})
    assert status == 403 and "may not use model 'other'" in answer["error"]["message"]
    status, answer = call(world, "GET", "/v1/models", "acme:client-demo-only")
    assert [m["id"] for m in answer["data"]] == ["demo"]


def test_key_lifecycle_through_the_admin_api(world: dict[str, Any]) -> None:
    status, created = call(world, "POST", "/v1/admin/keys", "acme:admin",
                           {"name": "bot", "role": "client"})
    assert status == 201 and created["secret"].startswith("sk-sy-")
    assert "digest" not in created and created["tenant"] == "acme"
    secret = created["secret"]
    assert call(world, "POST", "/v1/chat/completions", secret, CHAT)[0] == 200
    status, rotated = call(world, "POST", f"/v1/admin/keys/{created['id']}/rotate",
                           "acme:admin", {"overlap_s": 60})
    assert status == 201 and rotated["replaces"]["id"] == created["id"]
    assert call(world, "POST", "/v1/chat/completions", rotated["secret"], CHAT)[0] == 200
    assert call(world, "POST", "/v1/chat/completions", secret, CHAT)[0] == 200  # overlap
    status, _ = call(world, "POST", f"/v1/admin/keys/{created['id']}/revoke", "acme:admin")
    assert status == 200
    status, answer = call(world, "POST", "/v1/chat/completions", secret, CHAT)
    assert status == 401 and "revoked" in answer["error"]["message"]
    status, listed = call(world, "GET", "/v1/admin/keys", "acme:admin")
    assert all("secret" not in k and "digest" not in k for k in listed["data"])
    # a non-admin cannot mint admin keys, and keys:manage is admin-only
    status, _ = call(world, "POST", "/v1/admin/keys", "acme:operator",
                     {"name": "x", "role": "admin"})
    assert status == 403
    # every step is in the audit log, scoped to the tenant, and the chain verifies
    time.sleep(0.3)
    status, audit = call(world, "GET", "/v1/admin/audit?action=key.*", "acme:operator")
    assert status == 200
    mine = [e for e in audit["data"] if e["target"] == created["id"]]
    assert {e["action"] for e in mine} >= {"key.create", "key.rotate", "key.revoke"}
    assert {e["tenant_id"] for e in audit["data"]} == {"acme"}
    assert all(secret not in json.dumps(e) for e in audit["data"])
    assert call(world, "GET", "/v1/admin/audit", "acme:viewer")[0] == 403
    assert AuditLog(world["engine"]).verify().ok


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(caller=st.sampled_from(["acme", "globex"]), data=st.data())
def test_no_tenant_sees_or_changes_another_tenants_data(world: dict[str, Any], caller: str,
                                                        data: st.DataObject) -> None:
    other = "globex" if caller == "acme" else "acme"
    role = data.draw(st.sampled_from(["admin", "operator", "developer", "viewer"]))
    key = f"{caller}:{role}"
    theirs = world["traces"][other]
    action = data.draw(st.sampled_from(["list", "get", "filter", "tenant-param", "keys",
                                        "revoke", "feedback", "guess"]))
    if action == "list":
        status, answer = call(world, "GET", "/v1/traces?limit=1000", key)
        assert status == 200
        assert {t["tenant_id"] for t in answer["data"]} <= {caller}
    elif action == "get":
        trace = data.draw(st.sampled_from(theirs))
        status, _ = call(world, "GET", f"/v1/traces/{trace}", key)
        assert status == 404
    elif action == "filter":
        text = data.draw(st.sampled_from([f"{other}-req", "req", other, "demo"]))
        status, answer = call(world, "GET", f"/v1/traces?text={text}&service=demo", key)
        assert status == 200 and all(t["tenant_id"] == caller for t in answer["data"])
    elif action == "tenant-param":
        status, _ = call(world, "GET", f"/v1/traces?tenant={other}", key)
        assert status == 403
    elif action == "keys":
        status, answer = call(world, "GET", f"/v1/admin/keys?tenant={other}", key)
        assert status == 403
        status, answer = call(world, "GET", "/v1/admin/keys", key)
        if status == 200:
            assert {k["tenant"] for k in answer["data"]} == {caller}
    elif action == "feedback":
        trace = data.draw(st.sampled_from(theirs))
        status, _ = call(world, "POST", "/v1/feedback", key, {"trace_id": trace, "score": 1})
        assert status == (403 if role == "viewer" else 404)
        status, answer = call(world, "GET", f"/v1/feedback?tenant={other}", key)
        assert status == 403
    elif action == "revoke":
        victim = next(k for k in store.list_keys(world["engine"], tenant_id=other)
                      if k.status() == "active")
        status, _ = call(world, "POST", f"/v1/admin/keys/{victim.id}/revoke", key)
        assert status in (403, 404)
        assert store.get_key(world["engine"], victim.id, tenant_id=other).status() == "active"
    else:
        guess = data.draw(st.text(alphabet="0123456789abcdef", min_size=1, max_size=32))
        status, answer = call(world, "GET", f"/v1/traces/{guess}", key)
        assert status == 404 or answer["tenant_id"] == caller


def _limited_config(folder: Path, sim: Proc, extra: str = "") -> str:
    return f"""
store: {{url: "sqlite:///{folder}/store.db"}}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
providers:
  sim: {{kind: openai, base_url: "{sim.url}/v1"}}
models:
  demo: {{provider: sim, model: sim-chat}}
{extra}
"""


def test_rate_limits_in_one_process(start_sim: Callable[..., Proc],
                                    start_gateway: Callable[..., Proc], tmp_path: Path) -> None:
    sim = start_sim()
    gateway = start_gateway(_limited_config(tmp_path, sim, "rate_limits: {key: {rpm: 5}}"))
    outcomes = burst(gateway, 8, concurrency=1)
    statuses = [o.status for o in outcomes]
    assert statuses == [200] * 5 + [429] * 3, statuses
    ok, limited = outcomes[0], outcomes[-1]
    assert ok.headers["x-ratelimit-limit-requests"] == "5"
    assert ok.headers["x-ratelimit-remaining-requests"] == "4"
    assert int(limited.headers["retry-after"]) >= 1
    assert "may use 5 requests per minute" in limited.body["error"]["message"]
    assert limited.body["error"]["type"] == "rate_limit_error"


def test_tokens_per_minute(start_sim: Callable[..., Proc], start_gateway: Callable[..., Proc],
                           tmp_path: Path) -> None:
    sim = start_sim()
    gateway = start_gateway(_limited_config(
        tmp_path, sim, "rate_limits: {tenant: {tpm: 200}, default_max_tokens: 50}"))
    outcomes = burst(gateway, 6, concurrency=1, body={**CHAT, "max_tokens": 50})
    statuses = Counter(o.status for o in outcomes)
    assert statuses[200] >= 2 and statuses[429] >= 1, statuses
    refused = next(o for o in outcomes if o.status == 429)
    assert "tokens per minute" in refused.body["error"]["message"]


def test_two_replicas_share_one_limit_through_redis(tmp_path: Path, redis_prefix: str) -> None:
    sim = launch_sim(tmp_path)
    config = _limited_config(tmp_path, sim, f"""
state: {{backend: redis, redis_url: "redis://127.0.0.1:6379/0", key_prefix: "{redis_prefix}"}}
rate_limits: {{key: {{rpm: 200}}}}
""")
    first = launch_gateway(tmp_path, config)
    second = launch_gateway(tmp_path, config)
    try:
        started = time.monotonic()
        outcomes = []
        for _ in range(3):
            outcomes += burst(first, 100, concurrency=10)
            outcomes += burst(second, 100, concurrency=10)
        elapsed = time.monotonic() - started
        accepted = sum(o.status == 200 for o in outcomes)
        assert {o.status for o in outcomes} <= {200, 429}
        expected = 200 + elapsed * 200 / 60  # the burst plus what refilled meanwhile
        assert abs(accepted - expected) <= 0.05 * 200, (accepted, expected)
        # per-pod limits would have let about twice as many through
    finally:
        first.stop()
        second.stop()
        sim.stop()


def test_no_secret_reaches_the_logs(world: dict[str, Any]) -> None:
    # Runs after the other tests of this module have used every key (module-scoped world).
    call(world, "POST", "/v1/chat/completions", "sk-sy-ffffffffffff-leaked-guess", CHAT)
    log = world["gateway"].output()
    assert "gateway ready" in log  # the log was captured
    for secret in [*world["keys"].values(), API_KEY, "sk-sy-ffffffffffff-leaked-guess"]:
        assert secret not in log


def test_cost_budgets_and_usage(start_sim: Callable[..., Proc],
                                start_gateway: Callable[..., Proc], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    engine = create_store_engine(url)
    migrate(engine)
    store.create_tenant(engine, "acme")
    acme = _key(engine, "acme", "client")
    sim = start_sim()
    gateway = start_gateway(f"""
store: {{url: "{url}"}}
traces: {{flush_interval_s: 0.05}}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
providers:
  sim: {{kind: openai, base_url: "{sim.url}/v1"}}
models:
  demo: {{provider: sim, model: sim-chat}}
pricing:
  demo: {{input_per_1m: 1000, output_per_1m: 2000}}
budgets:
  - {{tenant: acme, period: month, limit_usd: 0.1, soft_ratio: 0.5}}
""")
    world = {"gateway": gateway, "keys": {}}
    # Without max_tokens a request may cost up to 512 answer tokens ($1.02 here): more than
    # the whole budget, so it is refused up front rather than overspending it.
    status, too_big = call(world, "POST", "/v1/chat/completions", acme, CHAT)
    assert status == 429 and "may cost up to $1.03" in too_big["error"]["message"]
    bounded = {**CHAT, "max_tokens": 20}  # at most 8 * $0.001 + 20 * $0.002 = $0.048
    statuses = [call(world, "POST", "/v1/chat/completions", acme, bounded) for _ in range(5)]
    codes = [s for s, _ in statuses]
    assert codes[0] == 200 and 429 in codes, codes
    refused = next(body for s, body in statuses if s == 429)
    assert refused["error"]["type"] == "insufficient_quota"
    assert "monthly budget of tenant 'acme' ($0.10) cannot cover" in refused["error"]["message"]
    # the platform tenant has no budget and is not affected
    assert call(world, "POST", "/v1/chat/completions", API_KEY, CHAT)[0] == 200
    _, body = call(world, "GET", "/metrics", API_KEY)
    assert 'shipyard_budget_alerts_total{scope="tenant"} 1.0' in body
    assert "shipyard_cost_usd_total" in body
    time.sleep(0.5)
    rows = store_usage(engine)
    assert 0.05 < rows["acme"]["cost_usd"] <= 0.1 and rows["acme"]["requests"] == 6
    result = subprocess.run(
        [sys.executable, "-m", "shipyard", "usage", "--by", "tenant", "--since", "1h",
         "--store-url", url, "--json"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert {r["group"] for r in json.loads(result.stdout)} == {"acme", "default"}
    engine.dispose()


def store_usage(engine: Any) -> dict[str, dict[str, Any]]:
    return {r["group"]: r for r in usage(engine, by="tenant",
                                         since=datetime.now(UTC) - timedelta(hours=1))}


def test_payloads_are_encrypted_at_rest(start_sim: Callable[..., Proc],
                                        start_gateway: Callable[..., Proc],
                                        tmp_path: Path) -> None:
    from cryptography.fernet import Fernet
    from sqlalchemy import text

    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    url = f"sqlite:///{tmp_path}/store.db"
    sim = start_sim()
    config = f"""
store: {{url: "{url}"}}
traces: {{flush_interval_s: 0.05, encryption_keys: [{{$env: NEW_KEY}}, {{$env: OLD_KEY}}]}}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
providers:
  sim: {{kind: openai, base_url: "{sim.url}/v1"}}
models:
  demo: {{provider: sim, model: sim-chat, capture: full}}
"""
    gateway = start_gateway(config, env={"NEW_KEY": new, "OLD_KEY": old})
    world = {"gateway": gateway, "keys": {}}
    secret_words = "my card number is in this prompt"
    body = {**CHAT, "messages": [{"role": "user", "content": secret_words}]}
    assert call(world, "POST", "/v1/chat/completions", API_KEY, body)[0] == 200
    time.sleep(0.5)
    engine = create_store_engine(url)
    with engine.connect() as connection:
        stored = connection.execute(text("SELECT request_body, response_body FROM traces"))
        request_body, response_body = stored.one()
    engine.dispose()
    assert request_body.startswith("enc:v1:") and response_body.startswith("enc:v1:")
    assert secret_words not in request_body
    assert Fernet(new.encode()).decrypt(request_body[7:].encode())  # the first key encrypts
    _, listed = call(world, "GET", "/v1/traces", API_KEY)
    assert secret_words in listed["data"][0]["request_body"]  # readable through the API


def test_cors_is_closed_unless_configured(start_sim: Callable[..., Proc],
                                          start_gateway: Callable[..., Proc],
                                          tmp_path: Path) -> None:
    sim = start_sim()
    base = _limited_config(tmp_path, sim)
    closed = start_gateway(base)
    opened = start_gateway(base + '\nserver: {cors: {allow_origins: ["https://app.example"]}}')
    preflight = {"origin": "https://app.example", "access-control-request-method": "POST",
                 "access-control-request-headers": "authorization,content-type"}
    for gateway, allowed in ((closed, False), (opened, True)):
        conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=5)
        conn.request("OPTIONS", "/v1/chat/completions", headers=preflight)
        response = conn.getresponse()
        response.read()
        origin = response.getheader("access-control-allow-origin")
        conn.close()
        assert (origin == "https://app.example") is allowed, (gateway.port, origin)
    status, _ = _http("POST", f"{opened.url}/v1/chat/completions", json.dumps(CHAT).encode(),
                      headers={"origin": "https://evil.example"})
    assert status == 200  # CORS guards browsers; the key still authenticates every call


def test_tls(start_sim: Callable[..., Proc], start_gateway: Callable[..., Proc],
             tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    sim = start_sim()
    gateway = start_gateway(_limited_config(tmp_path, sim) + f"""
server: {{tls_certfile: "{tmp_path}/cert.pem", tls_keyfile: "{tmp_path}/key.pem"}}
""")
    context = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
    conn = http.client.HTTPSConnection("127.0.0.1", gateway.port, context=context, timeout=5)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(CHAT),
                 headers={"authorization": f"Bearer {API_KEY}",
                          "content-type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200 and json.loads(response.read())["choices"]
    conn.close()


def test_oidc_bearer_tokens_through_the_gateway(start_sim: Callable[..., Proc],
                                                start_gateway: Callable[..., Proc],
                                                tmp_path: Path) -> None:
    import jwt as pyjwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(pyjwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [{**jwk, "kid": "k1",
                                                              "alg": "RS256", "use": "sig"}]}))
    url = f"sqlite:///{tmp_path}/store.db"
    engine = create_store_engine(url)
    migrate(engine)
    store.create_tenant(engine, "acme")
    engine.dispose()
    sim = start_sim()
    gateway = start_gateway(f"""
store: {{url: "{url}"}}
traces: {{flush_interval_s: 0.05}}
auth:
  oidc: {{issuer: "https://idp.test", audience: shipyard, jwks_file: "{tmp_path}/jwks.json"}}
providers:
  sim: {{kind: openai, base_url: "{sim.url}/v1"}}
models:
  demo: {{provider: sim, model: sim-chat}}
""")

    def token(**claims: Any) -> str:
        now = int(time.time())
        body = {"iss": "https://idp.test", "aud": "shipyard", "sub": "alice", "iat": now,
                "exp": now + 300, "tenant": "acme", "role": "client", **claims}
        return str(pyjwt.encode(body, private, algorithm="RS256", headers={"kid": "k1"}))

    world = {"gateway": gateway, "keys": {}}
    status, answer = call(world, "POST", "/v1/chat/completions", token(), CHAT)
    assert status == 200, answer
    status, answer = call(world, "GET", "/v1/traces", token())
    assert status == 403  # a client may not read traces
    status, answer = call(world, "POST", "/v1/chat/completions", token(aud="other"), CHAT)
    assert status == 401 and "aud" in answer["error"]["message"]
    status, answer = call(world, "POST", "/v1/chat/completions",
                          token(exp=int(time.time()) - 3600), CHAT)
    assert status == 401 and "expired" in answer["error"]["message"].lower()
    status, answer = call(world, "GET", "/v1/traces", token(role="viewer"))
    assert status == 200 and all(t["tenant_id"] == "acme" for t in answer["data"])
    time.sleep(0.3)
    status, answer = call(world, "GET", "/v1/traces", token(role="viewer"))
    assert [t["tenant_id"] for t in answer["data"]][:1] == ["acme"], answer
