"""OIDC keys fetched over real HTTP: a JWKS served on 127.0.0.1 by `http.server` in a thread,
fetched by the verifier's own aiohttp client; caching, the refresh rate limit, rotation and
outages are checked by counting the requests the server saw."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from shipyard.config.security import OIDCConfig
from shipyard.errors import AuthenticationFailed, UpstreamUnavailable
from shipyard.security.jwt import JWTVerifier

NOW = 1_800_000_000.0
ISSUER = "https://login.example.com/acme/"


@dataclass
class IdP:
    """What the JWKS endpoint serves, and what it saw."""

    body: bytes = b""
    status: int = 200
    delay_s: float = 0.0
    requests: list[str] = field(default_factory=list)
    url: str = ""

    def publish(self, *keys: dict[str, Any]) -> None:
        self.body = json.dumps({"keys": list(keys)}).encode()


@pytest.fixture
def idp() -> Iterator[IdP]:
    state = IdP()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            time.sleep(state.delay_s)
            try:
                self.send_response(state.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(state.body)))
                self.end_headers()
                self.wfile.write(state.body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (the timeout test)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/protocol/certs"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass
class Clock:
    now: float = NOW

    def __call__(self) -> float:
        return self.now


def rsa_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    return {**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, "use": "sig"}


def mint(key: Any, kid: str, alg: str = "RS256") -> str:
    payload = {"iss": ISSUER, "aud": "shipyard", "sub": "svc-1", "tenant": "acme",
               "role": "client", "exp": int(NOW) + 3600}
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid})


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]:
    return (rsa.generate_private_key(public_exponent=65537, key_size=2048),
            rsa.generate_private_key(public_exponent=65537, key_size=2048))


def verifier_for(idp: IdP, clock: Clock, **settings: Any) -> JWTVerifier:
    config = OIDCConfig(issuer=ISSUER, audience="shipyard", jwks_url=idp.url, **settings)
    return JWTVerifier(config, clock=clock)


def test_keys_are_fetched_once_and_cached_for_the_ttl(
    idp: IdP, rsa_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]
) -> None:
    key, _ = rsa_keys
    idp.publish(rsa_jwk(key, "k1"))
    clock = Clock()
    verifier = verifier_for(idp, clock, jwks_cache_s=300)

    async def run() -> None:
        await verifier.refresh()
        for _ in range(25):
            principal = await verifier.verify_async(mint(key, "k1"))
            assert (principal.tenant_id, principal.role, principal.subject) == (
                "acme", "client", "svc-1")
        assert idp.requests == ["/protocol/certs"]
        clock.now += 301  # past the TTL: one refetch, then cached again
        await asyncio.gather(*(verifier.verify_async(mint(key, "k1")) for _ in range(10)))
        assert len(idp.requests) == 2

    asyncio.run(run())
    verifier.verify(mint(key, "k1"))  # the sync path uses the cache, no request
    assert len(idp.requests) == 2


def test_unknown_kids_refresh_at_most_once_per_interval_and_rotation_is_seen(
    idp: IdP, rsa_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]
) -> None:
    old, new = rsa_keys
    idp.publish(rsa_jwk(old, "k1"))
    clock = Clock()
    verifier = verifier_for(idp, clock, jwks_min_refresh_s=30)

    async def flood() -> int:
        results = await asyncio.gather(
            *(verifier.verify_async(mint(new, f"bogus-{i}")) for i in range(40)),
            return_exceptions=True)
        assert all(isinstance(r, AuthenticationFailed) for r in results)
        return len(idp.requests)

    async def run() -> None:
        await verifier.refresh()
        clock.now += 31
        assert await flood() == 2  # forty bad kids: one refresh
        assert await flood() == 2  # still inside the interval: none
        idp.publish(rsa_jwk(old, "k1"), rsa_jwk(new, "k2"))  # the IdP rotates
        with pytest.raises(AuthenticationFailed):
            await verifier.verify_async(mint(new, "k2"))
        assert len(idp.requests) == 2
        clock.now += 30
        assert (await verifier.verify_async(mint(new, "k2"))).tenant_id == "acme"
        assert len(idp.requests) == 3
        assert (await verifier.verify_async(mint(old, "k1"))).tenant_id == "acme"
        assert len(idp.requests) == 3

    asyncio.run(run())


def test_outage_keeps_known_keys_and_is_rate_limited(
    idp: IdP, rsa_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]
) -> None:
    key, _ = rsa_keys
    idp.publish(rsa_jwk(key, "k1"))
    clock = Clock()
    verifier = verifier_for(idp, clock, jwks_cache_s=60, jwks_min_refresh_s=10)

    async def run() -> None:
        await verifier.refresh()
        idp.status = 503
        clock.now += 61
        for _ in range(5):  # stale keys are still used while the IdP is down
            assert (await verifier.verify_async(mint(key, "k1"))).role == "client"
        assert len(idp.requests) == 2
        clock.now += 10
        await verifier.verify_async(mint(key, "k1"))
        assert len(idp.requests) == 3
        idp.status = 200
        clock.now += 10
        await verifier.verify_async(mint(key, "k1"))
        assert len(idp.requests) == 4
        await verifier.verify_async(mint(key, "k1"))
        assert len(idp.requests) == 4  # healthy again: cached

    asyncio.run(run())


def test_unreachable_or_slow_idp_without_keys_is_a_clear_upstream_error(idp: IdP) -> None:
    idp.publish()
    idp.delay_s = 1.0
    clock = Clock()
    verifier = verifier_for(idp, clock, jwks_timeout_s=0.2)
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = {**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "e1"}
    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable) as info:
        asyncio.run(verifier.verify_async(mint(key, "e1", "ES256")))
    assert time.monotonic() - started < 0.9
    assert idp.url in info.value.message and "TimeoutError" in info.value.message
    idp.delay_s = 0.0
    idp.publish(jwk)
    clock.now += 30
    assert asyncio.run(verifier.verify_async(mint(key, "e1", "ES256"))).role == "client"
