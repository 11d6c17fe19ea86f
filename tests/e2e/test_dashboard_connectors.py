"""Connectors inside `shipyard serve` (autostart), seen from outside: a CSV dropped in the
watched folder is scored by the running server, the Connectors page shows the connector's
live state and the file's run in a real browser (headless Chromium), and /metrics counts it."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import API_KEY, FIXTURES, launch_gateway
from shipyard.store import create_store_engine, migrate
from shipyard.store import tenants as store

playwright_api = pytest.importorskip("playwright.sync_api")
from test_dashboard import ARTIFACTS, CHROMIUM, Watched  # noqa: E402

SCHEMA = ('{type: object, required: [id, text], properties: {id: {type: integer}, '
          'text: {type: string}}}')


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    folder = tmp_path_factory.mktemp("dashboard-connectors")
    inbox = folder / "inbox"
    url = f"sqlite:///{folder}/store.db"
    engine = create_store_engine(url)
    migrate(engine)
    store.create_tenant(engine, "acme")
    viewer = store.create_key(engine, tenant_id="acme", name="viewer", role="viewer")[1]
    gateway = launch_gateway(folder, f"""
python_path: ["{FIXTURES}"]
store: {{url: "{url}"}}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
services:
  score: {{function: "connector_services:score", input_schema: {SCHEMA}}}
connectors:
  drops:
    kind: files
    path: {inbox}
    settle_s: 0
    poll_interval_s: 0.2
    autostart: true
    target: {{service: score}}
  nightly:
    kind: sql
    url: "sqlite:///{folder}/none.db"
    table: reviews
    key: id
    output_table: scores
    target: {{service: score}}
""")
    (inbox / "first.csv").write_text("id,text\n1,hello world\n2,bad\n")
    deadline = time.monotonic() + 30
    while not (inbox / "done" / "first.csv.summary.json").exists():
        assert time.monotonic() < deadline, gateway.output()[-3000:]
        time.sleep(0.1)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            yield {"url": gateway.url, "viewer": viewer, "browser": browser,
                   "inbox": inbox}
        finally:
            browser.close()
            gateway.stop()
            engine.dispose()


def test_the_connectors_page_and_metrics(site: dict[str, Any]) -> None:
    watched = Watched(site)
    try:
        page = watched.page
        watched.login(site["viewer"])
        assert watched.goto("/ui/connectors").status == 200
        row = page.locator("#connector-table tr[data-connector=drops]")
        assert "files" in row.inner_text() and "service score" in row.inner_text()
        assert row.locator(".state").inner_text() == "running"
        assert row.locator(".processed").inner_text() == "2"
        idle = page.locator("#connector-table tr[data-connector=nightly]")
        assert "not running here" in idle.inner_text()
        runs = page.inner_text("#connector-runs")
        assert "first.csv" in runs and "succeeded" in runs
        watched.shot("connectors")
        watched.clean()
    finally:
        watched.close()
    request = urllib.request.Request(f"{site['url']}/metrics",
                                     headers={"authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    assert 'shipyard_connector_messages_total{connector="drops",outcome="ok"} 2.0' in text
    assert 'shipyard_connector_up{connector="drops"} 1.0' in text
    assert 'shipyard_connector_runs_total{connector="drops",status="succeeded"} 1.0' in text
