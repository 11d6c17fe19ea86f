"""Encryption at rest for captured payloads (Fernet: AES-128-CBC + HMAC-SHA256).

`traces.encryption_keys` lists Fernet keys as secret references; the first encrypts, all of
them decrypt, so a key is rotated by putting the new one first and keeping the old one until
old traces have aged out (or were re-encrypted). Encrypted values are stored as
`enc:v1:<token>`; without a key they stay unreadable (`[encrypted]` in the CLI and API).
Needs the `encryption` extra: pip install 'shipyard[encryption]'.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shipyard.errors import ConfigError

try:  # optional dependency: only needed when traces.encryption_keys is set
    from cryptography.fernet import Fernet, InvalidToken, MultiFernet
except ModuleNotFoundError:  # pragma: no cover - exercised only without the extra
    Fernet = InvalidToken = MultiFernet = None  # type: ignore[assignment,misc]

__all__ = ["PREFIX", "PayloadCipher", "generate_key"]

PREFIX = "enc:v1:"


def generate_key() -> str:
    """A new random key for `traces.encryption_keys`."""
    if Fernet is None:
        raise ConfigError("Encryption needs the cryptography package; run: "
                          "pip install 'shipyard[encryption]'")
    return str(Fernet.generate_key().decode())


class PayloadCipher:
    def __init__(self, keys: Sequence[str]) -> None:
        if MultiFernet is None:
            raise ConfigError("Config key 'traces.encryption_keys' is set, but the cryptography "
                              "package is missing; run: pip install 'shipyard[encryption]'")
        fernets: list[Any] = []
        for i, key in enumerate(keys):
            try:
                fernets.append(Fernet(key.encode()))
            except (ValueError, TypeError):
                raise ConfigError(
                    f"Config key 'traces.encryption_keys[{i}]' is not a Fernet key (32 url-safe "
                    "base64-encoded bytes); make one with 'shipyard keys encryption-key'."
                ) from None
        self._cipher = MultiFernet(fernets)

    def encrypt(self, text: str) -> str:
        return PREFIX + self._cipher.encrypt(text.encode()).decode()

    def decrypt(self, value: str) -> str:
        if not value.startswith(PREFIX):
            return value
        try:
            return str(self._cipher.decrypt(value[len(PREFIX):].encode()).decode())
        except InvalidToken:
            return "[encrypted with a key that is no longer configured]"

    def rotate(self, value: str) -> str:
        """Re-encrypt with the first (newest) key."""
        if not value.startswith(PREFIX):
            return value
        return PREFIX + self._cipher.rotate(value[len(PREFIX):].encode()).decode()


def redact_encrypted(value: str | None) -> str | None:
    return "[encrypted]" if value is not None and value.startswith(PREFIX) else value
