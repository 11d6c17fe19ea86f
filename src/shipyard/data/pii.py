"""PII on dataset columns, using the shared engine (`shipyard.privacy`).

Modes: `redact` ("[REDACTED]"), `mask` (keep the last 4), `hash` (keyed HMAC: stable, so joins
still work) and `pseudonymize` (typed placeholders such as `<EMAIL_1>`, numbered consistently
across the columns of one row).

A cheap prefilter skips texts that cannot contain any built-in pattern entity (no digits to
speak of, no '@', no ':', no 'www.'); other recognizers (dates of birth, secrets, a deny-list, a
name model) answer with their own cheap `may_contain`, so it never hides a finding.

>>> p = ColumnProtector(PiiSpec(columns=["note"], mode="pseudonymize"))
>>> p.protect_row({"note": "mail bob@example.com"}, ["note"])["note"]
'mail <EMAIL_1>'
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from shipyard.data.config import PiiSpec
from shipyard.privacy import KeyedHash, Mask, Operator, PIIEngine, Redact
from shipyard.privacy.pseudonymize import Pseudonymize, Pseudonyms

__all__ = ["PREFILTER_ENTITIES", "ColumnProtector", "candidate_entities", "may_hold_pii"]

# Entity types whose every match needs '@', ':', 'www.' or at least 4 digits (or a dotted hex
# or dashed MAC such as 0a1b.2c3d.4e5f or aa-bb-cc-dd-ee-ff, matched by the regex below).
PREFILTER_ENTITIES = frozenset({"EMAIL", "URL", "IBAN", "CREDIT_CARD", "US_SSN", "PHONE",
                                "IP_ADDRESS", "MAC_ADDRESS"})
_DIGIT = re.compile(r"[0-9]")
_DOTTED_MAC = re.compile(r"[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\.")
_DASHED_MAC = re.compile(r"[0-9A-Fa-f]{2}-[0-9A-Fa-f]{2}-")
# Entity types that need at least this many digits somewhere in the text.
_DIGITS_NEEDED = (("IBAN", 4), ("IP_ADDRESS", 4), ("PHONE", 7), ("US_SSN", 9),
                  ("CREDIT_CARD", 13))


def candidate_entities(text: str) -> frozenset[str]:
    """The types in `PREFILTER_ENTITIES` that `text` could hold (empty: it holds none).

    Each rule is a necessary condition of that recognizer's pattern: an e-mail needs '@', a URL
    '://' or 'www.', a phone number 7 digits, a card 13, an IPv6 or MAC address ':' (or a dotted
    or dashed hex layout), and so on.
    """
    found: list[str] = []
    if "@" in text:
        found.append("EMAIL")
    if "://" in text or ("." in text and "www." in text.lower()):
        found.append("URL")
    digits = len(_DIGIT.findall(text))
    found.extend(entity for entity, needed in _DIGITS_NEEDED if digits >= needed)
    if ":" in text:
        found += ["IP_ADDRESS", "MAC_ADDRESS"]
    elif ("." in text and _DOTTED_MAC.search(text)) or ("-" in text and _DASHED_MAC.search(text)):
        found.append("MAC_ADDRESS")
    return frozenset(found)


def may_hold_pii(text: str) -> bool:
    """False only when `text` cannot hold any entity in `PREFILTER_ENTITIES`."""
    return bool(candidate_entities(text))


class ColumnProtector:
    """Finds and anonymizes PII in the configured columns of each row."""

    def __init__(self, spec: PiiSpec, engine: PIIEngine | None = None) -> None:
        self.spec = spec
        self.engine = engine or PIIEngine(entities=spec.entities, allow=spec.allow,
                                          deny=spec.deny)
        # Recognizers the prefilter's rules do not cover answer for themselves with their own
        # cheap `may_contain` (a deny-list or a name model always says yes).
        self._others = [r for r in self.engine.recognizers
                        if r.entity not in PREFILTER_ENTITIES]
        self.prefilter = spec.prefilter
        self._operator: Operator | None = None
        if spec.mode == "redact":
            self._operator = Redact()
        elif spec.mode == "mask":
            self._operator = Mask()
        elif spec.mode == "hash":
            self._operator = KeyedHash(spec.key or "")
        self.found: Counter[str] = Counter()
        self.scanned = 0
        self.skipped = 0

    def protect_row(self, row: dict[str, Any], columns: Sequence[str]) -> dict[str, Any]:
        """`row` with PII replaced in `columns` (the row is changed in place and returned)."""
        operator = self._operator or Pseudonymize(Pseudonyms())
        engine = self.engine
        for name in columns:
            value = row.get(name)
            if not isinstance(value, str) or not value:
                continue
            # Running only the recognizers a text could trigger was measured: no faster (the
            # cost is in validating real candidates), so the prefilter is all-or-nothing.
            if self.prefilter and not candidate_entities(value) and not any(
                    r.may_contain(value) for r in self._others):
                self.skipped += 1
                continue
            self.scanned += 1
            findings = engine.analyze(value)
            if findings:
                for f in findings:
                    self.found[f.entity] += 1
                row[name] = engine.anonymize(value, findings, operator)
        return row

    def protect_text(self, text: str) -> str:
        """`text` with PII replaced (for quarantined raw lines, whose columns are unknown)."""
        return str(self.protect_row({"_": text}, ["_"])["_"])

    def stats(self) -> dict[str, Any]:
        return {"mode": self.spec.mode, "columns": list(self.spec.columns),
                "texts_scanned": self.scanned, "texts_skipped_by_prefilter": self.skipped,
                "prefilter": self.prefilter, "findings": dict(sorted(self.found.items()))}
