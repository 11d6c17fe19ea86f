"""OIDC bearer tokens: verify a JWT (RS256/ES256) against the identity provider's JWKS and map
its claims to a `Principal` (tenant, role, subject).

Use (the gateway builds one verifier per process, from `auth.oidc`):

```python
verifier = JWTVerifier(config.auth.oidc)      # a jwks_file is read here (ConfigError if bad)
await verifier.refresh()                      # optional, at startup: warm the jwks_url cache
principal = await verifier.verify_async(token)  # per request; never blocks the event loop
```

`verify_async` raises `AuthenticationFailed` (401) for a token that is malformed, uses an
algorithm other than those in `algorithms` (`none` and HMAC included), is signed by an unknown
key or does not match its signature, or has a wrong `iss`/`aud`, an `exp` in the past or an
`nbf`/`iat` in the future (beyond `leeway_s`), or lacks a needed claim; `PermissionDenied`
(403) when the token maps to no known role; `UpstreamUnavailable` (502) only when no signing
keys could ever be loaded. Messages name the claim, its value and the fix, never the token.
The sync `verify` does the same from the keys already loaded (a `jwks_file` is re-read when
due; a `jwks_url` is never fetched from `verify`, only from `verify_async` and `refresh`).

Keys: a `jwks_url` is cached for `jwks_cache_s`; a token whose `kid` is unknown triggers one
refresh, at most one per `jwks_min_refresh_s` (concurrent callers share it), so a flood of made-up
`kid`s cannot hammer the identity provider. If a refresh fails the keys already known are kept.
Only RSA and EC signature keys for an allowed algorithm are taken from the JWKS; symmetric
(`oct`) keys are ignored, and each key is bound to its own algorithm, so an HS256 token "signed"
with the public key as HMAC secret (algorithm confusion) is refused before any key is used.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

try:  # the `oidc` extra; the verifier says how to install it when it is missing
    import jwt
    from jwt.algorithms import has_crypto
    from jwt.exceptions import InvalidKeyError, InvalidSignatureError, PyJWTError
    from jwt.types import Options
except ImportError:  # pragma: no cover - exercised only without the extra
    jwt = None  # type: ignore[assignment]
    has_crypto = False

from shipyard.config.base import ROLES
from shipyard.config.security import OIDCConfig
from shipyard.errors import (
    AuthenticationFailed,
    ConfigError,
    PermissionDenied,
    UpstreamUnavailable,
)
from shipyard.security.principal import Principal

__all__ = ["INSTALL_HINT", "Fetch", "JWTVerifier", "fetch_url"]

INSTALL_HINT = "pip install 'shipyard[oidc]'"

log = logging.getLogger("shipyard.security.jwt")

Fetch = Callable[[str, float], Awaitable[bytes]]
"""Fetch a URL within a timeout (seconds) and return the body; raise on any failure."""

_MAX_JWKS_BYTES = 1_048_576
_RANK = {role: i for i, role in enumerate(ROLES)}  # lower is more privileged
_OPTIONS: Options = {
    "verify_signature": True,
    "verify_exp": False,  # time and audience checks below use the injected clock and say more
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
    "enforce_minimum_key_length": True,
}


async def fetch_url(url: str, timeout_s: float) -> bytes:
    """GET `url` with aiohttp; raise `OSError`/`aiohttp.ClientError`/`TimeoutError` on failure."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(url, headers={"Accept": "application/json"}) as response,
    ):
        if response.status != 200:
            raise OSError(f"HTTP {response.status}")
        body = await response.content.read(_MAX_JWKS_BYTES + 1)
        if len(body) > _MAX_JWKS_BYTES:
            raise OSError(f"the JWKS is larger than {_MAX_JWKS_BYTES} bytes")
        return body


def _show(value: Any) -> str:
    """A claim or header value for a message: repr, cut short (it may be attacker-chosen)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _claim(claims: dict[str, Any], path: str) -> Any:
    """Claim `path`; a dotted path walks nested objects, but a key that itself contains dots
    (Auth0's namespaced `https://example.com/role`) is matched whole first."""
    if path in claims:
        return claims[path]
    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:i])
        inner = claims.get(head)
        if isinstance(inner, dict):
            return _claim(inner, ".".join(parts[i:]))
    return None


def _parse_jwks(raw: bytes, allowed: list[str]) -> list[jwt.PyJWK]:
    """The usable signature keys of a JWKS document; `ValueError` when there are none."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"it is not valid JSON ({exc})") from None
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError('it is not a JWKS: expected an object with a "keys" list')
    keys: list[jwt.PyJWK] = []
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue  # encryption keys (Keycloak publishes RSA-OAEP ones) are not for us
        if entry.get("kty") not in ("RSA", "EC"):
            continue  # never accept a symmetric key: anyone holding it could mint tokens
        alg = entry.get("alg")
        if alg is not None and alg not in allowed:
            continue
        try:
            key = jwt.PyJWK(entry, alg)
        except PyJWTError as exc:
            log.warning("JWKS key %s skipped: %s", _show(entry.get("kid")), exc)
            continue
        if key.algorithm_name in allowed:
            keys.append(key)
    if not keys:
        raise ValueError(f"it holds no RSA or EC signature key for {', '.join(allowed)}")
    return keys


class JWTVerifier:
    """Verify OIDC bearer JWTs and map them to a `Principal`.

    >>> verifier = JWTVerifier(config.auth.oidc)  # doctest: +SKIP
    >>> principal = await verifier.verify_async(token)  # doctest: +SKIP
    >>> principal.tenant_id, principal.role, principal.subject  # doctest: +SKIP
    ('acme', 'developer', 'alice@acme.example')
    """

    def __init__(
        self,
        config: OIDCConfig,
        *,
        clock: Callable[[], float] = time.time,
        fetch: Fetch = fetch_url,
    ) -> None:
        if jwt is None or not has_crypto:
            raise ConfigError(
                "auth.oidc needs PyJWT and cryptography, which are not installed; run: "
                + INSTALL_HINT
            )
        self.config = config
        self._clock = clock
        self._fetch = fetch
        self._keys: list[jwt.PyJWK] = []
        self._loaded_at: float | None = None
        self._attempted_at: float | None = None
        self._last_error: str | None = None
        self._lock = asyncio.Lock()
        self.loads = 0
        """How many times the JWKS was read or fetched (successfully or not)."""
        if config.jwks_file is not None:
            self._load_file()
            if not self._keys:
                raise ConfigError(
                    f"auth.oidc.jwks_file '{config.jwks_file}' cannot be used: "
                    f"{self._last_error}. Point it at the identity provider's JWKS "
                    "(its jwks_uri document)."
                )

    # -- keys -------------------------------------------------------------------------------

    @property
    def _source(self) -> str:
        if self.config.jwks_file is not None:
            return f"jwks_file '{self.config.jwks_file}'"
        return f"jwks_url '{self.config.jwks_url}'"

    def _due(self, kid_unknown: bool) -> bool:
        """Whether the JWKS should be loaded again now."""
        now = self._clock()
        stale = self._loaded_at is None or now - self._loaded_at >= self.config.jwks_cache_s
        if not (stale or kid_unknown):
            return False
        return (self._attempted_at is None
                or now - self._attempted_at >= self.config.jwks_min_refresh_s)

    def _install(self, raw: bytes | None, error: str | None) -> None:
        self.loads += 1
        self._attempted_at = self._clock()
        if raw is not None:
            try:
                self._keys = _parse_jwks(raw, self.config.algorithms)
            except ValueError as exc:
                error = str(exc)
            else:
                self._loaded_at = self._attempted_at
                self._last_error = None
                return
        self._last_error = error
        log.warning("OIDC signing keys from %s could not be loaded (%s); %s", self._source,
                    error, "keeping the keys already known" if self._keys else "no keys known")

    def _load_file(self) -> None:
        try:
            raw: bytes | None = Path(self.config.jwks_file or "").read_bytes()
            error = None
        except OSError as exc:
            raw, error = None, f"it cannot be read ({exc.strerror or exc})"
        self._install(raw, error)

    async def refresh(self) -> None:
        """Load the JWKS now (e.g. at startup); `UpstreamUnavailable` if no key is known after."""
        async with self._lock:
            await self._load_async()
        if not self._keys:
            raise self._no_keys()

    async def _load_async(self) -> None:
        if self.config.jwks_file is not None:
            await asyncio.to_thread(self._load_file)
            return
        url = self.config.jwks_url or ""
        try:
            raw: bytes | None = await self._fetch(url, self.config.jwks_timeout_s)
            error = None
        except (OSError, aiohttp.ClientError, TimeoutError) as exc:
            raw, error = None, f"fetch failed: {type(exc).__name__}: {exc}".rstrip(": ")
        self._install(raw, error)

    def _no_keys(self) -> UpstreamUnavailable:
        return UpstreamUnavailable(
            f"Bearer tokens cannot be checked: no signing keys could be loaded from "
            f"auth.oidc.{self._source} ({self._last_error or 'not loaded yet'}). "
            "Check that the identity provider is reachable and the setting is right."
        )

    # -- verification -----------------------------------------------------------------------

    def verify(self, token: str) -> Principal:
        """Verify `token` with the keys already loaded (re-reading a `jwks_file` when due)."""
        header = self._header(token)
        kid = header.get("kid")
        if self.config.jwks_file is not None and self._due(self._find(header) is None):
            self._load_file()
        return self._finish(token, header, kid)

    async def verify_async(self, token: str) -> Principal:
        """Verify `token`, fetching the JWKS first when it is stale or the `kid` is unknown."""
        header = self._header(token)
        if self._due(self._find(header) is None):
            async with self._lock:
                if self._due(self._find(header) is None):  # another caller may have done it
                    await self._load_async()
        return self._finish(token, header, header.get("kid"))

    def _header(self, token: str) -> dict[str, Any]:
        if not isinstance(token, str) or token.count(".") != 2:
            parts = token.count(".") + 1 if isinstance(token, str) else 0
            hint = " (an encrypted JWE is not accepted)" if parts == 5 else ""
            raise AuthenticationFailed(
                f"The bearer token is not a JWT: it has {parts} part(s) where a signed JWT has "
                f"3{hint}. Send the access token from the identity provider, as "
                "'Authorization: Bearer <jwt>'."
            )
        try:
            header = jwt.get_unverified_header(token)
        except PyJWTError as exc:
            raise AuthenticationFailed(
                f"The bearer token is malformed ({exc}). Send the access token exactly as the "
                "identity provider issued it."
            ) from None
        alg = header.get("alg")
        allowed = self.config.algorithms
        if not isinstance(alg, str) or alg.lower() == "none":
            raise AuthenticationFailed(
                f"The bearer token is unsigned (header 'alg' is {_show(alg)}); only tokens "
                f"signed with {' or '.join(allowed)} are accepted. Get a signed token from the "
                "identity provider."
            )
        if alg not in allowed:
            why = (" (a shared-secret HMAC algorithm is never accepted)"
                   if alg.upper().startswith("HS") else "")
            raise AuthenticationFailed(
                f"The bearer token is signed with {_show(alg)}{why}; only "
                f"{' or '.join(allowed)} are accepted (auth.oidc.algorithms). Configure the "
                "identity provider to sign access tokens with one of them."
            )
        return header  # PyJWT has checked that a 'kid' is a string

    def _find(self, header: dict[str, Any]) -> jwt.PyJWK | None:
        alg, kid = header["alg"], header.get("kid")
        matches = [k for k in self._keys if k.algorithm_name == alg
                   and (kid is None or k.key_id == kid)]
        # Without a kid the key must be unambiguous; with one, the first listed match wins.
        return matches[0] if len(matches) == 1 or (kid is not None and matches) else None

    def _finish(self, token: str, header: dict[str, Any], kid: str | None) -> Principal:
        if not self._keys:
            raise self._no_keys()
        key = self._find(header)
        if key is None:
            raise self._unknown_key(token, header, kid)
        try:
            decoded = jwt.decode_complete(token, key=key, algorithms=[key.algorithm_name],
                                          options=_OPTIONS)
        except InvalidSignatureError:
            raise AuthenticationFailed(
                f"The bearer token's signature does not match key {_show(kid)} of "
                f"auth.oidc.{self._source}; the token was altered or signed by another "
                "issuer. Get a new token from the identity provider."
            ) from None
        except InvalidKeyError as exc:
            raise AuthenticationFailed(
                f"The signing key {_show(kid)} cannot verify this token ({exc}). Rotate the "
                "identity provider to an RSA key of 2048 bits or more, or a P-256 EC key."
            ) from None
        except PyJWTError as exc:
            raise AuthenticationFailed(
                f"The bearer token is malformed ({exc}). Send the access token exactly as the "
                "identity provider issued it."
            ) from None
        claims: dict[str, Any] = decoded["payload"]
        self._check_issuer_audience(claims)
        self._check_times(claims)
        return self._principal(claims)

    def _unknown_key(self, token: str, header: dict[str, Any], kid: str | None) -> Exception:
        hint = ""
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except PyJWTError:
            unverified = {}
        issuer = unverified.get("iss") if isinstance(unverified, dict) else None
        if issuer is not None and issuer != self.config.issuer:
            hint = (f" The token says it was issued by {_show(issuer)}, but this gateway "
                    f"trusts '{self.config.issuer}' (auth.oidc.issuer).")
        if kid is None:
            return AuthenticationFailed(
                f"The bearer token has no 'kid' header and auth.oidc.{self._source} does not "
                f"hold exactly one {header['alg']} key, so the signing key is ambiguous.{hint} "
                "Configure the identity provider to put 'kid' in its tokens."
            )
        return AuthenticationFailed(
            f"The bearer token was signed by key {_show(kid)} ({header['alg']}), which is not "
            f"among the signing keys of auth.oidc.{self._source}.{hint} If the identity "
            "provider rotated its keys, the new ones are picked up at the next refresh (at "
            "most every auth.oidc.jwks_min_refresh_s); otherwise get a token from the right "
            "issuer."
        )

    def _check_issuer_audience(self, claims: dict[str, Any]) -> None:
        issuer = claims.get("iss")
        if issuer is None:
            raise AuthenticationFailed(
                f"The bearer token has no 'iss' claim; tokens must be issued by "
                f"'{self.config.issuer}' (auth.oidc.issuer)."
            )
        if issuer != self.config.issuer:
            raise AuthenticationFailed(
                f"The bearer token's 'iss' claim is {_show(issuer)}, but this gateway trusts "
                f"'{self.config.issuer}'. Get a token from that issuer, or fix auth.oidc.issuer "
                "(it must match exactly, trailing slash included)."
            )
        audience = claims.get("aud")
        given = [audience] if isinstance(audience, str) else audience
        expected = self.config.audiences()
        if audience is None:
            raise AuthenticationFailed(
                f"The bearer token has no 'aud' claim; it must name {' or '.join(expected)} "
                "(auth.oidc.audience). Request the token for this API's audience."
            )
        if not isinstance(given, list) or not any(a in expected for a in given):
            raise AuthenticationFailed(
                f"The bearer token's 'aud' claim is {_show(audience)}, which names none of "
                f"{', '.join(expected)} (auth.oidc.audience). Request the token for this API's "
                "audience (e.g. the 'audience' or 'scope' parameter at the identity provider)."
            )

    def _check_times(self, claims: dict[str, Any]) -> None:
        now, leeway = self._clock(), self.config.leeway_s
        times: dict[str, float] = {}
        for name in ("exp", "nbf", "iat"):
            value = claims.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise AuthenticationFailed(
                    f"The bearer token's '{name}' claim is {_show(value)}; it must be a number "
                    "of seconds since 1970 (NumericDate). Fix the identity provider's token "
                    "format."
                )
            times[name] = float(value)
        if "exp" not in times:
            raise AuthenticationFailed(
                "The bearer token has no 'exp' claim; only tokens that expire are accepted. "
                "Configure the identity provider to set an expiry on access tokens."
            )
        if now > times["exp"] + leeway:
            raise AuthenticationFailed(
                f"The bearer token expired at {_when(times['exp'])} ('exp' = "
                f"{times['exp']:.0f}), {now - times['exp']:.0f} s ago, beyond the allowed "
                f"clock skew of {leeway:g} s (auth.oidc.leeway_s). Get a new token."
            )
        for name, what in (("nbf", "is not valid before"), ("iat", "was issued at")):
            if name in times and times[name] > now + leeway:
                raise AuthenticationFailed(
                    f"The bearer token {what} {_when(times[name])} ('{name}' = "
                    f"{times[name]:.0f}), {times[name] - now:.0f} s in the future, beyond the "
                    f"allowed clock skew of {leeway:g} s (auth.oidc.leeway_s). Check the clocks "
                    "of this host and the identity provider (NTP)."
                )

    def _principal(self, claims: dict[str, Any]) -> Principal:
        name = self.config.tenant_claim
        tenant = _claim(claims, name)
        if isinstance(tenant, int) and not isinstance(tenant, bool):
            tenant = str(tenant)
        if not isinstance(tenant, str) or not tenant.strip() or len(tenant) > 128:
            state = "is missing" if tenant is None else f"is {_show(tenant)}"
            raise AuthenticationFailed(
                f"The bearer token's tenant claim '{name}' {state}; it must be a tenant id "
                "(a non-empty string of at most 128 characters). Add the claim at the identity "
                "provider (a token mapper) or set auth.oidc.tenant_claim to the claim that "
                "holds it."
            )
        subject = claims.get("sub")
        return Principal(
            tenant_id=tenant.strip(),
            key_id=None,
            role=self._role(claims),
            subject=subject if isinstance(subject, str) else None,
        )

    def _role(self, claims: dict[str, Any]) -> str:
        name = self.config.role_claim
        value = _claim(claims, name)
        if value is None:
            if self.config.default_role is not None:
                return self.config.default_role
            raise PermissionDenied(
                f"The bearer token has no role claim '{name}', and auth.oidc.default_role is "
                f"not set. Grant the user one of the roles {', '.join(ROLES)} at the identity "
                "provider, or set auth.oidc.role_claim to the claim that holds it."
            )
        values = value if isinstance(value, list) else [value]
        known = [v.strip().lower() for v in values
                 if isinstance(v, str) and v.strip().lower() in _RANK]
        if not known:
            raise PermissionDenied(
                f"The bearer token's role claim '{name}' is {_show(value)}, which holds none of "
                f"the roles {', '.join(ROLES)}. Grant the user one of them at the identity "
                "provider."
            )
        return min(known, key=_RANK.__getitem__)
