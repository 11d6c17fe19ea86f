"""Alerts end to end: a real `shipyard serve` (two workers) in front of a real `shipyard sim`.

The sim starts failing, the SLO's burn-rate alert fires, the sim heals, the alert resolves —
each exactly once — delivered to a real webhook receiver (aiohttp on 127.0.0.1, checking the
HMAC signature), a Slack-compatible one, and a real SMTP server (aiosmtpd). The SRE workbook's
1h/5m windows run scaled by `alerts.time_scale` to 18 s / 1.5 s (and `resolve_after` 10m to
3 s, so a client thread stalled on a busy machine does not end the incident early).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from loadgen import CHAT, faults
from sqlalchemy import insert

from conftest import API_KEY, REPO, Proc, free_port
from shipyard.monitor.channels import SIGNATURE_HEADER, verify_signature
from shipyard.store import create_store_engine, migrate, new_trace_record
from shipyard.store.tables import traces

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

    def ok(self) -> int:
        """Requests answered 200 so far: the test's clock is work done, not wall time."""
        return self.statuses.count(200)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _admin(gateway: Proc, path: str) -> Any:
    request = urllib.request.Request(f"{gateway.url}{path}",
                                     headers={"authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def notified(gateway: Proc) -> int:
    """Notifications the alert state machine has recorded as delivered."""
    return sum(e["event"] == "notified" for alert in _admin(gateway, "/v1/admin/alerts")["data"]
               for e in alert["events"])


def evaluations(gateway: Proc) -> int:
    """Alert evaluation rounds so far, from the gateway's metrics (all workers)."""
    request = urllib.request.Request(f"{gateway.url}/metrics",
                                     headers={"authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        text = response.read().decode()
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("shipyard_alert_evaluations_total")))


def config(tmp_path: Path, sim: Proc, receiver: Receiver, smtp_port: int) -> str:
    return f"""
store: {{url: "sqlite:///{tmp_path}/store.db"}}
traces: {{flush_interval_s: 0.05}}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
server: {{public_url: "https://shipyard.example.com"}}
state: {{per_process: true}}  # two workers, nothing shared to agree on in this test
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
  time_scale: 0.005
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
        # Healthy: nothing fires while a good baseline of requests is served and evaluated.
        wait_for(lambda: traffic.ok() >= 60 and evaluations(gateway) >= 5, 60,
                 "a healthy baseline")
        assert receiver.posts == [] and inbox.messages == []
        faults(sim, error_rates={"500": 1.0})
        wait_for(lambda: "firing" in receiver.events("/hook"), 60, "the firing webhook")
        faults(sim)  # healed
        wait_for(lambda: "resolved" in receiver.events("/hook"), 60, "the resolved webhook")
        # Still healthy for a while: the long window still holds the errors, the short one
        # does not, so nothing fires again — "a while" counted in served requests and
        # evaluations, so a slow machine waits longer instead of checking too early.
        served, evaluated = traffic.ok(), evaluations(gateway)
        wait_for(lambda: traffic.ok() >= served + 60 and evaluations(gateway) >= evaluated + 5,
                 60, "requests and evaluations after the resolution")
    finally:
        traffic.stop()
    # Every delivery is recorded as a `notified` event: wait for all six (3 channels x
    # firing and resolved) instead of sleeping and hoping the last one has arrived.
    wait_for(lambda: notified(gateway) >= 6, 60, "all six deliveries")
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


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "smtp-cert.pem", folder / "smtp-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def shipyard(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shipyard", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=120, env={**os.environ, **(env or {})})


def test_alerts_test_reaches_every_channel_over_starttls_with_auth(
        tmp_path: Path, receiver: Receiver) -> None:
    cert_file, key_file = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    inbox = Inbox()

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str,
                     auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and (
            auth_data.login, auth_data.password) == (b"alerts", b"smtp-pass")
        return AuthResult(success=ok)

    controller = Controller(inbox, hostname="127.0.0.1", port=free_port(), tls_context=context,
                            require_starttls=True, authenticator=authenticate,
                            auth_require_tls=True)
    controller.start()
    try:
        config = tmp_path / "shipyard.yaml"
        config.write_text(f"""
store: {{url: "sqlite:///{tmp_path}/store.db"}}
alerts:
  channels:
    - {{name: hook, kind: webhook, url: "{receiver.url}/hook", secret: {{$env: HOOK_SECRET}}}}
    - {{name: chat, kind: slack, url: "{receiver.url}/slack"}}
    - {{name: mail, kind: email, smtp_host: 127.0.0.1, smtp_port: {controller.port},
        starttls: true, username: alerts, password: {{$env: SMTP_PASSWORD}},
        ca_file: "{cert_file}", sender: shipyard@example.com, to: [oncall@example.com],
        attempts: 2, backoff_s: 0.05}}
""")
        env = {"HOOK_SECRET": HOOK_SECRET, "SMTP_PASSWORD": "smtp-pass"}
        result = shipyard("alerts", "test", "-c", str(config), env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        for name in ("hook", "chat", "mail"):
            assert f"{name}: ✓ delivered" in result.stdout
        assert receiver.events("/hook") == ["test"] and receiver.events("/slack") == ["test"]
        [message] = inbox.messages
        assert message["Subject"] == "[TEST][info] shipyard-test"
        assert message["To"] == "oncall@example.com"

        wrong = shipyard("alerts", "test", "-c", str(config), "--channel", "mail",
                         env={**env, "SMTP_PASSWORD": "wrong-pass"})
        assert wrong.returncode == 1 and "mail: ✗ failed" in wrong.stdout
        assert "alert channel 'mail'" in wrong.stderr
        assert "wrong-pass" not in wrong.stdout + wrong.stderr
        assert len(inbox.messages) == 1
    finally:
        controller.stop()


def test_alerts_test_evaluate_and_list(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path}/store.db"
    engine = create_store_engine(store_url)
    migrate(engine)
    now = datetime.now(UTC)
    rows = [new_trace_record(route="chat", service="demo", total_ms=50.0,
                             status=502 if i % 4 == 0 else 200,
                             started_at=now - timedelta(seconds=20)) for i in range(40)]
    with engine.begin() as connection:
        connection.execute(insert(traces), rows)
    engine.dispose()
    config = tmp_path / "shipyard.yaml"
    config.write_text(f"""
store: {{url: "{store_url}"}}
alerts:
  rules:
    - {{name: demo-errors, metric: error_rate, service: demo, window: 5m, threshold: 0.1}}
    - {{name: demo-slow, metric: latency_p99_ms, service: demo, window: 5m, threshold: 1000}}
slos:
  - {{name: demo-availability, sli: availability, objective: 0.999, service: demo}}
""")
    result = shipyard("alerts", "test", "--evaluate", "-c", str(config))
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert "yes" in lines["demo-errors"] and "0.25" in lines["demo-errors"]
    assert " no " in lines["demo-slow"]
    assert "yes" in lines["demo-availability:page"]  # 25% errors burn a 0.1% budget 250x
    assert "3 of 4 would fire now" in result.stdout
    listed = shipyard("alerts", "list", "-c", str(config))
    assert listed.returncode == 0 and "No alerts match." in listed.stdout  # nothing stored
    bad = shipyard("alerts", "list", "-c", str(config), "--state", "burning")
    assert bad.returncode == 1 and "--state is 'burning'; use open" in bad.stderr
