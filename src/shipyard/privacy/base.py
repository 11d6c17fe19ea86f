"""The recognizer base class and the `Finding` it returns.

A recognizer finds spans of one entity type. `find(text)` first asks the cheap `gate` (a
substring test or a regex that starts with a rare character, so CPython's `re` skips ahead in
C), then runs one precompiled candidate regex; checksums and validity rules run only on the
candidates. Context words in a short window before a match (or, for `context_after`, right
after it) raise its score. Negative context words (e.g. "order", "tracking") right before a
match sink an ambiguous value (a bare digit run scoring below `STRONG_SCORE`) but only nudge a
value whose form alone identifies it ("the order 374-80-2211" is still an SSN); `veto_context`
words ("version 1.2.3.4", "Apt. 380 34253") reject any value.

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
    "AFTER_WINDOW",
    "CONTEXT_BOOST",
    "CONTEXT_WINDOW",
    "ID_WORDS",
    "NEGATIVE_NUDGE",
    "NEGATIVE_WINDOW",
    "STRONG_SCORE",
    "VERSION_WORDS",
    "Finding",
    "Recognizer",
    "context_regex",
    "digit_windows",
    "negative_regex",
]

CONTEXT_WINDOW = 40
# Negative words must be right before the value: "order no. 123..." lowers the score, an
# "order" earlier in the sentence does not.
NEGATIVE_WINDOW = 24
CONTEXT_BOOST = 0.35
# Context words right after a value ("650-752-7354 fax", "3987542834-Fax") count within this.
AFTER_WINDOW = 12
# A value whose form alone identifies it (a dashed SSN, a validated phone number with
# separators, a Luhn-valid card, a dotted quad) scores at least this. Negative words only nudge
# it by NEGATIVE_NUDGE, never below 0.5: "the order 374-80-2211" is an SSN whatever the word
# before it says, while "order 4155552671" (a bare digit run, 0.4) is dropped.
STRONG_SCORE = 0.6
NEGATIVE_NUDGE = 0.1
# Words before a number that say it identifies something else than a person: negative context.
ID_WORDS = ("order", "invoice", "tracking", "ticket", "serial", "isbn", "sku", "ref",
            "reference", "build", "version")  # fmt: skip
# Words that make a dotted number a version, never an address: they veto any IP finding.
VERSION_WORDS = ("version", "ver", "v", "build", "release", "firmware", "fw", "rev", "revision")

# A maximal run of at least six digits, at most three other non-letters between neighbours.
# Every phone number ("89 97 11" in Greenland), card number and SSN lies inside one; most chat
# messages have none.
_DIGIT_RUN = re.compile(r"[0-9](?:[^0-9A-Za-z\n]{0,3}[0-9]){5,}", re.ASCII)


def digit_windows(text: str) -> list[tuple[int, int]]:
    """(pos, endpos) around each run of six or more digits, for `pattern.finditer(text, ...)`.

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
        r"(?<!\w)(?:" + alternatives
        + r")s?\.?(?:\s*(?:no\.?|nr\.?|number|num|id|#|:))*\s*[#:]?\s*\Z",
        re.IGNORECASE,
    )


def after_regex(words: Iterable[str]) -> re.Pattern[str] | None:
    """Any of `words` right after a value: only spaces, a dash or brackets between (after a
    comma the word starts the next item: "1675269575, phone: +61 ...")."""
    words = sorted(set(words))
    if not words:
        return None
    alternatives = "|".join(re.escape(w) for w in words)
    return re.compile(r"[\s()\[\]/-]{0,3}(?:" + alternatives + r")(?!\w)", re.IGNORECASE)


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
    veto_context: ClassVar[tuple[str, ...]] = ()
    context_after: ClassVar[tuple[str, ...]] = ()
    needles: ClassVar[tuple[str, ...]] = ()
    gate: ClassVar[re.Pattern[str] | None] = None
    digit_runs: ClassVar[bool] = False
    rescan: ClassVar[bool] = False

    def __init__(self) -> None:
        self.name = type(self).__name__
        self._context = context_regex(self.context)
        self._negative = negative_regex(self.negative_context)
        self._veto = negative_regex(self.veto_context)
        self._after = after_regex(self.context_after)

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

    def gate_terms(self) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
        """(substrings, ASCII words in any case) of which an ASCII text must hold one to hold
        this recognizer's entity; None when it cannot tell (then every text is scanned).

        The data pipeline turns these into one regex run over whole columns in C: a
        necessary condition, like `may_contain`, never a sufficient one.
        """
        if self.needles and self.gate is None:
            return self.needles, ()
        return None

    def adjust(self, text: str, start: int, score: float, end: int = -1) -> float:
        """`score` raised by context words and lowered by negative ones around the value.

        Returns 0.0 when a `veto_context` word is right before `start`. `end` (the value's end)
        lets `context_after` words count too.
        """
        veto = self._veto
        if veto is not None and veto.search(text, max(0, start - NEGATIVE_WINDOW), start):
            return 0.0
        negative = self._negative
        if negative is not None and negative.search(text, max(0, start - NEGATIVE_WINDOW), start):
            # "order no. 4155552671": the word right before an ambiguous value outweighs any
            # other; a value that identifies itself by its form keeps a passing score.
            if score >= STRONG_SCORE:
                return max(0.5, score - NEGATIVE_NUDGE)
            return max(0.0, score - CONTEXT_BOOST)
        if score >= 1.0:
            return score
        # Searched in place (no slice): a word cut by the window's edge is not a word.
        context = self._context
        if context is not None and context.search(text, max(0, start - CONTEXT_WINDOW), start):
            return min(1.0, score + CONTEXT_BOOST)
        after = self._after
        if after is not None and end >= 0 and after.match(text, end, end + AFTER_WINDOW):
            return min(1.0, score + CONTEXT_BOOST)
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
                score = self.adjust(text, start, score, end)
                found.append(Finding(self.entity, start, end, score, self.name, text[start:end]))
                # Continue after the value, not the candidate: validate may have shortened it.
                match = search(text, max(end, match.start() + 1), endpos)
        return found
