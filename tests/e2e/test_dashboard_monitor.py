"""The dashboard's monitoring pages in a real browser (headless Chromium via Playwright,
against a real `shipyard serve`): drift results, alerts (including the `/ui/alerts/{id}`
link every notification carries), the escalation review queue with its claim / answer /
resolve forms, and stored spans in the trace waterfall. Everything is planted through the
real store functions; every page loads with no console errors and no outside requests."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from conftest import API_KEY, launch_gateway, launch_sim
from shipyard.escalation.store import create_ticket, get_ticket
from shipyard.monitor.drift.detect import ColumnDrift, DriftReport
from shipyard.monitor.drift.store import record_result
from shipyard.monitor.history import AlertInfo, save_transition
from shipyard.monitor.state import OpenAlert
from shipyard.store import create_store_engine, migrate
from shipyard.store import tenants as store
from shipyard.store.traces import new_trace_record
from shipyard.store.writer import TraceWriter

playwright_api = pytest.importorskip("playwright.sync_api")
from test_dashboard import ARTIFACTS, CHROMIUM, Watched  # noqa: E402

QUESTION = "Where is my refund for order 4411?"


def _report(drifted: int) -> DriftReport:
    columns = [ColumnDrift(column=name, kind="num", method="ks", score=0.001 if i < drifted
                           else 0.4, threshold=0.05, drifted=i < drifted, reference_rows=500,
                           current_rows=200)
               for i, name in enumerate(["prompt_length", "latency_ms", "output_length"])]
    columns.append(ColumnDrift(column="language", kind="cat", method="chisquare", score=0.9,
                               threshold=0.05, drifted=False, reference_rows=500,
                               current_rows=200))
    return DriftReport(columns=columns, drift_share=0.5)


def _plant(engine: Any, url: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    for hours, drifted in ((5, 0), (3, 1), (1, 3)):
        record_result(engine, "support-drift", _report(drifted), tenant_id="acme",
                      service="support", at=now - timedelta(hours=hours))
    record_result(engine, "globex-drift", _report(4), tenant_id="globex", at=now)

    def alert(alert_id: str, key: str, runbook: str, tenant: str = "acme") -> OpenAlert:
        info = AlertInfo(key=key, source="rule", severity="critical", tenant_id=tenant,
                         summary=f"{key} above threshold", runbook=runbook,
                         labels={"service": "support"}, threshold=0.05)
        firing = OpenAlert(alert_id, key, "firing", now - timedelta(minutes=20), 0.12,
                           fired_at=now - timedelta(minutes=15))
        assert save_transition(engine, None, firing, "firing", info,
                               now=now - timedelta(minutes=15), url_base=url)
        return firing

    alert("al_open_1", "rule:support-errors", "Check the upstream status page, then fail over.")
    old = alert("al_old_1", "rule:support-latency", "Scale the support service.")
    info = AlertInfo(key=old.key, source="rule", severity="critical", tenant_id="acme",
                     summary="", runbook="", labels={}, threshold=0.05)
    assert save_transition(engine, old, None, "resolved", info, now=now, url_base=url)
    alert("al_globex", "rule:globex-only-alert", "-", tenant="globex")

    ticket = create_ticket(
        engine, tenant_id="acme", key_id=None, conversation_id="conv-1", request_id="req-1",
        trace_id=None, kind="model", service="support", trigger="user_request",
        reason="the user asked for a human", score=None, pii_cleaned=False, sla_s=3600,
        conversation=[{"role": "user", "content": QUESTION}])
    late = create_ticket(
        engine, tenant_id="acme", key_id=None, conversation_id="conv-2", request_id="req-2",
        trace_id=None, kind="model", service="support", trigger="low_confidence",
        reason="score below 0.3", score=0.2, pii_cleaned=True, sla_s=-60,
        conversation=[{"role": "user", "content": "late question"}])

    writer = TraceWriter(engine)
    writer.start()
    record = new_trace_record(route="chat", status=200, tenant_id="acme", service="support",
                              model_alias="support", started_at=now - timedelta(minutes=3),
                              total_ms=40.0, upstream_ms=30.0, request_id="spanned-1")
    record["spans"] = [("a" * 16, None, "chat", 100.0, 100.040, None, {"route": "chat"}),
                       ("b" * 16, "a" * 16, "auth", 100.001, 100.003, None, None),
                       ("c" * 16, "a" * 16, "upstream", 100.005, 100.035, None,
                        {"deployment": "primary"}),
                       ("d" * 16, "c" * 16, "stored-span-retry", 100.006, 100.010,
                        "UpstreamTimeout", None)]
    record["spans_t0"] = 100.0
    writer.submit(record)
    writer.stop()
    return {"ticket": ticket.id, "late": late.id, "spanned": record["id"]}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    folder = tmp_path_factory.mktemp("dashboard-monitor")
    url = f"sqlite:///{folder}/store.db"
    engine = create_store_engine(url)
    migrate(engine)
    for tenant in ("acme", "globex", "empty"):
        store.create_tenant(engine, tenant)
    keys = {role: store.create_key(engine, tenant_id="acme", name=role, role=role)[1]
            for role in ("admin", "operator", "viewer")}
    keys["empty"] = store.create_key(engine, tenant_id="empty", name="e", role="admin")[1]
    sim = launch_sim(folder)
    gateway = launch_gateway(folder, f"""
store: {{url: "{url}"}}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
providers:
  sim: {{kind: openai, base_url: "{sim.url}/v1"}}
models:
  support: {{provider: sim, model: sim-chat}}
alerts: {{enabled: false}}
slos:
  - {{name: support-availability, sli: availability, objective: 0.99, service: support}}
""")
    planted = _plant(engine, gateway.url)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            yield {"url": gateway.url, "keys": keys, "browser": browser, "engine": engine,
                   **planted}
        finally:
            browser.close()
            gateway.stop()
            sim.stop()
            engine.dispose()


@pytest.fixture
def browser_page(site: dict[str, Any]) -> Iterator[Watched]:
    watched = Watched(site)
    yield watched
    watched.close()


def test_drift_page_shows_results_and_plots(site: dict[str, Any],
                                            browser_page: Watched) -> None:
    browser_page.login(site["keys"]["viewer"])
    assert browser_page.goto("/ui/drift").status == 200
    browser_page.page.wait_for_selector("div.plot[data-rendered=true] svg", timeout=15_000)
    assert browser_page.page.locator("div.plot[data-rendered=true] svg.main-svg").count() >= 2
    check = browser_page.page.inner_text("#check-support-drift")
    assert "dataset drift" in check and "3 of 4 tested columns drifted" in check
    assert "latency_ms" in check and "chisquare" in check and "0.05" in check
    assert "globex-drift" not in browser_page.page.inner_text("main")
    browser_page.shot("monitor-drift")
    browser_page.clean()


def test_empty_states(site: dict[str, Any], browser_page: Watched) -> None:
    browser_page.login(site["keys"]["empty"])
    assert "No drift checks configured yet" in browser_page.goto("/ui/drift").text()
    assert "No alerts configured" in browser_page.goto("/ui/alerts").text()
    browser_page.goto("/ui/escalations")
    assert "No escalations match" in browser_page.page.inner_text("#escalation-table")
    browser_page.clean()


def test_alert_pages_and_notification_link(site: dict[str, Any],
                                           browser_page: Watched) -> None:
    browser_page.login(site["keys"]["viewer"])
    assert browser_page.goto("/ui/alerts").status == 200
    opened = browser_page.page.inner_text("#open-alerts")
    assert "rule:support-errors" in opened and "critical" in opened and "firing" in opened
    assert "rule:support-latency" not in opened
    recent = browser_page.page.inner_text("#recent-alerts")
    assert "rule:support-latency" in recent and "resolved" in recent
    assert "globex" not in browser_page.page.inner_text("main")
    browser_page.shot("monitor-alerts")
    # The URL stored with the alert (and sent in notifications) opens its page.
    with site["engine"].connect() as connection:
        link = connection.execute(text("select url from alerts where id = 'al_old_1'")).scalar()
    assert link == f"{site['url']}/ui/alerts/al_old_1"
    assert browser_page.page.goto(link).status == 200
    events = browser_page.page.inner_text("#alert-events")
    assert [e for e in ("pending", "firing", "resolved") if e in events] == [
        "pending", "firing", "resolved"]
    assert "Scale the support service." in browser_page.page.inner_text("#runbook")
    browser_page.shot("monitor-alert")
    assert browser_page.goto("/ui/alerts/al_globex").status == 404  # another tenant's
    assert browser_page.page.locator("#slo-budgets").count() == 0  # the platform's SLO
    browser_page.clean(404)


def test_platform_admins_see_slo_error_budgets(site: dict[str, Any],
                                               browser_page: Watched) -> None:
    browser_page.login(API_KEY)  # the static admin key of the platform tenant
    browser_page.goto("/ui/alerts")
    budgets = browser_page.page.inner_text("#slo-budgets")
    assert "support-availability" in budgets and "99%" in budgets
    browser_page.clean()


def test_escalation_review_through_the_forms(site: dict[str, Any],
                                             browser_page: Watched) -> None:
    ticket = site["ticket"]
    browser_page.login(site["keys"]["viewer"])  # no escalations:read
    assert "Escalations" not in browser_page.page.inner_text("header nav")
    assert browser_page.goto("/ui/escalations").status == 403
    browser_page.page.click("header button[type=submit]")
    browser_page.page.wait_for_url("**/ui/login")

    browser_page.login(site["keys"]["operator"])
    browser_page.goto("/ui/escalations")
    assert browser_page.page.locator("#escalation-table a.ticket-link").count() == 2
    browser_page.goto("/ui/escalations?overdue=yes")
    table = browser_page.page.inner_text("#escalation-table")
    assert site["late"] in table and ticket not in table and "overdue" in table
    browser_page.goto("/ui/escalations?status=open&overdue=no")
    browser_page.page.click("#escalation-table a.ticket-link")
    browser_page.page.wait_for_url(f"**/ui/escalations/{ticket}")
    assert QUESTION in browser_page.page.inner_text("#conversation")
    browser_page.shot("monitor-escalation")

    browser_page.page.click("#claim-form button[type=submit]")
    browser_page.page.wait_for_url("**?done=claim")
    assert browser_page.page.inner_text("#ticket-status") == "claimed"
    browser_page.page.fill("#answer-form textarea[name=answer]", "It was sent today.")
    browser_page.page.click("#answer-form button[type=submit]")
    browser_page.page.wait_for_url("**?done=answer")
    assert browser_page.page.inner_text("#ticket-status") == "answered"
    assert "It was sent today." in browser_page.page.inner_text("#answer")
    browser_page.page.fill("#resolve-form input[name=resolution]", "refunded")
    browser_page.page.click("#resolve-form button[type=submit]")
    browser_page.page.wait_for_url("**?done=resolve")
    assert browser_page.page.inner_text("#ticket-status") == "resolved"
    assert browser_page.page.locator("#actions").count() == 0
    stored = get_ticket(site["engine"], ticket, tenant_id="acme")
    assert stored.status == "resolved" and stored.answer == "It was sent today."
    assert stored.resolution == "refunded" and (stored.claimed_by or "").startswith("key:")

    # A form without the session's CSRF token is refused, and nothing changes.
    response = browser_page.page.request.post(
        f"{site['url']}/ui/escalations/{site['late']}/claim", form={"csrf": "forged"})
    assert response.status == 400
    assert get_ticket(site["engine"], site["late"], tenant_id="acme").status == "open"
    browser_page.clean(403)  # the viewer's refused queue


def test_stored_spans_in_the_waterfall(site: dict[str, Any], browser_page: Watched) -> None:
    browser_page.login(site["keys"]["viewer"])
    browser_page.goto(f"/ui/traces/{site['spanned']}")
    browser_page.page.wait_for_selector("div.plot[data-rendered=true] svg", timeout=15_000)
    spans = browser_page.page.inner_text("#spans")
    assert "stored-span-retry" in spans and "UpstreamTimeout" in spans
    assert "Spans recorded by the tracer" in browser_page.page.inner_text("main")
    assert browser_page.page.locator("#spans td.depth-2").count() == 1
    browser_page.shot("monitor-stored-spans")
    browser_page.clean()
