"""The data pipeline's PII prefilter never changes what the engine finds."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from shipyard.data.config import PiiSpec
from shipyard.data.pii import ColumnProtector, candidate_entities, whole_number
from shipyard.privacy import PIIEngine, Replace

SAMPLES = [
    "mail bob.smith+x@example.co.uk now", "see https://example.com/a?b=1 or www.example.org",
    "IBAN GB82 WEST 1234 5698 7654 32 please", "DE89370400440532013000",
    "card 4111 1111 1111 1111 exp 12/29", "ssn 123-45-6789", "ssn 078051120",
    "call +1 415-555-0123", "tel (415) 555-0123 ext 7", "+44 20 7946 0958",
    "ip 192.168.1.20 and 10.0.0.1", "v6 2001:db8::8a2e:370:7334 and ::1",
    "mac 00:1A:2B:3C:4D:5E", "mac aa-bb-cc-dd-ee-ff", "mac 0a1b.2c3d.4e5f",
    "order 12345 shipped", "version 1.2.3.4-rc1", "at 12:30 the meeting", "no digits here",
    "", "a:b", "x-y-z", "call me maybe", "4111111111111111", "año 2024 café",
]


def _random_texts(n: int) -> list[str]:
    rng = random.Random(3)
    pieces = [*SAMPLES, "the", "and", "12", "7", "@", ":", "-", ".", "www", "ab", "0x1F", "555"]
    return [" ".join(rng.choice(pieces) for _ in range(rng.randrange(1, 6))) for _ in range(n)]


@pytest.mark.parametrize("prefilter", [True, False])
def test_same_result_as_the_engine_alone(prefilter: bool) -> None:
    engine = PIIEngine()
    protector = ColumnProtector(PiiSpec(columns=["t"], mode="pseudonymize", prefilter=prefilter))
    assert protector.prefilter is prefilter
    for text in SAMPLES + _random_texts(1500):
        findings = engine.analyze(text)
        # A declared column's value that is nothing but a number is replaced whole.
        expected = ("<NUMBER_1>" if not findings and whole_number(text)
                    else engine.anonymize(text, findings, Replace()))
        assert protector.protect_row({"t": text}, ["t"])["t"] == expected, text
    if prefilter:
        assert protector.skipped > 0


def test_candidates() -> None:
    assert candidate_entities("nothing to see") == frozenset()
    assert candidate_entities("bob@example.com") == {"EMAIL"}
    assert candidate_entities("+1 415-555-0123") == {"IBAN", "IP_ADDRESS", "PHONE", "US_SSN"}
    assert "MAC_ADDRESS" in candidate_entities("aa-bb-cc-dd-ee-ff")


def test_a_deny_list_is_never_skipped_by_the_prefilter() -> None:
    protector = ColumnProtector(PiiSpec(columns=["t"], deny=["Project Falcon"]))
    assert protector.protect_row({"t": "about project falcon"}, ["t"])["t"] == "about [REDACTED]"
    assert protector.skipped == 0


def test_other_recognizers_answer_for_themselves() -> None:
    protector = ColumnProtector(PiiSpec(columns=["t"]))
    row = {"t": "my api token is sk-proj-AbCdEfGhIjKlMnOpQrStUvWx"}
    assert "sk-proj" not in protector.protect_row(row, ["t"])["t"]
    assert protector.protect_row({"t": "born on 4 May 1990"}, ["t"])["t"] != "born on 4 May 1990"
    assert protector.protect_row({"t": "nothing personal here"}, ["t"])["t"] == (
        "nothing personal here")
    assert protector.skipped == 1


@pytest.mark.parametrize("mode", ["pseudonymize", "redact", "mask"])
def test_whole_columns_give_what_rows_give(mode: str) -> None:
    texts = SAMPLES + _random_texts(800) + ["née 1 May 1990", "Zoë: token sk-abc", None]
    phones = ["+1 415 555 0100", "555-0199", "", None, "garbage"] * (len(texts) // 5 + 1)
    spec = PiiSpec(columns=["t"], value_columns={"phone": "PHONE"}, mode=mode)
    by_row = ColumnProtector(spec)
    expected = [by_row.protect_row({"t": t, "phone": p}, ["t"])
                for t, p in zip(texts, phones, strict=False)]
    by_column = ColumnProtector(spec)
    columns = {"t": list(texts), "phone": phones[: len(texts)]}
    by_column.protect_columns(columns, {"t": pa.array(texts, type=pa.string()),
                                        "phone": pa.array(columns["phone"])})
    assert [{"t": t, "phone": p} for t, p in zip(columns["t"], columns["phone"],
                                                  strict=True)] == expected
    assert by_column.stats() == by_row.stats()


def test_a_declared_value_column_keeps_no_value() -> None:
    # 20,000 phone numbers as people type them: valid, foreign, too short, letters, extensions.
    rng = random.Random(8)
    forms = ["({}) 555-{:04d}", "+44 20 7946 {1:04d}", "555-{1:04d}", "{1}", "call me {1}",
             "{0}-555-{1:04d} x12", "n/a?", "  {1} "]
    values = [rng.choice(forms).format(rng.randrange(200, 999), rng.randrange(10_000))
              for _ in range(20_000)]
    protector = ColumnProtector(PiiSpec(value_columns={"phone": "PHONE"}, mode="redact"))
    columns = {"phone": list(values)}
    protector.protect_columns(columns, {"phone": pa.array(values)})
    assert set(columns["phone"]) == {"[REDACTED]"}
    assert protector.found["PHONE"] == 20_000
