"""Built-in pattern recognizers: email, URL, MAC, IP, card, IBAN, US SSN, phone, deny lists.

Candidates come from a regex compiled once at import; checksums and validity rules (Luhn,
mod-97, SSN rules, `ipaddress`, `phonenumbers`) run only on those candidates. Patterns start
with a character class where they can (a lookbehind goes after the first character), so
CPython's `re` jumps between possible first characters in C instead of trying every position;
recognizers of digit-heavy entities look only around runs of six or more digits.

    >>> [f.entity for f in EmailRecognizer().find("mail bob@example.com")]
    ['EMAIL']
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from shipyard.privacy.base import ID_WORDS, VERSION_WORDS, Finding, Recognizer
from shipyard.privacy.credentials import SecretRecognizer
from shipyard.privacy.dates import DateOfBirthRecognizer
from shipyard.privacy.ner import ner_recognizer
from shipyard.privacy.phones import PhoneRecognizer

__all__ = [
    "BUILTIN_RECOGNIZERS",
    "CreditCardRecognizer",
    "DateOfBirthRecognizer",
    "DenyListRecognizer",
    "EmailRecognizer",
    "Finding",
    "IbanRecognizer",
    "IpAddressRecognizer",
    "MacAddressRecognizer",
    "PhoneRecognizer",
    "Recognizer",
    "SecretRecognizer",
    "UrlRecognizer",
    "UsSsnRecognizer",
    "default_recognizers",
]



class EmailRecognizer(Recognizer):
    entity = "EMAIL"
    base_score = 0.9
    context = ("email", "e-mail", "mail", "contact")
    needles = ("@",)
    # Matched from the "@" (rare in text, so `re` skips ahead in C); the local part is then
    # read backwards from it.
    pattern = re.compile(r"@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,63}(?![A-Za-z0-9-])", re.ASCII)
    _local = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}\Z", re.ASCII)

    def validate(self, match: re.Match[str]) -> tuple[int, int, float] | None:
        at = match.start()
        local = self._local.search(match.string, max(0, at - 64), at)
        if local is None:
            return None
        return local.start(), match.end(), self.base_score


class UrlRecognizer(Recognizer):
    entity = "URL"
    base_score = 0.6
    context = ("url", "link", "website", "site")
    needles = ("://", "www.", "WWW.", "Www.")
    pattern = re.compile(
        r"(?<![A-Za-z0-9])(?:(?:https?|ftp)://|www\.)[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+",
        re.ASCII | re.IGNORECASE,
    )
    _trailing = ".,;:!?'\")]}"

    def validate(self, match: re.Match[str]) -> tuple[int, int, float] | None:
        value = match.group().rstrip(self._trailing)
        if "." not in value.split("//", 1)[-1]:
            return None
        return match.start(), match.start() + len(value), self.base_score


class MacAddressRecognizer(Recognizer):
    entity = "MAC_ADDRESS"
    base_score = 0.8
    context = ("mac", "hardware", "ethernet", "wifi", "device")
    gate = re.compile(
        r"[:.-](?:(?<=[0-9A-Fa-f]{2}[:-])[0-9A-Fa-f]{2}[:-]|(?<=[0-9A-Fa-f]{4}\.)[0-9A-Fa-f]{4}\.)",
        re.ASCII,
    )
    pattern = re.compile(
        r"(?<![\w:.-])(?:[0-9A-Fa-f]{2}([:-])(?:[0-9A-Fa-f]{2}\1){4}[0-9A-Fa-f]{2}"
        r"|[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4})(?![\w:-]|\.\w)",
        re.ASCII,
    )


class IpAddressRecognizer(Recognizer):
    entity = "IP_ADDRESS"
    base_score = 0.8
    context = ("ip", "address", "host", "server", "client")
    # An address is an address whatever it is called ("says invoice 56.166.161.30"); only a
    # version word makes a dotted quad something else ("build 10.8.5.5").
    veto_context = VERSION_WORDS
    # A word character, dot or dash beside it means a longer string (e.g. "v1.2.3.4-rc1").
    _v4 = re.compile(
        r"[0-9](?<![\w.][0-9])[0-9]{0,2}\.(?:[0-9]{1,3}\.){2}[0-9]{1,3}(?![\w-]|\.\w)", re.ASCII
    )
    _v6 = re.compile(
        r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:[0-9]{1,3}\.){3}[0-9]{1,3})?"
        r"(?![\w:]|\.\w)",
        re.ASCII,
    )
    # An IPv6 address has two colons with at most four hex digits between them.
    _v6_gate = re.compile(r":[0-9A-Fa-f]{0,4}:", re.ASCII)

    def find(self, text: str) -> list[Finding]:
        found: list[Finding] = []
        if "." in text:
            found.extend(self._scan(self._v4, text))
        if ":" in text and self._v6_gate.search(text):
            found.extend(self._scan(self._v6, text))
        return found

    def _scan(self, pattern: re.Pattern[str], text: str) -> list[Finding]:
        found: list[Finding] = []
        for match in pattern.finditer(text):
            value = match.group()
            if value.strip(":") == "":
                continue  # a bare "::" in prose ("a :: b") is punctuation, not an address
            try:
                ipaddress.ip_address(value)
            except ValueError:
                continue
            start, end = match.span()
            score = self.adjust(text, start, self.base_score, end)
            if score <= 0.0:
                continue
            found.append(Finding(self.entity, start, end, score, self.name, value))
        return found


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


class CreditCardRecognizer(Recognizer):
    entity = "CREDIT_CARD"
    base_score = 0.9
    # Twelve digits (the shortest Maestro) is also the length of many order and tracking
    # numbers: such a card needs a context word.
    short_score = 0.4
    context = ("card", "credit", "visa", "mastercard", "amex", "cc", "pan", "payment", "maestro",
               "jcb", "debit")  # fmt: skip
    negative_context = ID_WORDS
    digit_runs = True
    pattern = re.compile(
        r"[0-9](?<![\w#+.-][0-9])(?:[ -]?[0-9]){11,18}(?![\w-]|\.[0-9])", re.ASCII
    )
    # "61 3024-824094-6524" (the end of an IP address, then a card) hides a card: look inside.
    rescan = True
    # Issuer prefixes (Visa, Mastercard, Amex, Diners, JCB, Discover/UnionPay, Maestro): a cheap
    # first cut; `_lengths` then says which lengths each issues.
    _issuer = re.compile(r"4|5[0-8]|2[2-7]|3[045-9]|6|0604|1800|2131", re.ASCII)
    # Prefixes that issue 12-digit (Maestro) and 15-digit JCB (1800, 2131) numbers.
    _maestro = re.compile(r"5[0678]|6|0604", re.ASCII)
    _separator = re.compile(r"[ -]")
    # Printed layouts; other groupings (e.g. the tail of a spaced IBAN) are not card numbers.
    _layouts = frozenset({(4, 4, 4, 4), (4, 4, 4, 4, 3), (4, 6, 5), (4, 6, 4), (4, 4, 4, 1),
                          (4, 4, 4, 3), (4, 4, 4)})  # fmt: skip
    # What follows a grouped card: more groups ("4111 1111 1111 1111 2345 67" is a tracking
    # number, unless they make a second card), not an expiry ("... 1111 12/29").
    _goes_on = re.compile(r"(?:[ -][0-9]{1,6})+(?![0-9A-Za-z_/]|\.[0-9])", re.ASCII)
    _came_from = re.compile(r"(?<!\S)(?:[0-9]{1,6}[ -])+\Z", re.ASCII)

    def _issued(self, digits: str) -> bool:
        """An issuer prefix that issues numbers of this length."""
        if self._issuer.match(digits) is None:
            return False
        n = len(digits)
        if digits.startswith(("1800", "2131")):
            return n == 15
        if digits.startswith("0604") or n == 12:
            return self._maestro.match(digits) is not None
        return 13 <= n <= 19

    def validate(self, match: re.Match[str]) -> tuple[int, int, float] | None:
        text = match.string
        start = match.start()
        groups = self._separator.split(match.group())
        # The candidate may have run into the next number ("4213506987358 4825 65"): try it
        # whole, then without its last groups.
        for k in range(len(groups), 0, -1):
            head = groups[:k]
            digits = "".join(head)
            if len(digits) < 12:
                return None
            if len(digits) > 19 or (k > 1 and tuple(len(g) for g in head) not in self._layouts):
                continue
            end = start + len(digits) + k - 1
            if k > 1 and not self._standalone(text, start, end, text[start + len(head[0])]):
                continue
            if self._issued(digits) and len(set(digits)) > 1 and _luhn_ok(digits):
                return start, end, self.short_score if len(digits) == 12 else self.base_score
        return None

    def _standalone(self, text: str, start: int, end: int, sep: str) -> bool:
        """False when the grouped number goes on in the same layout on either side."""
        came = self._came_from.search(text, max(0, start - 24), start)
        if (
            came is not None
            and came.group()[-1] == sep
            and not self._a_card(came.group()[:-1], sep)
        ):
            return False
        follow = self._goes_on.match(text, end)
        if follow is None or follow.group()[0] != sep:
            return True
        return self._a_card(follow.group()[1:], sep)  # two cards in a row are two cards

    def _a_card(self, grouped: str, sep: str) -> bool:
        groups = grouped.split(sep)
        digits = "".join(groups)
        return (
            tuple(len(g) for g in groups) in self._layouts
            and digits.isdigit()
            and 12 <= len(digits) <= 19
            and _luhn_ok(digits)
        )


_IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AT": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29, "CH": 21, "CY": 28,
    "CZ": 24, "DE": 22, "DK": 18, "EE": 20, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22,
    "GI": 23, "GL": 18, "GR": 27, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IS": 26, "IT": 27,
    "KW": 30, "KZ": 20, "LB": 28, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MT": 31,
    "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TR": 26, "UA": 29,
}  # fmt: skip


def _iban_ok(iban: str) -> bool:
    rearranged = iban[4:] + iban[:4]
    numeric = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(numeric) % 97 == 1


class IbanRecognizer(Recognizer):
    entity = "IBAN"
    base_score = 0.95
    context = ("iban", "account", "bank", "transfer")
    # A rejected candidate ("DE00 ... IBAN PL96 ...", a bad checksum) may run into a real one.
    rescan = True
    # Any case: "gb24utku39720300165632" (a lower-cased text) is still an IBAN; the country
    # length and the mod-97 checksum keep words out. Matched from the first check digit
    # (digits are rarer than letters, so `re` skips ahead in C); the country code is the two
    # letters before it.
    pattern = re.compile(
        r"[0-9](?<=[A-Za-z]{2}[0-9])(?<![A-Za-z0-9][A-Za-z]{2}[0-9])[0-9](?: ?[A-Za-z0-9]){11,30}",
        re.ASCII,
    )

    def validate(self, match: re.Match[str]) -> tuple[int, int, float] | None:
        start = match.start() - 2
        raw = match.string[start : match.end()].upper()
        expected = _IBAN_LENGTHS.get(raw[:2])
        if expected is None:
            return None
        # The candidate may run into a following upper-case word; cut it at the country length.
        count = 0
        end = 0
        for i, ch in enumerate(raw):
            if ch != " ":
                count += 1
                if count == expected:
                    end = i + 1
                    break
        if end == 0:
            return None
        tail = match.string[start + end : start + end + 1]
        if tail.isascii() and tail.isalnum():
            return None
        if not _iban_ok(raw[:end].replace(" ", "")):
            return None
        return start, start + end, self.base_score


class UsSsnRecognizer(Recognizer):
    entity = "US_SSN"
    base_score = 0.6
    context = ("ssn", "social security", "social", "ss#", "taxpayer")
    negative_context = ID_WORDS
    digit_runs = True
    pattern = re.compile(
        r"([0-9])(?<![\w+.-][0-9])([0-9]{2})([- ]?)([0-9]{2})\3([0-9]{4})(?![\w-]|\.[0-9])",
        re.ASCII,
    )

    def validate(self, match: re.Match[str]) -> tuple[int, int, float] | None:
        first, rest, sep, group, serial = match.groups()
        area = first + rest
        start = match.start()
        # "SSN#123-45-6789" is an SSN; "Order #123-45-6789" is not.
        hashed = start and match.string[start - 1] == "#"
        if hashed and not match.string[max(0, start - 4) : start].lower().endswith(("ss#", "ssn#")):
            return None
        if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
            return None
        digits = area + group + serial
        if len(set(digits)) == 1 or digits in ("123456789", "987654321"):
            return None
        # A bare 9-digit run is as likely an order or account number: it needs context.
        score = self.base_score if sep else 0.3
        return match.start(), match.end(), score


class DenyListRecognizer(Recognizer):
    """Flags every whole-word, case-insensitive occurrence of the given terms."""

    entity = "DENY_LIST"
    base_score = 1.0

    def __init__(self, terms: Iterable[str], *, entity: str = "DENY_LIST") -> None:
        super().__init__()
        self.entity_name = entity
        words = sorted({t for t in terms if t}, key=len, reverse=True)
        self._words = [w.lower() for w in words]
        self._terms = (
            re.compile(
                r"(?<!\w)(?:" + "|".join(re.escape(w) for w in words) + r")(?!\w)", re.IGNORECASE
            )
            if words
            else None
        )

    def gate_terms(self) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
        # `terms` are matched in any case: each lower-cased word is a necessary substring (a
        # term that is not ASCII may match ASCII text under Python's case folding: scan all).
        if not all(w.isascii() for w in self._words):
            return None
        return (), tuple(self._words)

    def find(self, text: str) -> list[Finding]:
        if self._terms is None:
            return []
        return [
            Finding(self.entity_name, m.start(), m.end(), 1.0, self.name, m.group())
            for m in self._terms.finditer(text)
        ]


BUILTIN_RECOGNIZERS: tuple[type[Recognizer], ...] = (
    SecretRecognizer,
    EmailRecognizer,
    UrlRecognizer,
    IbanRecognizer,
    CreditCardRecognizer,
    UsSsnRecognizer,
    PhoneRecognizer,
    IpAddressRecognizer,
    MacAddressRecognizer,
    DateOfBirthRecognizer,
)


def default_recognizers(*, ner: str | None = None) -> list[Recognizer]:
    """A fresh instance of every built-in recognizer, plus a NER backend when `ner` names one.

    `ner` is None (no PERSON/LOCATION/ORGANIZATION), "auto" (the first installed spaCy English
    pipeline, skipped with a logged notice when there is none) or a spaCy pipeline package name
    or folder (a `ConfigError` when it is not installed). See `shipyard.privacy.ner`.
    """
    chosen: list[Recognizer] = [cls() for cls in BUILTIN_RECOGNIZERS]
    backend = ner_recognizer(ner)
    if backend is not None:
        chosen.append(backend)
    return chosen
