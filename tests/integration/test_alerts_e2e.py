"""Alerts end to end: a real `shipyard serve` (two workers) in front of a real `shipyard sim`.

The sim starts failing, the SLO's burn-rate alert fires, the sim heals, the alert resolves —
each exactly once — delivered to a real webhook receiver (aiohttp on 127.0.0.1, checking the
HMAC signature), a Slack-compatible one, and a real SMTP server (aiosmtpd). The SRE workbook's
1h/5m windows run scaled by `alerts.time_scale` to 7.2 s / 0.6 s.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from loadgen import CHAT, faults

from conftest import API_KEY, REPO, Proc, free_port
from shipyard.monitor.channels import SIGNATURE_HEADER, verify_signature

HOOK_SECRET = "hook-secret-for-tests"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    url: str
    posts: list[Received] = field(default_factory=list)

    def events(self, path: str) -> list[str]:
        out = []
        for post in self.posts:
            if post.path != path:
                continue
            if path == "/hook":
                out.append(post.json["event"])
            else:
                out.append(post.headers.get("x-shipyard-event", ""))
        return out


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A real aiohttp webhook receiver on 127.0.0.1, in a thread of its own."""
    port = free_port()
    box = Receiver(f"http://127.0.0.1:{port}")
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def handle(request: web.Request) -> web.Response:
        box.posts.append(Received(request.path, {k.lower(): v for k, v in
                                                 request.headers.items()},
                                  await request.read()))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/{path}", handle)
    runner = web.AppRunner(app)

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    yield box
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


class Inbox:
    """An aiosmtpd handler keeping every message."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp() -> Iterator[tuple[int, Inbox]]:
    """A real SMTP server (aiosmtpd) on 127.0.0.1."""
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller.port, inbox
    controller.stop()


class Traffic:
    """A few client threads sending chat completions at a modest pace until stopped."""

    def __init__(self, gateway: Proc, threads: int = 4, pause_s: float = 0.04) -> None:
        self.url = f"{gateway.url}/v1/chat/completions"
        self.pause_s = pause_s
        self.stopping = threading.Event()
        self.statuses: list[int] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for thread in self.threads:
            thread.start()

    def _run(self) -> None:
        body = json.dumps(CHAT).encode()
        while not self.stopping.is_set():
            request = urllib.request.Request(self.url, data=body, headers={
                "authorization": f"Bearer {API_KEY}", "content-type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    response.read()
                    self.statuses.append(response.status)
            except urllib.error.HTTPError as exc:
                self.statuses.append(exc.code)
            except OSError:
                self.statuses.append(0)
            time.sleep(self.pause_s)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(15)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def config(tmp_path: Path, sim: Proc, receiver: Receiver, smtp_port: int) -> str:
    return f"""
store: {{url: "sqlite:///{tmp_path}/store.db"}}
traces: {{flush_interval_s: 0.05}}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
server: {{public_url: "https://shipyard.example.com"}}
providers:
  sim:
    kind: openai
    base_url: {sim.url}/v1
    timeout_s: 5
    circuit: {{open_s: 0.3, min_requests: 5}}
models:
  demo:
    provider: sim
    model: sim-chat
    retry: {{attempts: 1}}
alerts:
  interval_s: 0.2
  lease_s: 3
  time_scale: 0.002
  resolve_after: 10m
  channels:
    - {{name: hook, kind: webhook, url: "{receiver.url}/hook",
        secret: {{$env: HOOK_SECRET}}, backoff_s: 0.05}}
    - {{name: chat, kind: slack, url: "{receiver.url}/slack", backoff_s: 0.05}}
    - {{name: mail, kind: email, smtp_host: 127.0.0.1, smtp_port: {smtp_port},
        starttls: false, sender: shipyard@example.com, to: [oncall@example.com],
        backoff_s: 0.05}}
slos:
  - name: demo-availability
    sli: availability
    objective: 0.99
    service: demo
    runbook: "Check the upstream: GET /_sim/faults on the sim"
    labels: {{team: platform}}
    burn_rates:
      - {{severity: page, long_window: 1h, short_window: 5m, burn_rate: 14.4}}
"""


def test_a_burn_rate_alert_fires_and_resolves_once_to_webhook_slack_and_email(
        tmp_path: Path, start_sim: Callable[..., Proc], start_gateway: Callable[..., Proc],
        receiver: Receiver, smtp: tuple[int, Inbox]) -> None:
    smtp_port, inbox = smtp
    sim = start_sim()
    gateway = start_gateway(config(tmp_path, sim, receiver, smtp_port), workers=2,
                            env={"HOOK_SECRET": HOOK_SECRET})
    traffic = Traffic(gateway)
    try:
        time.sleep(1.5)  # healthy: nothing fires
        assert receiver.posts == [] and inbox.messages == []
        faults(sim, error_rates={"500": 1.0})
        wait_for(lambda: "firing" in receiver.events("/hook"), 30, "the firing webhook")
        faults(sim)  # healed
        wait_for(lambda: "resolved" in receiver.events("/hook"), 30, "the resolved webhook")
        # Still healthy for a while: the long window still holds the errors, the short one
        # does not, so nothing fires again.
        time.sleep(2.5)
    finally:
        traffic.stop()
    wait_for(lambda: len(inbox.messages) >= 2 and len(receiver.events("/slack")) >= 2, 15,
             "email and Slack deliveries")
    time.sleep(0.5)
    assert 200 in traffic.statuses and max(traffic.statuses) >= 500, set(traffic.statuses)
    assert receiver.events("/hook") == ["firing", "resolved"]
    assert receiver.events("/slack") == ["firing", "resolved"]
    subjects = [m["Subject"] for m in inbox.messages]
    assert subjects == ["[FIRING][page] demo-availability:page",
                        "[RESOLVED][page] demo-availability:page"]

    hooks = [p for p in receiver.posts if p.path == "/hook"]
    for post in hooks:
        assert verify_signature(HOOK_SECRET, post.body, post.headers[SIGNATURE_HEADER])
    alert = hooks[0].json["alert"]
    assert alert["url"] == f"https://shipyard.example.com/ui/alerts/{alert['id']}"
    assert alert["runbook"] == "Check the upstream: GET /_sim/faults on the sim"
    assert alert["labels"] == {"team": "platform", "slo": "demo-availability"}
    assert alert["value"] > 14.4 and "burn rate" in alert["detail"]
    assert hooks[1].json["alert"]["id"] == alert["id"]
    slack = [p.json for p in receiver.posts if p.path == "/slack"]
    assert "blocks" in slack[0] and "FIRING" in slack[0]["text"]
    assert alert["url"] in inbox.messages[0].get_payload(decode=True).decode()

    # The admin API: the alert with its history, and the SLO's error budget.
    request = urllib.request.Request(f"{gateway.url}/v1/admin/alerts",
                                     headers={"authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        listing = json.loads(response.read())
    [stored] = listing["data"]
    assert stored["id"] == alert["id"] and stored["state"] == "resolved"
    kinds = [e["event"] for e in stored["events"]]
    assert kinds.count("firing") == 1 and kinds.count("resolved") == 1
    assert kinds.count("notified") == 6  # 3 channels x (firing, resolved)
    [slo] = listing["slos"]
    assert slo["name"] == "demo-availability" and slo["bad"] > 0 and slo["requests"] > slo["bad"]

    # The CLI reads the same store.
    out = subprocess.run(
        [sys.executable, "-m", "shipyard", "alerts", "list", "--json", "--store-url",
         f"sqlite:///{tmp_path}/store.db"], capture_output=True, text=True, cwd=REPO,
        timeout=60, check=True).stdout
    [line] = out.splitlines()
    assert json.loads(line)["id"] == alert["id"]
