"""`shipyard eval --metric grounding`: the grounding guard's scoring, per row's context."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from shipyard.errors import InvalidRequest
from shipyard.guards.base import Subject
from shipyard.guards.grounding import GroundingGuard
from shipyard.lifecycle.datasets import from_file
from shipyard.lifecycle.evaluate import TEXT_METRICS, evaluate_text

CONTEXT = ("Refunds are issued within 14 days of receiving the returned item. "
           "Orders above 50 euros ship free within the European Union.")
SUPPORTED = "Refunds are issued within 14 days of receiving the returned item."
UNSUPPORTED = "Refunds are issued within 30 days. Every customer gets a free umbrella gift."


def test_grounding_scores_supported_and_unsupported_answers(tmp_path: Path) -> None:
    assert "grounding" in TEXT_METRICS
    path = tmp_path / "rag.jsonl"
    rows = [{"input": "q1", "expected": "", "context": CONTEXT},
            {"input": "q2", "expected": "", "context": CONTEXT},
            {"input": "q3", "expected": "", "context": CONTEXT}]
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in rows))
    data = from_file(path)
    answers = {"q1": SUPPORTED, "q2": UNSUPPORTED,
               "q3": f"{SUPPORTED} Every customer gets a free umbrella gift."}
    result = evaluate_text(answers.__getitem__, data.inputs, data.expected,
                           metrics=["grounding"], contexts=data.context)
    # q1 fully supported (1), q2 none of its two claims (0), q3 one of two (0.5).
    assert result["grounding"] == pytest.approx((1 + 0 + 0.5) / 3)
    # The same judgement as the guard: it blocks exactly the answers scored below 1.
    guard = GroundingGuard(action="block")
    for question, answer in answers.items():
        verdict = guard.check(Subject(answer, "output", context=[CONTEXT]))
        assert (verdict.action == "allow") == (question == "q1")


def test_rows_without_context_or_claims_are_not_scored() -> None:
    answers: dict[str, Any] = {"a": SUPPORTED, "b": "Thanks!", "c": UNSUPPORTED}
    result = evaluate_text(answers.__getitem__, ["a", "b", "c"], ["", "", ""],
                           metrics=["grounding", "exact"], contexts=[[CONTEXT], CONTEXT, None])
    assert result["grounding"] == pytest.approx(1.0)  # only row a has a claim and a context


def test_grounding_without_a_context_column_says_what_to_add() -> None:
    with pytest.raises(InvalidRequest, match="needs a 'context' column"):
        evaluate_text(str, ["a"], ["a"], metrics=["grounding"])
    with pytest.raises(InvalidRequest, match="needs a 'context' column"):
        evaluate_text(str, ["a"], ["a"], metrics=["grounding"], contexts=[None])
