"""The recognizer base class and the `Finding` it returns.

A recognizer finds spans of one entity type. `find(text)` first asks the cheap `gate` (a
substring test or a regex that starts with a rare character, so CPython's `re` skips ahead in
C), then runs one precompiled candidate regex; checksums and validity rules run only on the
candidates. Context words in a short window before a match raise its score; negative context
words (e.g. "order", "tracking") lower it.

    >>> class Ticket(Recognizer):
    ...     entity = "TICKET"
    ...     pattern = re.compile(r"TCK-[0-9]{6}")
    ...     needles = ("TCK-",)
    >>> [(f.entity, f.text) for f in Ticket().find("see TCK-123456")]
    [('TICKET', 'TCK-123456')]
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

__all__ = [
    "CONTEXT_BOOST",
    "CONTEXT_WINDOW",
    "ID_WORDS",
    "NEGATIVE_WINDOW",
    "Finding",
    "Recognizer",
    "context_regex",
    "digit_windows",
]

CONTEXT_WINDOW = 40
# Negative words must be right before the value: "order no. 123..." lowers the score, an
# "order" earlier in the sentence does not.
NEGATIVE_WINDOW = 24
CONTEXT_BOOST = 0.35
# Words before a number that say it identifies something else than a person: negative context.
ID_WORDS = ("order", "invoice", "tracking", "ticket", "serial", "isbn", "sku", "ref",
            "reference", "build", "version")  # fmt: skip

# A maximal run of at least seven digits, at most three other non-letters between neighbours.
# Every phone number, card number and SSN lies inside one; most chat messages have none.
_DIGIT_RUN = re.compile(r"[0-9](?:[^0-9A-Za-z\n]{0,3}[0-9]){6,}", re.ASCII)


def digit_windows(text: str) -> list[tuple[int, int]]:
    """(pos, endpos) around each run of seven or more digits, for `pattern.finditer(text, ...)`.

    The window starts three characters early (for a leading "+1 (" or "(") and ends two late
    (so a pattern's lookahead still sees what follows the run).

    >>> digit_windows("call +1 415 555 2671 today, or 12")
    [(3, 22)]
    """
    global _last_windows
    last = _last_windows
    if last[0] is text:  # the card, SSN and phone recognizers ask in turn for the same text
        return last[1]
    n = len(text)
    windows = [(max(0, m.start() - 3), min(n, m.end() + 2)) for m in _DIGIT_RUN.finditer(text)]
    _last_windows = (text, windows)
    return windows


# One slot: (text, its windows). Replaced as a whole tuple, so threads never see a mix.
_last_windows: tuple[str | None, list[tuple[int, int]]] = (None, [])


@dataclass(frozen=True, slots=True)
class Finding:
    """One detected entity: `text[start:end]` is `text`, found by `recognizer`."""

    entity: str
    start: int
    end: int
    score: float
    recognizer: str
    text: str


def negative_regex(words: Iterable[str]) -> re.Pattern[str] | None:
    """Any of `words` right before the value: only "no.", "#", ":" and the like in between."""
    words = sorted(set(words))
    if not words:
        return None
    alternatives = "|".join(re.escape(w) for w in words)
    return re.compile(
        r"(?<!\w)(?:" + alternatives + r")s?(?:\s*(?:no\.?|nr\.?|number|num|id|#|:))*\s*[#:]?\s*\Z",
        re.IGNORECASE,
    )


def context_regex(words: Iterable[str]) -> re.Pattern[str] | None:
    """A case-insensitive regex matching any of `words` (or its plural) as a whole word."""
    words = sorted(set(words))
    if not words:
        return None
    alternatives = "|".join(re.escape(w) for w in words)
    return re.compile(r"(?<!\w)(?:" + alternatives + r")s?(?!\w)", re.IGNORECASE)


class Recognizer:
    """Base class: subclasses set `entity`, `pattern`, `base_score` and may override `validate`.

    `find(text)` is the one method the engine calls; a custom recognizer may override it
    entirely. `validate` returns (start, end, score) for a candidate match, or None to reject it.
    `needles` (any must occur in the text) and `gate` (a regex that must match somewhere) let a
    recognizer skip texts that cannot contain its entity without running `pattern`; with
    `digit_runs` the pattern only runs around runs of seven or more digits (`digit_windows`).
    After a rejected candidate the scan goes on after it, or from its next character with
    `rescan` (when a real value can hide inside a rejected one).
    """

    entity: ClassVar[str] = ""
    pattern: ClassVar[re.Pattern[str] | None] = None
    base_score: ClassVar[float] = 0.5
    context: ClassVar[tuple[str, ...]] = ()
    negative_context: ClassVar[tuple[str, ...]] = ()
    needles: ClassVar[tuple[str, ...]] = ()
    gate: ClassVar[re.Pattern[str] | None] = None
    digit_runs: ClassVar[bool] = False
    rescan: ClassVar[bool] = False

    def __init__(self) -> None:
        self.name = type(self).__name__
        self._context = context_regex(self.context)
        self._negative = negative_regex(self.negative_context)

    def validate(self, match: re.Match[str]) -> tuple[int, int, float] | None:
        """Return (start, end, score) for a candidate, or None to reject it."""
        return match.start(), match.end(), self.base_score

    def may_contain(self, text: str) -> bool:
        """False when `text` certainly holds no entity of this kind (cheap checks only)."""
        needles = self.needles
        if needles and not any(n in text for n in needles):
            return False
        gate = self.gate
        return gate is None or gate.search(text) is not None

    def adjust(self, text: str, start: int, score: float) -> float:
        """`score` raised by context words and lowered by negative ones just before `start`."""
        if self._context is None and self._negative is None:
            return score
        # Searched in place (no slice): a word cut by the window's edge is not a word.
        negative = self._negative
        if negative is not None and negative.search(text, max(0, start - NEGATIVE_WINDOW), start):
            # "order no. 415-555-2671": the word right before the value outweighs any other.
            return max(0.0, score - CONTEXT_BOOST)
        context = self._context
        if context is not None and score < 1.0 and context.search(
            text, max(0, start - CONTEXT_WINDOW), start
        ):
            score = min(1.0, score + CONTEXT_BOOST)
        return score

    def find(self, text: str) -> list[Finding]:
        """All findings of this recognizer in `text`."""
        pattern = self.pattern
        if pattern is None or not self.may_contain(text):
            return []
        found: list[Finding] = []
        windows = digit_windows(text) if self.digit_runs else ((0, len(text)),)
        search = pattern.search
        for pos, endpos in windows:
            match = search(text, pos, endpos)
            while match is not None:
                checked = self.validate(match)
                if checked is None:
                    match = search(text, match.start() + 1 if self.rescan else match.end(), endpos)
                    continue
                start, end, score = checked
                score = self.adjust(text, start, score)
                found.append(Finding(self.entity, start, end, score, self.name, text[start:end]))
                # Continue after the value, not the candidate: validate may have shortened it.
                match = search(text, max(end, match.start() + 1), endpos)
        return found
