"""Accuracy on the generated corpus, and the corpus and scorer themselves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("faker")

from shipyard.privacy import PIIEngine
from shipyard.privacy.corpus import ENTITIES, LabelledSpan, Sample, generate_corpus
from shipyard.privacy.evaluate import (
    PATTERN_ENTITIES,
    EntityScore,
    EvaluationReport,
    evaluate,
    render_table,
)
from shipyard.privacy.recognizers import Finding

N = 3000


@pytest.fixture(scope="module")
def corpus() -> list[Sample]:
    return generate_corpus(N, seed=11)


@pytest.fixture(scope="module")
def report(corpus: list[Sample]) -> EvaluationReport:
    return evaluate(PIIEngine(), corpus)


def test_pattern_entities_meet_the_targets(report: EvaluationReport) -> None:
    for entity in PATTERN_ENTITIES:
        score = report.scores[entity]
        assert score.support >= 150, (entity, score.support)
        assert score.recall >= 0.99, (score.to_dict(), report.false_negatives)
        assert score.precision >= 0.95, (score.to_dict(), report.false_positives)


def test_other_labelled_entities_are_accurate_too(report: EvaluationReport) -> None:
    for entity in ("DATE_OF_BIRTH", "MAC_ADDRESS", "SECRET", "URL"):
        score = report.scores[entity]
        assert score.support > 0
        assert score.recall >= 0.97 and score.precision >= 0.95, score.to_dict()


def test_corpus_is_deterministic_labelled_and_varied(corpus: list[Sample]) -> None:
    assert generate_corpus(50, seed=11) == corpus[:50]
    assert generate_corpus(50, seed=12) != corpus[:50]
    labelled = {s.entity for sample in corpus for s in sample.spans}
    assert labelled == set(ENTITIES)
    empty = [s for s in corpus if not s.spans]
    assert 0.25 * N < len(empty) < 0.45 * N  # near-miss-only samples
    for sample in corpus:
        for span in sample.spans:
            value = sample.text[span.start : span.end]
            assert value and value == value.strip(), (span, sample.text)
    texts = [s.text for s in corpus]
    assert any(not t.isascii() for t in texts)
    assert any(s.spans and s.spans[0].start == 0 for s in corpus)  # at the start edge
    assert any(s.spans and s.spans[-1].end == len(s.text) for s in corpus)  # at the end edge
    phones = [s.text[x.start : x.end] for s in corpus for x in s.spans if x.entity == "PHONE"]
    prefixes = {p.split()[0] for p in phones if p.startswith("+")}
    assert len(prefixes) >= 8  # several countries
    ibans = {s.text[x.start : x.start + 2] for s in corpus for x in s.spans if x.entity == "IBAN"}
    assert len(ibans) >= 10
    ips = [s.text[x.start : x.end] for s in corpus for x in s.spans if x.entity == "IP_ADDRESS"]
    assert any("::" in ip for ip in ips)


def test_scorer_counts_exact_spans() -> None:
    sample = Sample("mail a@b.io or 10.0.0.1", (LabelledSpan("EMAIL", 5, 11),
                                                LabelledSpan("IP_ADDRESS", 15, 23)))

    class Fixed:
        def analyze(self, text: str) -> list[Finding]:
            return [
                Finding("EMAIL", 5, 11, 0.9, "x", "a@b.io"),  # exact: true positive
                Finding("IP_ADDRESS", 15, 21, 0.9, "x", "10.0.0"),  # partial: FP + FN
                Finding("PERSON", 0, 4, 0.9, "x", "mail"),  # not a labelled type: ignored
            ]

    report = evaluate(Fixed(), [sample])
    assert (report.scores["EMAIL"].tp, report.scores["EMAIL"].fp) == (1, 0)
    ip = report.scores["IP_ADDRESS"]
    assert (ip.tp, ip.fp, ip.fn) == (0, 1, 1)
    assert report.false_positives == [("IP_ADDRESS", "10.0.0", sample.text)]
    assert report.false_negatives == [("IP_ADDRESS", "10.0.0.1", sample.text)]
    assert "PERSON" not in report.scores
    assert "| `EMAIL` | 1 | 1.0000 | 1.0000 | 1.0000 |" in render_table(report)
    assert report.to_dict()["all"]["tp"] == 1


def test_entity_score_ratios() -> None:
    empty = EntityScore("X")
    assert (empty.precision, empty.recall) == (1.0, 1.0)
    s = EntityScore("X", tp=8, fp=2, fn=2)
    assert s.precision == 0.8 and s.recall == 0.8
    assert round(s.f2, 4) == 0.8
    weighted = EntityScore("X", tp=9, fp=9, fn=1)  # recall 0.9, precision 0.5
    f1 = 2 * 0.5 * 0.9 / (0.5 + 0.9)
    assert weighted.f2 > f1  # F2 leans towards recall
    with pytest.raises(ValueError, match="n is -1"):
        generate_corpus(-1)


def test_overlap_matching_and_reading_a_labelled_file(tmp_path: Path) -> None:
    from shipyard.privacy.evaluate import read_corpus

    path = tmp_path / "labelled.jsonl"
    path.write_text(
        '{"text": "fax 650-752-7354x549 now", "spans": [{"entity": "PHONE", "start": 4, '
        '"end": 16}], "source": "ignored"}\n\n'
        '{"text": "mail a@b.io", "spans": []}\n', encoding="utf-8")
    samples = read_corpus(path)
    assert [s.text for s in samples] == ["fax 650-752-7354x549 now", "mail a@b.io"]
    exact = evaluate(PIIEngine(), samples, entities=["PHONE", "EMAIL"])
    assert (exact.scores["PHONE"].tp, exact.scores["PHONE"].fp) == (0, 1)  # span edges differ
    overlap = evaluate(PIIEngine(), samples, entities=["PHONE", "EMAIL"], match="overlap")
    assert (overlap.scores["PHONE"].tp, overlap.scores["PHONE"].fp) == (1, 0)
    assert (overlap.scores["EMAIL"].tp, overlap.scores["EMAIL"].fp) == (0, 1)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "line 1 is not valid JSON"),
        ('{"spans": []}', "no string 'text'"),
        ('{"text": "x", "spans": {}}', "'spans' is dict"),
        ('{"text": "x", "spans": [{"entity": "PHONE", "start": "0", "end": 1}]}',
         "spans[0] is"),
        ('{"text": "abc", "spans": [{"entity": "PHONE", "start": 1, "end": 9}]}',
         "outside the text of 3 characters"),
        ("", "holds no samples"),
    ],
)
def test_bad_labelled_files_name_the_line_and_the_fix(
    tmp_path: Path, line: str, message: str
) -> None:
    from shipyard.errors import ConfigError
    from shipyard.privacy.evaluate import read_corpus

    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(message)):
        read_corpus(path)
