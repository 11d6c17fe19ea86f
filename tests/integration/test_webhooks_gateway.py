"""Webhooks end to end: a real `shipyard serve` opens an escalation whose webhook cannot be
delivered (nobody listens), is killed with SIGKILL, and after a restart delivers it to the
receiver printed in docs/integration.md (run as printed, from outside the repo). A recording
forwarder in front of it captures the delivery, which is then replayed: inside the tolerance
the receiver acknowledges it without processing it again; with a re-stamped timestamp it is
refused (signature); after the tolerance it is refused (stale). The delivery log, attempt log
and redelivery are checked through the admin API, the CLI and the store; the URL's token
never reaches the gateway's log."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web

from conftest import API_KEY, REPO, free_port, launch_gateway
from doc_blocks import take
from shipyard.store import create_store_engine, migrate
from shipyard.webhooks import generate_secret
from shipyard.work import WorkQueue

DOC = REPO / "docs" / "integration.md"
RECEIVER = take("docs/integration.md", "### Receiving", "python", containing="class Receiver")


def doc_block(language: str, containing: str) -> str:
    [block] = [b.text for b in RECEIVER if b.lang == language and containing in b.text]
    return block


class DocReceiver:
    """docs/integration.md's receiver, run as printed in its own process."""

    def __init__(self, folder: Path, secret: str, tolerance_s: float) -> None:
        self.port = free_port()
        script = folder / "receiver.py"
        script.write_text(doc_block("python", "class Receiver"))
        self.log = folder / "receiver.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.script, self.secret, self.tolerance_s = script, secret, tolerance_s

    def start(self) -> None:
        env = {**os.environ, "SHIPYARD_WEBHOOK_SECRET": self.secret, "PORT": str(self.port),
               "WEBHOOK_TOLERANCE_S": str(self.tolerance_s),
               "PYTHONPATH": str(REPO / "src")}
        with self.log.open("ab") as out:
            self.process = subprocess.Popen([sys.executable, str(self.script)], stdout=out,
                                            stderr=subprocess.STDOUT, env=env,
                                            cwd=self.script.parent)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(urllib.request.Request(
                    f"http://127.0.0.1:{self.port}/", data=b"{}", method="POST"), timeout=1)
            except urllib.error.HTTPError:
                return  # it answered (400: no signature)
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the receiver did not start:\n" + self.log.read_text())

    def processed(self) -> list[str]:
        return [line.split()[0] for line in self.log.read_text().splitlines()
                if line.startswith("msg_")]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


class Tap:
    """A forwarder on 127.0.0.1 that records each request before passing it on."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target = f"http://127.0.0.1:{target_port}"
        self.seen: list[tuple[dict[str, str], bytes, int]] = []
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def forward(request: web.Request) -> web.Response:
            body = await request.read()
            headers = {k.lower(): v for k, v in request.headers.items()
                       if k.lower() not in ("host", "content-length")}
            try:
                async with ClientSession() as session, session.post(
                        self.target + request.path_qs, data=body, headers=headers) as answer:
                    status, text = answer.status, await answer.read()
            except OSError:
                status, text = 502, b"receiver down"
            self.seen.append((headers, body, status))
            return web.Response(status=status, body=text)

        def serve() -> None:
            asyncio.set_event_loop(self.loop)
            app = web.Application()
            app.router.add_post("/{tail:.*}", forward)
            self.runner = web.AppRunner(app)
            self.loop.run_until_complete(self.runner.setup())
            self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def api(gateway: Any, method: str, path: str) -> tuple[int, Any]:
    request = urllib.request.Request(f"{gateway.url}{path}", method=method,
                                     headers={"authorization": f"Bearer {API_KEY}"},
                                     data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read())


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    secret = generate_secret()
    outside = tmp_path / "outside-the-repo"
    outside.mkdir()
    receiver = DocReceiver(outside, secret, tolerance_s=3)
    tap = Tap(receiver.port)
    url = f"sqlite:///{tmp_path}/store.db"
    engine = create_store_engine(url)
    migrate(engine)
    config = f"""
store: {{url: "{url}"}}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
work: {{lease_s: 2, poll_interval_s: 0.1}}
providers:
  py: {{kind: python, function: "escalation_services:support_model"}}
models:
  support:
    provider: py
    escalation:
      enabled: true
      webhook_url: "http://127.0.0.1:{tap.port}/hooks?token=url-token-never-logged"
      webhook_secret: {{$env: HOOK_SECRET}}
      webhook_retries: 10
"""
    state: dict[str, Any] = {"receiver": receiver, "tap": tap, "engine": engine,
                             "folder": tmp_path, "config": config, "secret": secret,
                             "url": url, "gateways": []}
    try:
        yield state
    finally:
        for gateway in state["gateways"]:
            gateway.stop()
        receiver.stop()
        tap.close()
        engine.dispose()


def start(world: dict[str, Any]) -> Any:
    gateway = launch_gateway(world["folder"], world["config"],
                             env={"HOOK_SECRET": world["secret"]})
    world["gateways"].append(gateway)
    return gateway


def test_a_delivery_survives_a_crash_and_a_replay_is_refused(world: dict[str, Any]) -> None:
    queue = WorkQueue(world["engine"])
    gateway = start(world)
    status, body = api(gateway, "GET", "/v1/admin/webhooks/endpoints")
    assert status == 200
    [endpoint] = body["data"]
    assert endpoint["name"] == "models.support.escalation" and endpoint["signed"] is True
    assert "token" not in json.dumps(body)  # the host only, never the URL

    # An escalation: its webhook is queued; nobody listens behind the tap yet.
    request = urllib.request.Request(
        f"{gateway.url}/v1/chat/completions", method="POST",
        data=json.dumps({"model": "support", "messages": [
            {"role": "user", "content": "I want to talk to a real person"}]}).encode(),
        headers={"authorization": f"Bearer {API_KEY}", "content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        ticket = json.loads(response.read())["shipyard"]["escalation"]["id"]
    [item] = wait_for(lambda: [i for i in queue.list_items(tenant_id=None, kind="webhook")
                               if i.attempts >= 2], 30, "two failed attempts")
    assert item.status in ("queued", "running") and item.payload["type"] == "escalation.opened"

    # SIGKILL: whatever was in flight is abandoned; the store keeps the delivery.
    gateway.stop(signal.SIGKILL)
    assert queue.get(item.id, tenant_id=None).status in ("queued", "running")
    world["receiver"].start()
    gateway = start(world)  # same store: the new process delivers it
    wait_for(lambda: queue.get(item.id, tenant_id=None).status == "succeeded", 60,
             "the delivery after the restart")
    assert world["receiver"].processed() == [item.id]
    delivered = [s for s in world["tap"].seen if s[2] == 204]
    headers, raw, _ = delivered[0]
    assert headers["webhook-id"] == item.id
    event = json.loads(raw)
    assert event["type"] == "escalation.opened" and event["escalation"]["id"] == ticket
    # The deprecated header still comes along this release.
    assert headers["x-shipyard-signature"].startswith("sha256=")

    # Replays straight to the receiver: the same delivery is acknowledged, not processed again.
    receiver_url = f"http://127.0.0.1:{world['receiver'].port}/hooks"
    assert post(receiver_url, raw, headers)[0] == 204
    assert world["receiver"].processed() == [item.id]
    # A re-stamped timestamp does not match the signature.
    restamped = str(int(headers["webhook-timestamp"]) + 1)
    status, text = post(receiver_url, raw, {**headers, "webhook-timestamp": restamped})
    assert status == 400 and "No webhook-signature matches" in text
    # After the tolerance (3 s here), the captured delivery is refused as stale.
    time.sleep(3.5)
    status, text = post(receiver_url, raw, headers)
    assert status == 400 and "tolerance" in text

    # The delivery log: failed attempts, then the delivery, with code and latency.
    status, listing = api(gateway, "GET", "/v1/admin/webhooks/deliveries?status=succeeded")
    assert status == 200
    [row] = [d for d in listing["data"] if d["id"] == item.id]
    assert row["attempts"] >= 2 and row["last_status_code"] == 204
    assert row["last_latency_ms"] >= 0 and row["endpoint"] == "models.support.escalation"
    status, detail = api(gateway, "GET", f"/v1/admin/webhooks/deliveries/{item.id}")
    assert status == 200 and json.loads(detail["body"])["escalation"]["id"] == ticket
    outcomes = [a["outcome"] for a in detail["attempt_log"]]
    assert outcomes[-1] == "succeeded" and "retry" in outcomes
    assert any(a["error"] == "HTTP 502 from the receiver." and a["status_code"] == 502
               for a in detail["attempt_log"])  # the tap's answer while nobody listened
    status, _ = api(gateway, "POST", f"/v1/admin/webhooks/deliveries/{item.id}/nope")
    assert status in (404, 405)

    # Redelivery from the CLI: the same webhook-id again, acknowledged, not reprocessed.
    before = len(world["tap"].seen)
    cli = subprocess.run([sys.executable, "-m", "shipyard", "webhooks", "redeliver", item.id,
                          "--store-url", world["url"]], capture_output=True, text=True,
                         timeout=60, cwd=world["folder"])
    assert cli.returncode == 0, cli.stderr
    assert f"Queued {item.id} for redelivery to models.support.escalation." in cli.stdout
    wait_for(lambda: len(world["tap"].seen) > before, 30, "the redelivery")
    assert world["tap"].seen[-1][0]["webhook-id"] == item.id
    wait_for(lambda: queue.get(item.id, tenant_id=None).status == "succeeded", 30,
             "the redelivery to finish")
    # ...and from the admin API; while it is queued a second request is a 409.
    status, queued = api(gateway, "POST", f"/v1/admin/webhooks/deliveries/{item.id}/redeliver")
    assert status == 202 and queued["id"] == item.id
    wait_for(lambda: queue.get(item.id, tenant_id=None).status == "succeeded", 30,
             "the API redelivery")
    assert world["receiver"].processed() == [item.id]
    cli = subprocess.run([sys.executable, "-m", "shipyard", "webhooks", "list", "--json",
                          "--store-url", world["url"]], capture_output=True, text=True,
                         timeout=60, cwd=world["folder"])
    [listed] = [json.loads(line) for line in cli.stdout.splitlines()]
    assert listed["id"] == item.id and listed["status"] == "succeeded"

    gateway.stop()
    logs = "".join(g.output() for g in world["gateways"])
    assert "url-token-never-logged" not in logs and world["secret"] not in logs
