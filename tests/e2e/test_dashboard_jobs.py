"""The dashboard's Jobs and Batches pages in a real browser (headless Chromium via Playwright,
against a real `shipyard serve` with `shipyard sim` upstream): real jobs on a service and a
model alias, one dead-lettered, a real batch through the openai SDK; the pages' rows, counts
and lanes, the job detail, file downloads, Cancel from the page, a viewer who may read but not
cancel, and another tenant's jobs kept out."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from conftest import API_KEY, gateway_config, launch_gateway, launch_sim
from shipyard.store import create_store_engine, migrate
from shipyard.store import tenants as store

playwright_api = pytest.importorskip("playwright.sync_api")
from test_dashboard import ARTIFACTS, CHROMIUM, Watched  # noqa: E402

EXTRA = """
services:
  classify: {function: "sample_services:classify",
             input_schema: {type: object, required: [text]}}
  broken: {function: "sample_services:broken"}
  slow: {function: "sample_services:slow_async"}
work: {poll_interval_s: 0.1}
jobs:
  backoff_base_s: 0.05
  targets:
    slow: {concurrency: 1}
    broken: {max_attempts: 2}
batches: {line_concurrency: 1, checkpoint_s: 0.2}
webhooks:
  endpoints:
    hooks: {url: "http://127.0.0.1:PORT/hooks", events: ["job.*"],
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}
"""


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _wait(check: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Api:
    def __init__(self, url: str, key: str) -> None:
        self.http = httpx.Client(base_url=url, headers={"authorization": f"Bearer {key}"},
                                 timeout=30)

    def job(self, path: str, body: dict[str, Any], **params: Any) -> str:
        answer = self.http.post(path, json=body, params=params)
        assert answer.status_code == 202, answer.text
        return str(answer.json()["id"])

    def get(self, job_id: str) -> dict[str, Any]:
        answer = self.http.get(f"/v1/jobs/{job_id}")
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def status(self, job_id: str) -> str:
        return str(self.get(job_id)["status"])


def _jsonl(lines: list[dict[str, Any]]) -> io.BytesIO:
    data = io.BytesIO("".join(json.dumps(line) + "\n" for line in lines).encode())
    data.name = "requests.jsonl"
    return data


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    folder = tmp_path_factory.mktemp("dashboard-jobs")
    url = f"sqlite:///{folder}/store.db"
    engine = create_store_engine(url)
    migrate(engine)
    for tenant in ("acme", "globex"):
        store.create_tenant(engine, tenant)
    keys = {role: store.create_key(engine, tenant_id="acme", name=role, role=role)[1]
            for role in ("operator", "viewer")}
    keys["globex"] = store.create_key(engine, tenant_id="globex", name="g", role="operator")[1]
    engine.dispose()
    receiver = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    sim = launch_sim(folder)
    extra = EXTRA.replace("PORT", str(receiver.server_port))
    gateway = launch_gateway(folder, gateway_config(sim.port, url, extra=extra))
    acme, globex = Api(gateway.url, keys["operator"]), Api(gateway.url, keys["globex"])
    jobs = {
        "classify": acme.job("/v1/services/classify/jobs", {"text": "I want a refund"}),
        "model": acme.job("/v1/models/demo-full/jobs",
                          {"messages": [{"role": "user", "content": "hello from a job"}]}),
        "broken": acme.job("/v1/services/broken/jobs", {"x": 1}),
        "slow1": acme.job("/v1/services/slow/jobs", {"seconds": 60}),
        "globex": globex.job("/v1/services/classify/jobs", {"text": "globex secret"}),
    }
    _wait(lambda: acme.status(jobs["slow1"]) == "running", "the first slow job to run")
    # The lane runs one at a time: these two wait behind the first.
    jobs["slow2"] = acme.job("/v1/services/slow/jobs", {"seconds": 60})
    jobs["slow3"] = acme.job("/v1/services/slow/jobs", {"seconds": 60})
    for name, want in (("classify", "succeeded"), ("model", "succeeded"), ("broken", "dead")):
        _wait(lambda n=name, w=want: acme.status(jobs[n]) == w, f"the {name} job")
    _wait(lambda: globex.status(jobs["globex"]) == "succeeded", "globex's job")

    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=keys["operator"])
    done_in = client.files.create(file=_jsonl([
        {"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "demo", "messages": [{"role": "user", "content": f"q{i}"}]}}
        for i in range(3)]), purpose="batch")
    done = client.batches.create(input_file_id=done_in.id, endpoint="/v1/chat/completions",
                                 completion_window="24h")
    done = _wait(lambda: (b := client.batches.retrieve(done.id)).status == "completed" and b,
                 "the batch")
    theirs = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=keys["globex"])
    their_file = theirs.files.create(file=_jsonl([
        {"custom_id": "g0", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "demo", "messages": [{"role": "user", "content": "g"}]}}]),
        purpose="batch")
    their_batch = theirs.batches.create(input_file_id=their_file.id,
                                        endpoint="/v1/chat/completions",
                                        completion_window="24h")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            yield {"url": gateway.url, "keys": keys, "browser": browser, "jobs": jobs,
                   "acme": acme, "client": client, "done": done,
                   "theirs": (their_batch.id, their_file.id)}
        finally:
            browser.close()
            for name in ("slow1", "slow2", "slow3"):  # nothing left running at shutdown
                acme.http.post(f"/v1/jobs/{jobs[name]}/cancel")
            acme.http.close()
            globex.http.close()
            gateway.stop()
            sim.stop()
            receiver.shutdown()
            receiver.server_close()


@pytest.fixture
def browser_page(site: dict[str, Any]) -> Iterator[Watched]:
    watched = Watched(site)
    yield watched
    watched.close()


def test_the_jobs_page(site: dict[str, Any], browser_page: Watched) -> None:
    page, jobs, acme = browser_page.page, site["jobs"], site["acme"]
    browser_page.login(site["keys"]["operator"])
    assert "Jobs" in page.inner_text("header nav") and "Batches" in page.inner_text("header nav")
    assert browser_page.goto("/ui/jobs").status == 200
    counts = {s: page.inner_text(f"#count-{s}") for s in ("queued", "running", "succeeded",
                                                          "dead", "cancelled")}
    assert counts == {"queued": "2", "running": "1", "succeeded": "2", "dead": "1",
                      "cancelled": "0"}
    table = page.inner_text("#job-table")
    assert all(jobs[n] in table for n in ("classify", "model", "broken", "slow1", "slow2"))
    assert jobs["globex"] not in page.content()  # another tenant's job
    lane = page.locator("#lane-table tr[data-target=slow]")
    assert [lane.locator(f"td.{c}").inner_text() for c in ("queued", "running")] == ["2", "1"]
    assert lane.locator("td").nth(4).inner_text() == "1"  # jobs.targets.slow.concurrency
    dead = page.inner_text("#dead-table")
    last_error = acme.get(jobs["broken"])["error"]["message"]
    assert jobs["broken"] in dead and last_error and last_error in dead
    browser_page.shot("jobs")

    page.select_option("#job-filters select[name=status]", "dead")
    page.click("#job-filters button[type=submit]")
    page.wait_for_url("**status=dead**")
    assert jobs["broken"] in page.inner_text("#job-table")
    assert jobs["classify"] not in page.inner_text("#job-table")
    assert browser_page.goto("/ui/jobs?target=a%00b").status == 400
    assert browser_page.goto("/ui/jobs?status=lost").status == 400
    browser_page.goto("/ui/jobs?target=classify")
    assert jobs["classify"] in page.inner_text("#job-table")
    assert jobs["model"] not in page.inner_text("#job-table")

    # A forged form changes nothing.
    forged = page.request.post(f"{site['url']}/ui/jobs/{jobs['slow2']}/cancel",
                               form={"csrf": "forged"})
    assert forged.status == 400 and acme.status(jobs["slow2"]) == "queued"
    # Another tenant's job cannot be reached.
    assert browser_page.goto(f"/ui/jobs/{jobs['globex']}").status == 404

    browser_page.goto("/ui/jobs")
    page.locator(f"tr[data-job={jobs['slow2']}] button", has_text="Cancel").click()
    page.wait_for_url("**done=**")
    assert "updated" in page.inner_text("#notice")
    assert acme.status(jobs["slow2"]) == "cancelled"
    assert page.inner_text("#count-cancelled") == "1"
    browser_page.clean(400, 404)


def test_a_job_page(site: dict[str, Any], browser_page: Watched) -> None:
    page, jobs, acme = browser_page.page, site["jobs"], site["acme"]
    browser_page.login(site["keys"]["operator"])
    browser_page.goto(f"/ui/jobs/{jobs['classify']}")
    assert page.inner_text("#job-status") == "succeeded"
    rows = [r.split("\t") for r in page.inner_text("#attempt-table").splitlines()[1:]]
    assert [(r[0], r[4], r[5]) for r in rows] == [("1", "succeeded", "200")]
    assert '"label": "complaint"' in page.inner_text("#result")
    trace = acme.get(jobs["classify"])["trace_id"]
    assert trace and page.get_attribute("#trace-link", "href") == f"/ui/traces/{trace}"

    # Its job.completed webhook, linked to the delivery's page.
    def announced() -> bool:
        browser_page.goto(f"/ui/jobs/{jobs['classify']}")
        table = page.locator("#delivery-table")
        return table.count() == 1 and "succeeded" in table.inner_text()
    _wait(announced, "the job.completed delivery")
    assert "job.completed" in page.inner_text("#delivery-table")
    page.click("#delivery-table a")
    assert page.inner_text("#delivery-status") == "succeeded"

    # demo-full captures payloads: its trace's request is shown (as on the trace page).
    def captured() -> bool:
        browser_page.goto(f"/ui/jobs/{jobs['model']}")
        return page.locator("#captured-request").count() == 1
    _wait(captured, "the model job's trace")
    assert "hello from a job" in page.inner_text("#captured-request")

    browser_page.goto(f"/ui/jobs/{jobs['broken']}")
    assert page.inner_text("#job-status") == "dead"
    error = acme.get(jobs["broken"])["error"]
    assert error["message"] in page.inner_text("#job-error")
    assert [r.split("\t")[4] for r in
            page.inner_text("#attempt-table").splitlines()[1:]] == ["retry", "dead"]
    browser_page.shot("job-dead")
    page.click("#retry-form button")
    page.wait_for_url("**done=retry**")
    assert "Queued again." in page.inner_text("#notice")

    def died_again() -> bool:
        browser_page.goto(f"/ui/jobs/{jobs['broken']}")
        return len(page.inner_text("#attempt-table").splitlines()[1:]) == 4
    _wait(died_again, "the retried job to die again")
    assert page.inner_text("#job-status") == "dead"

    browser_page.goto(f"/ui/jobs/{jobs['slow1']}")
    assert page.inner_text("#job-status") == "running"
    page.click("#cancel-form button")
    page.wait_for_url("**done=cancel**")
    _wait(lambda: acme.status(jobs["slow1"]) == "cancelled", "the running job to stop")
    browser_page.clean()


def test_a_viewer_may_read_but_not_act(site: dict[str, Any], browser_page: Watched) -> None:
    page, jobs, acme = browser_page.page, site["jobs"], site["acme"]
    browser_page.login(site["keys"]["viewer"])
    assert browser_page.goto("/ui/jobs").status == 200
    assert jobs["slow3"] in page.inner_text("#job-table")
    assert page.locator("#job-table button").count() == 0
    assert "inference" in page.inner_text("#no-actions")
    # Even with its own valid CSRF token, the viewer's post is refused.
    csrf = page.input_value("header input[name=csrf]")
    refused = page.request.post(f"{site['url']}/ui/jobs/{jobs['slow3']}/cancel",
                                form={"csrf": csrf})
    assert refused.status == 403 and "inference" in refused.text()
    assert acme.status(jobs["slow3"]) in ("queued", "running")
    # The answer is what GET /v1/jobs/{id} shows, and the viewer may not call that.
    browser_page.goto(f"/ui/jobs/{jobs['classify']}")
    assert page.locator("#result").count() == 0 and "complaint" not in page.content()
    assert browser_page.goto("/ui/batches").status == 200
    assert page.locator("#batch-table a.output-file").count() == 0
    output = site["done"].output_file_id
    assert page.request.get(f"{site['url']}/ui/files/{output}").status == 403
    browser_page.clean(403)


def test_the_batches_page(site: dict[str, Any], browser_page: Watched) -> None:
    page, done = browser_page.page, site["done"]
    browser_page.login(site["keys"]["operator"])
    assert browser_page.goto("/ui/batches").status == 200
    row = page.locator(f"tr[data-batch={done.id}]")
    assert row.locator("td.status").inner_text() == "completed"
    assert [row.locator(f"td.{c}").inner_text() for c in ("completed", "failed", "total")] \
        == ["3", "0", "3"]
    assert row.locator("progress").get_attribute("value") == "100"
    href = row.locator("a.output-file").get_attribute("href")
    assert href == f"/ui/files/{done.output_file_id}"
    lines = page.request.get(site["url"] + href).text().splitlines()
    assert sorted(json.loads(line)["custom_id"] for line in lines) == ["q0", "q1", "q2"]
    # Another tenant's batch is neither listed nor its file downloadable.
    their_batch, their_file = site["theirs"]
    assert their_batch not in page.content()
    assert page.request.get(f"{site['url']}/ui/files/{their_file}").status == 404
    browser_page.shot("batches")

    # A batch under way shows how far it got (one line at a time, 1.5 s each).
    client = site["client"]
    slow_in = client.files.create(file=_jsonl([
        {"custom_id": f"s{i}", "method": "POST", "url": "/v1/services/slow/invoke",
         "body": {"seconds": 1.5}} for i in range(40)]), purpose="batch")
    site["slow"] = client.batches.create(input_file_id=slow_in.id,
                                         endpoint="/v1/services/slow/invoke",
                                         completion_window="24h").id
    _wait(lambda: client.batches.retrieve(site["slow"]).request_counts.completed >= 2,
          "two lines of the slow batch")
    browser_page.goto("/ui/batches")
    slow = page.locator(f"tr[data-batch={site['slow']}]")
    assert slow.locator("td.status").inner_text() == "in_progress"
    assert slow.locator("td.total").inner_text() == "40"
    assert 5 <= int(slow.locator("progress").get_attribute("value") or 0) < 100
    slow.locator("button", has_text="Cancel").click()
    page.wait_for_url("**done=**")
    _wait(lambda: client.batches.retrieve(site["slow"]).status == "cancelled",
          "the batch to be cancelled")
    browser_page.goto("/ui/batches")
    assert page.locator(f"tr[data-batch={site['slow']}] td.status").inner_text() == "cancelled"
    assert page.locator(f"tr[data-batch={site['slow']}] button").count() == 0
    browser_page.clean()


def test_a_platform_admin_acts_on_a_tenant(site: dict[str, Any],
                                           browser_page: Watched) -> None:
    """Admins of the platform tenant see and act on any tenant's jobs with `?tenant=`, as
    the API's `?tenant=` lets them."""
    page, jobs, acme = browser_page.page, site["jobs"], site["acme"]
    browser_page.login(API_KEY)
    browser_page.goto("/ui/jobs")
    assert jobs["slow3"] not in page.inner_text("#job-table")  # the platform's own jobs
    browser_page.goto("/ui/jobs?tenant=acme")
    assert jobs["slow3"] in page.inner_text("#job-table")
    assert jobs["globex"] not in page.content()
    page.locator(f"tr[data-job={jobs['slow3']}] button", has_text="Cancel").click()
    page.wait_for_url("**tenant=acme**")
    _wait(lambda: acme.status(jobs["slow3"]) == "cancelled", "the job to be cancelled")
    assert jobs["slow3"] in page.inner_text("#job-table")
    browser_page.clean()
