"""The PII engine: run recognizers, filter and resolve overlaps, then anonymize.

>>> engine = PIIEngine()
>>> text = "mail bob@example.com"
>>> engine.anonymize(text, engine.analyze(text), Replace())
'mail <EMAIL_1>'
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import replace

from shipyard.privacy.ner import SpacyRecognizer
from shipyard.privacy.operators import Operator, Replace
from shipyard.privacy.recognizers import (
    DenyListRecognizer,
    Finding,
    Recognizer,
    default_recognizers,
)

__all__ = ["PIIEngine", "resolve_overlaps"]

# "Phone:\\n070 4493 5104": text exported from JSON, CSV or logs often holds line breaks as
# the two characters backslash and "n". The recognizers read "n070" as one word; they scan a
# copy with each such escape turned into a space and the control character it stands for
# (same length, so every offset holds), and findings keep the original text.
_ESCAPED_BREAK = re.compile(r"\\([nrt])")
_CONTROL = {"n": " \n", "r": " \r", "t": " \t"}


def _unescape_breaks(text: str) -> str:
    return _ESCAPED_BREAK.sub(lambda m: _CONTROL[m.group(1)], text)


def resolve_overlaps(findings: Iterable[Finding]) -> list[Finding]:
    """Keep non-overlapping findings: higher score wins, then the longer span; sorted by start."""
    ranked = sorted(findings, key=lambda f: (-f.score, -(f.end - f.start), f.start))
    kept: list[Finding] = []
    for f in ranked:
        if all(f.end <= k.start or f.start >= k.end for k in kept):
            kept.append(f)
    kept.sort(key=lambda f: f.start)
    return kept


def _patterns_before_names(found: list[Finding], ner: frozenset[str]) -> list[Finding]:
    """`found` without the name-model findings that overlap a pattern recognizer's finding."""
    patterns = [f for f in found if f.recognizer not in ner]
    if len(patterns) == len(found):
        return found
    return [f for f in found if f.recognizer not in ner
            or all(f.end <= p.start or f.start >= p.end for p in patterns)]


class PIIEngine:
    """Find and anonymize PII.

    `recognizers` defaults to every built-in; `entities` keeps only those entity types; values in
    `allow` (case-insensitive) are never reported; terms in `deny` are always reported as
    `DENY_LIST`; findings scoring below `min_score` are dropped.
    """

    def __init__(
        self,
        recognizers: Sequence[Recognizer] | None = None,
        *,
        entities: Iterable[str] | None = None,
        allow: Iterable[str] = (),
        deny: Iterable[str] = (),
        min_score: float = 0.5,
    ) -> None:
        if not 0.0 <= min_score <= 1.0:
            raise ValueError(f"PIIEngine min_score is {min_score}; it must be between 0 and 1.")
        chosen = list(default_recognizers() if recognizers is None else recognizers)
        if entities is not None:
            wanted = set(entities)
            chosen = [r for r in chosen if r.entity in wanted]
        deny_terms = [t for t in deny if t]
        if deny_terms:
            chosen.append(DenyListRecognizer(deny_terms))
        self.recognizers: tuple[Recognizer, ...] = tuple(chosen)
        self._ner = frozenset(r.name for r in chosen if isinstance(r, SpacyRecognizer))
        self._allow = frozenset(a.casefold() for a in allow)
        self.min_score = min_score

    def analyze(self, text: str) -> list[Finding]:
        """Findings in `text`, sorted by start, with overlaps resolved.

        A name model's finding (PERSON, LOCATION, ORGANIZATION) that overlaps a pattern
        finding is dropped: "https://ViralSquad.be/" is a URL, not an organization.
        """
        scan = _unescape_breaks(text) if "\\" in text else text
        found: list[Finding] = []
        allow = self._allow
        for recognizer in self.recognizers:
            for f in recognizer.find(scan):
                if f.score >= self.min_score and not (allow and f.text.casefold() in allow):
                    found.append(f)
        if scan is not text:
            found = [f if f.text == text[f.start : f.end]
                     else replace(f, text=text[f.start : f.end]) for f in found]
        if len(found) < 2:
            return found
        if self._ner:
            found = _patterns_before_names(found, self._ner)
        return resolve_overlaps(found)

    def anonymize(
        self, text: str, findings: Sequence[Finding], operator: Operator | None = None
    ) -> str:
        """`text` with each finding replaced by `operator` (default: typed placeholders)."""
        chosen = resolve_overlaps(findings)
        if not chosen:
            return text
        replacements = (operator or Replace()).replacements(chosen)
        parts: list[str] = []
        pos = 0
        for f, new in zip(chosen, replacements, strict=True):
            parts.append(text[pos : f.start])
            parts.append(new)
            pos = f.end
        parts.append(text[pos:])
        return "".join(parts)
