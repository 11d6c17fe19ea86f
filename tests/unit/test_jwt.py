"""`shipyard.security.jwt`: every accept and reject case of OIDC bearer tokens, with keys
generated here and a JWKS file written per test."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from shipyard.config import parse_config
from shipyard.config.security import OIDCConfig
from shipyard.errors import (
    AuthenticationFailed,
    ConfigError,
    PermissionDenied,
    UpstreamUnavailable,
)
from shipyard.security.jwt import JWTVerifier

NOW = 1_800_000_000.0
ISSUER = "https://idp.example.com/realms/acme"
AUDIENCE = "shipyard"


@dataclass(frozen=True)
class Keys:
    rsa: rsa.RSAPrivateKey
    ec: ec.EllipticCurvePrivateKey
    other_rsa: rsa.RSAPrivateKey


@pytest.fixture(scope="module")
def keys() -> Keys:
    # RSA generation takes tens of milliseconds: do it once; the keys are never mutated.
    return Keys(
        rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec=ec.generate_private_key(ec.SECP256R1()),
        other_rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
    )


def jwk(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, kid: str,
        **extra: Any) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        data = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        data = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**data, "kid": kid, "use": "sig", **extra}


def write_jwks(path: Path, *entries: dict[str, Any]) -> None:
    path.write_text(json.dumps({"keys": list(entries)}), encoding="utf-8")


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "tenant": "acme",
        "role": "developer", "iat": int(NOW) - 10, "exp": int(NOW) + 300,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def mint(key: Any, alg: str = "RS256", kid: str | None = "rsa-1", **overrides: Any) -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(claims(**overrides), key, algorithm=alg, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], secret: bytes | None, **overrides: Any) -> str:
    """A token built by hand, as an attacker would: HMAC-signed with `secret`, or unsigned."""
    signing_input = (b64(json.dumps(header).encode()) + "."
                     + b64(json.dumps(claims(**overrides)).encode()))
    if secret is None:
        return signing_input + "."
    digest = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(digest)


@dataclass
class Clock:
    now: float = NOW

    def __call__(self) -> float:
        return self.now


@dataclass
class Setup:
    path: Path
    clock: Clock
    make: Callable[..., JWTVerifier]
    fetched: list[str] = field(default_factory=list)


@pytest.fixture
def setup(tmp_path: Path, keys: Keys) -> Setup:
    path = tmp_path / "jwks.json"
    write_jwks(path, jwk(keys.rsa, "rsa-1", alg="RS256"), jwk(keys.ec, "ec-1"))
    clock = Clock()

    def make(**settings: Any) -> JWTVerifier:
        values: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE,
                                  "jwks_file": str(path)}
        values.update(settings)
        return JWTVerifier(OIDCConfig(**values), clock=clock)

    return Setup(path, clock, make)


def refused(verifier: JWTVerifier, token: str) -> str:
    with pytest.raises(AuthenticationFailed) as info:
        verifier.verify(token)
    assert info.value.status == 401
    assert len(token) < 10 or token not in info.value.message  # never echo the token
    return info.value.message


def denied(verifier: JWTVerifier, token: str) -> str:
    with pytest.raises(PermissionDenied) as info:
        verifier.verify(token)
    assert info.value.status == 403
    return info.value.message


# -- accepted -------------------------------------------------------------------------------


def test_rs256_token_maps_to_tenant_role_and_subject(setup: Setup, keys: Keys) -> None:
    principal = setup.make().verify(mint(keys.rsa))
    assert (principal.tenant_id, principal.role, principal.subject) == ("acme", "developer",
                                                                         "alice")
    assert principal.key_id is None


def test_es256_token_is_accepted(setup: Setup, keys: Keys) -> None:
    principal = setup.make().verify(mint(keys.ec, "ES256", "ec-1", role="viewer"))
    assert principal.role == "viewer"


def test_verify_async_gives_the_same_principal(setup: Setup, keys: Keys) -> None:
    principal = asyncio.run(setup.make().verify_async(mint(keys.rsa)))
    assert principal.tenant_id == "acme"


def test_token_without_kid_uses_the_only_key_for_its_algorithm(setup: Setup,
                                                               keys: Keys) -> None:
    assert setup.make().verify(mint(keys.ec, "ES256", kid=None)).role == "developer"


def test_audience_list_on_either_side(setup: Setup, keys: Keys) -> None:
    verifier = setup.make(audience=["other-api", AUDIENCE])
    assert verifier.verify(mint(keys.rsa, aud=["account", AUDIENCE])).tenant_id == "acme"
    assert verifier.verify(mint(keys.rsa, aud="other-api")).tenant_id == "acme"
    message = refused(verifier, mint(keys.rsa, aud=["account", "billing"]))
    assert "'aud'" in message and "billing" in message and "other-api, shipyard" in message


# -- signature and algorithm ----------------------------------------------------------------


def test_algorithm_confusion_hs256_with_the_public_key_is_refused(setup: Setup,
                                                                  keys: Keys) -> None:
    pem = keys.rsa.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    for secret in (pem, pem.strip()):
        message = refused(setup.make(), forge({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"},
                                              secret))
        assert "'HS256'" in message and "HMAC" in message and "RS256 or ES256" in message


def test_hs256_is_refused_even_if_the_jwks_holds_a_symmetric_key(setup: Setup,
                                                                 keys: Keys) -> None:
    secret = b"s" * 32
    write_jwks(setup.path, jwk(keys.rsa, "rsa-1"),
               {"kty": "oct", "kid": "hmac", "k": b64(secret), "alg": "HS256"})
    refused(setup.make(), forge({"alg": "HS256", "kid": "hmac"}, secret))


def test_alg_none_is_refused(setup: Setup) -> None:
    for alg in ("none", "None", "NONE"):
        message = refused(setup.make(), forge({"alg": alg, "kid": "rsa-1"}, None))
        assert "unsigned" in message


def test_algorithm_not_in_the_configured_list_is_refused(setup: Setup, keys: Keys) -> None:
    message = refused(setup.make(algorithms=["RS256"]), mint(keys.ec, "ES256", "ec-1"))
    assert "'ES256'" in message and "auth.oidc.algorithms" in message


def test_token_alg_must_match_the_key_kind(setup: Setup, keys: Keys) -> None:
    # An ES256 header pointing at the RSA key: no ES256 key has that kid.
    token = mint(keys.ec, "ES256", "rsa-1")
    message = refused(setup.make(), token)
    assert "'rsa-1'" in message and "ES256" in message


def test_bad_signature_is_refused(setup: Setup, keys: Keys) -> None:
    message = refused(setup.make(), mint(keys.other_rsa, kid="rsa-1"))
    assert "signature does not match key 'rsa-1'" in message


def test_tampered_payload_is_refused(setup: Setup, keys: Keys) -> None:
    header, _, signature = mint(keys.rsa).split(".")
    payload = b64(json.dumps(claims(role="admin")).encode())
    message = refused(setup.make(), f"{header}.{payload}.{signature}")
    assert "signature does not match" in message


@pytest.mark.parametrize("token", ["", "abc", "a.b", "a.b.c.d.e", "x.y.z", "..."])
def test_malformed_tokens_are_refused(setup: Setup, token: str) -> None:
    message = refused(setup.make(), token)
    assert "not a JWT" in message or "malformed" in message
    if token.count(".") == 4:
        assert "JWE" in message


def test_non_string_kid_is_refused(setup: Setup) -> None:
    message = refused(setup.make(), forge({"alg": "RS256", "kid": 7}, None))
    assert "malformed" in message and "Key ID" in message


def test_short_rsa_key_is_refused_not_warned(setup: Setup) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    write_jwks(setup.path, jwk(weak, "weak"))
    with warnings.catch_warnings():  # minting with a weak key warns; that is the point here
        warnings.simplefilter("ignore")
        token = mint(weak, kid="weak")
    message = refused(setup.make(), token)
    assert "2048" in message


# -- keys: unknown kid, refresh, rotation ---------------------------------------------------


def test_unknown_kid_triggers_exactly_one_refresh(setup: Setup, keys: Keys) -> None:
    verifier = setup.make(jwks_min_refresh_s=30)
    assert verifier.loads == 1
    setup.clock.now += 31
    token = mint(keys.other_rsa, kid="nobody")
    message = refused(verifier, token)
    assert "'nobody'" in message and "jwks_file" in message and "jwks_min_refresh_s" in message
    assert verifier.loads == 2
    for _ in range(50):  # a flood of made-up kids does not reload again
        refused(verifier, token)
    assert verifier.loads == 2
    setup.clock.now += 30
    refused(verifier, token)
    assert verifier.loads == 3


def test_kid_rotation_in_the_file_is_picked_up_after_refresh(setup: Setup, keys: Keys) -> None:
    verifier = setup.make(jwks_min_refresh_s=30)
    rotated = mint(keys.other_rsa, kid="rsa-2")
    write_jwks(setup.path, jwk(keys.other_rsa, "rsa-2"))
    refused(verifier, rotated)  # within the refresh interval: not reloaded yet
    assert verifier.loads == 1
    setup.clock.now += 30
    assert verifier.verify(rotated).tenant_id == "acme"
    assert verifier.loads == 2
    assert "'rsa-1'" in refused(verifier, mint(keys.rsa))  # the old key is gone


def test_file_is_reread_after_the_cache_ttl(setup: Setup, keys: Keys) -> None:
    verifier = setup.make(jwks_cache_s=60, jwks_min_refresh_s=5)
    verifier.verify(mint(keys.rsa))
    assert verifier.loads == 1
    setup.clock.now += 61
    verifier.verify(mint(keys.rsa, exp=int(setup.clock.now) + 60))
    assert verifier.loads == 2


def test_broken_file_keeps_the_known_keys(setup: Setup, keys: Keys) -> None:
    verifier = setup.make(jwks_cache_s=10, jwks_min_refresh_s=0)
    setup.path.write_text("{not json", encoding="utf-8")
    setup.clock.now += 11
    assert verifier.verify(mint(keys.rsa, exp=int(setup.clock.now) + 60)).role == "developer"
    assert verifier.loads == 2


def test_unusable_jwks_file_fails_at_startup(setup: Setup, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        setup.make(jwks_file=str(tmp_path / "missing.json"))
    assert "jwks_file" in info.value.message and "cannot be read" in info.value.message
    setup.path.write_text(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}),
                          encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        setup.make()
    assert "no RSA or EC signature key" in info.value.message


def test_encryption_keys_and_foreign_algorithms_are_skipped(setup: Setup, keys: Keys) -> None:
    write_jwks(setup.path, jwk(keys.other_rsa, "enc", use="enc", alg="RSA-OAEP"),
               jwk(keys.ec, "ps", alg="PS256"), jwk(keys.rsa, "rsa-1"))
    verifier = setup.make()
    assert verifier.verify(mint(keys.rsa)).tenant_id == "acme"
    refused(verifier, mint(keys.other_rsa, kid="enc"))


def test_unknown_kid_message_hints_at_a_wrong_issuer(setup: Setup, keys: Keys) -> None:
    message = refused(setup.make(), mint(keys.other_rsa, kid="x", iss="https://evil.example"))
    assert "'https://evil.example'" in message and ISSUER in message


def test_async_refresh_is_shared_by_concurrent_callers(setup: Setup, keys: Keys) -> None:
    calls: list[str] = []
    body = json.dumps({"keys": [jwk(keys.rsa, "rsa-1")]}).encode()

    async def fetch(url: str, timeout_s: float) -> bytes:
        calls.append(url)
        await asyncio.sleep(0.01)
        return body

    config = OIDCConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url="https://idp/jwks")
    verifier = JWTVerifier(config, clock=setup.clock, fetch=fetch)
    with pytest.raises(UpstreamUnavailable) as info:
        verifier.verify(mint(keys.rsa))  # the sync path never fetches
    assert "jwks_url 'https://idp/jwks'" in info.value.message

    async def many() -> list[str]:
        found = await asyncio.gather(*(verifier.verify_async(mint(keys.rsa)) for _ in range(20)))
        return [p.tenant_id for p in found]

    assert asyncio.run(many()) == ["acme"] * 20
    assert calls == ["https://idp/jwks"]
    assert verifier.verify(mint(keys.rsa)).tenant_id == "acme"  # now cached for sync use


def test_failed_fetch_without_keys_is_an_upstream_error(setup: Setup, keys: Keys) -> None:
    async def fetch(url: str, timeout_s: float) -> bytes:
        raise OSError("connection refused")

    config = OIDCConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url="https://idp/jwks")
    verifier = JWTVerifier(config, clock=setup.clock, fetch=fetch)
    with pytest.raises(UpstreamUnavailable) as info:
        asyncio.run(verifier.verify_async(mint(keys.rsa)))
    assert "connection refused" in info.value.message and "reachable" in info.value.message
    with pytest.raises(UpstreamUnavailable):
        asyncio.run(verifier.refresh())


# -- issuer, audience, time -----------------------------------------------------------------


def test_wrong_issuer(setup: Setup, keys: Keys) -> None:
    message = refused(setup.make(), mint(keys.rsa, iss=ISSUER + "/"))
    assert "'iss'" in message and repr(ISSUER + "/") in message and "trailing slash" in message


def test_wrong_audience(setup: Setup, keys: Keys) -> None:
    message = refused(setup.make(), mint(keys.rsa, aud="account"))
    assert "'aud'" in message and "'account'" in message and "shipyard" in message


@pytest.mark.parametrize("claim", ["iss", "aud", "exp"])
def test_missing_required_claims(setup: Setup, keys: Keys, claim: str) -> None:
    message = refused(setup.make(), mint(keys.rsa, **{claim: None}))
    assert f"no '{claim}' claim" in message


def test_expired_within_and_beyond_leeway(setup: Setup, keys: Keys) -> None:
    verifier = setup.make(leeway_s=60)
    assert verifier.verify(mint(keys.rsa, exp=int(NOW) - 59)).role == "developer"
    message = refused(verifier, mint(keys.rsa, exp=int(NOW) - 61))
    assert "expired" in message and "61 s ago" in message and "leeway_s" in message
    refused(setup.make(leeway_s=0), mint(keys.rsa, exp=int(NOW) - 1))


def test_not_yet_valid_within_and_beyond_leeway(setup: Setup, keys: Keys) -> None:
    verifier = setup.make(leeway_s=60)
    assert verifier.verify(mint(keys.rsa, nbf=int(NOW) + 59)).role == "developer"
    message = refused(verifier, mint(keys.rsa, nbf=int(NOW) + 120))
    assert "not valid before" in message and "'nbf'" in message and "NTP" in message
    refused(setup.make(leeway_s=0), mint(keys.rsa, nbf=int(NOW) + 1))


def test_issued_in_the_future_beyond_leeway(setup: Setup, keys: Keys) -> None:
    verifier = setup.make(leeway_s=60)
    assert verifier.verify(mint(keys.rsa, iat=int(NOW) + 30)).role == "developer"
    assert "'iat'" in refused(verifier, mint(keys.rsa, iat=int(NOW) + 600))


def test_non_numeric_time_claim(setup: Setup, keys: Keys) -> None:
    assert "NumericDate" in refused(setup.make(), mint(keys.rsa, exp="tomorrow"))


# -- claim mapping --------------------------------------------------------------------------


def test_missing_tenant_claim(setup: Setup, keys: Keys) -> None:
    message = refused(setup.make(), mint(keys.rsa, tenant=None))
    assert "tenant claim 'tenant' is missing" in message and "tenant_claim" in message


def test_nested_and_namespaced_claims(setup: Setup, keys: Keys) -> None:
    verifier = setup.make(tenant_claim="org.id", role_claim="https://shipyard.example/role")
    token = mint(keys.rsa, tenant=None, role=None, org={"id": "globex"},
                 **{"https://shipyard.example/role": "operator"})
    principal = verifier.verify(token)
    assert (principal.tenant_id, principal.role) == ("globex", "operator")


def test_dotted_list_role_claim_takes_the_highest_known_role(setup: Setup, keys: Keys) -> None:
    verifier = setup.make(role_claim="realm_access.roles")
    roles = ["offline_access", "viewer", "Operator", "client", "uma_authorization"]
    token = mint(keys.rsa, role=None, realm_access={"roles": roles})
    assert verifier.verify(token).role == "operator"


def test_unknown_role_is_forbidden(setup: Setup, keys: Keys) -> None:
    message = denied(setup.make(), mint(keys.rsa, role="superuser"))
    assert "'superuser'" in message and "admin, operator, developer, client, viewer" in message
    denied(setup.make(role_claim="groups"), mint(keys.rsa, groups=["staff", "all"]))


def test_missing_role_uses_default_role_or_is_forbidden(setup: Setup, keys: Keys) -> None:
    token = mint(keys.rsa, role=None)
    message = denied(setup.make(), token)
    assert "no role claim 'role'" in message and "default_role" in message
    assert setup.make(default_role="client").verify(token).role == "client"


def test_subject_is_optional(setup: Setup, keys: Keys) -> None:
    assert setup.make().verify(mint(keys.rsa, sub=None)).subject is None


# -- configuration --------------------------------------------------------------------------

OIDC_YAML = """
auth:
  oidc:
    issuer: https://idp.example.com/
    audience: [shipyard, api://shipyard]
{extra}"""


def config_message(extra: str, text: str = OIDC_YAML) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text.format(extra=extra), environ={})
    return info.value.message


def test_oidc_alone_is_a_valid_auth_setup() -> None:
    config = parse_config(OIDC_YAML.format(extra="    jwks_url: https://idp/jwks\n"), environ={})
    assert config.auth.oidc is not None
    assert config.auth.oidc.audiences() == ["shipyard", "api://shipyard"]
    assert config.auth.oidc.algorithms == ["RS256", "ES256"]
    assert config.auth.oidc.leeway_s == 60


def test_config_needs_exactly_one_key_source() -> None:
    for extra in ("", "    jwks_url: https://idp/jwks\n    jwks_file: jwks.json\n"):
        message = config_message(extra)
        assert "'auth.oidc'" in message and "exactly one of 'jwks_file'" in message


def test_config_refuses_hmac_and_none_algorithms() -> None:
    message = config_message("    jwks_url: https://idp/jwks\n    algorithms: [RS256, HS256]\n")
    assert "'auth.oidc.algorithms'" in message and "HMAC" in message and "RS256" in message


def test_config_needs_an_issuer_and_a_valid_default_role() -> None:
    message = config_message("", "auth:\n  oidc:\n    audience: x\n    jwks_url: https://i/j\n")
    assert "'auth.oidc.issuer' is required" in message
    message = config_message("    jwks_url: https://idp/jwks\n    default_role: root\n")
    assert "'auth.oidc.default_role'" in message and "'viewer'" in message


def test_config_jwks_url_must_be_http() -> None:
    message = config_message("    jwks_url: ftp://idp/jwks\n")
    assert "jwks_url 'ftp://idp/jwks'" in message and "https://" in message


def test_auth_error_mentions_oidc_when_nothing_is_configured() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("auth:\n  api_keys: []\n", environ={})
    assert "auth.oidc" in info.value.message
