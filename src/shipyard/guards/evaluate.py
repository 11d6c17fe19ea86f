"""Score guards offline over a labelled corpus: detection per attack category, false
positives per benign kind, with examples. The model layers run in batches (not one request
at a time), so a corpus of thousands takes minutes, not hours.

>>> from shipyard.guards.corpus import CorpusItem
>>> from shipyard.guards.inputs import LengthGuard
>>> items = [CorpusItem("a", "x" * 50, "attack", "spam"), CorpusItem("b", "hi", "benign", "chat")]
>>> result = evaluate([LengthGuard(max_chars=10)], items)
>>> result.detection("spam"), result.false_positive_rate()
(1.0, 0.0)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shipyard.guards.base import Guard, Subject, Verdict
from shipyard.guards.corpus import CorpusItem

__all__ = ["Evaluation", "decide_many", "evaluate"]

_EXAMPLES = 5


def decide_many(guard: Guard, texts: Sequence[str],
                progress: Callable[[int], None] | None = None) -> list[Verdict]:
    """The guard's verdicts on `texts`, with no time limit: `guard.decide_many` when it has
    one (model guards batch their forward passes), else its `check` one text at a time."""
    batched = getattr(guard, "decide_many", None)
    if callable(batched):
        verdicts: list[Verdict] = batched(list(texts), progress=progress)
        return verdicts
    out: list[Verdict] = []
    for text in texts:
        result: Any = guard.check(Subject(text))
        if inspect.isawaitable(result):
            raise TypeError(f"guard '{guard.name}' answers asynchronously and has no "
                            "decide_many(); score it through a gateway instead")
        out.append(result)
        if progress is not None:
            progress(1)
    return out


@dataclass
class Evaluation:
    """Which items a guard list stopped (blocked or escalated)."""

    items: list[CorpusItem]
    stopped: list[bool]
    by_guard: list[str] = field(default_factory=list)  # the first guard that stopped each

    def _rows(self, label: str, categories: Sequence[str] | None) -> list[int]:
        return [i for i, item in enumerate(self.items) if item.label == label and (
            categories is None or item.category in categories)]

    def detection(self, *categories: str) -> float:
        rows = self._rows("attack", categories or None)
        return sum(self.stopped[i] for i in rows) / len(rows) if rows else float("nan")

    def false_positive_rate(self, *kinds: str) -> float:
        rows = self._rows("benign", kinds or None)
        return sum(self.stopped[i] for i in rows) / len(rows) if rows else float("nan")

    def summary(self) -> dict[str, Any]:
        attacks: dict[str, Any] = {}
        for category in sorted({i.category for i in self.items if i.label == "attack"}):
            rows = self._rows("attack", [category])
            missed = [self.items[i].text for i in rows if not self.stopped[i]]
            attacks[category] = {"attacks": len(rows), "stopped": len(rows) - len(missed),
                                 "detection_rate": round(self.detection(category), 4),
                                 "missed_examples": [t[:200] for t in missed[:_EXAMPLES]]}
        benign: dict[str, Any] = {}
        for kind in sorted({i.category for i in self.items if i.label == "benign"}):
            rows = self._rows("benign", [kind])
            wrong = [(self.items[i].text, self.by_guard[i]) for i in rows if self.stopped[i]]
            benign[kind] = {"requests": len(rows), "wrongly_blocked": len(wrong),
                            "false_positive_rate": round(self.false_positive_rate(kind), 4),
                            "examples": [{"text": t[:200], "guard": g}
                                         for t, g in wrong[:_EXAMPLES]]}
        return {"false_positive_rate": round(self.false_positive_rate(), 4),
                "attacks": attacks, "benign": benign}


def evaluate(guards: Sequence[Guard], items: Sequence[CorpusItem], *,
             progress: Callable[[int], None] | None = None) -> Evaluation:
    """Run every guard on every item's text; an item is stopped when a guard blocks or
    escalates it (a fix, such as PII replaced by a placeholder, lets it through)."""
    texts = [item.text for item in items]
    stopped = [False] * len(items)
    by_guard = [""] * len(items)
    for guard in guards:
        todo = [i for i in range(len(items)) if not stopped[i]]
        verdicts = decide_many(guard, [texts[i] for i in todo], progress)
        for i, verdict in zip(todo, verdicts, strict=True):
            if verdict.action in ("block", "escalate"):
                stopped[i] = True
                by_guard[i] = guard.name
    return Evaluation(list(items), stopped, by_guard)
