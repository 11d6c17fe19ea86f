"""Score a PII engine on a labelled corpus: precision, recall and F2 per entity type.

Two ways to match. `exact`: a finding counts as a true positive when its entity type and span
equal a labelled span; every other finding of a labelled type is a false positive, and every
labelled span not found is a false negative. `overlap` (for corpora labelled by others, whose
span edges follow their own conventions): a labelled span is found when a finding of its type
overlaps it, and a finding is spurious when it overlaps no labelled span of its type. F2 weighs
recall twice as much as precision: a missed value leaks, a spurious one only costs a
placeholder.

`read_corpus(path)` reads a labelled file, one JSON object per line (other keys are ignored):

    {"text": "call +44 20 7946 0958", "spans": [{"entity": "PHONE", "start": 5, "end": 21}]}

    >>> from shipyard.privacy import PIIEngine
    >>> from shipyard.privacy.corpus import generate_corpus   # needs shipyard[pii-eval]
    >>> report = evaluate(PIIEngine(), generate_corpus(500))   # doctest: +SKIP
    >>> report.scores["EMAIL"].recall >= 0.99                  # doctest: +SKIP
    True
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import orjson

from shipyard.errors import ConfigError
from shipyard.privacy.corpus import ENTITIES, LabelledSpan, Sample
from shipyard.privacy.recognizers import Finding

__all__ = ["PATTERN_ENTITIES", "EntityScore", "EvaluationReport", "Match", "evaluate",
           "read_corpus", "render_table"]

Match = Literal["exact", "overlap"]

# The entities with accuracy targets (recall >= 0.99, precision >= 0.95).
PATTERN_ENTITIES = ("CREDIT_CARD", "EMAIL", "IBAN", "IP_ADDRESS", "PHONE", "US_SSN")


class Analyzer(Protocol):
    def analyze(self, text: str) -> list[Finding]: ...


@dataclass
class EntityScore:
    """Counts and ratios for one entity type; ratios are 1.0 when there is nothing to count."""

    entity: str
    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def support(self) -> int:
        return self.tp + self.fn

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f2(self) -> float:
        p, r = self.precision, self.recall
        return 5 * p * r / (4 * p + r) if p + r else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "entity": self.entity,
            "support": self.support,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "precision": round(self.precision, 4),
            "recall": round(self.recall, 4),
            "f2": round(self.f2, 4),
        }


@dataclass
class EvaluationReport:
    """Scores per entity, plus the examples of errors (at most `keep_errors` of each kind)."""

    samples: int
    chars: int
    seconds: float
    scores: dict[str, EntityScore]
    false_positives: list[tuple[str, str, str]] = field(default_factory=list)  # entity, value, text
    false_negatives: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def micro(self) -> EntityScore:
        total = EntityScore("ALL")
        for s in self.scores.values():
            total.tp, total.fp, total.fn = total.tp + s.tp, total.fp + s.fp, total.fn + s.fn
        return total

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "chars": self.chars,
            "seconds": round(self.seconds, 4),
            "entities": [s.to_dict() for s in self.scores.values()],
            "all": self.micro.to_dict(),
        }


def evaluate(
    engine: Analyzer,
    samples: Sequence[Sample],
    *,
    entities: Iterable[str] = ENTITIES,
    keep_errors: int = 20,
    match: Match = "exact",
) -> EvaluationReport:
    """Run `engine.analyze` on every sample and count matches per entity type.

    Findings of types outside `entities` (e.g. PERSON from a NER backend) are ignored.
    """
    wanted = tuple(sorted(set(entities)))
    scores = {e: EntityScore(e) for e in wanted}
    report = EvaluationReport(len(samples), 0, 0.0, scores)
    started = time.perf_counter()
    results = [engine.analyze(s.text) for s in samples]
    report.seconds = time.perf_counter() - started
    for sample, findings in zip(samples, results, strict=True):
        text = sample.text
        report.chars += len(text)
        gold = {(s.entity, s.start, s.end) for s in sample.spans if s.entity in scores}
        got = {(f.entity, f.start, f.end) for f in findings if f.entity in scores}
        if match == "exact":
            hits = got & gold
            spurious, missed = got - gold, gold - got
        else:
            hits = {g for g in gold if any(_overlap(g, f) for f in got)}
            spurious = {f for f in got if not any(_overlap(g, f) for g in gold)}
            missed = gold - hits
        for entity, _, _ in hits:
            scores[entity].tp += 1
        for entity, start, end in sorted(spurious, key=lambda x: x[1]):
            scores[entity].fp += 1
            if len(report.false_positives) < keep_errors:
                report.false_positives.append((entity, text[start:end], text))
        for entity, start, end in sorted(missed, key=lambda x: x[1]):
            scores[entity].fn += 1
            if len(report.false_negatives) < keep_errors:
                report.false_negatives.append((entity, text[start:end], text))
    return report


def _overlap(a: tuple[str, int, int], b: tuple[str, int, int]) -> bool:
    return a[0] == b[0] and a[1] < b[2] and b[1] < a[2]


def read_corpus(path: str | Path) -> list[Sample]:
    """Labelled samples from a JSONL file (see the module docstring for the format).

    Raises `ConfigError` naming the line, the field and the fix for anything malformed: not
    JSON, no `text`, a span without `entity`/`start`/`end`, offsets outside the text.
    """
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"Corpus file '{file}' cannot be read ({exc.strerror or exc}); "
                          "check the path.") from None
    example = ('{"text": "call +44 20 7946 0958", "spans": [{"entity": "PHONE", "start": 5, '
               '"end": 21}]}')
    samples: list[Sample] = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"Corpus file '{file}' line {number}"
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"{where} is not valid JSON ({exc}); write one object per line, "
                              f"e.g. {example}") from None
        text = row.get("text") if isinstance(row, dict) else None
        if not isinstance(text, str):
            raise ConfigError(f"{where} has no string 'text' (got {type(text).__name__}); "
                              f"write e.g. {example}")
        spans = row.get("spans", [])
        if not isinstance(spans, list):
            raise ConfigError(f"{where}: 'spans' is {type(spans).__name__}; it must be a list "
                              "of {\"entity\", \"start\", \"end\"} objects.")
        labelled: list[LabelledSpan] = []
        for i, span in enumerate(spans):
            ok = (isinstance(span, dict) and isinstance(span.get("entity"), str)
                  and all(type(span.get(k)) is int for k in ("start", "end")))
            if not ok:
                raise ConfigError(f"{where}: spans[{i}] is {span!r}; it must be an object with "
                                  "a string 'entity' and integer 'start' and 'end' (character "
                                  "offsets, end exclusive).")
            start, end = span["start"], span["end"]
            if not 0 <= start < end <= len(text):
                raise ConfigError(f"{where}: spans[{i}] runs from {start} to {end}, outside the "
                                  f"text of {len(text)} characters; offsets count characters "
                                  "from 0, end exclusive.")
            labelled.append(LabelledSpan(span["entity"], start, end))
        samples.append(Sample(text, tuple(labelled)))
    if not samples:
        raise ConfigError(f"Corpus file '{file}' holds no samples; write one JSON object per "
                          f"line, e.g. {example}")
    return samples


def render_table(report: EvaluationReport) -> str:
    """The scores as a Markdown table (the one in docs/privacy.md)."""
    lines = [
        "| entity | support | precision | recall | F2 |",
        "|---|---:|---:|---:|---:|",
    ]
    for s in [*report.scores.values(), report.micro]:
        name = "**all**" if s.entity == "ALL" else f"`{s.entity}`"
        lines.append(
            f"| {name} | {s.support} | {s.precision:.4f} | {s.recall:.4f} | {s.f2:.4f} |"
        )
    return "\n".join(lines)
