"""Phone numbers: candidates by regex, validated against `phonenumbers`' metadata.

`phonenumbers.parse` is thorough and slow (tens of microseconds per call). The candidates here
hold only digits, "+", "()", spaces, dots and dashes, so the country code and national number
are read directly and checked with `is_valid_number_for_region`; only forms this shortcut does
not cover (a "(0)" trunk prefix, regions with complex national prefixes) go through `parse`.

    >>> [f.text for f in PhoneRecognizer().find("call +44 20 7946 0958 or (415) 555-2671")]
    ['+44 20 7946 0958', '(415) 555-2671']
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

import phonenumbers
from phonenumbers import PhoneMetadata, PhoneNumber

from shipyard.privacy.base import ID_WORDS, Recognizer

__all__ = ["PhoneRecognizer", "phone_is_valid"]

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


class PhoneRecognizer(Recognizer):
    """Phone numbers validated with `phonenumbers`; numbers without `+CC` use `regions` in order."""

    entity = "PHONE"
    base_score = 0.7
    context = ("phone", "tel", "telephone", "mobile", "cell", "call", "fax", "whatsapp",
               "ring", "text me", "sms")  # fmt: skip
    negative_context = ID_WORDS
    digit_runs = True
    pattern = re.compile(
        r"(?:(?<=tel:)|(?<![\w+#/.:@-]))(?:\+[0-9]{1,3}[ .-]?)?(?:\(0\)[ .-]?)?"
        r"(?:\([0-9]{1,4}\)[ .-]?)?[0-9]{1,4}(?:[ .-]?[0-9]{2,4}){1,5}(?![\w/:-]|\.[0-9])",
        re.ASCII,
    )

    def __init__(self, regions: Iterable[str] = ("US",)) -> None:
        super().__init__()
        self.regions = tuple(r.upper() for r in regions)
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
        if _digit_count(candidate) > 15:
            # The regex is greedy: "+49-30-122327 4388 6960 ..." ran into the next number.
            regions = self.regions
            shorter = next((c for c in _shorter(candidate) if phone_is_valid(c, regions)), None)
            if shorter is None:
                return None
            candidate = shorter
        elif _digit_count(candidate) < 7 or not phone_is_valid(candidate, self.regions):
            return None
        # A bare digit run with no "+" and no separators reads like an ID: it needs context.
        bare = candidate.isdigit()
        start = match.start()
        return start, start + len(candidate), 0.4 if bare else self.base_score
