"""The dashboard's Webhooks pages in a real browser (headless Chromium via Playwright,
against a real `shipyard serve` whose worker delivers to real receivers on 127.0.0.1): the
delivery log with its counts, last status codes and the dead letter, the tenant boundary,
the attempt log, and the CSRF-protected Redeliver button that turns a dead delivery into a
delivered one once the receiver is fixed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from conftest import launch_gateway
from shipyard.config import parse_config
from shipyard.store import create_store_engine, migrate
from shipyard.store import tenants as store
from shipyard.webhooks.delivery import WebhookOutbox
from shipyard.work import WorkQueue

playwright_api = pytest.importorskip("playwright.sync_api")
from test_dashboard import ARTIFACTS, CHROMIUM, Watched  # noqa: E402


class Receiver(BaseHTTPRequestHandler):
    statuses: dict[str, int] = {"/crm": 500, "/audit": 204}
    hits: list[str] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        Receiver.hits.append(self.path)
        self.send_response(Receiver.statuses.get(self.path, 404))
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _wait(check: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    folder = tmp_path_factory.mktemp("dashboard-webhooks")
    server = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"sqlite:///{folder}/store.db"
    engine = create_store_engine(url)
    migrate(engine)
    for tenant in ("acme", "globex"):
        store.create_tenant(engine, tenant)
    keys = {role: store.create_key(engine, tenant_id="acme", name=role, role=role)[1]
            for role in ("operator", "viewer")}
    config = f"""
store: {{url: "{url}"}}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
work: {{poll_interval_s: 0.1}}
webhooks:
  backoff_base_s: 0.05
  endpoints:
    crm: {{url: "http://127.0.0.1:{server.server_port}/crm", max_attempts: 2,
           secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}}
    audit: {{url: "http://127.0.0.1:{server.server_port}/audit"}}
"""
    gateway = launch_gateway(folder, config)
    outbox = WebhookOutbox.from_config(parse_config(config, environ={
        "SHIPYARD_API_KEY": "sk-unused-" + "x" * 24}), WorkQueue(engine))
    dead = outbox.send("webhooks.endpoints.crm", "job.completed", {"job": {"id": "job_1"}},
                       tenant_id="acme")
    fine = outbox.send("webhooks.endpoints.audit", "job.completed", {"job": {"id": "job_2"}},
                       tenant_id="acme")
    other = outbox.send("webhooks.endpoints.audit", "job.completed", {"job": {"id": "job_3"}},
                        tenant_id="globex")
    queue = outbox.queue
    _wait(lambda: queue.get(dead.id, tenant_id=None).status == "dead"
          and queue.get(fine.id, tenant_id=None).status == "succeeded"
          and queue.get(other.id, tenant_id=None).status == "succeeded", "the deliveries")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            yield {"url": gateway.url, "keys": keys, "browser": browser, "queue": queue,
                   "dead": dead.id, "fine": fine.id, "other": other.id}
        finally:
            browser.close()
            gateway.stop()
            server.shutdown()
            server.server_close()
            engine.dispose()


@pytest.fixture
def browser_page(site: dict[str, Any]) -> Iterator[Watched]:
    watched = Watched(site)
    yield watched
    watched.close()


def test_the_delivery_log_and_redelivery(site: dict[str, Any], browser_page: Watched) -> None:
    page = browser_page.page
    browser_page.login(site["keys"]["operator"])
    assert browser_page.goto("/ui/webhooks").status == 200
    table = page.inner_text("#webhook-table")
    assert site["dead"] in table and site["fine"] in table
    assert site["other"] not in table  # globex's delivery
    dead_row = page.locator(f"tr:has(a:text('{site['dead']}'))")
    assert "dead" in dead_row.inner_text() and "500" in dead_row.inner_text()
    assert "HTTP 500 from the receiver." in dead_row.inner_text()
    assert page.inner_text("#count-dead") == "1" and page.inner_text("#count-succeeded") == "1"
    browser_page.shot("webhooks")
    page.select_option("select[name=status]", "dead")
    page.click("#webhook-filters button[type=submit]")
    page.wait_for_url("**status=dead**")
    assert site["fine"] not in page.inner_text("#webhook-table")

    # A forged form changes nothing.
    forged = page.request.post(f"{site['url']}/ui/webhooks/{site['dead']}/redeliver",
                               form={"csrf": "forged"})
    assert forged.status == 400
    assert site["queue"].get(site["dead"], tenant_id=None).status == "dead"

    Receiver.statuses["/crm"] = 204  # the receiver is fixed
    dead_row = page.locator(f"tr:has(a:text('{site['dead']}'))")
    dead_row.locator("button", has_text="Redeliver").click()
    page.wait_for_url("**done=**")
    assert "queued for redelivery" in page.inner_text("#notice")
    _wait(lambda: site["queue"].get(site["dead"], tenant_id=None).status == "succeeded",
          "the redelivery")
    browser_page.goto(f"/ui/webhooks/{site['dead']}")
    assert page.inner_text("#delivery-status") == "succeeded"
    rows = [line.split("\t") for line in page.inner_text("#attempt-table").splitlines()[1:]]
    assert [(r[2], r[3]) for r in rows] == [("retry", "500"), ("dead", "500"),
                                            ("succeeded", "204")]
    assert "whsec_" not in page.content() and "/crm" not in page.content()
    browser_page.shot("webhook-delivery")
    browser_page.clean(400)


def test_a_viewer_may_not_open_the_log(site: dict[str, Any], browser_page: Watched) -> None:
    browser_page.login(site["keys"]["viewer"])
    assert "Webhooks" not in browser_page.page.inner_text("header nav")
    assert browser_page.goto("/ui/webhooks").status == 403
    assert "webhooks:read" in browser_page.page.inner_text("main")
    browser_page.clean(403)
