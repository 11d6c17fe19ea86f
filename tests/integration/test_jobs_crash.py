"""Durable jobs survive `kill -9`: a real `shipyard serve` with `shipyard sim` upstream is
killed while 200 jobs are queued and running, then started again on the same store; every
job ends exactly once (succeeded, or dead-lettered with its error), results match what the
target answers, and each final state is announced by exactly one signed webhook — on SQLite
and on PostgreSQL."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from conftest import API_KEY, gateway_config, launch_gateway, launch_sim
from shipyard.store import create_store_engine
from shipyard.webhooks import generate_secret, verify
from shipyard.work import WorkQueue
from shipyard.work.tables import work_attempts

SECRET = generate_secret()


class Receiver(BaseHTTPRequestHandler):
    events: list[tuple[str, dict[str, Any]]] = []
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        event = verify(SECRET, body, dict(self.headers))
        with Receiver.lock:
            Receiver.events.append((self.headers["webhook-id"], event))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _counts(queue: WorkQueue) -> dict[str, int]:
    out: dict[str, int] = {}
    for (_, status), n in queue.counts_by_kind("job:").items():
        out[status] = out.get(status, 0) + n
    return out


def _direct_chat(sim_url: str, body: dict[str, Any]) -> str:
    request = urllib.request.Request(
        f"{sim_url}/v1/chat/completions", data=json.dumps({**body, "model": "sim-chat"})
        .encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return str(json.loads(answer.read())["choices"][0]["message"]["content"])


def test_jobs_survive_kill_9(tmp_path: Path, store_url: str) -> None:
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    Receiver.events = []
    sim = launch_sim(tmp_path, "--latency", "120")
    config = gateway_config(sim.port, store_url, extra=f"""
services:
  sleeper: {{function: "sample_services:slow_async"}}
  broken: {{function: "sample_services:broken"}}
work: {{lease_s: 2, poll_interval_s: 0.1}}
jobs:
  concurrency: 6
  max_attempts: 4
  backoff_base_s: 0.2
  backoff_max_s: 1
  targets:
    broken: {{max_attempts: 2}}
webhooks:
  backoff_base_s: 0.2
  endpoints:
    jobs:
      url: http://127.0.0.1:{receiver.server_port}/hooks
      secret: {{$env: JOB_HOOK_SECRET}}
      events: ["job.*"]
""")
    env = {"JOB_HOOK_SECRET": SECRET}
    gateway = launch_gateway(tmp_path, config, env=env)
    engine = create_store_engine(store_url)
    queue = WorkQueue(engine)
    headers = {"authorization": f"Bearer {API_KEY}"}
    expected: dict[str, tuple[str, Any]] = {}
    try:
        with httpx.Client(base_url=gateway.url, headers=headers, timeout=30) as client:
            for i in range(200):
                if i % 20 == 19:
                    answer = client.post("/v1/services/broken/jobs", json={"i": i})
                    kind, want = "dead", None
                elif i % 4 == 3:
                    seconds = round(0.2 + (i % 5) * 0.05, 2)
                    answer = client.post("/v1/services/sleeper/jobs",
                                         json={"seconds": seconds})
                    kind, want = "service", {"slept": seconds}
                else:
                    chat = {"messages": [{"role": "user", "content": f"job number {i}"}]}
                    answer = client.post("/v1/models/demo/jobs", json=chat)
                    kind, want = "chat", chat
                assert answer.status_code == 202, answer.text
                job = answer.json()
                assert job["status"] in ("queued", "running", "succeeded")
                expected[job["id"]] = (kind, want)
        # Kill -9 while some jobs are done, some running and most still queued.
        deadline = time.monotonic() + 60
        while _counts(queue).get("succeeded", 0) < 25:
            assert time.monotonic() < deadline, _counts(queue)
            time.sleep(0.05)
        before = _counts(queue)
        gateway.process.kill()
        gateway.process.wait(10)
        assert before.get("running", 0) > 0 and before.get("queued", 0) > 0, before

        gateway = launch_gateway(tmp_path, config, env=env)
        deadline = time.monotonic() + 180
        while True:
            counts = _counts(queue)
            if counts.get("queued", 0) + counts.get("running", 0) == 0:
                break
            assert time.monotonic() < deadline, counts
            time.sleep(0.2)

        with httpx.Client(base_url=gateway.url, headers=headers, timeout=30) as client:
            jobs: dict[str, dict[str, Any]] = {}
            after: str | None = None
            while True:
                page = client.get("/v1/jobs", params={"limit": 100, **(
                    {"after": after} if after else {})}).json()
                jobs.update({j["id"]: j for j in page["data"]})
                if not page["has_more"]:
                    break
                after = page["last_id"]
        assert set(jobs) == set(expected)
        for job_id, (kind, want) in expected.items():
            job = jobs[job_id]
            if kind == "dead":
                assert job["status"] == "dead" and job["attempts"] == 2, job
                message = job["error"]["message"]
                if "stopped renewing its lease" not in message:  # its last try died with
                    # the gateway: that is its last error; else the service's own
                    assert "the model file is missing" in message, job
                    assert job["error"]["status_code"] == 500, job
            else:
                assert job["status"] == "succeeded", job
                if kind == "service":
                    assert job["result"]["output"] == want, job
                else:
                    assert job["result"]["choices"][0]["message"]["content"] == _direct_chat(
                        sim.url, want), job
                assert job["trace_id"]

        # Exactly once: one finishing attempt per job, and some attempts were lost to the
        # kill (taken back from the dead gateway, then run again).
        with engine.connect() as connection:
            finishing = dict(connection.execute(
                select(work_attempts.c.item_id, func.count())
                .where(work_attempts.c.outcome.in_(("succeeded", "dead")),
                       work_attempts.c.kind.startswith("job:"))
                .group_by(work_attempts.c.item_id)).fetchall())
            lost = connection.execute(select(func.count()).where(
                work_attempts.c.outcome == "lost",
                work_attempts.c.kind.startswith("job:"))).scalar()
        assert finishing == dict.fromkeys(expected, 1)
        assert lost and lost > 0

        # One webhook per job's final state (a redelivery repeats its webhook-id).
        deadline = time.monotonic() + 60
        while True:
            with Receiver.lock:
                by_id = dict(Receiver.events)
            announced = {e["job"]["id"]: (e["type"], e["job"]["status"]) for e in
                         by_id.values()}
            if len(announced) == len(expected):
                break
            assert time.monotonic() < deadline, (len(announced), len(expected))
            time.sleep(0.2)
        assert len(by_id) == len(expected)  # no job announced under two webhook-ids
        for job_id, (kind, _) in expected.items():
            assert announced[job_id] == (("job.failed", "dead") if kind == "dead" else
                                         ("job.completed", "succeeded"))
    finally:
        gateway.stop()
        sim.stop()
        receiver.shutdown()
        receiver.server_close()
        engine.dispose()


def test_a_batch_resumes_after_kill_9(tmp_path: Path) -> None:
    """A batch whose gateway is killed mid-way resumes from its last checkpoint on the next
    start: every line is answered exactly once in the output file, in input order."""
    import openai

    sim = launch_sim(tmp_path, "--latency", "40")
    config = gateway_config(sim.port, f"sqlite:///{tmp_path}/store.db", extra="""
work: {lease_s: 2, poll_interval_s: 0.1}
batches: {line_concurrency: 4, checkpoint_s: 0.2}
""")
    gateway = launch_gateway(tmp_path, config)
    lines = 300
    source = tmp_path / "requests.jsonl"
    source.write_text("".join(json.dumps({
        "custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "demo", "messages": [{"role": "user", "content": f"n {i}"}]}}) + "\n"
        for i in range(lines)))
    try:
        with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=API_KEY,
                           max_retries=0) as client:
            with source.open("rb") as handle:
                uploaded = client.files.create(file=handle, purpose="batch")
            batch = client.batches.create(input_file_id=uploaded.id,
                                          endpoint="/v1/chat/completions",
                                          completion_window="24h")
            deadline = time.monotonic() + 60
            while True:
                seen = client.batches.retrieve(batch.id)
                if seen.request_counts is not None and seen.request_counts.completed >= 60:
                    break
                assert time.monotonic() < deadline, seen
                time.sleep(0.05)
        assert seen.status == "in_progress"
        gateway.process.kill()
        gateway.process.wait(10)
        gateway = launch_gateway(tmp_path, config)
        with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=API_KEY,
                           max_retries=0) as client:
            deadline = time.monotonic() + 120
            while (done := client.batches.retrieve(batch.id)).status != "completed":
                assert done.status == "in_progress" and time.monotonic() < deadline, done
                time.sleep(0.2)
            assert done.request_counts is not None
            assert (done.request_counts.completed, done.request_counts.failed) == (lines, 0)
            assert done.output_file_id is not None
            output = [json.loads(x) for x in
                      client.files.content(done.output_file_id).text.splitlines()]
        assert [o["custom_id"] for o in output] == [f"c{i}" for i in range(lines)]
        # Resumed, not restarted: only the lines after the last checkpoint ran twice.
        stats = httpx.get(f"{sim.url}/_sim/stats").json()
        calls = sum(int(n) for key, n in stats.items() if "chat" in key)
        assert lines <= calls < lines + 60, stats
    finally:
        gateway.stop()
        sim.stop()
