"""Authentication of callers and their principal: who they are, for which tenant, with which
role and restrictions.

Three kinds of credentials, all as `Authorization: Bearer <token>` (or Azure-style `api-key`):
- stored API keys (`sk-sy-<id>-<secret>`), created per tenant with a role; kept only as
  SHA-256 digests and compared in constant time; cached for `_CACHE_S` seconds so the hot path
  does not hit the store (a revocation made through this process applies at once);
- static keys from `auth.api_keys` in the config: admins of the platform tenant;
- OIDC bearer JWTs when `auth.oidc` is configured (see `shipyard.security.jwt`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from typing import Any

from sqlalchemy import Engine
from starlette.datastructures import Headers

from shipyard.config.security import AuthConfig
from shipyard.errors import AuthenticationFailed, NotFound
from shipyard.security.principal import Principal
from shipyard.security.roles import PLATFORM_TENANT, check_scope
from shipyard.store.tenants import KEY_PREFIX, KeyRecord, get_key

__all__ = ["Authenticator", "Principal"]

_CACHE_S = 5.0
_CACHE_MAX = 100_000


_ANONYMOUS = Principal(tenant_id=PLATFORM_TENANT, key_id=None, role="admin")


class Authenticator:
    def __init__(self, config: AuthConfig, engine: Engine | None = None,
                 verifier: Any = None) -> None:
        self.disabled = config.disabled
        self.engine = engine
        self.verifier = verifier  # a shipyard.security.jwt.JWTVerifier when OIDC is on
        self._static: list[tuple[bytes, str]] = []
        for key in config.api_keys:
            digest = hashlib.sha256(key.get_secret_value().encode()).digest()
            self._static.append((digest, "key-" + digest.hex()[:8]))
        self._cache: dict[str, tuple[float, KeyRecord | None]] = {}

    def forget(self, key_id: str) -> None:
        """Drop a key from the cache (after a revocation or rotation)."""
        self._cache.pop(key_id, None)

    @staticmethod
    def _secret(headers: Headers) -> str:
        header = headers.get("authorization")
        if header is None:
            api_key = headers.get("api-key")  # Azure OpenAI clients send this header
            if api_key is None:
                raise AuthenticationFailed(
                    "No API key was sent. Send 'Authorization: Bearer <key>' with a key from "
                    "'shipyard keys create' or auth.api_keys.")
            return api_key.strip()
        scheme, _, secret = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise AuthenticationFailed(
                "The Authorization header is malformed; it must be 'Bearer <key>'.")
        return secret.strip()

    async def authenticate(self, headers: Headers, scope: str) -> Principal:
        """The caller's principal, checked against `scope`; 401 or 403 with a clear reason."""
        if self.disabled:
            return _ANONYMOUS
        secret = self._secret(headers)
        if secret.startswith(KEY_PREFIX) and self.engine is not None:
            principal = await self._stored(secret)
        elif self.verifier is not None and secret.count(".") == 2:
            principal = await self.verifier.verify_async(secret)
        else:
            principal = self._static_key(secret)
        check_scope(principal.role, scope)
        return principal

    def _static_key(self, secret: str) -> Principal:
        digest = hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()
        found: str | None = None
        for known, key_id in self._static:
            if hmac.compare_digest(digest, known):
                found = key_id
        if found is None:
            raise AuthenticationFailed(
                "The API key sent is not valid. Check the key, or ask an admin for one.")
        return Principal(tenant_id=PLATFORM_TENANT, key_id=found, role="admin")

    async def _stored(self, secret: str) -> Principal:
        key_id = secret[len(KEY_PREFIX):].split("-", 1)[0]
        now = time.monotonic()
        cached = self._cache.get(key_id)
        if cached is None or now - cached[0] > _CACHE_S:
            try:
                record: KeyRecord | None = await asyncio.to_thread(
                    get_key, self.engine, key_id, tenant_id=None)  # type: ignore[arg-type]
            except NotFound:
                record = None
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[key_id] = (now, record)
        else:
            record = cached[1]
        given = hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()
        expected = record.digest if record is not None else "0" * 64
        if not hmac.compare_digest(given, expected) or record is None:
            raise AuthenticationFailed(
                "The API key sent is not valid. Check the key, or ask an admin for one.")
        status = record.status()
        if status != "active":
            raise AuthenticationFailed(
                f"The API key {record.prefix} is {status}. Ask an admin for a new key.")
        return Principal(tenant_id=record.tenant_id, key_id=record.id, role=record.role,
                         services=record.services, models=record.models, rpm=record.rpm,
                         tpm=record.tpm, max_concurrent=record.max_concurrent)
