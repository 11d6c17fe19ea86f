"""Drift verdicts equal Evidently's on the same data: test choice, score and verdict per column.

Evidently (`Report([DataDriftPreset()])`, its defaults) runs on pandas DataFrames of the same
generated windows. Raw-versus-raw scores must match to floating-point precision; scores from a
stored reference profile (quantile sketch) must be close and give the same verdicts.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
import pytest

from shipyard.monitor.drift.detect import detect_drift
from shipyard.monitor.drift.embeddings import embedding_drift
from shipyard.monitor.drift.profiles import DatasetProfile, profile_columns

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    pd = pytest.importorskip("pandas")
    evidently = pytest.importorskip("evidently")
    from evidently import Report
    from evidently.presets import DataDriftPreset

NAMES = {
    "K-S p_value": "ks",
    "Wasserstein distance (normed)": "wasserstein",
    "chi-square p_value": "chisquare",
    "Z-test p_value": "z",
    "Jensen-Shannon distance": "jensenshannon",
}


def windows(rows: int, drift: bool, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every kind of column Evidently distinguishes, with or without drift."""
    rng = np.random.default_rng(seed)

    def make(shifted: bool) -> dict[str, Any]:
        shift = 0.6 if shifted else 0.0
        cats = np.array(["red", "green", "blue", "black", "white"], dtype=object)
        probs = np.array([0.35, 0.25, 0.2, 0.12, 0.08])
        with_gaps = rng.normal(10 + shift, 2, rows)
        with_gaps[rng.random(rows) < 0.1] = np.nan
        return {
            "normal": rng.normal(shift, 1, rows),
            "skewed": rng.lognormal(1 + shift / 3, 0.5, rows),
            "with_gaps": with_gaps,
            "wide_int": rng.integers(0, 200, rows) + int(shift * 40),
            "few_floats": rng.integers(0, 4, rows).astype(float) + (shift > 0) * (
                rng.random(rows) < 0.3),
            "two_floats": rng.choice([0.0, 1.0], rows, p=[0.7 - shift / 2, 0.3 + shift / 2]),
            "small_int": rng.choice(5, rows, p=probs[::-1] if shifted else probs),
            "category": rng.choice(cats, rows, p=probs[::-1] if shifted else probs),
            "binary": rng.choice(np.array(["yes", "no"], dtype=object), rows,
                                 p=[0.3, 0.7] if shifted else [0.5, 0.5]),
            "flag": rng.random(rows) < (0.6 if shifted else 0.4),
        }

    return make(False), make(drift)


def evidently_results(reference: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        snapshot = Report([DataDriftPreset()]).run(pd.DataFrame(current),
                                                   pd.DataFrame(reference))
        metrics = snapshot.dict()["metrics"]
    out: dict[str, Any] = {}
    for metric in metrics:
        config = metric["config"]
        if config["type"].endswith("ValueDrift"):
            out[config["column"]] = (NAMES[config["method"]], float(metric["value"]),
                                     float(config["threshold"]))
        else:
            out["__count__"] = int(metric["value"]["count"])
    return out


def verdict(method: str, score: float, threshold: float) -> bool:
    if method == "ks":
        return score <= threshold
    if method in ("chisquare", "z"):
        return score < threshold
    return score >= threshold


CASES = [(300, False, 1), (300, True, 2), (5000, False, 3), (5000, True, 4)]


@pytest.mark.parametrize(("rows", "drift", "seed"), CASES,
                         ids=["small-same", "small-drift", "large-same", "large-drift"])
def test_same_tests_scores_and_verdicts_as_evidently(rows: int, drift: bool, seed: int) -> None:
    reference, current = windows(rows, drift, seed)
    expected = evidently_results(reference, current)
    ours = detect_drift(reference, current)
    assert [c.column for c in ours.columns] == list(reference)
    for column in ours.columns:
        method, score, threshold = expected[column.column]
        assert column.method == method, column.column
        assert column.threshold == threshold
        assert column.score == pytest.approx(score, rel=1e-9, abs=1e-12), column.column
        assert column.drifted == verdict(method, score, threshold), column.column
        assert not column.approximate
    assert len(ours.drifted_columns) == expected["__count__"]
    # From a stored reference profile (sketches beyond 1,000 rows): same tests and verdicts.
    stored = DatasetProfile.from_dict(profile_columns(reference).to_dict())
    sketched = detect_drift(stored, current)
    for column in sketched.columns:
        method, score, threshold = expected[column.column]
        assert column.method == method
        assert column.score == pytest.approx(score, abs=2e-3), column.column
        assert column.drifted == verdict(method, score, threshold), column.column


def test_selection_covers_every_default_test() -> None:
    chosen = set()
    for rows, drift, seed in CASES:
        reference, current = windows(rows, drift, seed)
        chosen |= {c.method for c in detect_drift(reference, current).columns}
    assert chosen == {"ks", "wasserstein", "chisquare", "z", "jensenshannon"}


@pytest.mark.parametrize("rows", [300, 3000])
def test_psi_on_request_equals_evidently(rows: int) -> None:
    reference, current = windows(rows, True, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        snapshot = Report([DataDriftPreset(method="psi")]).run(pd.DataFrame(current),
                                                               pd.DataFrame(reference))
        metrics = snapshot.dict()["metrics"]
    expected = {m["config"]["column"]: float(m["value"]) for m in metrics
                if m["config"]["type"].endswith("ValueDrift")}
    ours = detect_drift(reference, current, method="psi")
    for column in ours.columns:
        assert column.method == "psi"
        assert column.score == pytest.approx(expected[column.column], rel=1e-9), column.column


@pytest.mark.parametrize(("rows", "shift"), [(400, 0.0), (400, 0.8), (1500, 0.0), (1500, 0.5)])
def test_embedding_domain_classifier_equals_evidently(rows: int, shift: float) -> None:
    pytest.importorskip("sklearn")
    from evidently.legacy.metrics.data_drift.embedding_drift_methods import model

    rng = np.random.default_rng(11)
    ref = rng.normal(0, 1, (rows, 16))
    cur = rng.normal(0, 1, (rows, 16))
    cur[:, :4] += shift
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        score, drifted, _ = model(bootstrap=rows < 1000)(pd.DataFrame(cur), pd.DataFrame(ref))
    ours = embedding_drift(ref, cur, method="model")
    assert ours.score == pytest.approx(score, rel=1e-9)
    assert ours.drifted == bool(drifted) == (shift > 0)
