"""Drift over stored traces on both store backends: features, checks, history, scheduler, CLI."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from sqlalchemy import Engine, insert

from conftest import Proc, gateway_config
from shipyard.config.drift import DriftCheckConfig, DriftConfig
from shipyard.monitor.drift.checks import DriftScheduler, run_check, run_drift_checks
from shipyard.monitor.drift.features import TraceWindow, load_features
from shipyard.monitor.drift.store import drift_history, latest_profile
from shipyard.store import create_store_engine, migrate, new_trace_record
from shipyard.store.tables import traces

NOW = datetime.now(UTC).replace(microsecond=0)
PROMPTS = {
    "en": "Hello, what is the status of my order and how can I change the address?",
    "fr": "Bonjour, je voudrais savoir où est ma commande et comment changer l'adresse",
}


def chat_trace(rng: np.random.Generator, at: datetime, *, latency: float, language: str,
               refuse: bool, status: int) -> dict[str, Any]:
    answer = ("I'm sorry, but I can't help with that request." if refuse
              else "Your order ships tomorrow; you can change the address in your account.")
    response = {"choices": [{"message": {"role": "assistant", "content": answer},
                             "finish_reason": "stop"}]}
    return new_trace_record(
        request_id=f"r-{rng.integers(1e12)}", started_at=at, ended_at=at, route="chat",
        service="support", model_alias="support", status=status, total_ms=latency,
        prompt_tokens=int(rng.integers(20, 40)), completion_tokens=int(rng.integers(10, 30)),
        finish_reason="stop" if status == 200 else None, capture="full",
        request_body=orjson.dumps({"model": "support", "messages": [
            {"role": "user", "content": PROMPTS[language]}]}).decode(),
        response_body=orjson.dumps(response).decode() if status == 200 else None)


def seed_traces(engine: Engine, *, drift: bool, rows: int = 300) -> None:
    rng = np.random.default_rng(7)
    records = []
    for i in range(rows):  # reference: two days ago to one day ago
        at = NOW - timedelta(days=2) + timedelta(seconds=i * 280)
        records.append(chat_trace(rng, at, latency=float(rng.normal(300, 30)), language="en",
                                  refuse=i % 50 == 0, status=200))
    for i in range(rows):  # current: the last day
        at = NOW - timedelta(days=1) + timedelta(seconds=i * 280 + 10)
        records.append(chat_trace(
            rng, at, latency=float(rng.normal(420 if drift else 300, 30)),
            language="fr" if drift and i % 2 else "en",
            refuse=(i % 4 == 0) if drift else i % 50 == 0,
            status=500 if drift and i % 5 == 0 else 200))
    with engine.begin() as connection:
        connection.execute(insert(traces), records)


def service_traces(engine: Engine) -> None:
    rng = np.random.default_rng(8)
    records = []
    for window, shift in ((2, 0.0), (1, 50.0)):
        for i in range(200):
            at = NOW - timedelta(days=window) + timedelta(seconds=i * 400)
            body = {"amount": float(rng.normal(100 + shift, 10)),
                    "country": "FR" if i % 3 else "DE", "note": None}
            records.append(new_trace_record(
                request_id=f"s-{window}-{i}", started_at=at, ended_at=at, route="invoke",
                service="scorer", status=200, total_ms=5.0, capture="full",
                request_body=orjson.dumps(body).decode()))
    with engine.begin() as connection:
        connection.execute(insert(traces), records)


def fresh(store_url: str) -> Engine:
    engine = create_store_engine(store_url)
    migrate(engine)
    return engine


CHECK = DriftCheckConfig(service="support", current_window_s=86_400,
                         reference_window_s=86_400, min_rows=50)


def test_trace_drift_is_detected_and_recorded(store_url: str) -> None:
    engine = fresh(store_url)
    try:
        seed_traces(engine, drift=True)
        outcome = run_check(engine, "support", CHECK, now=NOW)
        assert outcome.report is not None and outcome.result_id is not None
        by_name = {c.column: c for c in outcome.report.columns}
        for column in ("latency_ms", "language", "refusal", "status"):
            assert by_name[column].drifted, column
        assert by_name["latency_ms"].method == "ks"  # 300 reference rows
        assert by_name["language"].method == "z"  # en / fr
        assert not by_name["prompt_tokens"].drifted
        history = drift_history(engine, "support", details=True)
        assert len(history) == 1 and history[0]["dataset_drift"] == outcome.report.dataset_drift
        assert history[0]["report"]["drifted_columns"] == outcome.report.drifted_columns
        stored = latest_profile(engine, "support")
        assert stored is not None and stored.profile.rows == 300
    finally:
        engine.dispose()


def test_no_drift_when_traffic_is_unchanged(store_url: str) -> None:
    engine = fresh(store_url)
    try:
        seed_traces(engine, drift=False)
        outcome = run_check(engine, "support", CHECK, now=NOW)
        assert outcome.report is not None
        assert not {"latency_ms", "language", "status"} & set(outcome.report.drifted_columns)
        assert not outcome.report.dataset_drift
    finally:
        engine.dispose()


def test_reference_profiles_are_reused(store_url: str) -> None:
    engine = fresh(store_url)
    try:
        seed_traces(engine, drift=True)
        check = DriftCheckConfig(**{**CHECK.model_dump(), "reference_start": NOW - timedelta(
            days=2), "reference_end": NOW - timedelta(days=1)})
        first = run_check(engine, "fixed", check, now=NOW + timedelta(seconds=1))
        second = run_check(engine, "fixed", check, now=NOW + timedelta(seconds=2))
        rows = drift_history(engine, "fixed")
        assert first.report is not None and second.report is not None
        assert len({r["profile_id"] for r in rows}) == 1 and len(rows) == 2
        # A rolling reference is reused until it is older than reference_refresh_s.
        for name, refresh in (("rolling", 3600.0), ("always", 0.0)):
            spec = CHECK.model_copy(update={"reference_refresh_s": refresh})
            for seconds in (0, 1):
                run_check(engine, name, spec, now=NOW + timedelta(seconds=seconds))
        assert len({r["profile_id"] for r in drift_history(engine, "rolling")}) == 1
        assert len({r["profile_id"] for r in drift_history(engine, "always")}) == 2
    finally:
        engine.dispose()


def test_service_inputs_and_pluggable_sources(store_url: str) -> None:
    engine = fresh(store_url)
    try:
        service_traces(engine)

        def feedback(_: Engine, ids: Sequence[str]) -> Mapping[str, Sequence[Any]]:
            return {"feedback_score": [float(len(i) % 5) for i in ids]}

        window = TraceWindow(start=NOW - timedelta(days=3), end=NOW, service="scorer")
        data, _ = load_features(engine, window, sources=[feedback])
        assert {"input.amount", "input.country", "feedback_score"} <= set(data)
        assert "input.note" not in data  # null fields are not features
        check = DriftCheckConfig(service="scorer", current_window_s=86_400,
                                 reference_window_s=86_400, min_rows=50,
                                 columns=["input.amount", "input.country", "latency_ms"])
        outcome = run_check(engine, "scorer", check, now=NOW)
        assert outcome.report is not None
        assert outcome.report.drifted_columns == ["input.amount"]
    finally:
        engine.dispose()


def test_too_few_traces_skips_without_recording(store_url: str) -> None:
    engine = fresh(store_url)
    try:
        outcome = run_check(engine, "empty", CHECK, now=NOW)
        assert outcome.report is None and "fewer than min_rows=50" in (outcome.skipped or "")
        assert drift_history(engine) == []
    finally:
        engine.dispose()


def test_scheduler_runs_checks_in_the_background(store_url: str) -> None:
    engine = fresh(store_url)
    seed_traces(engine, drift=True)
    config = DriftConfig(interval_s=10, checks={"support": CHECK.model_copy(
        update={"current_window_s": 86_400 + 30})})

    async def scenario() -> int:
        scheduler = DriftScheduler(engine, config)
        await scheduler.start()
        for _ in range(200):
            if scheduler.runs:
                break
            await asyncio.sleep(0.05)
        await scheduler.stop()
        return scheduler.runs

    try:
        assert asyncio.run(scenario()) == 1
        assert len(drift_history(engine, "support")) == 1
        # Another worker (or a restart) within half the interval leaves the check alone.
        assert asyncio.run(run_drift_checks(engine, config)) == []
        assert len(drift_history(engine, "support")) == 1
    finally:
        engine.dispose()


def write_csv(path: Path, columns: dict[str, list[Any]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(zip(*columns.values(), strict=True))


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shipyard", "drift", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})


def test_cli_check_profile_history(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path}/store.db"  # the CLI's store handling is backend-neutral
    rng = np.random.default_rng(9)
    write_csv(tmp_path / "ref.csv", {"amount": list(rng.normal(0, 1, 400)),
                                     "plan": list(rng.choice(["a", "b", "c"], 400))})
    write_csv(tmp_path / "cur.csv", {"amount": list(rng.normal(0.5, 1, 400)),
                                     "plan": list(rng.choice(["a", "b", "c"], 400))})
    done = run_cli("check", "--reference", "ref.csv", "--current", "cur.csv", "--json",
                   "--html", "report.html", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout[:done.stdout.rindex("}") + 1])["cur.csv"]
    assert report["drifted_columns"] == ["amount"]
    assert {c["method"] for c in report["columns"]} == {"ks", "chisquare"}
    html = (tmp_path / "report.html").read_text()
    assert not re.search(r"<script[^>]+src\s*=\s*[\"']?(https?:)?//", html, re.I)
    assert "Plotly.newPlot" in html and len(html) > 1_000_000  # plotly.js is inline

    engine = fresh(store_url)
    try:
        seed_traces(engine, drift=True)
    finally:
        engine.dispose()
    (tmp_path / "shipyard.yaml").write_text(
        f"store: {{url: '{store_url}'}}\n"
        "drift:\n  checks:\n    support:\n      service: support\n"
        "      current_window_s: 86400\n      reference_window_s: 86400\n")
    done = run_cli("check", "support", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "latency_ms" in done.stdout and "drift" in done.stdout
    done = run_cli("profile", "baseline", "--since", "3d", "--service", "support", "--json",
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rows"] == 600
    done = run_cli("history", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert [r["check_name"] for r in json.loads(done.stdout)] == ["support"]
    done = run_cli("check", "nope", cwd=tmp_path)
    assert done.returncode == 1 and "drift.checks has no check 'nope'" in done.stderr


def test_gateway_runs_configured_checks_while_serving(
        start_gateway: Callable[..., Proc], tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path}/gateway.db"
    engine = fresh(store_url)
    try:
        seed_traces(engine, drift=True)
        gateway = start_gateway(gateway_config(None, store_url, extra="""
drift:
  interval_s: 3600
  checks:
    support:
      service: support
      current_window_s: 86400
      reference_window_s: 86400
"""))
        deadline = time.monotonic() + 30
        while not drift_history(engine, "support") and time.monotonic() < deadline:
            time.sleep(0.2)
        rows = drift_history(engine, "support", details=True)
        assert len(rows) == 1, gateway.output()
        assert "latency_ms" in rows[0]["report"]["drifted_columns"]
    finally:
        engine.dispose()
