"""A labelled PII evaluation corpus, generated with Faker (the `pii-eval` extra).

`generate_corpus(n, seed=...)` returns `n` samples, each a text and the exact spans of the PII
planted in it. The same `n`, seed and Faker version give the same corpus. Values come in mixed
formats (phone numbers of a dozen countries, cards with spaces or dashes, IBANs of twenty
countries, compressed IPv6, ...), inside varied sentence templates with unicode, punctuation
and noise, sometimes alone at the edges of the text; a third of the samples hold only
near-misses that must *not* be reported (order numbers, timestamps, versions, tracking
numbers, UUIDs, cards failing Luhn, impossible SSNs, IBANs with a wrong checksum, dates that
are not birth dates, ...).

    >>> samples = generate_corpus(3, seed=1)   # doctest: +SKIP
    >>> samples[0].text[samples[0].spans[0].start : samples[0].spans[0].end]   # doctest: +SKIP
    'GB82 WEST 1234 5698 7654 32'
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import phonenumbers
from phonenumbers import PhoneNumberFormat, PhoneNumberType

from shipyard.errors import ConfigError

__all__ = ["ENTITIES", "LabelledSpan", "Sample", "generate_corpus"]

INSTALL_HINT = "pip install 'shipyard[pii-eval]'"

# Every entity type the corpus labels.
ENTITIES = ("CREDIT_CARD", "DATE_OF_BIRTH", "EMAIL", "IBAN", "IP_ADDRESS", "MAC_ADDRESS", "PHONE",
            "SECRET", "URL", "US_SSN")  # fmt: skip


@dataclass(frozen=True, slots=True)
class LabelledSpan:
    """`text[start:end]` of a sample is a planted value of type `entity`."""

    entity: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Sample:
    text: str
    spans: tuple[LabelledSpan, ...]


_IBAN_LOCALES = ("de_DE", "en_GB", "fr_FR", "es_ES", "it_IT", "nl_NL", "pl_PL", "pt_PT", "de_AT",
                 "de_CH", "en_IE", "fi_FI", "no_NO", "da_DK", "cs_CZ", "sk_SK", "ro_RO", "tr_TR",
                 "el_GR", "nl_BE")  # fmt: skip
_PHONE_REGIONS = ("US", "CA", "GB", "DE", "FR", "IT", "ES", "NL", "IN", "BR", "JP", "AU", "MX",
                  "CH", "SE", "PL")  # fmt: skip
_CARD_TYPES = ("visa16", "visa16", "mastercard", "mastercard", "amex", "discover", "jcb16",
               "diners", "visa13")  # fmt: skip

# Sentence templates per entity: "{}" is the value. Not every one has a context word.
_TEMPLATES: dict[str, tuple[str, ...]] = {
    "EMAIL": ("Contact me at {} if anything changes.", "email: {}", "{}", "Send it to <{}>.",
              "Répondez à {} s'il vous plaît.", "邮箱\uff1a{}\uff0c谢谢", "cc {}; bcc nobody",
              "My address is {} — thanks!", "({})", "Reply-To: {}", "ping {} 🙂"),
    "PHONE": ("Call me on {} after 5pm.", "phone: {}", "{}", "Tel. {}", "reach the desk at {}",
              "Mobile — {}", "whatsapp {} 📱", "Rufen Sie {} an.", "numéro : {}", "({})",
              "my cell is {}, my name is Sam", "fax: {}."),
    "CREDIT_CARD": ("card number {}", "Visa {} exp 04/29", "{}", "Please charge {} today.",
                    "CC: {}", "paid with {} (Amex)", "Kartennummer {}", "«{}»",
                    "the card {} was declined"),
    "IBAN": ("IBAN: {}", "Please transfer to {} by Friday.", "{}", "compte {} €",
             "bank account {}", "Überweisung an {}.", "IBAN {}, BIC DEUTDEFF"),
    "US_SSN": ("SSN: {}", "social security number {}", "{}", "My SSN is {}.",
               "taxpayer id {}", "ssn#{}", "(ss# {})"),
    "US_SSN_BARE": ("SSN: {}", "social security number {}", "My SSN is {}."),
    "IP_ADDRESS": ("server {} is down", "client ip {}", "{}", "ssh admin@{} -p 22",
                   "from {} at 10:42", "host={}", "blocked {}!", "[{}]"),
    "URL": ("see {}", "{}", "link: {}", "Docs at {} (read them).", "open {} now",
            "la page {} est cassée"),
    "MAC_ADDRESS": ("device mac {}", "{}", "wifi adapter {} joined", "hw addr: {}"),
    "DATE_OF_BIRTH": ("born on {}", "DOB: {}", "Date of birth: {}", "d.o.b. {}",
                      "{} (date of birth)", "my birthday is {}", "geboren am {}",
                      "Patient, born {}, reports pain", "birthdate {}."),
    "SECRET": ("export OPENAI_API_KEY={}", "key: {}", "{}", "token={}", "here is my key {} oops",
               "Authorization: Bearer {}", "config: {{\"api_key\": \"{}\"}}"),
}  # fmt: skip
_SECRET_ASSIGNED_TEMPLATES = ("API_KEY={}", "client_secret: {}", "password: {}",
                              'db_password = "{}"', "the password is {}", "Bearer {}")  # fmt: skip

_FILLERS = ("Thanks in advance.", "Let me know.", "Hi team,", "Best, J.", "Ça marche ✅",
            "Grüße aus Köln.", "ありがとうございます。", "🙂", "—", "PS: see below.", "Ok", "",
            "The meeting moved to 3 pm.", "We shipped 12 units.")  # fmt: skip
_SEPARATORS = (" ", " ", "\n", " | ", ". ", ", ", "\t", "  ", " — ")


def _faker(locale: str, seed: int) -> Any:
    try:
        from faker import Faker  # optional: only the evaluation needs it
    except ImportError:
        raise ConfigError(
            f"The PII evaluation corpus needs Faker, which is not installed; run: {INSTALL_HINT}"
        ) from None
    fake = Faker(locale)
    fake.seed_instance(seed)
    return fake


class _Generator:
    """Values and near-misses, all drawn from one seeded `random.Random` and seeded Fakers."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.fake = _faker("en_US", seed)
        self._fakers: dict[str, Any] = {"en_US": self.fake}

    def faker(self, locale: str) -> Any:
        fake = self._fakers.get(locale)
        if fake is None:
            fake = self._fakers[locale] = _faker(locale, self.seed + len(self._fakers))
        return fake

    def chars(self, alphabet: str, n: int) -> str:
        return "".join(self.rng.choice(alphabet) for _ in range(n))

    # ------------------------------------------------------------------ values

    def email(self) -> str:
        kind = self.rng.random()
        if kind < 0.3:
            return str(self.fake.free_email())
        if kind < 0.6:
            return str(self.fake.company_email())
        user = self.fake.user_name() + self.rng.choice(["", "+news", ".x", "_2", "-ops"])
        domain = self.rng.choice(["example.com", "mail.example.co.uk", "sub.domain.io",
                                  "uni-köln.example.de".encode("idna").decode(), "EXAMPLE.ORG"])
        return f"{user}@{domain}"

    def phone(self) -> str:
        region = self.rng.choice(_PHONE_REGIONS)
        kind = self.rng.choice([PhoneNumberType.FIXED_LINE, PhoneNumberType.MOBILE])
        example = phonenumbers.example_number_for_type(region, kind)
        if example is None:
            example = phonenumbers.parse("+1 415 555 2671", None)
        number = example
        national = str(example.national_number)
        for _ in range(30):
            tail = self.chars(string.digits, 4)
            candidate = phonenumbers.parse(f"+{example.country_code}{national[:-4]}{tail}", None)
            if phonenumbers.is_valid_number(candidate):
                number = candidate
                break
        if region == "US" and self.rng.random() < 0.6:
            digits = str(number.national_number)
            a, b, c = digits[:3], digits[3:6], digits[6:]
            return self.rng.choice([f"({a}) {b}-{c}", f"{a}-{b}-{c}", f"{a}.{b}.{c}",
                                    f"{a} {b} {c}", f"1-{a}-{b}-{c}", f"+1 {a}-{b}-{c}",
                                    f"+1 ({a}) {b}-{c}", f"+1{a}{b}{c}"])  # fmt: skip
        text = phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL)
        style = self.rng.random()
        if style < 0.2:
            return phonenumbers.format_number(number, PhoneNumberFormat.E164)
        if style < 0.35:
            return text.replace(" ", "-")
        if style < 0.45:
            return text.replace(" ", ".")
        return text

    def card(self) -> str:
        kind = self.rng.choice(_CARD_TYPES)
        digits = str(self.fake.credit_card_number(card_type=kind))
        style = self.rng.random()
        if style < 0.4 or len(digits) == 13:
            return digits
        sep = " " if style < 0.75 else "-"
        if len(digits) == 15:
            return sep.join([digits[:4], digits[4:10], digits[10:]])
        if len(digits) == 14:
            return sep.join([digits[:4], digits[4:10], digits[10:]])
        return sep.join(digits[i : i + 4] for i in range(0, len(digits), 4))

    def iban(self) -> str:
        iban = str(self.faker(self.rng.choice(_IBAN_LOCALES)).iban())
        if self.rng.random() < 0.5:
            return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))
        return iban

    def ssn(self) -> tuple[str, bool]:
        """(value, needs context): a bare nine-digit SSN is only an SSN when the text says so."""
        value = str(self.fake.ssn())
        style = self.rng.random()
        if style < 0.2:
            return value.replace("-", " "), False
        if style < 0.35:
            return value.replace("-", ""), True
        return value, False

    def ip(self) -> str:
        kind = self.rng.random()
        if kind < 0.35:
            return str(self.fake.ipv4_public())
        if kind < 0.5:
            return str(self.fake.ipv4_private())
        address = ipaddress.IPv6Address(str(self.fake.ipv6()))
        if kind < 0.6:
            return address.exploded
        if kind < 0.7:
            return f"::ffff:{self.fake.ipv4_public()}"
        if kind < 0.8:
            # Zeros in the middle, so the compressed form has "::".
            packed = bytearray(address.packed)
            packed[4:12] = bytes(8)
            return str(ipaddress.IPv6Address(bytes(packed)))
        return address.compressed

    def url(self) -> str:
        return str(self.fake.uri() if self.rng.random() < 0.6 else self.fake.url())

    def mac(self) -> str:
        mac = str(self.fake.mac_address())
        style = self.rng.random()
        if style < 0.3:
            return mac.upper()
        if style < 0.5:
            return mac.replace(":", "-")
        if style < 0.65:
            flat = mac.replace(":", "")
            return ".".join(flat[i : i + 4] for i in range(0, 12, 4))
        return mac

    def dob(self) -> str:
        year = self.rng.randint(1930, 2012)
        date = dt.date(year, 1, 1) + dt.timedelta(days=self.rng.randint(0, 364))
        fmt = self.rng.choice(["%Y-%m-%d", "%d/%m/%Y", "%m/%d/%Y", "%d.%m.%Y", "%B %d, %Y",
                               "%d %B %Y", "%b %d %Y", "%-d %b %Y"])  # fmt: skip
        return date.strftime(fmt)

    def secret(self) -> tuple[str, str | None]:
        """(value, template or None for any SECRET template)."""
        alnum = string.ascii_letters + string.digits
        kind = self.rng.randrange(10)
        if kind == 0:
            return "sk-proj-" + self.chars(alnum + "_-", 48), None
        if kind == 1:
            return "AKIA" + self.chars(string.ascii_uppercase + string.digits, 16), None
        if kind == 2:
            return "ghp_" + self.chars(alnum, 36), None
        if kind == 3:
            return f"xoxb-{self.chars(string.digits, 12)}-{self.chars(alnum, 24)}", None
        if kind == 4:
            return "sk_live_" + self.chars(alnum, 24), None
        if kind == 5:
            return "AIza" + self.chars(alnum + "_-", 35), None
        if kind == 6:
            return self._jwt(), None
        if kind == 7:
            body = "\n".join(self.chars(alnum + "+/", 64) for _ in range(3))
            return (f"-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----",
                    "key file:\n{}\n")
        template = self.rng.choice(_SECRET_ASSIGNED_TEMPLATES)
        if "password" in template:
            return self.fake.word() + self.chars(string.digits, 3) + self.rng.choice("!#%&"), (
                template)
        return self.chars(string.digits, 2) + self.chars(alnum, 30), template

    def _jwt(self) -> str:
        def part(obj: dict[str, Any]) -> str:
            return base64.urlsafe_b64encode(orjson.dumps(obj)).decode().rstrip("=")

        header = part({"alg": "HS256", "typ": "JWT"})
        payload = part({"sub": str(self.rng.randint(1, 10**9)), "name": self.fake.name()})
        return f"{header}.{payload}.{self.chars(string.ascii_letters + string.digits + '_-', 43)}"

    # ------------------------------------------------------------------ near-misses

    def near_miss(self) -> str:
        return self.rng.choice(self._near_misses)(self)

    def _order(self) -> str:
        return self.rng.choice(["Order #{}", "order no. {}", "PO-2026-{}", "Invoice INV-{}",
                                "ticket {} is closed"]).format(
            self.chars(string.digits, self.rng.choice([6, 9, 10, 12])))  # fmt: skip

    def _timestamp(self) -> str:
        when = dt.datetime(2020, 1, 1, tzinfo=dt.UTC) + dt.timedelta(
            seconds=self.rng.randint(0, 6 * 365 * 86400))
        return self.rng.choice([when.isoformat(), when.strftime("%Y-%m-%d %H:%M:%S"),
                                str(int(when.timestamp())), str(int(when.timestamp() * 1000)),
                                when.strftime("at %H:%M:%S"), when.strftime("%Y%m%d%H%M%S")])

    def _version(self) -> str:
        parts = [str(self.rng.randint(0, 30)) for _ in range(self.rng.choice([3, 4]))]
        # A bare "1.2.3.4" is an IPv4 address by any reading: four parts only with a label.
        bare = ["{}"] if len(parts) == 3 else []
        return self.rng.choice(["v{}", "version {}", "release {}-rc1", "build {}", *bare]).format(
            ".".join(parts))

    def _tracking(self) -> str:
        return self.rng.choice([
            "1Z" + self.chars(string.ascii_uppercase + string.digits, 16),
            "tracking " + " ".join(self.chars(string.digits, 4) for _ in range(5)) + " "
            + self.chars(string.digits, 2),
            "FedEx tracking " + self.chars(string.digits, 12),
        ])  # fmt: skip

    def _uuid(self) -> str:
        return str(self.fake.uuid4())

    def _bad_luhn(self) -> str:
        digits = str(self.fake.credit_card_number(card_type="visa16"))
        bad = digits[:-1] + str((int(digits[-1]) + self.rng.randint(1, 9)) % 10)
        return " ".join(bad[i : i + 4] for i in range(0, 16, 4))

    def _bad_ssn(self) -> str:
        return "SSN " + self.rng.choice(["000", "666", "9" + self.chars(string.digits, 2),
                                         self.chars("12345678", 3)]) + self.rng.choice([
            "-00-" + self.chars(string.digits, 4), "-" + self.chars("123456789", 2) + "-0000",
        ])  # fmt: skip

    def _bad_iban(self) -> str:
        iban = str(self.faker(self.rng.choice(_IBAN_LOCALES)).iban())
        check = (int(iban[2:4]) + self.rng.randint(1, 96)) % 97
        return f"IBAN {iban[:2]}{check:02d}{iban[4:]}" if check > 1 else f"ref {iban[4:]}"

    def _plain_date(self) -> str:
        return self.rng.choice(["meeting on {}", "due {}", "released {}", "{}"]).format(
            self.dob())

    def _misc(self) -> str:
        return self.rng.choice([
            f"price ${self.rng.randint(1, 9999):,}.{self.rng.randint(0, 99):02d}",
            f"lat {self.rng.uniform(-90, 90):.4f}, {self.rng.uniform(-180, 180):.4f}",
            f"commit {self.chars('0123456789abcdef', 40)}",
            f"color #{self.chars('0123456789abcdef', 6)}",
            f"ISBN 978-{self.rng.randint(0, 9)}-{self.rng.randint(10, 99)}-"
            f"{self.chars(string.digits, 6)}-{self.rng.randint(0, 9)}",
            f"room {self.rng.randint(100, 999)}, ext. {self.rng.randint(1000, 9999)}",
            f"HTTP {self.rng.choice([200, 404, 500])} in {self.rng.randint(1, 999)} ms",
            f"{self.rng.randint(256, 999)}.{self.rng.randint(0, 255)}.1.1",
            f"a :: b and std::vector<{self.fake.word()}>",
            f"the token count was {self.rng.randint(100, 99999)}",
            f"my password is {self.fake.word()}",
        ])  # fmt: skip

    _near_misses: tuple[Callable[[_Generator], str], ...] = (
        _order, _timestamp, _version, _tracking, _uuid, _bad_luhn, _bad_ssn, _bad_iban,
        _plain_date, _misc,
    )  # fmt: skip

    # ------------------------------------------------------------------ pieces

    def piece(self, entity: str) -> tuple[str, int, int]:
        """A sentence with one planted value of `entity`: (text, value start, value end)."""
        template: str | None = None
        if entity == "EMAIL":
            value = self.email()
        elif entity == "PHONE":
            value = self.phone()
        elif entity == "CREDIT_CARD":
            value = self.card()
        elif entity == "IBAN":
            value = self.iban()
        elif entity == "US_SSN":
            value, bare = self.ssn()
            if bare:
                template = self.rng.choice(_TEMPLATES["US_SSN_BARE"])
        elif entity == "IP_ADDRESS":
            value = self.ip()
        elif entity == "URL":
            value = self.url()
        elif entity == "MAC_ADDRESS":
            value = self.mac()
        elif entity == "DATE_OF_BIRTH":
            value = self.dob()
        else:
            value, template = self.secret()
        if template is None:
            template = self.rng.choice(_TEMPLATES[entity])
        if entity == "DATE_OF_BIRTH" and template == "{}":
            template = "born {}"
        before, after = template.split("{}")
        before, after = before.replace("{{", "{"), after.replace("}}", "}")
        return before + value + after, len(before), len(before) + len(value)


_WEIGHTS = {"EMAIL": 3, "PHONE": 4, "CREDIT_CARD": 3, "IBAN": 3, "US_SSN": 3, "IP_ADDRESS": 3,
            "URL": 1, "MAC_ADDRESS": 1, "DATE_OF_BIRTH": 2, "SECRET": 2}  # fmt: skip


def generate_corpus(n: int = 2000, *, seed: int = 7) -> list[Sample]:
    """`n` labelled samples; about a third hold only near-misses (no PII at all).

    Deterministic for a given `n`, `seed` and Faker version. Raises `ConfigError` with the
    install command when Faker is missing.
    """
    if n < 0:
        raise ValueError(f"generate_corpus n is {n}; it must be 0 or more.")
    gen = _Generator(seed)
    rng = gen.rng
    entities = list(_WEIGHTS)
    weights = [_WEIGHTS[e] for e in entities]
    samples: list[Sample] = []
    for _ in range(n):
        builder = _Builder(rng)
        add = builder.add

        if rng.random() < 0.33:
            for _ in range(rng.randint(1, 3)):
                add(gen.near_miss())
            if rng.random() < 0.5:
                add(rng.choice(_FILLERS))
        else:
            if rng.random() < 0.3:
                add(rng.choice(_FILLERS))
            for entity in rng.choices(entities, weights, k=rng.choice([1, 1, 2, 3])):
                text, start, end = gen.piece(entity)
                add(text, (entity, start, end))
                if rng.random() < 0.25:
                    add(gen.near_miss())
            if rng.random() < 0.3:
                add(rng.choice(_FILLERS))
        samples.append(builder.sample())
    return samples


class _Builder:
    """Joins pieces with random separators and keeps the labelled spans' offsets."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.parts: list[str] = []
        self.spans: list[LabelledSpan] = []
        self.pos = 0

    def add(self, text: str, span: tuple[str, int, int] | None = None) -> None:
        if self.parts:
            sep = self.rng.choice(_SEPARATORS)
            self.parts.append(sep)
            self.pos += len(sep)
        if span is not None:
            self.spans.append(LabelledSpan(span[0], self.pos + span[1], self.pos + span[2]))
        self.parts.append(text)
        self.pos += len(text)

    def sample(self) -> Sample:
        return Sample("".join(self.parts), tuple(self.spans))
