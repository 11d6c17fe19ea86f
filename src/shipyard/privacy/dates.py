"""Dates of birth: a real calendar date with a birth word ("born", "DOB", ...) just before it.

A date alone is not PII (meetings, releases, timestamps); a date of birth is. So this recognizer
reports a date only when a birth word is within a short window before it (or in brackets right
after it, as in "12/03/1985 (DOB)") and no identifier word ("version", "order", ...) is right
before it, and never reports dates in the future or before 1900.

    >>> [f.text for f in DateOfBirthRecognizer().find("DOB: 1985-03-12, joined 2021-06-01")]
    ['1985-03-12']
"""

from __future__ import annotations

import datetime as dt
import re

from shipyard.privacy.base import CONTEXT_WINDOW, ID_WORDS, Finding, Recognizer

__all__ = ["DateOfBirthRecognizer"]

_MONTHS = {
    "jan": 1, "feb": 2, "mar": 3, "apr": 4, "may": 5, "jun": 6, "jul": 7, "aug": 8, "sep": 9,
    "oct": 10, "nov": 11, "dec": 12,
}  # fmt: skip
_MONTH = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?"
)
_DAY = r"(?:[0-9]{1,2})(?:st|nd|rd|th)?"
# Words that mark a date as someone's birth date (English, plus a few common European ones).
_BIRTH_WORDS = (
    "born", "birth", "birthday", "birthdate", "dob", "d.o.b", "date of birth", "geboren",
    "geb.", "né", "née", "nacido", "nacida", "fecha de nacimiento",
    "date de naissance", "data di nascita",
)  # fmt: skip
_BIRTH = re.compile(
    r"(?<!\w)(?:" + "|".join(re.escape(w) for w in sorted(_BIRTH_WORDS)) + r")", re.IGNORECASE
)
# After the date only in brackets: "12/03/1985 (DOB)"; "..., my birthday is" starts a new claim.
_BIRTH_AFTER = re.compile(
    r"\s*[(\[]\s*(?:" + "|".join(re.escape(w) for w in sorted(_BIRTH_WORDS)) + r")",
    re.IGNORECASE,
)
# Substrings of the birth words, for the cheap check before any regex runs.
_GATE_WORDS = ("born", "birth", "dob", "d.o.b", "geb", "né", "naci", "naissance", "nascita")


class DateOfBirthRecognizer(Recognizer):
    """Numeric (ISO, D/M/Y, M/D/Y, dots or dashes) and written ("12 March 1985") dates."""

    entity = "DATE_OF_BIRTH"
    base_score = 0.85
    context = _BIRTH_WORDS
    negative_context = ID_WORDS
    pattern = re.compile(
        r"(?<![\w./:-])(?:"
        r"(?P<iy>(?:19|20)[0-9]{2})(?P<is>[-/.])(?P<im>[0-9]{1,2})(?P=is)(?P<id>[0-9]{1,2})"
        r"|(?P<a>[0-9]{1,2})(?P<ns>[-/.])(?P<b>[0-9]{1,2})(?P=ns)(?P<ny>[0-9]{4}|[0-9]{2})"
        rf"|(?P<wd>{_DAY})\s+(?:of\s+)?(?P<wm>{_MONTH}),?\s+(?P<wy>[0-9]{{4}})"
        rf"|(?P<mm>{_MONTH})\s+(?P<md>{_DAY}),?\s+(?P<my>[0-9]{{4}})"
        r")(?![\w/:-]|\.[0-9])",
        re.IGNORECASE,
    )

    def may_contain(self, text: str) -> bool:
        lowered = text.lower()
        return any(w in lowered for w in _GATE_WORDS)

    def gate_terms(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return (), _GATE_WORDS

    def find(self, text: str) -> list[Finding]:
        if not self.may_contain(text):
            return []
        found: list[Finding] = []
        birth = _BIRTH
        previous_end = 0
        for match in self.pattern.finditer(text):
            start, end = match.span()
            # A birth word vouches for the first date after it, not for every date nearby.
            window_start = max(previous_end, start - CONTEXT_WINDOW)
            previous_end = end
            after = _BIRTH_AFTER.match(text, end)
            if after is not None:
                previous_end = after.end()  # "(DOB)" is taken: it vouches for no later date
            elif not birth.search(text, window_start, start):
                continue
            # The nearest words decide: "born ... version 1.2.2024" is a version.
            negative = self._negative
            if negative is not None and negative.search(text, max(0, start - 24), start):
                continue
            if not _plausible(match):
                continue
            found.append(Finding(self.entity, start, end, self.base_score, self.name,
                                 match.group()))
        return found


def _year(raw: str) -> int:
    year = int(raw)
    if len(raw) == 2:  # "03/12/85": a birth year, so the most recent past century
        this = dt.date.today().year % 100
        year += 2000 if year <= this else 1900
    return year


def _valid(year: int, month: int, day: int) -> bool:
    if not 1900 <= year <= dt.date.today().year:
        return False
    try:
        return dt.date(year, month, day) <= dt.date.today()
    except ValueError:
        return False


def _plausible(match: re.Match[str]) -> bool:
    g = match.groupdict()
    if g["iy"]:
        return _valid(int(g["iy"]), int(g["im"]), int(g["id"]))
    if g["ny"]:
        year, a, b = _year(g["ny"]), int(g["a"]), int(g["b"])
        return _valid(year, b, a) or _valid(year, a, b)  # D/M/Y or M/D/Y
    if g["wy"]:
        return _valid(int(g["wy"]), _MONTHS[g["wm"][:3].lower()], int(g["wd"].rstrip("stndrh")))
    return _valid(int(g["my"]), _MONTHS[g["mm"][:3].lower()], int(g["md"].rstrip("stndrh")))
