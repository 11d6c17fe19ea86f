"""Anonymization operators: what replaces each finding's text.

An operator sees all findings of one `anonymize` call at once, so `Replace` can number values
consistently within that call.

    >>> Replace().replacements([Finding("EMAIL", 0, 6, 0.9, "x", "a@b.io")])
    ['<EMAIL_1>']
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from shipyard.privacy.recognizers import Finding

__all__ = ["KeyedHash", "Mask", "Operator", "Redact", "Replace"]


class Operator:
    """Base class: return one replacement string per finding, in order."""

    def replacements(self, findings: Sequence[Finding]) -> list[str]:
        return [self.replace_one(f) for f in findings]

    def replace_one(self, finding: Finding) -> str:
        raise NotImplementedError


class Redact(Operator):
    """Replace every finding with a fixed marker ("[REDACTED]" unless told otherwise)."""

    def __init__(self, *, placeholder: str = "[REDACTED]") -> None:
        self.placeholder = placeholder

    def replace_one(self, finding: Finding) -> str:
        return self.placeholder


class Mask(Operator):
    """Mask letters and digits with `char`, keeping the last `keep_last` of them and punctuation.

    `Mask()` turns "4111 1111 1111 1111" into "**** **** **** 1111".
    """

    def __init__(self, *, keep_last: int = 4, char: str = "*") -> None:
        if keep_last < 0:
            raise ValueError(f"Mask keep_last is {keep_last}; it must be 0 or more.")
        if len(char) != 1:
            raise ValueError(f"Mask char is {char!r}; it must be exactly one character.")
        self.keep_last = keep_last
        self.char = char

    def replace_one(self, finding: Finding) -> str:
        keep = self.keep_last
        out: list[str] = []
        for ch in reversed(finding.text):
            if ch.isalnum():
                if keep > 0:
                    keep -= 1
                    out.append(ch)
                else:
                    out.append(self.char)
            else:
                out.append(ch)
        return "".join(reversed(out))


class Replace(Operator):
    """Typed, numbered placeholders (`<EMAIL_1>`); equal values share a number within one call."""

    def replacements(self, findings: Sequence[Finding]) -> list[str]:
        numbers: dict[tuple[str, str], int] = {}
        counts: dict[str, int] = {}
        out: list[str] = []
        for f in findings:
            key = (f.entity, f.text)
            n = numbers.get(key)
            if n is None:
                n = counts.get(f.entity, 0) + 1
                counts[f.entity] = n
                numbers[key] = n
            out.append(f"<{f.entity}_{n}>")
        return out


class KeyedHash(Operator):
    """HMAC-SHA256 of the value under a caller-held key, as a hex prefix of `length` characters.

    Stable across runs and processes for the same key, so joins and de-duplication still work;
    without the key the value cannot be confirmed by guessing.
    """

    def __init__(self, key: bytes | str, *, length: int = 16) -> None:
        raw = key.encode() if isinstance(key, str) else key
        if not raw:
            raise ValueError("KeyedHash key is empty; pass a secret key of at least 16 bytes.")
        if not 8 <= length <= 64:
            raise ValueError(f"KeyedHash length is {length}; it must be between 8 and 64.")
        self._key = raw
        self.length = length

    def replace_one(self, finding: Finding) -> str:
        digest = hmac.new(self._key, finding.text.encode(), hashlib.sha256).hexdigest()
        return digest[: self.length]
