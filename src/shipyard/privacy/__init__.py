"""Privacy: PII recognizers, the PII engine and anonymization operators.

>>> from shipyard.privacy import PIIEngine, Mask
>>> engine = PIIEngine()
>>> text = "card 4111 1111 1111 1111"
>>> engine.anonymize(text, engine.analyze(text), Mask())
'card **** **** **** 1111'
"""

from __future__ import annotations

from shipyard.privacy.engine import PIIEngine, resolve_overlaps
from shipyard.privacy.ner import SpacyRecognizer, ner_recognizer
from shipyard.privacy.operators import KeyedHash, Mask, Operator, Redact, Replace
from shipyard.privacy.recognizers import (
    BUILTIN_RECOGNIZERS,
    DateOfBirthRecognizer,
    DenyListRecognizer,
    Finding,
    PhoneRecognizer,
    Recognizer,
    SecretRecognizer,
    default_recognizers,
)

__all__ = [
    "BUILTIN_RECOGNIZERS",
    "DateOfBirthRecognizer",
    "DenyListRecognizer",
    "Finding",
    "KeyedHash",
    "Mask",
    "Operator",
    "PIIEngine",
    "PhoneRecognizer",
    "Recognizer",
    "Redact",
    "Replace",
    "SecretRecognizer",
    "SpacyRecognizer",
    "default_recognizers",
    "ner_recognizer",
    "resolve_overlaps",
]
