"""PII on dataset columns, using the shared engine (`shipyard.privacy`).

Modes: `redact` ("[REDACTED]"), `mask` (keep the last 4), `hash` (keyed HMAC: stable, so joins
still work) and `pseudonymize` (typed placeholders such as `<EMAIL_1>`, numbered consistently
across the columns of one row).

A cheap prefilter skips texts that cannot contain any built-in pattern entity (no digits to
speak of, no '@', no ':', no 'www.'); it switches itself off when the engine has recognizers it
does not know about (a deny-list, a name model), so it never hides a finding.

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
from shipyard.privacy import Finding, KeyedHash, Mask, Operator, PIIEngine, Redact

__all__ = ["PREFILTER_ENTITIES", "ColumnProtector", "may_hold_pii"]

# Entity types whose every match needs '@', ':', 'www.' or at least 4 digits (or a dotted hex
# or dashed MAC such as 0a1b.2c3d.4e5f or aa-bb-cc-dd-ee-ff, matched by the regex below).
PREFILTER_ENTITIES = frozenset({"EMAIL", "URL", "IBAN", "CREDIT_CARD", "US_SSN", "PHONE",
                                "IP_ADDRESS", "MAC_ADDRESS"})
_FOUR_DIGITS = re.compile(r"[0-9][^0-9]*[0-9][^0-9]*[0-9][^0-9]*[0-9]")
_DOTTED_MAC = re.compile(r"[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\.")
_DASHED_MAC = re.compile(r"[0-9A-Fa-f]{2}-[0-9A-Fa-f]{2}-")


def may_hold_pii(text: str) -> bool:
    """False only when `text` cannot hold any entity in `PREFILTER_ENTITIES`."""
    if "@" in text or ":" in text or _FOUR_DIGITS.search(text) is not None:
        return True
    if "." in text and ("www." in text.lower() or _DOTTED_MAC.search(text) is not None):
        return True
    return "-" in text and _DASHED_MAC.search(text) is not None


class _RowPseudonyms(Operator):
    """Typed placeholders numbered per row: equal values share a number across columns."""

    def __init__(self) -> None:
        self.numbers: dict[tuple[str, str], int] = {}
        self.counts: dict[str, int] = {}

    def replacements(self, findings: Sequence[Finding]) -> list[str]:
        out: list[str] = []
        for f in findings:
            key = (f.entity, f.text)
            n = self.numbers.get(key)
            if n is None:
                n = self.counts.get(f.entity, 0) + 1
                self.counts[f.entity] = n
                self.numbers[key] = n
            out.append(f"<{f.entity}_{n}>")
        return out


class ColumnProtector:
    """Finds and anonymizes PII in the configured columns of each row."""

    def __init__(self, spec: PiiSpec, engine: PIIEngine | None = None) -> None:
        self.spec = spec
        self.engine = engine or PIIEngine(entities=spec.entities, allow=spec.allow,
                                          deny=spec.deny)
        known = all(r.entity in PREFILTER_ENTITIES for r in self.engine.recognizers)
        self.prefilter = spec.prefilter and known
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
        operator = self._operator or _RowPseudonyms()
        engine = self.engine
        for name in columns:
            value = row.get(name)
            if not isinstance(value, str) or not value:
                continue
            if self.prefilter and not may_hold_pii(value):
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
