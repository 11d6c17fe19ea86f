"""`shipyard check` end to end: a real gateway (the quick-start config) in front of a real
`shipyard sim`, the CLI run as a user runs it, the HTML report opened in Chromium, and a
deliberately weak deployment (inline key, no guards, no alerts, a failing upstream) that
must score worse with the matching findings. The verdicts land on the dashboard."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from conftest import API_KEY, REPO, Proc, launch_gateway, launch_sim

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
QUICKSTART = REPO / "examples" / "quickstart"
ASSISTANT = REPO / "examples" / "support-assistant"


def _check(config: Path, gateway: Proc, out: Path, *flags: str) -> tuple[int, dict[str, Any],
                                                                          str, float]:
    env = {**os.environ, "SHIPYARD_API_KEY": API_KEY, "PYTHONPATH": str(REPO / "src"),
           "COLUMNS": "200"}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "shipyard", "check", "-c", str(config), "--url", gateway.url,
         "--out", str(out), "--quick", *flags],
        capture_output=True, text=True, env=env, cwd=config.parent, timeout=300)
    seconds = time.perf_counter() - started
    report = out / "readiness.json"
    data = json.loads(report.read_text()) if report.exists() else {}
    return done.returncode, data, done.stdout + done.stderr, seconds


def _finding(data: dict[str, Any], fid: str) -> dict[str, Any]:
    for section in data["sections"]:
        for finding in section["findings"]:
            if finding["id"] == fid:
                return dict(finding)
    known = [f["id"] for s in data["sections"] for f in s["findings"]]
    raise AssertionError(f"no finding {fid} in {known}")


def _section(data: dict[str, Any], key: str) -> dict[str, Any]:
    return next(s for s in data["sections"] if s["key"] == key)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("check")
    shutil.copy(QUICKSTART / "support.py", folder / "support.py")
    sim = launch_sim(folder)
    failing = launch_sim(folder, "--error-rate", "500=0.6")
    store = f"sqlite:///{folder}/store.db"
    text = (QUICKSTART / "shipyard.yaml").read_text()
    text = text.replace("http://127.0.0.1:9100/v1", f"{sim.url}/v1").replace(
        "sqlite:///.shipyard/quickstart.db", store)
    good = launch_gateway(folder, text)
    weak_text = f"""
store: {{url: "{store}"}}
server: {{cors: {{allow_origins: ["*"]}}}}
auth: {{api_keys: ["{API_KEY}"]}}
providers:
  flaky: {{kind: openai, base_url: "{failing.url}/v1"}}
models:
  demo: {{provider: flaky, model: sim-chat, retry: {{attempts: 1}}}}
"""
    weak = launch_gateway(folder, weak_text)
    try:
        quick = _check(good.extra["config"], good, folder / "good",  # type: ignore[arg-type]
                       "--sim", sim.url, "--pipeline", str(REPO / "examples/data/pipeline.yaml"),
                       "--gate", "overall=10")
        poor = _check(weak.extra["config"], weak, folder / "weak",  # type: ignore[arg-type]
                      "--gate", "overall=95,no-fail")
        yield {"good": quick, "weak": poor, "folder": folder, "gateway": good,
               "store": store}
    finally:
        for proc in (good, weak, sim, failing):
            proc.stop()


def test_quickstart_check_writes_html_and_json(runs: dict[str, Any]) -> None:
    code, data, output, seconds = runs["good"]
    assert code == 0, output
    folder = runs["folder"] / "good"
    assert (folder / "readiness.html").stat().st_size > 1_000_000  # plotly.js inline
    assert [s["key"] for s in data["sections"]] == ["data", "security", "scale", "trust",
                                                    "lifecycle"]
    for section in data["sections"]:
        assert section["findings"], section["key"]
        assert section["score"] is not None, section["key"]
        for finding in section["findings"]:
            assert finding["status"] in ("pass", "warn", "fail", "skip")
            if finding["status"] in ("warn", "fail"):
                assert finding["fix"], finding  # every problem comes with its fix
    # live probes against the real gateway
    for fid in ("auth.missing-key", "auth.wrong-key", "auth.revoked-key",
                "auth.client-on-admin", "auth.cross-tenant", "audit.chain"):
        assert _finding(data, fid)["status"] == "pass", _finding(data, fid)
    assert _finding(data, "scale.max-rate")["status"] == "pass"
    assert _finding(data, "scale.max-rate")["evidence"]["max_rate"] >= 10
    assert _finding(data, "scale.capacity")["evidence"]["replicas"] >= 1
    for scenario in ("chaos.errors-30", "chaos.latency-spike"):
        assert _finding(data, scenario)["evidence"]["success_rate"] is not None
    assert _finding(data, "chaos.store-down")["status"] == "skip"
    red = _finding(data, "trust.injection-detection")
    assert "outside" in red["evidence"]["corpus"]  # the corpus is named
    assert red["evidence"]["per_category"]
    assert _finding(data, "trust.escalation")["status"] == "warn"  # quickstart has none
    assert _finding(data, "lint.alerts")["status"] == "fail"
    # the data audit ran the example pipeline (dry run) and scored the PII detector
    assert any(f["id"].startswith("data.quarantine:pipeline") for f in
               _section(data, "data")["findings"])
    # sub-reports written beside the report and linked
    for name in ("check-loadtest.json", "check-chaos.json", "check-redteam.json"):
        assert (folder / name).exists(), name
    assert data["gate"] == {"minimums": {"overall": 10.0}, "no_fail": False, "given": True,
                            "passed": True, "violations": []}
    assert "temporary tenants" in " ".join(data["notes"])
    assert seconds < 90, f"quick mode took {seconds:.0f} s"


def test_temporary_tenants_leave_nothing_usable(runs: dict[str, Any]) -> None:
    from shipyard.store import create_store_engine
    from shipyard.store.tenants import list_keys, list_tenants

    engine = create_store_engine(runs["store"])
    try:
        temp = [t for t in list_tenants(engine) if t["id"].startswith("readiness-")]
        assert temp and all(t["disabled"] for t in temp)
        keys = [k for k in list_keys(engine, tenant_id=None)
                if k.tenant_id.startswith("readiness-")]
        assert keys and all(k.status() == "revoked" for k in keys)
    finally:
        engine.dispose()


def test_weak_config_scores_worse_with_matching_findings(runs: dict[str, Any]) -> None:
    _, good, _, _ = runs["good"]
    code, weak, output, _ = runs["weak"]
    assert code == 3, output  # --gate overall=95,no-fail is missed
    assert "gate missed" in output
    assert weak["gate"]["passed"] is False and weak["gate"]["violations"]
    assert weak["score"] < good["score"]
    assert _section(weak, "security")["score"] < _section(good, "security")["score"]
    assert _section(weak, "scale")["score"] < _section(good, "scale")["score"]
    assert _finding(weak, "lint.inline-secrets")["status"] == "fail"
    assert _finding(weak, "lint.inline-secrets")["evidence"]["keys"] == ["auth.api_keys[0]"]
    assert _finding(weak, "lint.cors-open")["status"] == "fail"
    assert _finding(weak, "lint.input-guards")["status"] == "fail"
    assert _finding(weak, "lint.alerts")["status"] == "fail"
    assert _finding(weak, "scale.max-rate")["status"] == "fail"  # the upstream fails 60%
    # the upstream's 500s (or, once the circuit opens, the gateway's 503s) are named
    assert any(k.startswith("5") for k in _finding(weak, "scale.max-rate")["evidence"]["errors"])
    assert _finding(weak, "trust.redteam-errors")["status"] == "fail"
    assert _finding(weak, "chaos")["status"] == "skip"  # no --sim given


def test_gate_errors_name_the_fix(tmp_path: Path) -> None:
    config = tmp_path / "shipyard.yaml"
    config.write_text("auth: {disabled: true}\n")
    done = subprocess.run([sys.executable, "-m", "shipyard", "check", "-c", str(config),
                           "--gate", "speed=9"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")}, timeout=60)
    assert done.returncode == 1
    assert "--gate is 'speed=9'" in done.stderr and "overall=70" in done.stderr


def test_html_report_renders_offline_in_chromium(runs: dict[str, Any]) -> None:
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    report = runs["folder"] / "good" / "readiness.html"
    urls: list[str] = []
    errors: list[str] = []
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.on("request", lambda r: urls.append(r.url))
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(report.as_uri(), wait_until="load")
            page.wait_for_selector("#plot-scores .main-svg")
            for plot in ("plot-scores", "plot-loadtest", "plot-chaos", "plot-redteam"):
                assert page.locator(f"#{plot} .main-svg").count() >= 1, plot
            assert page.locator("#overall-score").inner_text().strip() != "-"
            assert page.locator("tr.finding").count() >= 20
        finally:
            browser.close()
    assert errors == []
    outside = [u for u in urls if urlsplit(u).scheme != "file"]
    assert outside == [], outside  # nothing fetched: no CDN, no network


def test_dashboard_shows_readiness_over_time(runs: dict[str, Any]) -> None:
    from shipyard.store import create_store_engine
    from shipyard.ui.pages import PageContext
    from shipyard.ui.readiness_pages import readiness_detail, readiness_page

    engine = create_store_engine(runs["store"])
    try:
        page = readiness_page(PageContext(engine=engine, tenant_id="default", role="viewer",
                                          params={"range": "24h"}))
        targets = {r["target"] for r in page["runs"]}
        assert targets == {"model demo"}  # both runs checked alias demo
        assert len(page["runs"]) == 2 and page["charts"]
        assert page["charts"][0]["data"][0]["name"] == "overall"
        run = readiness_detail(PageContext(engine=engine, tenant_id="default", role="viewer",
                                           params={}, path_params={"run_id":
                                                                   page["runs"][0]["id"]}))
        assert run["sections"][0]["findings"]
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def assistant_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`shipyard check --quick` on the reference assistant with no --url and no key: the
    check starts the gateway and the sim its provider points at, then stops them."""
    folder = tmp_path_factory.mktemp("assistant-check")  # the store lands here, not in the repo
    env = {k: v for k, v in os.environ.items()
           if k not in ("SHIPYARD_API_KEY", "SHIPYARD_CONFIG")}
    env.update(PYTHONPATH=str(REPO / "src"), COLUMNS="200")
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "shipyard", "check", "-c", str(ASSISTANT / "shipyard.yaml"),
         "--quick", "--out", "out"], capture_output=True, text=True, env=env, cwd=folder,
        timeout=400)
    report = folder / "out" / "readiness.json"
    return {"code": done.returncode, "output": done.stdout + done.stderr, "folder": folder,
            "data": json.loads(report.read_text()) if report.exists() else {},
            "seconds": time.perf_counter() - started}


def test_check_starts_the_assistant_itself_and_scores_its_guards(
        assistant_run: dict[str, Any], runs: dict[str, Any]) -> None:
    assert assistant_run["code"] == 0, assistant_run["output"]
    data, out = assistant_run["data"], assistant_run["folder"] / "out"
    assert (out / "readiness.html").stat().st_size > 1_000_000
    assert "no --url: starting the deployment" in assistant_run["output"]
    started = next(n for n in data["notes"] if "started this deployment itself" in n)
    assert "shipyard sim (a SIMULATED model) for provider llm" in started
    # the red team went through the service users reach, and met its guards
    red = _finding(data, "trust.injection-detection")
    assert "sent to service support (field 'question')" in red["evidence"]["corpus"]
    assert _finding(data, "trust.graceful")["status"] == "pass"
    assert _finding(data, "trust.escalation")["status"] == "pass"
    assert _finding(data, "trust.false-positives")["status"] == "pass"
    assert _finding(data, "lint.output-guards")["status"] == "pass"
    _, quickstart, _, _ = runs["good"]
    assert _section(data, "trust")["score"] > _section(quickstart, "trust")["score"] + 15
    detection = red["evidence"]["per_category"]
    assert sum(c["detection_rate"] * c["attacks"] for c in detection.values()) > sum(
        c["detection_rate"] * c["attacks"]
        for c in _finding(quickstart, "trust.injection-detection")["evidence"]
        ["per_category"].values())
    # the chaos drills broke the sim the check started
    assert _finding(data, "chaos.errors-30")["evidence"]["success_rate"] is not None
    # where the time went, phase by phase: the data audit ran while the deployment started
    phases = list(data["timings"])
    assert {"deployment start-up (overlapping the data audit)", "scale: load search",
            "scale: chaos", "trust: red team (72 requests)", "deployment stop"} <= set(phases)
    assert phases.index("data: PII detector") < phases.index(
        "waiting for the gateway to start") < phases.index("setup: temporary tenants")
    assert "time: data: PII detector" in assistant_run["output"]
    # everything was stopped, and the temporary config copy removed
    port = urlsplit(data["url"]).port
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert not list(ASSISTANT.glob(".*.check-*.yaml"))
    assert (assistant_run["folder"] / ".shipyard" / "support.db").is_file()


def test_check_names_an_unknown_service(tmp_path: Path) -> None:
    config = tmp_path / "shipyard.yaml"
    config.write_text("auth: {disabled: true}\nproviders: {sim: {kind: openai, base_url: "
                      "'http://127.0.0.1:9/v1'}}\nmodels: {demo: {provider: sim}}\n")
    done = subprocess.run([sys.executable, "-m", "shipyard", "check", "-c", str(config),
                           "--url", "http://127.0.0.1:9", "--service", "nope", "--no-html"],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")}, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "--service is 'nope'" in done.stderr and "Traceback" not in done.stderr


def test_a_deployment_that_fails_to_start_ends_the_check_after_the_data_audit(
        tmp_path: Path) -> None:
    """The gateway starts in a thread while the data audit runs: when it cannot start, the
    check still fails with the reason (exit 1), stops the sim it started, removes the config
    copy."""
    (tmp_path / "shipyard.yaml").write_text(
        "store: {url: 'sqlite:///s.db'}\nauth: {api_keys: [{$env: SHIPYARD_API_KEY}]}\n"
        "providers: {sim: {kind: openai, base_url: 'http://127.0.0.1:9/v1'}}\n"
        "models: {chat: {provider: sim, model: sim-chat}}\npython_path: ['.']\n"
        "services: {broken: {function: 'nosuchmodule_for_check:answer'}}\n")
    env = {k: v for k, v in os.environ.items() if k != "SHIPYARD_API_KEY"}
    done = subprocess.run([sys.executable, "-m", "shipyard", "check", "-c", "shipyard.yaml",
                           "--quick", "--out", "out", "--no-save"], capture_output=True,
                          text=True, cwd=tmp_path, timeout=200,
                          env={**env, "PYTHONPATH": str(REPO / "src"), "COLUMNS": "200"})
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "The gateway did not become ready" in output and "Traceback" not in output
    data_row = next(line for line in output.splitlines() if line.startswith("Data "))
    assert " done " in data_row  # the audit ran while the gateway was (not) starting
    assert "nosuchmodule_for_check" in (tmp_path / "out" / "deployment.log").read_text()
    assert not list(tmp_path.glob(".*.check-*.yaml"))
