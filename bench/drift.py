"""Drift benchmark: Shipyard vs Evidently (Report + DataDriftPreset) on the same data, one run.

    .venv/bin/python bench/drift.py [--rows 356000] [--columns 100] [--no-write]

Generates a reference and a current window of `--rows` rows each and `--columns` mixed columns
(numeric floats, wide integers, small integers that Evidently reads as categories, string
categories with 2 to 60 values); about a third of the columns drift. Then, in one process:

1. Evidently: `Report([DataDriftPreset()]).run(current_df, reference_df)` (its default tests).
2. Shipyard from raw data: build the reference profile (quantile sketches) and test the current
   window against it: what a first check costs.
3. Shipyard with a stored profile: only the test of the current window (the scheduled check,
   since the profile is built once and kept in the store).

Verdicts per column must be equal. Evidently needs pandas and evidently installed
(`pip install evidently`); they are not Shipyard dependencies. Results go to stdout,
`bench/results/drift.json` and `docs/benchmarks.md` (section "Drift").
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    RESULTS_DIR,
    command_line,
    dist_version,
    git_revision,
    load_average,
    log,
    machine_info,
    now_iso,
    paragraph,
    write_docs_section,
    write_json,
)
from shipyard.monitor.drift.detect import DriftReport, detect_drift
from shipyard.monitor.drift.profiles import DatasetProfile, profile_columns

GOAL_RATIO = 20.0
EVIDENTLY_NAMES = {
    "K-S p_value": "ks",
    "Wasserstein distance (normed)": "wasserstein",
    "chi-square p_value": "chisquare",
    "Z-test p_value": "z",
    "Jensen-Shannon distance": "jensenshannon",
    "PSI": "psi",
}


def generate(rows: int, columns: int, seed: int = 7) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reference and current windows; every third column drifts in the current one."""
    rng = np.random.default_rng(seed)
    reference: dict[str, Any] = {}
    current: dict[str, Any] = {}
    for index in range(columns):
        drifts = index % 3 == 0
        family = index % 5
        name = f"c{index:03d}"
        if family in (0, 1):  # floats: normal, lognormal
            if family == 0:
                reference[name] = rng.normal(0, 1, rows)
                current[name] = rng.normal(0.25 if drifts else 0.0, 1, rows)
            else:
                reference[name] = rng.lognormal(3, 0.6, rows)
                current[name] = rng.lognormal(3.2 if drifts else 3, 0.6, rows)
        elif family == 2:  # wide integers: numeric
            reference[name] = rng.integers(0, 500, rows)
            current[name] = rng.integers(60 if drifts else 0, 500, rows)
        elif family == 3:  # small integers: categorical for Evidently
            probs = np.array([0.4, 0.3, 0.2, 0.1])
            reference[name] = rng.choice(4, rows, p=probs)
            current[name] = rng.choice(4, rows, p=probs[::-1] if drifts else probs)
        else:  # strings, 2 to 60 categories
            size = 2 + (index * 7) % 59
            labels = np.array([f"v{i}" for i in range(size)], dtype=object)
            weights = np.linspace(1.0, 3.0, size)
            probs = weights / weights.sum()
            reference[name] = rng.choice(labels, rows, p=probs)
            current[name] = rng.choice(labels, rows, p=probs[::-1] if drifts else probs)
    return reference, current


def run_evidently(reference: dict[str, Any], current: dict[str, Any]) -> tuple[
        float, dict[str, tuple[str, float]]]:
    os.environ.setdefault("DO_NOT_TRACK", "1")
    import pandas as pd
    from evidently import Report
    from evidently.presets import DataDriftPreset

    ref_df, cur_df = pd.DataFrame(reference), pd.DataFrame(current)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        snapshot = Report([DataDriftPreset()]).run(cur_df, ref_df)
    elapsed = time.perf_counter() - started
    verdicts: dict[str, tuple[str, float]] = {}
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if config["type"].endswith("ValueDrift"):
            verdicts[config["column"]] = (EVIDENTLY_NAMES[config["method"]],
                                          float(metric["value"]))
    return elapsed, verdicts


def evidently_drifted(method: str, score: float) -> bool:
    if method == "ks":
        return score <= 0.05
    if method in ("chisquare", "z"):
        return score < 0.05
    return score >= 0.1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=356_000)
    parser.add_argument("--columns", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3,
                        help="Shipyard runs (the median is reported); Evidently runs once.")
    parser.add_argument("--no-write", action="store_true", help="Do not update docs/results.")
    args = parser.parse_args()

    log(f"generating {args.rows:,} rows x {args.columns} columns per window")
    reference, current = generate(args.rows, args.columns)

    load_before = load_average()
    runs = []
    for attempt in range(args.repeat):
        log(f"Shipyard run {attempt + 1}/{args.repeat}: profile the reference, test the "
            "current window, then test it again against the stored profile")
        started = time.perf_counter()
        profile = profile_columns(reference)
        profiled = time.perf_counter()
        report = detect_drift(profile, current)
        done = time.perf_counter()
        stored = DatasetProfile.from_dict(profile.to_dict())
        started_stored = time.perf_counter()
        stored_report = detect_drift(stored, current)
        runs.append((profiled - started, done - profiled,
                     time.perf_counter() - started_stored))
    # The median run (by total time): the machine is shared, single runs are noisy.
    profile_s, check_s, stored_s = sorted(runs, key=lambda r: r[0] + r[1])[len(runs) // 2]

    log("Evidently: Report([DataDriftPreset()])")
    evidently_s, evidently = run_evidently(reference, current)
    load_after = load_average()

    rows = compare(report, evidently)
    same_method = sum(r["same_method"] for r in rows)
    same_verdict = sum(r["same_verdict"] for r in rows)
    stored_same = [c.drifted for c in stored_report.columns] == [c.drifted for c in report.columns]
    total_s = profile_s + check_s
    result = {
        "measured": now_iso(), "machine": machine_info(), "git": git_revision(),
        "rows": args.rows, "columns": args.columns,
        "evidently": dist_version("evidently"), "pandas": dist_version("pandas"),
        "numpy": dist_version("numpy"), "scipy": dist_version("scipy"),
        "evidently_s": evidently_s, "shipyard_profile_s": profile_s,
        "shipyard_check_s": check_s, "shipyard_total_s": total_s,
        "shipyard_stored_check_s": stored_s,
        "shipyard_runs": [{"profile_s": p, "check_s": c, "stored_check_s": t}
                          for p, c, t in runs],
        "load_average": [load_before, load_after],
        "ratio_total": evidently_s / total_s, "ratio_stored": evidently_s / stored_s,
        "same_method": same_method, "same_verdict": same_verdict,
        "drifted_shipyard": len(report.drifted_columns),
        "drifted_evidently": sum(evidently_drifted(*v) for v in evidently.values()),
        "stored_profile_same_verdicts": stored_same,
        "max_score_diff": max(r["score_diff"] for r in rows),
        "profile_json_bytes": len(str(profile.to_dict())),
        "command": command_line(), "per_column": rows,
    }
    print_summary(result)
    if not args.no_write:
        write_json(RESULTS_DIR / "drift.json", result)
        write_docs_section("drift", markdown(result))


def compare(report: DriftReport, evidently: dict[str, tuple[str, float]]) -> list[dict[str, Any]]:
    rows = []
    for column in report.columns:
        method, score = evidently[column.column]
        ours = column.score if column.score is not None else float("nan")
        rows.append({
            "column": column.column, "method": column.method, "evidently_method": method,
            "score": ours, "evidently_score": score,
            "score_diff": abs(ours - score) if score == score else 0.0,
            "drifted": column.drifted, "evidently_drifted": evidently_drifted(method, score),
            "same_method": column.method == method,
            "same_verdict": column.drifted == evidently_drifted(method, score),
        })
    return rows


def print_summary(r: dict[str, Any]) -> None:
    print(f"rows per window        {r['rows']:,} x {r['columns']} columns")
    print(f"Evidently              {r['evidently_s']:.2f} s")
    print(f"Shipyard profile+check {r['shipyard_total_s']:.2f} s "
          f"(profile {r['shipyard_profile_s']:.2f} s, check {r['shipyard_check_s']:.2f} s)"
          f"  ratio {r['ratio_total']:.1f}x")
    print(f"Shipyard stored check  {r['shipyard_stored_check_s']:.2f} s  "
          f"ratio {r['ratio_stored']:.1f}x")
    print(f"load average {r['load_average'][0]:.1f} before, {r['load_average'][1]:.1f} after")
    print(f"same test {r['same_method']}/{r['columns']}, same verdict "
          f"{r['same_verdict']}/{r['columns']}; drifted: Shipyard {r['drifted_shipyard']}, "
          f"Evidently {r['drifted_evidently']}; largest score difference "
          f"{r['max_score_diff']:.2e}")


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    status = "met" if r["ratio_total"] >= GOAL_RATIO else "not met"
    return "\n\n".join([
        "## Drift",
        paragraph(
            f"Measured {r['measured']} on {m.get('cpu', 'this machine')}, "
            f"{m.get('cores', '?')} cores; Evidently {r['evidently']} (pandas {r['pandas']}), "
            f"numpy {r['numpy']}, scipy {r['scipy']}; git {r['git']}."),
        paragraph(
            f"A reference and a current window of {r['rows']:,} rows each, {r['columns']} "
            "columns (floats, wide and small integers, string categories with 2 to 60 values), "
            "a third of them drifting. Evidently runs `Report([DataDriftPreset()])` on pandas "
            "DataFrames; Shipyard runs `detect_drift` with Evidently's default test selection, "
            "from raw data (profile the reference, then test) and from a stored reference "
            "profile (the scheduled check). Same process, same data, one after the other. "
            f"Shipyard ran {len(r['shipyard_runs'])} times (profile + check: "
            + ", ".join(f"{x['profile_s'] + x['check_s']:.2f} s"
                        for x in r["shipyard_runs"])
            + "; the median run is shown), Evidently once. The machine is shared with other "
            "work: load average "
            f"{r['load_average'][0]:.1f} before and {r['load_average'][1]:.1f} after on "
            f"{m.get('cores', '?')} cores, so absolute times are inflated and vary between "
            "runs."),
        "| | seconds | Evidently ÷ Shipyard | goal | status |\n|---|--:|--:|--:|---|\n"
        f"| Evidently `DataDriftPreset` | {r['evidently_s']:.2f} | | | |\n"
        f"| Shipyard profile + check | {r['shipyard_total_s']:.2f} | "
        f"{r['ratio_total']:.1f}\u00d7 | ≥ {GOAL_RATIO:.0f}\u00d7 | {status} |\n"
        f"| Shipyard check with stored profile | {r['shipyard_stored_check_s']:.2f} | "
        f"{r['ratio_stored']:.1f}\u00d7 | | |",
        paragraph(
            f"Same test on {r['same_method']}/{r['columns']} columns and same verdict on "
            f"{r['same_verdict']}/{r['columns']} (drifted: Shipyard {r['drifted_shipyard']}, "
            f"Evidently {r['drifted_evidently']}). The largest absolute difference of a score "
            f"is {r['max_score_diff']:.1e} (thresholds are 0.05 and 0.1): it comes from the "
            "reference's quantile sketch (2,048 quantiles) in the Wasserstein and "
            "Jensen-Shannon scores; see docs/drift.md."),
        "Reproduce: `.venv/bin/python bench/drift.py` (needs `pip install evidently`)",
    ])


if __name__ == "__main__":
    main()
