"""The readiness verdict's parts that need no gateway: scores, the gate, config lint rules,
runbooks, and storing verdicts (SQLite)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from shipyard.config import parse_config as _parse
from shipyard.errors import ConfigError
from shipyard.readiness.check import Finding, Gate, Section, parse_gate
from shipyard.readiness.check.lint import lint_lifecycle, lint_security, lint_trust
from shipyard.readiness.check.runbooks import runbooks
from shipyard.store import create_store_engine, migrate
from shipyard.store.readiness import get_run, list_runs, save_run
from shipyard.store.tenants import KeyRecord

KEY = {"$env": "SHIPYARD_API_KEY"}
ENV = {"SHIPYARD_API_KEY": "sk-unit-" + "x" * 24, "HOOK": "https://hooks.example.com/x",
       "WHSEC": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}


def parse_config(data: dict[str, Any], environ: dict[str, str]) -> Any:
    return _parse(orjson.dumps(data).decode(), environ=environ)


def _config(data: dict[str, Any]) -> Any:
    base: dict[str, Any] = {"auth": {"api_keys": [KEY]},
                            "providers": {"p": {"kind": "openai",
                                                "base_url": "http://127.0.0.1:9/v1"}},
                            "models": {"demo": {"provider": "p"}}}
    return parse_config({**base, **data}, environ=ENV)


def _ids(findings: list[Finding], status: str) -> set[str]:
    return {f.id for f in findings if f.status == status}


def test_section_score_counts_warnings_half_and_ignores_skips() -> None:
    s = Section("x", "X")
    assert s.score is None and s.status == "skip"
    s.add(Finding("a", "pass", ""))
    s.add(Finding("b", "fail", "", weight=3.0))
    s.add(Finding("c", "skip", ""))
    assert s.score == 25.0 and s.status == "fail"
    s.add(Finding("d", "warn", "", weight=4.0))
    assert s.score == 37.5  # (1 + 0.5 * 4) / 8


def test_gate_parsing_and_violations() -> None:
    gate = parse_gate(["overall=70, security=80", "no-fail"])
    assert gate == Gate({"overall": 70.0, "security": 80.0}, no_fail=True)
    good, bad = Section("security", "S"), Section("data", "D")
    good.add(Finding("ok", "pass", ""))
    bad.add(Finding("broken", "fail", ""))
    assert gate.violations(75.0, [good]) == []
    missed = gate.violations(60.0, [good, bad])
    assert missed[0] == "overall: score 60 < 70"
    assert "no-fail: 1 finding(s) failed (data/broken)" in missed
    assert Gate({"trust": 50}).violations(90, [good]) == [
        "trust: no score (nothing was measured) < 50"]
    for wrong in ("speed=9", "overall", "overall=150", "security>70x"):
        with pytest.raises(ConfigError, match="--gate"):
            parse_gate([wrong])


def test_security_lint_flags_a_weak_config() -> None:
    weak = parse_config({
        "auth": {"api_keys": ["sk-inline-" + "y" * 20]},
        "server": {"cors": {"allow_origins": ["*"]}, "metrics_public": True},
        "webhooks": {"endpoints": {"erp": {"url": {"$env": "HOOK"}}}},
        "providers": {"remote": {"kind": "openai", "base_url": "http://llm.internal:8000/v1"}},
        "models": {"demo": {"provider": "remote"}}}, environ=ENV)
    now = datetime.now(UTC)
    admin = KeyRecord(id="k1", tenant_id="acme", name="ops", role="admin", digest="",
                      services=None, models=None, created_at=now, expires_at=None,
                      revoked_at=None, rotated_from=None, rpm=None, tpm=None,
                      max_concurrent=None)
    findings = lint_security(weak, gateway_url="http://127.0.0.1:8000", keys=[admin], now=now)
    assert {"lint.inline-secrets", "lint.cors-open", "lint.webhook-secrets"} <= _ids(
        findings, "fail")
    assert {"lint.tls", "lint.admin-keys-expiry", "lint.weak-roles", "lint.rate-limits",
            "lint.metrics-public", "lint.upstream-tls"} <= _ids(findings, "warn")
    inline = next(f for f in findings if f.id == "lint.inline-secrets")
    assert inline.evidence["keys"] == ["auth.api_keys[0]"] and "{$env: NAME}" in inline.fix
    assert all(f.fix for f in findings if f.status in ("warn", "fail"))


def test_security_lint_passes_a_careful_config() -> None:
    careful = _config({
        "rate_limits": {"key": {"rpm": 600}},
        "webhooks": {"endpoints": {"erp": {"url": {"$env": "HOOK"},
                                           "secret": {"$env": "WHSEC"}}}}})
    now = datetime.now(UTC)
    expiring = KeyRecord(id="k2", tenant_id="default", name="ops", role="admin", digest="",
                         services=None, models=None, created_at=now,
                         expires_at=now + timedelta(days=30), revoked_at=None,
                         rotated_from=None, rpm=None, tpm=None, max_concurrent=None)
    findings = lint_security(careful, gateway_url="https://ai.example.com", keys=[expiring],
                             now=now)
    assert _ids(findings, "fail") == set()
    # the static bootstrap key never expires: the one warning left
    assert _ids(findings, "warn") == {"lint.admin-keys-expiry"}


def test_trust_and_lifecycle_lint() -> None:
    bare = _config({})
    assert _ids(lint_trust(bare), "fail") == {"lint.input-guards"}
    assert _ids(lint_lifecycle(bare), "fail") == {"lint.alerts", "lint.alert-channels"}
    guarded = _config({
        "models": {"demo": {"provider": "p", "pii": {"mode": "redact"},
                            "guards": {"input": [{"guard": "injection"}],
                                       "output": [{"guard": "pii"}]}}},
        "alerts": {"channels": [{"name": "ops", "kind": "webhook", "url": {"$env": "HOOK"}}],
                   "rules": [{"name": "errors", "metric": "error_rate", "threshold": 0.05,
                              "window": "5m", "channels": ["ops"]}]},
        "slos": [{"name": "avail", "sli": "availability", "objective": 0.999,
                  "model": "demo"}],
        "traces": {"retention": {"days": 30}},
        "drift": {"checks": {"inputs": {"columns": ["prompt_tokens"]}}}})
    assert _ids(lint_trust(guarded), "fail") == set()
    assert _ids(lint_lifecycle(guarded), "fail") | _ids(lint_lifecycle(guarded), "warn") == set()
    books = runbooks(guarded)
    assert [b["name"] for b in books] == ["errors", "avail"]
    assert "share of requests answered 5xx" in books[0]["meaning"]
    assert books[0]["steps"] and books[0]["channels"] == ["ops"]
    assert "99.900%" in books[1]["meaning"]


def test_verdicts_are_stored_per_target(tmp_path: Path) -> None:
    engine = create_store_engine(f"sqlite:///{tmp_path}/s.db")
    migrate(engine)
    try:
        report = {"target": "model demo", "mode": "quick", "score": 61.5, "status": "warn",
                  "gate": {"given": True, "passed": False},
                  "sections": [{"key": "data", "score": 50.0}, {"key": "trust", "score": None}]}
        first = save_run(engine, report)
        save_run(engine, {**report, "target": "model other", "gate": {"given": False}})
        runs = list_runs(engine, target="model demo")
        assert [r["id"] for r in runs] == [first]
        assert runs[0]["scores"] == {"data": 50.0, "trust": None}
        assert runs[0]["gate_passed"] is False
        assert list_runs(engine, target="model other")[0]["gate_passed"] is None
        assert get_run(engine, first)["report"]["score"] == 61.5  # type: ignore[index]
        assert get_run(engine, first, tenant_id="acme") is None
    finally:
        engine.dispose()
