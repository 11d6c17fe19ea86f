"""Profiles and sketches: what they keep, how exact they are, how they survive storage."""

from __future__ import annotations

import re

import numpy as np
import orjson
import pytest
from scipy import stats

from shipyard.errors import InvalidRequest
from shipyard.monitor.drift.detect import detect_drift, select_method
from shipyard.monitor.drift.embeddings import embedding_drift
from shipyard.monitor.drift.profiles import (
    DatasetProfile,
    as_array,
    infer_kind,
    profile_column,
    profile_columns,
)
from shipyard.monitor.drift.stattests import ks, wasserstein


def test_small_columns_keep_every_value_and_large_ones_a_sketch() -> None:
    rng = np.random.default_rng(0)
    small = profile_column("x", rng.normal(0, 1, 1000))
    large = profile_column("x", rng.normal(0, 1, 1001))
    assert small.values is not None and small.quantiles is None
    assert large.values is None and large.quantiles is not None and len(large.quantiles) == 2048
    assert large.count == 1001 and large.min is not None and large.max is not None


def test_profile_round_trips_through_json() -> None:
    rng = np.random.default_rng(1)
    profile = profile_columns({
        "num": rng.lognormal(0, 1, 5000), "few": rng.integers(0, 3, 5000),
        "cat": rng.choice(np.array(["a", "b"], dtype=object), 5000),
        "flag": rng.random(5000) < 0.5,
    })
    text = orjson.dumps(profile.to_dict())
    back = DatasetProfile.from_dict(orjson.loads(text))
    for name, column in profile.columns.items():
        other = back.columns[name]
        assert (other.kind, other.count, other.counts, other.mean) == (
            column.kind, column.count, column.counts, column.mean)
        if column.quantiles is not None:
            assert other.quantiles is not None
            assert np.array_equal(other.quantiles, column.quantiles)
    assert back.columns["flag"].counts == profile.columns["flag"].counts
    assert len(text) < 200_000  # compact: 5,000 rows x 4 columns in well under 200 kB


@pytest.mark.parametrize("dist", ["normal", "lognormal", "uniform", "bimodal"])
def test_sketched_wasserstein_is_close_to_the_exact_distance(dist: str) -> None:
    rng = np.random.default_rng(2)
    draw = {
        "normal": lambda shift: rng.normal(shift, 1, 200_000),
        "lognormal": lambda shift: rng.lognormal(shift, 0.8, 200_000),
        "uniform": lambda shift: rng.uniform(shift, 1 + shift, 200_000),
        "bimodal": lambda shift: np.concatenate((rng.normal(-2 + shift, 0.5, 100_000),
                                                 rng.normal(2, 0.5, 100_000))),
    }[dist]
    ref_raw, cur_raw = draw(0.0), draw(0.1)
    exact = stats.wasserstein_distance(ref_raw, cur_raw) / np.std(ref_raw)
    current = profile_column("x", cur_raw, exact_limit=None)
    sketched = wasserstein(profile_column("x", ref_raw), current)
    assert sketched == pytest.approx(exact, abs=2e-3)


def test_sketched_ks_is_close_to_the_exact_test() -> None:
    rng = np.random.default_rng(3)
    ref_raw, cur_raw = rng.normal(0, 1, 50_000), rng.normal(0.02, 1, 50_000)
    p_value = stats.ks_2samp(ref_raw, cur_raw)[1]
    current = profile_column("x", cur_raw, exact_limit=None)
    sketched = ks(profile_column("x", ref_raw), current)
    assert sketched == pytest.approx(p_value, abs=0.05)
    assert (sketched <= 0.05) == (p_value <= 0.05)


def test_missing_values_are_counted_and_left_out() -> None:
    profile = profile_column("x", [1.0, None, float("nan"), float("inf"), 2.0])
    assert (profile.count, profile.missing) == (2, 3)
    labels = profile_column("y", ["a", None, "b", "a"])
    assert labels.counts == {"a": 2, "b": 1} and labels.missing == 1


def test_kind_inference_follows_evidently() -> None:
    assert infer_kind(as_array([1.5, 2.5])) == "numeric"
    assert infer_kind(as_array(list(range(10)))) == "categorical"  # ≤ 10 distinct integers
    assert infer_kind(as_array(list(range(11)))) == "numeric"
    assert infer_kind(as_array([1, None, 3])) == "numeric"  # ints with gaps are floats
    assert infer_kind(as_array([True, False])) == "categorical"
    assert infer_kind(as_array(["a", "b", "a", "b"])) == "categorical"
    assert infer_kind(as_array(["a", "b", "c", "d"])) == "text"  # mostly distinct strings


def test_selection_rules() -> None:
    assert select_method("numeric", 1000, 6) == "ks"
    assert select_method("numeric", 1001, 6) == "wasserstein"
    assert select_method("numeric", 1000, 5) == "chisquare"
    assert select_method("numeric", 1000, 2) == "z"
    assert select_method("numeric", 1001, 5) == "jensenshannon"
    assert select_method("categorical", 1000, 3) == "chisquare"
    assert select_method("categorical", 1000, 2) == "z"
    assert select_method("categorical", 5000, 2) == "jensenshannon"
    with pytest.raises(InvalidRequest, match="text"):
        select_method("text", 10, 10)


def test_text_and_empty_columns_are_skipped_with_a_reason() -> None:
    report = detect_drift(
        {"text": [f"t{i}" for i in range(50)], "empty": [None] * 50, "x": list(range(50)),
         "gone": [1.5] * 50},
        {"text": [f"u{i}" for i in range(50)], "empty": [None] * 50, "x": list(range(50)),
         "gone": [float("nan")] * 50})
    by_name = {c.column: c for c in report.columns}
    assert by_name["text"].method == "skipped" and "text" in by_name["text"].note
    assert by_name["empty"].method == "skipped" and "unknown" in by_name["empty"].note
    assert by_name["gone"].method == "skipped" and "current window has no values" in (
        by_name["gone"].note)
    assert report.tested == [by_name["x"]] and not report.dataset_drift


def test_unknown_method_and_missing_column_fail_clearly() -> None:
    with pytest.raises(InvalidRequest, match="'bogus' for column 'x'"):
        detect_drift({"x": [1.0, 2.0]}, {"x": [1.0, 2.0]}, method="bogus")
    with pytest.raises(InvalidRequest, match="'y' is not in the reference data"):
        detect_drift({"x": [1.0]}, {"y": [1.0]})
    with pytest.raises(InvalidRequest, match="needs numbers"):
        detect_drift({"c": ["a", "b"] * 5}, {"c": ["a", "b"] * 5}, method="ks")


def test_per_column_method_and_threshold_overrides() -> None:
    rng = np.random.default_rng(4)
    ref, cur = {"x": rng.normal(0, 1, 3000)}, {"x": rng.normal(0.05, 1, 3000)}
    assert not detect_drift(ref, cur).columns[0].drifted  # wasserstein ≈ 0.05 < 0.1
    strict = detect_drift(ref, cur, threshold={"x": 0.01}).columns[0]
    assert strict.drifted and strict.threshold == 0.01
    assert detect_drift(ref, cur, method={"x": "psi"}).columns[0].method == "psi"


def test_mmd_embedding_drift_without_scikit_learn() -> None:
    rng = np.random.default_rng(5)
    same = embedding_drift(rng.normal(0, 1, (200, 6)), rng.normal(0, 1, (200, 6)), method="mmd")
    moved = embedding_drift(rng.normal(0, 1, (200, 6)), rng.normal(0.4, 1, (200, 6)),
                            method="mmd")
    assert not same.drifted and moved.drifted and moved.score < 0.05
    with pytest.raises(InvalidRequest, match="dimensions"):
        embedding_drift(np.zeros((5, 3)), np.zeros((5, 4)))


def test_many_categories_keep_the_most_frequent_and_pool_the_rest() -> None:
    rng = np.random.default_rng(6)
    labels = np.array([f"city{i}" for i in range(3000)], dtype=object)
    weights = 1 / np.arange(1, 3001)
    ref_raw = rng.choice(labels, 60_000, p=weights / weights.sum())
    cur_raw = rng.choice(labels, 60_000, p=weights[::-1] / weights.sum())
    profile = DatasetProfile.from_dict(profile_columns({"city": ref_raw}).to_dict())
    column = profile.columns["city"]
    assert column.counts is not None and len(column.counts) == 1000
    assert column.distinct > 1000 and column.other == 60_000 - sum(column.counts.values())
    exact = detect_drift({"city": ref_raw}, {"city": cur_raw}).columns[0]
    pooled = detect_drift(profile, {"city": cur_raw}).columns[0]
    assert exact.method == pooled.method == "jensenshannon"
    assert pooled.approximate and not exact.approximate
    assert exact.drifted and pooled.drifted
    same = detect_drift(profile, {"city": rng.choice(labels, 60_000, p=weights / weights.sum())})
    assert not same.columns[0].drifted


def test_html_pages_are_self_contained() -> None:
    pytest.importorskip("plotly")
    from datetime import UTC, datetime, timedelta

    from shipyard.monitor.drift.report import history_html, reports_html

    report = detect_drift({"x": list(range(100))}, {"x": list(range(50, 150))})
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [{"check_name": "support", "at": start + timedelta(hours=i), "share": i / 10}
            for i in range(5)]
    for page in (reports_html({"support": report}), history_html(rows)):
        assert not re.search(r"<script[^>]+src\s*=", page, re.I)
        assert "Plotly.newPlot" in page and len(page) > 1_000_000
    assert "support" in reports_html({"support": report})
