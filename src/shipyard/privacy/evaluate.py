"""Score a PII engine on a labelled corpus: precision, recall and F2 per entity type.

A finding counts as a true positive when its entity type and span equal a labelled span
exactly; every other finding of a labelled type is a false positive, and every labelled span
not found is a false negative. F2 weighs recall twice as much as precision: a missed value
leaks, a spurious one only costs a placeholder.

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
from typing import Any, Protocol

from shipyard.privacy.corpus import ENTITIES, Sample
from shipyard.privacy.recognizers import Finding

__all__ = ["PATTERN_ENTITIES", "EntityScore", "EvaluationReport", "evaluate", "render_table"]

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
        for entity, _, _ in got & gold:
            scores[entity].tp += 1
        for entity, start, end in got - gold:
            scores[entity].fp += 1
            if len(report.false_positives) < keep_errors:
                report.false_positives.append((entity, text[start:end], text))
        for entity, start, end in gold - got:
            scores[entity].fn += 1
            if len(report.false_negatives) < keep_errors:
                report.false_negatives.append((entity, text[start:end], text))
    return report


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
