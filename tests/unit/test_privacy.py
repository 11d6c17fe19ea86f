"""PII recognizers, the engine (filters, allow/deny lists, overlaps) and the operators."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import shipyard.privacy as privacy
from shipyard.privacy import (
    Finding,
    KeyedHash,
    Mask,
    PhoneRecognizer,
    PIIEngine,
    Redact,
    Replace,
    resolve_overlaps,
)

ENGINE = PIIEngine()


def found(text: str, engine: PIIEngine = ENGINE) -> list[tuple[str, str]]:
    return [(f.entity, f.text) for f in engine.analyze(text)]


POSITIVE = [
    # EMAIL
    ("EMAIL", "alice@example.com", "{}"),
    ("EMAIL", "bob.smith+tag@mail.example.co.uk", "Write to {} today."),
    ("EMAIL", "x_y-z@sub.domain.io", "邮箱{}谢谢"),
    ("EMAIL", "alice@example.com", "Ünïcødé → {}."),
    # PHONE
    ("PHONE", "+1 (415) 555-2671", "call {} now"),
    ("PHONE", "(415) 555-2671", "{}"),
    ("PHONE", "415.555.2671", "tél: {} ☎"),
    ("PHONE", "1-800-555-0199", "hotline {}"),
    ("PHONE", "+44 20 7946 0958", "London office {}"),
    ("PHONE", "+49 30 901820", "Berlin {}."),
    ("PHONE", "+14155552671", "tel:{}"),
    ("PHONE", "4155552671", "phone {}"),
    # CREDIT_CARD
    ("CREDIT_CARD", "4111 1111 1111 1111", "{}"),
    ("CREDIT_CARD", "5500-0000-0000-0004", "card: {}, thanks"),
    ("CREDIT_CARD", "378282246310005", "Amex {}"),
    ("CREDIT_CARD", "6011111111111117", "«{}»"),
    ("CREDIT_CARD", "3782 822463 10005", "{}"),
    # IBAN
    ("IBAN", "DE89 3704 0044 0532 0130 00", "IBAN {} ok"),
    ("IBAN", "GB82WEST12345698765432", "{}"),
    ("IBAN", "GB82 WEST 1234 5698 7654 32", "pay {} NOW"),
    ("IBAN", "FR1420041010050500013M02606", "compte: {} €"),
    ("IBAN", "NL91ABNA0417164300", "{}."),
    # US_SSN
    ("US_SSN", "078-05-1120", "{}"),
    ("US_SSN", "123-45-6788", "SSN: {}"),
    ("US_SSN", "219 09 9999", "social security number {}"),
    ("US_SSN", "219099999", "ssn {}"),
    # IP_ADDRESS
    ("IP_ADDRESS", "10.0.0.1", "host {}."),
    ("IP_ADDRESS", "192.168.1.254", "{}"),
    ("IP_ADDRESS", "2001:db8::ff00:42:8329", "v6 {} ✓"),
    ("IP_ADDRESS", "fe80::1", "{}"),
    ("IP_ADDRESS", "::ffff:192.0.2.1", "mapped {}"),
    # URL
    ("URL", "https://example.com/a?b=1", "see {})."),
    ("URL", "http://sub.example.org:8080/path#frag", "{}"),
    ("URL", "www.example.org", "visit {}, then"),
    # MAC_ADDRESS
    ("MAC_ADDRESS", "00:1A:2B:3C:4D:5E", "mac {}"),
    ("MAC_ADDRESS", "00-1a-2b-3c-4d-5e", "{}"),
    ("MAC_ADDRESS", "0011.2233.4455", "device {}"),
]


@pytest.mark.parametrize(("entity", "value", "template"), POSITIVE)
def test_positive(entity: str, value: str, template: str) -> None:
    text = template.format(value)
    findings = ENGINE.analyze(text)
    assert [(f.entity, f.text) for f in findings] == [(entity, value)]
    f = findings[0]
    assert text[f.start : f.end] == value
    assert 0.5 <= f.score <= 1.0
    assert f.recognizer


NEGATIVE = [
    "Order #123456789012",
    "Order #1234567890123",
    "at 2026-11-27T10:00:00 done",
    "2026-11-27 10:00:00",
    "v1.2.3.4",
    "release 1.2.3.4-rc1",
    "version 10.2.3",
    "999.1.1.1",
    "256.1.1.1",
    "SSN 000-12-3456",
    "SSN 666-12-3456",
    "SSN 900-12-3456",
    "SSN 123-00-4567",
    "SSN 123-45-0000",
    "4111 1111 1111 1112",
    "4111111111111112",
    "4111 1111 11 11 1111",
    "DE89 3704 0044 0532 0130 01",
    "GB82WEST12345698765433",
    "XX89370400440532013000",
    "build 20261127100000",
    "ts 1732700000",
    "12:30:45",
    "a :: b and std::vector",
    "price 1,234,567.89",
    "id 550e8400-e29b-41d4-a716-446655440000",
    "lat 37.7749, -122.4194",
    "not an email: alice@localhost",
    "ref 2026.11.27",
    "4155552671",
    "219099999",
    "",
]


@pytest.mark.parametrize("text", NEGATIVE)
def test_negative(text: str) -> None:
    assert found(text) == []


def test_context_raises_score() -> None:
    plain = ENGINE.analyze("at 415-555-2671")[0]
    boosted = ENGINE.analyze("phone: 415-555-2671")[0]
    assert boosted.score > plain.score


def test_phone_default_region() -> None:
    uk = PIIEngine([PhoneRecognizer(regions=("GB",))])
    assert found("ring 020 7946 0958", uk) == [("PHONE", "020 7946 0958")]
    # Not valid in the default region (US), but laid out like a phone number: still reported,
    # at a lower score; `strict` reports only numbers a configured region validates.
    [shaped] = ENGINE.analyze("at 020 7946 0958")
    [valid] = uk.analyze("at 020 7946 0958")
    assert shaped.entity == "PHONE" and shaped.score < valid.score
    strict = PIIEngine([PhoneRecognizer(regions=("US",), strict=True)])
    assert found("ring 020 7946 0958", strict) == []


def test_several_entities_in_order() -> None:
    text = "alice@example.com, 10.0.0.1 and card 4111-1111-1111-1111"
    assert found(text) == [
        ("EMAIL", "alice@example.com"),
        ("IP_ADDRESS", "10.0.0.1"),
        ("CREDIT_CARD", "4111-1111-1111-1111"),
    ]


def test_entities_filter() -> None:
    engine = PIIEngine(entities={"EMAIL"})
    assert found("alice@example.com at 10.0.0.1", engine) == [("EMAIL", "alice@example.com")]


def test_allow_list() -> None:
    engine = PIIEngine(allow=["Support@Example.com"])
    text = "support@example.com or bob@example.com"
    assert found(text, engine) == [("EMAIL", "bob@example.com")]


def test_deny_list() -> None:
    engine = PIIEngine(deny=["Project Falcon"])
    assert found("about project falcon, alice@example.com", engine) == [
        ("DENY_LIST", "project falcon"),
        ("EMAIL", "alice@example.com"),
    ]
    assert found("about project falconry", engine) == []


def test_min_score() -> None:
    assert found("at 10.0.0.1", PIIEngine(min_score=0.9)) == []


def test_overlaps_resolved_by_score_then_length() -> None:
    a = Finding("A", 0, 10, 0.6, "r", "x" * 10)
    b = Finding("B", 5, 8, 0.9, "r", "x" * 3)
    c = Finding("C", 9, 20, 0.9, "r", "x" * 11)
    d = Finding("D", 12, 14, 0.9, "r", "x" * 2)
    assert resolve_overlaps([a, b, c, d]) == [b, c]


def test_card_wins_over_phone_fragment() -> None:
    assert found("4111 1111 1111 1111") == [("CREDIT_CARD", "4111 1111 1111 1111")]


def test_redact() -> None:
    text = "mail alice@example.com now"
    assert ENGINE.anonymize(text, ENGINE.analyze(text), Redact()) == "mail [REDACTED] now"
    assert ENGINE.anonymize(text, ENGINE.analyze(text), Redact(placeholder="")) == "mail  now"


def test_mask() -> None:
    text = "card 4111 1111 1111 1111!"
    assert ENGINE.anonymize(text, ENGINE.analyze(text), Mask()) == "card **** **** **** 1111!"
    masked = ENGINE.anonymize(text, ENGINE.analyze(text), Mask(keep_last=2, char="#"))
    assert masked == "card #### #### #### ##11!"
    with pytest.raises(ValueError, match="char"):
        Mask(char="**")


def test_replace_numbers_values() -> None:
    text = "a@example.com, b@example.com, a@example.com, 10.0.0.1"
    out = ENGINE.anonymize(text, ENGINE.analyze(text), Replace())
    assert out == "<EMAIL_1>, <EMAIL_2>, <EMAIL_1>, <IP_ADDRESS_1>"
    assert ENGINE.anonymize(text, ENGINE.analyze(text)) == out


def test_keyed_hash_stable_per_key() -> None:
    text = "a@example.com and a@example.com"
    findings = ENGINE.analyze(text)
    one = ENGINE.anonymize(text, findings, KeyedHash(b"k" * 32))
    again = ENGINE.anonymize(text, findings, KeyedHash(b"k" * 32))
    other = ENGINE.anonymize(text, findings, KeyedHash(b"j" * 32))
    assert one == again != other
    first, second = one.split(" and ")
    assert first == second and len(first) == 16
    int(first, 16)
    # Pinned: the digest must not change between releases, or stored joins break.
    assert KeyedHash("secret").replace_one(findings[0]) == KeyedHash(b"secret").replace_one(
        findings[0]
    )
    with pytest.raises(ValueError, match="empty"):
        KeyedHash(b"")


def test_anonymize_without_findings_is_identity() -> None:
    assert ENGINE.anonymize("nothing here", []) == "nothing here"


def test_all_is_sorted() -> None:
    assert privacy.__all__ == sorted(privacy.__all__)
    for name in privacy.__all__:
        assert getattr(privacy, name) is not None


def test_the_documented_context_word_examples() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "privacy.md").read_text()
    section = doc.split("### Context words", 1)[1].split("### Phone numbers", 1)[0]
    lines = re.findall(
        r'engine\.analyze\("([^"]*)"\)\s+# (nothing|([A-Z_]+), (?:score )?([0-9.]+))', section)
    assert len(lines) >= 6
    for text, verdict, entity, score in lines:
        found = ENGINE.analyze(text)
        if verdict == "nothing":
            assert found == [], text
        else:
            assert [(f.entity, round(f.score, 2)) for f in found] == [(entity, float(score))], text
