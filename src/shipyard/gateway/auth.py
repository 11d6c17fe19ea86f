"""Authentication of callers: static API keys compared in constant time.

Keys are kept only as SHA-256 digests; a caller's key is hashed and compared against each
digest with `hmac.compare_digest`, so timing reveals neither the key nor which one matched.
The security layer (tenants, roles, stored keys, JWT) plugs in behind the same interface.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from starlette.datastructures import Headers

from shipyard.config.schema import AuthConfig
from shipyard.errors import AuthenticationFailed

__all__ = ["Authenticator", "Principal"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a tenant and a key id (never the secret)."""

    tenant_id: str
    key_id: str | None


_ANONYMOUS = Principal(tenant_id="default", key_id=None)


class Authenticator:
    def __init__(self, config: AuthConfig) -> None:
        self.disabled = config.disabled
        self._keys: list[tuple[bytes, str]] = []
        for key in config.api_keys:
            digest = hashlib.sha256(key.get_secret_value().encode()).digest()
            self._keys.append((digest, "key-" + digest.hex()[:8]))

    def authenticate(self, headers: Headers) -> Principal:
        """Return the caller, or raise 401 with a message that says how to authenticate."""
        if self.disabled:
            return _ANONYMOUS
        header = headers.get("authorization")
        if header is None:
            api_key = headers.get("api-key")  # Azure OpenAI clients send this header
            if api_key is None:
                raise AuthenticationFailed(
                    "No API key was sent. Send 'Authorization: Bearer <key>' with a key "
                    "from auth.api_keys."
                )
            secret = api_key.strip()
        else:
            scheme, _, secret = header.strip().partition(" ")
            if scheme.lower() != "bearer" or not secret.strip():
                raise AuthenticationFailed(
                    "The Authorization header is malformed; it must be 'Bearer <key>'."
                )
            secret = secret.strip()
        digest = hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()
        found: str | None = None
        for known, key_id in self._keys:
            if hmac.compare_digest(digest, known):
                found = key_id
        if found is None:
            raise AuthenticationFailed(
                "The API key sent is not valid. Check the key, or ask an admin for one."
            )
        return Principal(tenant_id="default", key_id=found)
