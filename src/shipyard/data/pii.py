"""PII on dataset columns, using the shared engine (`shipyard.privacy`).

Modes: `redact` ("[REDACTED]"), `mask` (keep the last 4), `hash` (keyed HMAC: stable, so joins
still work) and `pseudonymize` (typed placeholders such as `<EMAIL_1>`, numbered consistently
across the columns of one row).

A column declared in `value_columns` holds personal data in every value (`phone: PHONE`): each
non-empty value is replaced whole, valid or not, without asking the engine. In a free-text
column (`columns`), what the engine finds is replaced; a value that is nothing but a number
written like a phone or an identifier ("555-0199", "1 2345") and in which the engine found
nothing is replaced whole too (`NUMBER`): it was declared personal, and a number that no
recognizer validates is still somebody's.

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

import pyarrow as pa
import pyarrow.compute as pc

from shipyard.data.config import PiiSpec
from shipyard.privacy import Finding, KeyedHash, Mask, Operator, PIIEngine, Redact
from shipyard.privacy.pseudonymize import Pseudonymize, Pseudonyms

__all__ = ["PREFILTER_ENTITIES", "ColumnProtector", "candidate_entities", "may_hold_pii",
           "whole_number"]

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


# A value that is only a number as people write phone numbers and identifiers: digits (4 or
# more), spaces and + ( ) . - / #, an optional "x12" / "ext. 12" extension.
_WHOLE_NUMBER = re.compile(
    r"\s*\+?[0-9(][0-9 ()./#-]*[0-9)](?:\s*(?:x|ext\.?|extension)\s*[0-9]+)?\s*",
    re.IGNORECASE)


def whole_number(value: str) -> bool:
    """True when `value` is nothing but a number with 4+ digits ("555-0199", "+49 30 12")."""
    return (_WHOLE_NUMBER.fullmatch(value) is not None
            and sum(ch.isdigit() for ch in value) >= 4)


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


# `candidate_entities` as one RE2 regex for whole columns of ASCII text: '@', '://', 'www.',
# ':', four digits anywhere, a dotted or dashed hex MAC layout.
_CANDIDATES = (r"@|://|(?i:www\.)|:|[0-9](?:[^0-9]*[0-9]){3}|[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\."
               r"|[0-9A-Fa-f]{2}-[0-9A-Fa-f]{2}-")


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
        self._column_gate = self._gate_regex()

    def _gate_regex(self) -> str | None:
        """One RE2 regex that every ASCII text holding PII matches (None: scan everything)."""
        parts = [_CANDIDATES]
        for recognizer in self._others:
            terms = recognizer.gate_terms()
            if terms is None:
                return None
            needles, words = terms
            parts += [re.escape(n) for n in needles]
            ascii_words = [re.escape(w) for w in words if w.isascii()]
            if ascii_words:
                parts.append("(?i:" + "|".join(ascii_words) + ")")
        return "|".join(parts)

    def to_scan(self, values: Sequence[Any], array: pa.Array | None) -> list[int]:
        """Indices of the non-empty strings in `values` the engine must see (the prefilter,
        over the whole column in C where it can; the same verdicts as `protect_row`'s)."""
        gate = self._column_gate
        if not self.prefilter:
            return [i for i, v in enumerate(values) if isinstance(v, str) and v]
        if array is None or gate is None:
            return [i for i, v in enumerate(values) if isinstance(v, str) and v
                    and (candidate_entities(v) or any(r.may_contain(v) for r in self._others))]
        # ASCII texts: the regex decides; other texts: the per-text checks (Python's case
        # folding of non-ASCII letters is not RE2's).
        maybe = pc.or_(pc.invert(pc.string_is_ascii(array)), pc.match_substring_regex(array, gate))
        out = []
        for i in pc.indices_nonzero(pc.fill_null(maybe, False)).to_pylist():
            v = values[i]
            if v and (v.isascii() or candidate_entities(v)
                      or any(r.may_contain(v) for r in self._others)):
                out.append(i)
        return out

    def protect_columns(self, columns: dict[str, list[Any]],
                        arrays: dict[str, pa.Array | None]) -> None:
        """Replace PII in whole columns of a batch, in place: `columns` maps names to values.

        The same result as `protect_row` on every row, with the prefilter run per column.
        """
        text_cols = [c for c in self.spec.columns if c in columns]
        value_cols = [(c, e) for c, e in self.spec.value_columns.items() if c in columns]
        scan = {c: self.to_scan(columns[c], arrays.get(c)) for c in text_cols}
        for c in text_cols:
            self.skipped += sum(1 for v in columns[c] if isinstance(v, str) and v) - len(scan[c])
        if self._operator is None:
            # Placeholders are numbered per row across its columns: go row by row, over the
            # rows that have anything to replace.
            rows = sorted({i for c in text_cols for i in scan[c]}
                          | {i for c, _ in value_cols
                             for i, v in enumerate(columns[c]) if v is not None and v != ""})
            wanted = {c: set(scan[c]) for c in text_cols}
            names = text_cols + [c for c, _ in value_cols]
            for i in rows:
                row = {c: columns[c][i] for c in names}
                self._protect(row, [c for c in text_cols if i in wanted[c]])
                for c in names:
                    columns[c][i] = row[c]
            return
        operator = self._operator
        for c, entity in value_cols:
            values = columns[c]
            if isinstance(operator, Redact):
                filled = [i for i, v in enumerate(values) if v is not None and v != ""]
                for i in filled:
                    values[i] = operator.placeholder
                self.found[entity] += len(filled)
                continue
            for i, v in enumerate(values):
                if v is not None and v != "":
                    values[i] = self._whole(v, entity, operator)
        for c in text_cols:
            values = columns[c]
            for i in scan[c]:
                values[i] = self._text(values[i], operator)

    def _whole(self, value: Any, entity: str, operator: Operator) -> str:
        text = value if isinstance(value, str) else str(value)
        self.found[entity] += 1
        return operator.replacements([Finding(entity, 0, len(text), 1.0, "value_columns",
                                              text)])[0]

    def _text(self, value: str, operator: Operator) -> str:
        """One free-text value through the engine (the prefilter already passed it)."""
        self.scanned += 1
        engine = self.engine
        findings = engine.analyze(value)
        if not findings and whole_number(value):
            findings = [Finding("NUMBER", 0, len(value), 1.0, "columns", value)]
        if not findings:
            return value
        for f in findings:
            self.found[f.entity] += 1
        return engine.anonymize(value, findings, operator)

    def _protect(self, row: dict[str, Any], scan: Sequence[str]) -> None:
        """Value columns and the free-text columns in `scan` of one row, one operator."""
        operator = self._operator or Pseudonymize(Pseudonyms())
        for name, entity in self.spec.value_columns.items():
            value = row.get(name)
            if value is not None and value != "":
                row[name] = self._whole(value, entity, operator)
        for name in scan:
            row[name] = self._text(row[name], operator)

    def protect_row(self, row: dict[str, Any], columns: Sequence[str]) -> dict[str, Any]:
        """`row` with PII replaced in `columns` and in every declared value column (the row
        is changed in place and returned)."""
        scan: list[str] = []
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
            scan.append(name)
        self._protect(row, scan)
        return row

    def protect_text(self, text: str) -> str:
        """`text` with PII replaced (for quarantined raw lines, whose columns are unknown)."""
        return str(self.protect_row({"_": text}, ["_"])["_"])

    def stats(self) -> dict[str, Any]:
        return {"mode": self.spec.mode, "columns": list(self.spec.columns),
                "value_columns": dict(self.spec.value_columns),
                "texts_scanned": self.scanned, "texts_skipped_by_prefilter": self.skipped,
                "prefilter": self.prefilter, "findings": dict(sorted(self.found.items()))}
