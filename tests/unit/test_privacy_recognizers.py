"""The recognizers added on top of the pattern set: dates of birth, secrets, phones, gates."""

from __future__ import annotations

import base64
import json

import phonenumbers
import pytest

from shipyard.privacy import DateOfBirthRecognizer, PIIEngine, SecretRecognizer
from shipyard.privacy.base import digit_windows
from shipyard.privacy.credentials import shannon_entropy
from shipyard.privacy.phones import PhoneRecognizer, phone_is_valid

ENGINE = PIIEngine()


def found(text: str, engine: PIIEngine = ENGINE) -> list[tuple[str, str]]:
    return [(f.entity, f.text) for f in engine.analyze(text)]


def _jwt(payload: dict[str, object]) -> str:
    def part(obj: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(payload)}.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


# ---------------------------------------------------------------------------------- dates of birth

DOB_POSITIVE = [
    ("born on 12 March 1985 in Paris", "12 March 1985"),
    ("DOB: 1985-03-12", "1985-03-12"),
    ("d.o.b. 03/12/1985", "03/12/1985"),
    ("Date of birth: 31.12.1979.", "31.12.1979"),
    ("her birthday is March 3rd, 1990", "March 3rd, 1990"),
    ("Patient (DOB 7/4/62) reports", "7/4/62"),
    ("12/03/1985 (date of birth)", "12/03/1985"),
    ("geboren am 01.02.1970", "01.02.1970"),
    ("Birthdate — Sept. 9 2001", "Sept. 9 2001"),
]


@pytest.mark.parametrize(("text", "value"), DOB_POSITIVE)
def test_date_of_birth_in_context(text: str, value: str) -> None:
    assert found(text) == [("DATE_OF_BIRTH", value)]


@pytest.mark.parametrize(
    "text",
    [
        "meeting on 2024-03-12 at noon",  # a date, no birth word: not PII
        "released 12 March 1985",
        "born 2099-01-01",  # the future
        "born 1850-01-01",  # before 1900
        "date of birth 1990-02-30",  # no such day
        "born at 2026-11-27T10:00:00",  # a timestamp, not a date
        "DOB field is version 1.2.2024",
        "born in build 12.03.19851",
    ],
)
def test_date_of_birth_negative(text: str) -> None:
    assert [f for f in ENGINE.analyze(text) if f.entity == "DATE_OF_BIRTH"] == []


def test_date_of_birth_skips_text_without_birth_words() -> None:
    assert not DateOfBirthRecognizer().may_contain("invoice dated 2024-03-12")


# ---------------------------------------------------------------------------------- secrets

SECRETS = [
    ("sk-proj-" + "Ab3dEf6hIj9kLm2nOp5q" * 2, "OPENAI_API_KEY={}"),
    ("sk-" + "T3BlbkFJ" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6", "key: {}"),
    ("sk-ant-api03-" + "x9Y8w7V6u5T4s3R2q1P0" * 3, "{}"),
    ("AKIAIOSFODNN7EXAMPLE", "aws_access_key_id = {}"),
    ("ASIAY34FZKBOKMUTVV7A", "creds {} end"),
    ("ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8", "git clone https://{}@github.com/x"),
    ("github_pat_11ABCDEFG0" + "a1b2c3d4e5" * 7, "{}"),
    ("xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", "SLACK_TOKEN: {}"),
    ("sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc", "stripe {}"),
    ("AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY", "maps key {}"),
    (_jwt({"sub": "1234567890", "name": "x"}), "Authorization: Bearer {}"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAx4\nZm9vYmFy==\n"
     "-----END RSA PRIVATE KEY-----", "key file:\n{}\n"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA", "{}"),
    ("Zx9kQ2mP7vL4nR8tW1yB", "api_key = '{}'"),
    ("9f8e7d6c5b4a39281706f5e4d3c2b1a0", 'client_secret: "{}"'),
    ("hunter2!", "my password is {}"),
    ("S3cure#Pass", "DB_PASSWORD={}"),
    ("dGhpc2lzYXRva2VuMTIzNDU2Nzg5", "Authorization: Bearer {}"),
]


@pytest.mark.parametrize(("value", "template"), SECRETS)
def test_secret_found(value: str, template: str) -> None:
    text = template.format(value)
    assert ("SECRET", value) in found(text)


@pytest.mark.parametrize(
    "text",
    [
        "the password is correct",  # a plain word
        "password: <your-password>",  # a placeholder
        "API_KEY=${OPENAI_API_KEY}",
        "token = xxxxxxxxxxxxxxxx",
        "the key point is that 42 tokens were used",
        "secret = changeme",
        "risk-assessment and task-force-alpha-bravo-charlie-delta",
        "monkey = banana",
        "api_key = abcdefghijklmnopqrstuvwxyz",  # long but no digits: a word, not a key
        "eyJhbGciOi.eyJzdWIiOi.not-a-real-token-at-all",  # JWT shape, header not JSON
        "AKIA1234",  # too short
        "a task: sk-learn is a library",
        "dask_live_demo_session_12345678901234",
    ],
)
def test_secret_negative(text: str) -> None:
    assert [f for f in ENGINE.analyze(text) if f.entity == "SECRET"] == []


def test_secret_scores_and_entropy() -> None:
    r = SecretRecognizer()
    [known] = r.find("AKIAIOSFODNN7EXAMPLE")
    [assigned] = r.find("token = Zx9kQ2mP7vL4nR8tW1yB")
    assert known.score > assigned.score >= 0.5
    assert shannon_entropy("") == 0.0
    assert shannon_entropy("aaaa") == 0.0
    assert shannon_entropy("abcd") == 2.0
    strict = SecretRecognizer(min_entropy=5.0)
    assert strict.find("token = Zx9kQ2mP7vL4nR8tW1yB") == []


def test_secret_anonymized_whole() -> None:
    text = "export OPENAI_API_KEY=sk-proj-" + "Ab3dEf6hIj9kLm2nOp5q" * 2 + " && run"
    assert ENGINE.anonymize(text, ENGINE.analyze(text)) == "export OPENAI_API_KEY=<SECRET_1> && run"


# ---------------------------------------------------------------------------------- phones


PHONES = [
    ("+1 415-555-2671", ()),
    ("+44 20 7946 0958", ()),
    ("+44 (0)20 7946 0958", ()),
    ("+33 1 42 68 53 00", ()),
    ("+49 30 901820", ()),
    ("+39 06 6982 0000", ()),
    ("+91 98765 43210", ()),
    ("+81 3-1234-5678", ()),
    ("+61 2 9374 4000", ()),
    ("+55 11 98765-4321", ()),
    ("020 7946 0958", ("GB",)),
    ("01 42 68 53 00", ("FR",)),
    ("030 901820", ("DE",)),
    ("06 6982 0000", ("IT",)),
    ("(11) 98765-4321", ("BR",)),
]


@pytest.mark.parametrize(("number", "regions"), PHONES)
def test_phone_formats(number: str, regions: tuple[str, ...]) -> None:
    engine = PIIEngine([PhoneRecognizer(regions=regions or ("US",))])
    assert found(f"call me at {number} please", engine) == [("PHONE", number)]


@pytest.mark.parametrize(
    ("candidate", "regions"),
    [(n, r or ("US",)) for n, r in PHONES]
    + [
        ("+1 415 555 267", ("US",)),
        ("+999 1234 5678", ("US",)),
        ("+0 123 4567", ("US",)),
        ("+44 1234", ("US",)),
        ("123-456-7890", ("US",)),
        ("1 800 555 0199", ("US",)),
        ("0 800 555 0199", ("GB", "US")),
        ("+39 333 123 4567", ("US",)),
        ("+7 912 345-67-89", ("US",)),
        ("06 12 34 56 78", ("FR", "DE")),
        ("(02) 9374 4000", ("AU",)),
        ("03-1234-5678", ("JP",)),
    ],
)
def test_phone_shortcut_agrees_with_phonenumbers(candidate: str, regions: tuple[str, ...]) -> None:
    def reference() -> bool:
        regs: tuple[str | None, ...] = (None,) if candidate.startswith("+") else regions
        for region in regs:
            try:
                number = phonenumbers.parse(candidate, region)
            except phonenumbers.NumberParseException:
                continue
            if phonenumbers.is_valid_number(number):
                return True
        return False

    assert phone_is_valid(candidate, regions) == reference()


def test_phone_region_checked() -> None:
    with pytest.raises(ValueError, match="region"):
        PhoneRecognizer(regions=("XX",))


def test_negative_context_lowers_score() -> None:
    plain = ENGINE.analyze("at 415-555-2671")[0]
    lowered = ENGINE.analyze("tracking 415-555-2671")
    assert lowered == [] or lowered[0].score < plain.score


# ---------------------------------------------------------------------------------- gates


def test_digit_windows() -> None:
    assert digit_windows("no digits at all") == []
    assert digit_windows("v 1.2.3 at 10:42") == []
    text = "call +1 415 555 2671 today"
    [(pos, end)] = digit_windows(text)
    assert "+1 415 555 2671" in text[pos:end]


def test_gated_recognizers_skip_cheaply_but_find_at_edges() -> None:
    assert found("4111111111111111") == [("CREDIT_CARD", "4111111111111111")]
    assert found("a@b.io") == [("EMAIL", "a@b.io")]
    assert found("x 078-05-1120") == [("US_SSN", "078-05-1120")]


# ---------------------------------------------------------------------------------- near-misses


@pytest.mark.parametrize(
    "text",
    [
        "tracking 4202 5021 0386 1905 1333 68",  # USPS: card-like groups that go on
        "UPS 1Z999AA10123456784 shipped",
        "FedEx tracking 748912345678",
        "order no. 4155552671",  # a bare digit run right after an identifier word
        "Order #123-45-6789",
        "build 10.8.5.5",
        "version 2.14.0-rc1 at 2026-11-27T10:00:00Z",
        "ts 1732700000123",
        "id 550e8400-e29b-41d4-a716-446655440000",
        "lat 33.9883, 153.3237",
        "ISBN 978-3-16-148410-0",
        "commit 3f2a9c1b7d4e5f60718293a4b5c6d7e8f9a0b1c2",
        "ssh admin@150.142.95.173 -p 22",  # an IP address, not a phone number
    ],
)
def test_near_misses(text: str) -> None:
    assert [
        (f.entity, f.text) for f in ENGINE.analyze(text) if f.entity != "IP_ADDRESS"
    ] == []


def test_values_glued_to_neighbours() -> None:
    assert found("phone: +49-30-122327 4340 9978 3715 1208") == [("PHONE", "+49-30-122327")]
    assert found("card 4111 1111 1111 1111 12/29") == [("CREDIT_CARD", "4111 1111 1111 1111")]
    two = "cards 4111 1111 1111 1111 5500 0000 0000 0004"
    assert found(two) == [("CREDIT_CARD", "4111 1111 1111 1111"),
                          ("CREDIT_CARD", "5500 0000 0000 0004")]
    assert found("61 3024-824094-6524") == [("CREDIT_CARD", "3024-824094-6524")] or found(
        "61 3024-824094-6524") == []  # Luhn decides; never a phone
    iban = "IBAN DE00370400440532013000 IBAN GB82 WEST 1234 5698 7654 32"
    assert found(iban) == [("IBAN", "GB82 WEST 1234 5698 7654 32")]
    assert found("Visa 4111111111111111.5 units") == []
    ip = found("Ask 10.0.0.1 then born on 1 May 1990")
    assert ip == [("IP_ADDRESS", "10.0.0.1"), ("DATE_OF_BIRTH", "1 May 1990")]


# ------------------------------------------------------------- text the project did not write
# Cases from presidio-evaluator's generator (national phone formats of 30 countries, values in
# exported text with escaped line breaks) and from support-style notes.


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("fax 650-752-7354x549", "650-752-7354x549"),  # an extension is part of the number
        ("(415) 555-2671 ext. 12 after 5pm", "(415) 555-2671 ext. 12"),
        ("Office\\,781-618-4959-Fax", "781-618-4959"),  # a trailing "-Fax"
        ("desk 0494 26 46 14 office", "0494 26 46 14"),  # Belgium, no country code
        ("I didn't get any message on my registered 89 97 11.", "89 97 11"),  # Greenland
        ("Desk: (07700)034176", "(07700)034176"),
        ("call 21 259 903 5696", "21 259 903 5696"),
        ("Fax: +46 (0)487 870 65", "+46 (0)487 870 65"),
        ("Can someone call me on 67 501 36 56?", "67 501 36 56"),
        ("How can we reach you? You can call 0372 9143663", "0372 9143663"),
        ("Phone:\\n070 4493 5104\\n", "070 4493 5104"),  # an escaped line break before it
        ("at 795 2525 I'd like to join", "795 2525"),
        ("3987542834-Fax", "3987542834"),  # a bare run with a phone word after it
    ],
)
def test_phones_of_any_country(text: str, value: str) -> None:
    assert found(text) == [("PHONE", value)]


@pytest.mark.parametrize(
    "text",
    [
        "meeting on 2009-08-03",  # an ISO date
        "due 03.08.2009 or 12/03/85",
        "He lives at 932 3684 Court Street",  # building and street numbers
        "1159 3212 40th Street",
        "Apt. 380 34253 37 Rue de Libya",
        "Suite 604 12 55",
        "pages 123-456, years 1990-2000",
        "ISBN 978-3-16-148410-0",
        "pi is 3.14159, lat 33.9883",
        "EUR 12 500 000 and 1.234.567 units",
        "we sold 8 336 817 copies",
        "room 12, ext 34",
        "order no. 123 456 7890",  # laid out like a phone, not validated, identifier word
    ],
)
def test_not_phones(text: str) -> None:
    assert [f for f in ENGINE.analyze(text) if f.entity == "PHONE"] == []


@pytest.mark.parametrize(
    ("text", "entity", "value"),
    [
        ("the order 374-80-2211", "US_SSN", "374-80-2211"),
        ("says invoice 56.166.161.30", "IP_ADDRESS", "56.166.161.30"),
        ("order +33 1 96 72 72 42", "PHONE", "+33 1 96 72 72 42"),
        ("order no. 415-555-2671", "PHONE", "415-555-2671"),
        ("ticket 4111 1111 1111 1111", "CREDIT_CARD", "4111 1111 1111 1111"),
    ],
)
def test_identifier_words_do_not_hide_values_that_identify_themselves(
    text: str, entity: str, value: str
) -> None:
    assert found(text) == [(entity, value)]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("card 180092617964050", "180092617964050"),  # JCB, 15 digits
        ("card 213134127567717", "213134127567717"),
        ("Please block card no 060448499479", "060448499479"),  # Maestro, 12 digits
        ("my card 571144269420 is lost", "571144269420"),
        ("cc 6584847513500046", "6584847513500046"),  # Discover 65
        ("Number is 4777631706690743917", "4777631706690743917"),  # Visa, 19 digits
    ],
)
def test_more_card_lengths(text: str, value: str) -> None:
    assert found(text) == [("CREDIT_CARD", value)]


def test_twelve_digits_need_a_card_word() -> None:
    assert found("FedEx 571144269420 shipped") == []
    assert found("order 571144269420") == []


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("iban gb24utku39720300165632", "gb24utku39720300165632"),
        ("compte fr76 3000 6000 0112 3456 7890 189 merci", "fr76 3000 6000 0112 3456 7890 189"),
        ("Website:\\nGB82WEST12345698765432", "GB82WEST12345698765432"),
    ],
)
def test_iban_in_any_case(text: str, value: str) -> None:
    assert found(text) == [("IBAN", value)]


def test_escaped_line_breaks_separate_values() -> None:
    text = "E-mail:\\nBarabasPeterke@cuvox.de\\n\\nWebsite:\\nhttp://SeekStrategy.tn/\\n"
    assert found(text) == [("EMAIL", "BarabasPeterke@cuvox.de"),
                           ("URL", "http://SeekStrategy.tn/")]
    [email] = [f for f in ENGINE.analyze(text) if f.entity == "EMAIL"]
    assert text[email.start : email.end] == email.text
