"""Authentication of callers and their principal: who they are, for which tenant, with which
role and restrictions.

Three kinds of credentials, all as `Authorization: Bearer <token>` (or Azure-style `api-key`,
or Anthropic-style `x-api-key`):
- stored API keys (`sk-sy-<id>-<secret>`), created per tenant with a role; kept only as
  SHA-256 digests and compared in constant time. Records are cached (`auth.key_cache_s`), key
  ids nobody created cost no store query, and through a store outage keys are checked against
  their last known records (`auth.outage_grace_s`) — see `shipyard.security.key_cache`;
- static keys from `auth.api_keys` in the config: admins of the platform tenant;
- OIDC bearer JWTs when `auth.oidc` is configured (see `shipyard.security.jwt`).

Failed attempts are limited per client address and per key id (`auth.lockout`, see
`shipyard.security.lockout`) and counted by reason and route.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine
from starlette.datastructures import Headers

from shipyard.config.security import AuthConfig
from shipyard.errors import (
    AuthenticationFailed,
    PermissionDenied,
    RateLimited,
    StoreUnavailable,
)
from shipyard.security.key_cache import KeyCache
from shipyard.security.lockout import FailureLimiter
from shipyard.security.principal import Principal
from shipyard.security.roles import PLATFORM_TENANT, check_scope
from shipyard.store.tenants import KEY_PREFIX, KeyRecord

__all__ = ["FAILURE_REASONS", "Authenticator", "Principal"]

_ANONYMOUS = Principal(tenant_id=PLATFORM_TENANT, key_id=None, role="admin")
_INVALID = "The API key sent is not valid. Check the key, or ask an admin for one."

# Reasons a request failed authentication (the `reason` label of shipyard_auth_failures_total).
# The first five count against the lockout budgets; a missing or malformed header does not.
FAILURE_REASONS = ("invalid_key", "unknown_key", "invalid_token", "revoked", "expired",
                   "missing", "malformed", "locked_out", "scope", "store_unavailable")
_COUNTED = frozenset(FAILURE_REASONS[:5])

OnFailure = Callable[[str, str], None]  # (reason, route)
OnLockout = Callable[[str, str, str | None], None]  # (kind, subject, tenant of the key)


class _Failure(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class Authenticator:
    def __init__(self, config: AuthConfig, engine: Engine | None = None,
                 verifier: Any = None, *, on_failure: OnFailure | None = None,
                 on_lockout: OnLockout | None = None) -> None:
        self.disabled = config.disabled
        self.engine = engine
        self.verifier = verifier  # a shipyard.security.jwt.JWTVerifier when OIDC is on
        self._static: list[tuple[bytes, str]] = []
        for key in config.api_keys:
            digest = hashlib.sha256(key.get_secret_value().encode()).digest()
            self._static.append((digest, "key-" + digest.hex()[:8]))
        self.keys = KeyCache(engine, cache_s=config.key_cache_s,
                             refresh_s=config.key_ids_refresh_s,
                             outage_grace_s=config.outage_grace_s) if engine is not None else None
        lockout = config.lockout
        self.limiter = FailureLimiter(
            per_address=lockout.max_failures_per_address, per_key=lockout.max_failures_per_key,
            window_s=lockout.window_s, known_good_s=lockout.known_good_s,
            max_tracked=lockout.max_tracked) if lockout.enabled else None
        self.on_failure = on_failure
        self.on_lockout = on_lockout

    def forget(self, key_id: str) -> None:
        """Drop a key from the cache (it is read from the store on its next use)."""
        if self.keys is not None:
            self.keys.forget(key_id)

    def remember(self, record: KeyRecord) -> None:
        """Use a record this process just wrote (created, revoked, rotated) at once."""
        if self.keys is not None:
            self.keys.remember(record)

    @staticmethod
    def _secret(headers: Headers) -> str:
        header = headers.get("authorization")
        if header is None:
            # Azure OpenAI clients send `api-key`, Anthropic's SDK sends `x-api-key`.
            api_key = headers.get("api-key") or headers.get("x-api-key")
            if api_key is None:
                raise _Failure(
                    "missing", "No API key was sent. Send 'Authorization: Bearer <key>' (or "
                    "'x-api-key: <key>') with a key from 'shipyard keys create' or "
                    "auth.api_keys.")
            return api_key.strip()
        scheme, _, secret = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise _Failure("malformed",
                           "The Authorization header is malformed; it must be 'Bearer <key>'.")
        return secret.strip()

    async def authenticate(self, headers: Headers, scope: str, *, client: str | None = None,
                           route: str = "") -> Principal:
        """The caller's principal, checked against `scope`: 401 or 403 with a clear reason, 429
        while the caller's address or key id is locked out, 503 when the store is needed and
        down. `client` is the caller's address, `route` names the route in the metric."""
        if self.disabled:
            return _ANONYMOUS
        key_id: str | None = None
        try:
            secret = self._secret(headers)
            digest = hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()
            stored = secret.startswith(KEY_PREFIX) and self.keys is not None
            if stored:
                key_id = secret[len(KEY_PREFIX):].split("-", 1)[0]
            if self.limiter is not None:
                wait = self.limiter.locked(client, key_id)
                if wait > 0 and not self.limiter.known(client, digest):
                    self._count("locked_out", route)
                    raise RateLimited(
                        "Too many failed authentication attempts from this address or for this "
                        f"key; retry in {math.ceil(wait)} s with a valid key.",
                        headers={"retry-after": str(max(1, math.ceil(wait)))})
            if stored and self.keys is not None:
                principal = await self._stored(self.keys, key_id or "", digest)
            elif self.verifier is not None and secret.count(".") == 2:
                try:
                    principal = await self.verifier.verify_async(secret)
                except AuthenticationFailed as exc:
                    raise _Failure("invalid_token", exc.message) from None
            else:
                principal = self._static_key(digest)
        except _Failure as failure:
            self._failed(failure.reason, route, client, key_id)
            raise AuthenticationFailed(failure.message) from None
        except StoreUnavailable:
            self._count("store_unavailable", route)
            raise
        if self.limiter is not None:
            self.limiter.succeed(client, digest)
        try:
            check_scope(principal.role, scope)
        except PermissionDenied:
            self._count("scope", route)
            raise
        return principal

    def _count(self, reason: str, route: str) -> None:
        if self.on_failure is not None:
            self.on_failure(reason, route)

    def _failed(self, reason: str, route: str, client: str | None, key_id: str | None) -> None:
        self._count(reason, route)
        if self.limiter is None or reason not in _COUNTED:
            return
        # Only existing key ids get a bucket: random ids would only fill memory.
        existing = key_id if reason != "unknown_key" else None
        for kind, subject in self.limiter.fail(client, existing):
            if self.on_lockout is not None:
                self.on_lockout(kind, subject, self._tenant_of(existing))

    def _tenant_of(self, key_id: str | None) -> str | None:
        if key_id is None or self.keys is None:
            return None
        record = self.keys.peek(key_id)
        return record.tenant_id if record is not None else None

    def _static_key(self, digest: bytes) -> Principal:
        found: str | None = None
        for known, key_id in self._static:
            if hmac.compare_digest(digest, known):
                found = key_id
        if found is None:
            raise _Failure("invalid_key", _INVALID)
        return Principal(tenant_id=PLATFORM_TENANT, key_id=found, role="admin")

    @staticmethod
    async def _stored(keys: KeyCache, key_id: str, digest: bytes) -> Principal:
        record = await keys.get(key_id)
        expected = bytes.fromhex(record.digest) if record is not None else b"\0" * 32
        if not hmac.compare_digest(digest, expected) or record is None:
            raise _Failure("unknown_key" if record is None else "invalid_key", _INVALID)
        status = record.status()
        if status != "active":
            raise _Failure(status, f"The API key {record.prefix} is {status}. Ask an admin for "
                           "a new key.")
        return Principal(tenant_id=record.tenant_id, key_id=record.id, role=record.role,
                         services=record.services, models=record.models, rpm=record.rpm,
                         tpm=record.tpm, max_concurrent=record.max_concurrent)
