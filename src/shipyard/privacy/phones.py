"""Phone numbers: candidates by regex, validated against `phonenumbers`' metadata, or by layout.

`phonenumbers.parse` is thorough and slow (tens of microseconds per call). The candidates here
hold only digits, "+", "()", spaces, dots and dashes, so the country code and national number
are read directly and checked with `is_valid_number_for_region`; only forms this shortcut does
not cover (a "(0)" trunk prefix, regions with complex national prefixes) go through `parse`.

A number written without its country code can only be validated for the regions configured,
and a text rarely says which country it comes from ("89 97 11" is a Greenland number, "0494 26
46 14" a Belgian one). So, unless `strict`, a number no configured region validates is still
reported when it is laid out the way people write phone numbers (`phone_shaped`: groups of
digits with one style of separator, 6 to 13 digits) and is not a date, an amount, an SSN or a
card layout, or right after an address word ("Apt. 380 34253 37"). Extensions (`x549`,
`ext. 12`) are part of the number.

    >>> [f.text for f in PhoneRecognizer().find("call +44 20 7946 0958 or (415) 555-2671")]
    ['+44 20 7946 0958', '(415) 555-2671']
    >>> [f.text for f in PhoneRecognizer().find("fax 650-752-7354x549, desk 0494 26 46 14")]
    ['650-752-7354x549', '0494 26 46 14']
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

import phonenumbers
from phonenumbers import PhoneMetadata, PhoneNumber

from shipyard.privacy.base import AFTER_WINDOW, ID_WORDS, Recognizer

__all__ = ["ADDRESS_WORDS", "PhoneRecognizer", "phone_is_valid", "phone_shaped"]

_NON_DIGITS = re.compile(r"[^0-9]+")
_DOTTED_QUAD = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}\Z")
_CC_REGIONS: dict[int, tuple[str, ...]] = {
    cc: tuple(regions) for cc, regions in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.items()
}


@lru_cache(maxsize=512)
def _lengths(cc: int) -> frozenset[int]:
    """Every possible national number length for a country code (any of its regions)."""
    out: set[int] = set()
    for region in _CC_REGIONS.get(cc, ()):
        meta = PhoneMetadata.metadata_for_region(region)
        general = meta.general_desc if meta is not None else None
        if general is None or not general.possible_length:
            return frozenset(range(2, 18))  # unknown: anything goes to the full check
        out.update(general.possible_length)
    return frozenset(out)


@lru_cache(maxsize=512)
def _national_prefix(region: str) -> tuple[int, str | None]:
    """(country code, plain national prefix) of a region; prefix None when it is not plain."""
    meta = PhoneMetadata.metadata_for_region(region.upper())
    if meta is None:
        return 0, None
    parsing = meta.national_prefix_for_parsing
    prefix = meta.national_prefix
    plain = parsing is None or (parsing.isdigit() and parsing == prefix)
    if meta.national_prefix_transform_rule is not None or not plain:
        return meta.country_code or 0, None
    return meta.country_code or 0, prefix or ""


@lru_cache(maxsize=512)
def _trunk_prefix(region: str) -> str:
    """The digits dialled before a national number inside the country ("0" in GB, "1" in US)."""
    meta = PhoneMetadata.metadata_for_region(region)
    prefix = meta.national_prefix if meta is not None else None
    return prefix if prefix and prefix.isdigit() else ""


def _number(cc: int, national: str) -> PhoneNumber | None:
    if not national or len(national) not in _lengths(cc):
        return None  # no region of this country code has numbers this long (cheap cut)
    zeros = len(national) - len(national.lstrip("0"))
    if zeros == len(national):
        return None
    number = PhoneNumber(country_code=cc, national_number=int(national))
    if zeros:
        number.italian_leading_zero = True
        if zeros > 1:
            number.number_of_leading_zeros = zeros
    return number


_TYPES = ("premium_rate", "toll_free", "shared_cost", "voip", "personal_number", "pager", "uan",
          "voicemail", "fixed_line", "mobile")  # fmt: skip
_Desc = tuple[frozenset[int], re.Pattern[str]]


@lru_cache(maxsize=512)
def _descs(region: str) -> tuple[_Desc | None, tuple[_Desc, ...]] | None:
    """A region's general description and its number types: (possible lengths, pattern).

    `is_valid_number_for_region` walks the same descriptions, re-fetching metadata and
    patterns on every call; compiled once here they cost a few regex matches per number.
    None for regions without metadata (non-geographic codes), checked by `phonenumbers`.
    """
    meta = PhoneMetadata.metadata_for_region(region)
    if meta is None:
        return None

    def desc(d: object) -> _Desc | None:
        pattern = getattr(d, "national_number_pattern", None)
        if pattern is None:
            return None
        lengths = frozenset(getattr(d, "possible_length", None) or ())
        return lengths, re.compile(f"(?:{pattern})\\Z")

    types = tuple(d for d in (desc(getattr(meta, name, None)) for name in _TYPES) if d)
    return desc(meta.general_desc), types


def _matches(d: _Desc, nsn: str) -> bool:
    lengths, pattern = d
    return (not lengths or len(nsn) in lengths) and pattern.match(nsn) is not None


def _valid_in(number: PhoneNumber, nsn: str, region: str) -> bool:
    descs = _descs(region)
    if descs is None:
        return bool(phonenumbers.is_valid_number_for_region(number, region))
    general, types = descs
    if general is None or not _matches(general, nsn):
        return False
    return any(_matches(d, nsn) for d in types)


def _valid_for(number: PhoneNumber, regions: tuple[str, ...]) -> bool:
    """Valid in one of `regions` (those sharing the country code, the likeliest first).

    The same rules as `phonenumbers.is_valid_number` (a number of +1 is valid when one of the
    25 regions of +1 has a number type matching it), on descriptions compiled once.
    """
    nsn = phonenumbers.national_significant_number(number)
    return any(_valid_in(number, nsn, region) for region in dict.fromkeys(regions))


def _parse_valid(candidate: str, region: str | None) -> bool:
    try:
        number = phonenumbers.parse(candidate, region)
    except phonenumbers.NumberParseException:
        return False
    return bool(phonenumbers.is_valid_number(number))


def phone_is_valid(candidate: str, regions: Iterable[str] = ("US",)) -> bool:
    """True when `candidate` is a valid number: "+CC ..." anywhere, else in one of `regions`.

    The verdicts of `phonenumbers.parse` + `is_valid_number` on digit-and-punctuation input,
    except that a national number is not read past a doubled trunk prefix ("1 1 415 ...").

    >>> phone_is_valid("+49 30 901820"), phone_is_valid("020 7946 0958", ("GB",))
    (True, True)
    """
    digits = _NON_DIGITS.sub("", candidate)
    if candidate.startswith("+"):
        if "(0)" in candidate:
            return _parse_valid(candidate, None)
        for size in (1, 2, 3):
            regions_of_cc = _CC_REGIONS.get(int(digits[:size] or "0"))
            if regions_of_cc:
                cc, national = int(digits[:size]), digits[size:]
                number = _number(cc, national)
                if number is not None and _valid_for(number, regions_of_cc):
                    return True
                # "+44 020 7946 0958": a trunk prefix kept after the country code.
                trunk = _trunk_prefix(regions_of_cc[0])
                if trunk and national.startswith(trunk):
                    number = _number(cc, national[len(trunk) :])
                    return number is not None and _valid_for(number, regions_of_cc)
                return False
        return False
    for region in regions:
        cc, prefix = _national_prefix(region)
        if prefix is None:
            if _parse_valid(candidate, region):
                return True
            continue
        tries = [digits]
        if prefix and digits.startswith(prefix):
            tries.insert(0, digits[len(prefix) :])
        shared = _CC_REGIONS.get(cc, ())
        for national in tries:
            number = _number(cc, national)
            if number is not None and _valid_for(number, (region, *shared)):
                return True
    return False


def _digit_count(text: str) -> int:
    return sum(map(str.isdigit, text))


def _shorter(candidate: str) -> list[str]:
    """Prefixes of a too-long candidate worth validating, most likely first.

    First the part before the separator changes ("+49-30-122327" of "+49-30-122327 4388 6960":
    a number keeps one style), then whole groups dropped from the right, longest first.
    """
    seps = [(i, ch) for i, ch in enumerate(candidate) if ch in " .-"]
    if candidate.startswith("+") and seps and seps[0][0] <= 4:
        seps = seps[1:]  # the one after "+CC" may differ ("+1 415-555-2671")
    seps = [(i, ch) for i, ch in seps if candidate[i - 1] != ")"]  # nor the one after "(415)"
    if seps:
        first = seps[0][1]
        change = next((i for i, ch in seps if ch != first), None)
        if change is not None:
            # Mixed styles: the number ends where its style does.
            seps = [(i, ch) for i, ch in seps if i < change]
            out = [candidate[:change]] + [candidate[:i] for i, _ in reversed(seps)]
            return [c for c in out if 7 <= _digit_count(c) <= 15]
    out = [candidate[:i] for i, _ in reversed(seps)]
    return [c for c in out if 7 <= _digit_count(c) <= 15]


_GROUP = re.compile(r"[0-9]+")
_SEPARATOR = re.compile(r"[^0-9]+")
# Card layouts (4-4-4-4, 4-6-5, ...) are never read as phone numbers, whatever the checksum.
_CARD_LAYOUTS = frozenset({(4, 4, 4), (4, 4, 4, 1), (4, 4, 4, 3), (4, 4, 4, 4), (4, 6, 4),
                           (4, 6, 5)})  # fmt: skip
_EXTENSION = re.compile(r" ?(?:[xX]|[eE]xt\.?|[eE]xtension) ?[0-9]{1,6}(?![0-9])", re.ASCII)
# A currency or count right beside a number makes it an amount: "EUR 12 500 000", "2 500 kr".
_MONEY_BEFORE = re.compile(
    r"(?:[$\u00a3\u20ac\u00a5\u20b9]|\b(?:eur|usd|gbp|chf|sek|nok|dkk|pln|czk|kr|rs)\.?)\s?\Z",
    re.IGNORECASE)
_MONEY_AFTER = re.compile(
    r"\s?(?:[$\u00a3\u20ac\u00a5\u20b9]|(?:eur|usd|gbp|chf|sek|nok|dkk|pln|czk|kr|k\u010d|zl"
    r"|dollars?|euros?|pounds?|people|persons|users|rows|units|items|km|kg|m|t)\b)",
    re.IGNORECASE)
# The candidate continues a longer run of digit groups ("... 1792 2328 3852"): not a number
# of its own.
_TAIL = re.compile(r"[0-9][ .-]\Z")
# A word right after a number: a letter, or "40th"; not the pronoun "I" ("at 795 2525 I'd like").
_WORD_AFTER = re.compile(r"[ \t]+(?!I(?:'|\u2019|\b))(?:[^\W\d_]|[0-9]+(?:st|nd|rd|th)\b)")


def _two_groups(candidate: str) -> bool:
    return len(_GROUP.findall(candidate)) == 2


# Words right before a number that make it part of an address: "Apt. 380 34253 37 Rue ...".
ADDRESS_WORDS = ("apt", "apartment", "suite", "ste", "box", "po box", "p.o. box",
                 "room", "floor", "flat", "building", "bldg", "lot", "zip", "zip code",
                 "postcode", "postal code", "plz")  # fmt: skip


def _is_year(group: str) -> bool:
    return len(group) == 4 and 1900 <= int(group) <= 2099


def _date_like(groups: list[str], seps: set[str]) -> bool:
    """"2009-08-03", "03.08.2009", "12/03/85", "1990-2000": dates and year ranges."""
    sizes = tuple(len(g) for g in groups)
    if len(groups) == 2:
        return all(_is_year(g) for g in groups)
    if len(groups) != 3 or not seps <= {"-", ".", "/"}:
        return False
    a, b, c = (int(g) for g in groups)
    if sizes[0] == 4:
        return _is_year(groups[0]) and 1 <= b <= 12 and 1 <= c <= 31
    if sizes[2] in (2, 4) and sizes[0] <= 2 and sizes[1] <= 2:
        if sizes[2] == 4 and not _is_year(groups[2]):
            return False
        return (1 <= a <= 31 and 1 <= b <= 12) or (1 <= a <= 12 and 1 <= b <= 31)
    return False


def phone_shaped(candidate: str) -> bool:
    """True when `candidate` is laid out like a phone number, whatever its country.

    "+CC" and a national part of 4-14 digits; or 2+ groups of digits (at most 8 each, the
    first may be an area code in brackets) totalling 6-13 digits, one separator style, no
    single-digit group after the first (an ISBN), and none of: a date or year range, a decimal
    ("3.14159"), dotted thousands ("1.234.567"), an SSN layout (3-2-4), a card layout.

    >>> phone_shaped("0494 26 46 14"), phone_shaped("(07700)034176"), phone_shaped("89 97 11")
    (True, True, True)
    >>> phone_shaped("2009-08-03"), phone_shaped("978-3-16-148410-0"), phone_shaped("12 34")
    (False, False, False)
    """
    digits = _NON_DIGITS.sub("", candidate)
    if candidate.startswith("+"):
        for size in (1, 2, 3):
            if int(digits[:size] or "0") in _CC_REGIONS:
                return 4 <= len(digits) - size <= 14
        return False
    count = len(digits)
    body = candidate
    area: list[str] = []
    if body.startswith("("):  # "(022) 0905-618": the area code's own separator does not count
        close = body.find(")")
        area, body = [body[1:close]], body[close + 1 :].lstrip(" .-")
    groups = area + _GROUP.findall(body)
    seps = set(_SEPARATOR.findall(body))
    sizes = tuple(len(g) for g in groups)
    n = len(groups)
    if n < 2 or not 6 <= count <= 13 or max(sizes) > 8 or len(seps) > 1:
        return False
    if count == 6 and (sizes != (2, 2, 2) or seps != {" "}):
        return False  # six digits only as "89 97 11" ("29.13.21" is a version or a date)
    if n == 2 and count < 7:
        return False
    if any(size == 1 for size in sizes[1:]) or (sizes[0] == 1 and groups[0] not in "01"):
        return False  # "978-3-16-148410-0", "8 336 817"
    if "." in seps and (n < 3 or all(size == 3 for size in sizes[1:])):
        return False  # "3.14159", "1.234.567"
    if sizes == (3, 2, 4) and seps <= {"-", " "}:
        return False  # an SSN's layout, for the SSN recognizer to judge
    return sizes not in _CARD_LAYOUTS and not _date_like(groups, seps)


class PhoneRecognizer(Recognizer):
    """Phone numbers: validated with `phonenumbers` ("+CC ..." anywhere, national numbers in
    `regions`, in order), or, unless `strict`, laid out like one (`phone_shaped`).

    Scores: a validated number with separators 0.7; laid out like one but not validated 0.55;
    a bare digit run 0.4 when validated, else 0.3 (so a bare run needs a context word, such as
    "phone" before it or "fax" after it).
    """

    entity = "PHONE"
    base_score = 0.7
    shaped_score = 0.55
    context = ("phone", "tel", "telephone", "mobile", "cell", "call", "fax", "whatsapp",
               "ring", "text me", "sms", "office", "desk", "direct", "landline", "dial",
               "reach")  # fmt: skip
    context_after = ("fax", "office", "mobile", "cell", "home", "work", "desk", "direct", "phone",
                     "tel", "landline")  # fmt: skip
    negative_context = ID_WORDS
    veto_context = ADDRESS_WORDS
    digit_runs = True
    # Groups are maximal digit runs between single separators, so a failed candidate costs no
    # backtracking; an "x549" extension and a trailing "-Fax" may follow.
    pattern = re.compile(
        r"(?:(?<=tel:)|(?<![\w+#/.:@-]))(?:\+[0-9]{1,3}[ .-]?)?(?:\(0\)[ .-]?)?"
        r"(?:\([0-9]{1,5}\)[ .-]?)?[0-9]{1,15}(?:[ .-][0-9]{1,15}){0,7}"
        r"(?!(?![xX][0-9])[\w/:]|-[0-9]|\.[0-9])",
        re.ASCII,
    )

    def __init__(self, regions: Iterable[str] = ("US",), *, strict: bool = False) -> None:
        super().__init__()
        self.regions = tuple(r.upper() for r in regions)
        self.strict = strict
        for region in self.regions:
            if region not in phonenumbers.SUPPORTED_REGIONS:
                raise ValueError(
                    f"PhoneRecognizer region is '{region}'; it must be a two-letter region "
                    "code known to phonenumbers, e.g. 'US', 'GB', 'DE'."
                )

    def validate(self, match: re.Match[str]) -> tuple[int, int, float] | None:
        candidate = match.group()
        if _DOTTED_QUAD.match(candidate):
            return None  # "150.142.95.173" is an IPv4 address
        count = _digit_count(candidate)
        start = match.start()
        text = match.string
        if count > 15:
            # The regex is greedy: "+49-30-122327 4388 6960 ..." ran into the next number.
            regions = self.regions
            shorter = next((c for c in _shorter(candidate) if phone_is_valid(c, regions)), None)
            if shorter is None:
                return None
            candidate = shorter
            score = 0.4 if candidate.isdigit() else self.base_score
        elif count < 6:
            return None
        elif count >= 7 and phone_is_valid(candidate, self.regions):
            # A bare digit run with no "+" and no separators reads like an ID: it needs context.
            score = 0.4 if candidate.isdigit() else self.base_score
        elif (shorter := next((c for c in _shorter(candidate)
                               if phone_is_valid(c, self.regions)), None)) is not None:
            # "+31 6 12347105 18 Nov 1940": a valid number, then something else.
            candidate = shorter
            score = 0.4 if candidate.isdigit() else self.base_score
        elif self.strict:
            return None
        elif candidate.isdigit():
            # A bare run no region validates: a phone only with a phone word right beside it
            # ("Phone: 3987542834", "3987542834-Fax"), never a long one (timestamps, ids).
            end = start + len(candidate)
            beside = (self._context is not None
                      and self._context.search(text, max(0, start - 12), start)) or (
                self._after is not None and self._after.match(text, end, end + AFTER_WINDOW))
            if not 7 <= count <= 12 or not beside:
                return None
            score = 0.3
        elif (phone_shaped(candidate) and not self._amount(text, start, start + len(candidate))
              and not _TAIL.search(text, max(0, start - 2), start)):
            score = self.shaped_score
            # "932 3684 Court Street", "1159 3212 40th Street": two numbers and then a word are
            # an address's building and street numbers, unless the word says phone ("fax").
            end = start + len(candidate)
            if (_two_groups(candidate) and _WORD_AFTER.match(text, end)
                    and (self._after is None or not self._after.match(text, end, end + 12))):
                return None
        else:
            return None
        end = start + len(candidate)
        if text[end : end + 1] == "-" and (
            self._after is None or not self._after.match(text, end, end + AFTER_WINDOW)
        ):
            return None  # "29.13.21-rc1": only a phone word may hang on by a dash ("-Fax")
        extension = _EXTENSION.match(text, end)
        if extension is not None:
            end = extension.end()
        return start, end, score

    @staticmethod
    def _amount(text: str, start: int, end: int) -> bool:
        """A currency or a count right beside the number: "EUR 12 500 000", "2 500 000 users"."""
        return bool(_MONEY_BEFORE.search(text, max(0, start - 5), start)
                    or _MONEY_AFTER.match(text, end, end + 9))
