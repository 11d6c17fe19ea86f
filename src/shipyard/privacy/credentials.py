"""Secrets and API tokens: well-known key formats, JWTs, PEM private keys, and high-entropy
values assigned to a key-like word ("api_key=...", "password: ...", "Bearer ...").

Known formats are matched by their prefix and shape (OpenAI `sk-`, AWS `AKIA`/`ASIA`, GitHub
`ghp_`/`github_pat_`, Slack `xox?-`, Stripe `sk_live_`, Google `AIza`, ...). A value after a
key-like word is reported only when it looks generated: long enough, letters mixed with digits
or symbols, and a Shannon entropy of at least 3 bits per character; placeholders such as
`<your-key>`, `${TOKEN}` or `xxxxxxxx` are not.

    >>> [f.entity for f in SecretRecognizer().find("export OPENAI_API_KEY=sk-proj-" + "a1B2" * 8)]
    ['SECRET']
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections import Counter

import orjson

from shipyard.privacy.base import Finding, Recognizer

__all__ = ["SecretRecognizer", "shannon_entropy"]

# name, regex: each starts with a literal, so `re` skips ahead in C (one alternation of all of
# them would try every position and cost a hundred times more).
_FORMATS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(regex))
    for name, regex in (
        ("openai", r"sk-(?:proj-|svcacct-|admin-|ant-(?:api|admin)[0-9]{2}-)?[A-Za-z0-9_-]{20,}"),
        ("aws_access_key_id", r"A(?:KIA|SIA|BIA|CCA)[0-9A-Z]{16}"),
        ("github", r"gh[pousr]_[A-Za-z0-9]{36,255}"),
        ("github_pat", r"github_pat_[A-Za-z0-9_]{22,255}"),
        ("slack", r"xox[abposr]-[A-Za-z0-9-]{10,250}"),
        ("stripe", r"[sr]k_(?:live|test)_[A-Za-z0-9]{16,247}"),
        ("google_api_key", r"AIza[0-9A-Za-z_-]{35}"),
        ("jwt", r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}"),
        (
            "private_key",
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
            r"(?:[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|[A-Za-z0-9+/=\s]*)",
        ),
    )
)
# A literal every match of `_FORMATS` contains: texts with none of them (and no key-like word)
# are skipped without running a regex.
_FORMAT_NEEDLES = ("sk-", "AKIA", "ASIA", "ABIA", "ACCA", "ghp_", "gho_", "ghu_", "ghs_", "ghr_",
                   "github_pat_", "xox", "k_live_", "k_test_", "AIza", "eyJ", "-----BEGIN")
# Stems of key-like words, searched in the lower-cased text with `str.find` (C speed); the
# identifier around a stem may hold more ("OPENAI_API_KEY", "db_password", "x-auth-token").
_STEMS = ("key", "secret", "token", "passw", "passphrase", "pwd", "credential", "bearer")
_PASSWORD_STEMS = ("passw", "passphrase", "pwd")
# After the stem: the rest of the identifier, then "=", ":", "is", then the value.
_ASSIGNMENT = re.compile(
    r"""[A-Za-z0-9]*(?:[_.-][A-Za-z0-9]+)*["']?\s*(?:[:=]|=>|\s(?:is|was|to)\s)\s*["'`]?"""
    r"""(?:bearer\s+)?(?P<value>[^\s"'`,;<>(){}\[\]]{6,512})""",
    re.IGNORECASE,
)
_BEARER_VALUE = re.compile(r"\s+(?P<value>[A-Za-z0-9._~+/-]{16,}=*)")
_PLACEHOLDER = re.compile(
    r"^(?:<.*>|\$\{?\w+\}?|%\w+%|\{\{.*\}\}|x+|\*+|\.+|(.)\1+|changeme|password\d*|secret"
    r"|redacted|\[redacted\]|none|null|true|false|example\w*|your[_-]?\w*|dummy\w*|test\w*)$",
    re.IGNORECASE,
)


def shannon_entropy(value: str) -> float:
    """Bits per character of `value` (0 for an empty string).

    >>> round(shannon_entropy("aaaa"), 2), round(shannon_entropy("abcd"), 2)
    (0.0, 2.0)
    """
    if not value:
        return 0.0
    n = len(value)
    return sum(c / n * math.log2(n / c) for c in Counter(value).values())


def _jwt_ok(token: str) -> bool:
    header = token.split(".", 1)[0]
    try:
        decoded = orjson.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        return False
    return isinstance(decoded, dict) and ("alg" in decoded or "typ" in decoded)


class SecretRecognizer(Recognizer):
    """API keys and tokens in known formats, private keys, and generated-looking assigned values.

    `min_entropy` (bits per character) is the bar for a value assigned to a key-like word.
    """

    entity = "SECRET"
    base_score = 0.95

    def __init__(self, *, min_entropy: float = 3.0) -> None:
        super().__init__()
        self.min_entropy = min_entropy

    def may_contain(self, text: str) -> bool:
        """False when `text` has neither a known key format's prefix nor a key-like word."""
        if any(n in text for n in _FORMAT_NEEDLES):
            return True
        lowered = text.lower()
        return any(stem in lowered for stem in _STEMS)

    def gate_terms(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return tuple(_FORMAT_NEEDLES), tuple(_STEMS)

    def find(self, text: str) -> list[Finding]:
        if not self.may_contain(text):
            return []
        found: list[Finding] = []
        taken: list[tuple[int, int]] = []
        n = len(text)
        for kind, pattern in _FORMATS:
            for match in pattern.finditer(text):
                start, end = match.span()
                if start and (text[start - 1].isalnum() or text[start - 1] in "_-"):
                    continue  # the tail of a longer word ("task-...", "my_sk_live_...")
                if end < n and (text[end].isalnum() or text[end] == "_"):
                    continue
                value = match.group()
                if kind == "jwt" and not _jwt_ok(value):
                    continue
                if kind == "private_key":
                    value = value.rstrip()
                    end = start + len(value)
                found.append(Finding(self.entity, start, end, self.base_score, self.name, value))
                taken.append((start, end))
        lowered = text.lower()
        if len(lowered) != n:  # a few non-ASCII letters change length when lower-cased
            lowered = "".join(ch.lower()[:1] or ch for ch in text)
        for stem in _STEMS:
            at = lowered.find(stem)
            while at >= 0:
                self._assigned(text, at, stem, found, taken)
                at = lowered.find(stem, at + len(stem))
        if len(found) > 1:
            found.sort(key=lambda f: f.start)
        return found

    def _assigned(
        self, text: str, at: int, stem: str, found: list[Finding], taken: list[tuple[int, int]]
    ) -> None:
        after = _BEARER_VALUE if stem == "bearer" else _ASSIGNMENT
        match = after.match(text, at + len(stem))
        if match is None:
            return
        start = match.start("value")
        value = match.group("value").rstrip(".,:;?")  # "!" ends many passwords
        end = start + len(value)
        if any(s < end and start < e for s, e in taken):
            return
        score = self._score_assigned(value, password=stem in _PASSWORD_STEMS)
        if score is not None:
            found.append(Finding(self.entity, start, end, score, self.name, value))
            taken.append((start, end))

    def _score_assigned(self, value: str, *, password: bool) -> float | None:
        if _PLACEHOLDER.match(value):
            return None
        has_digit = any(c.isdigit() for c in value)
        has_alpha = any(c.isalpha() for c in value)
        has_other = any(not c.isalnum() for c in value)
        if password:
            # People choose passwords: short and low-entropy, but rarely a plain word.
            if len(value) >= 6 and (has_digit or has_other) and has_alpha:
                return 0.85
            return None
        if len(value) < 16 or not (has_digit and has_alpha):
            return None
        if shannon_entropy(value) < self.min_entropy:
            return None
        return 0.8
