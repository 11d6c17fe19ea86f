"""Canary and shadow rollouts between versions of a model alias: a real `shipyard serve` in
front of real `shipyard sim` upstreams, driven with the official OpenAI SDK, the CLI and
the admin API; the rollout controller's gates decide."""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
from sqlalchemy import select

from conftest import API_KEY, FIXTURES, REPO, Proc
from shipyard.store import create_store_engine
from shipyard.store.tables import audit_log, traces


def _config(folder: Path, good: Proc, bad: Proc, *, provider: str = "good",
            upstream: str = "sim-chat", steps: str = "[50, 100]", mode: str = "canary",
            min_samples: int = 10, hook: str = "") -> str:
    alerts = (f'alerts: {{channels: [{{name: hook, kind: webhook, url: "{hook}", '
              'backoff_s: 0.05}]}' if hook else "")
    return f"""
{alerts}
store: {{url: "sqlite:///{folder}/store.db"}}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
traces: {{flush_interval_s: 0.05}}
lifecycle: {{tick_s: 0.3}}
providers:
  good: {{kind: openai, base_url: "http://127.0.0.1:{good.port}/v1", timeout_s: 10}}
  bad: {{kind: openai, base_url: "http://127.0.0.1:{bad.port}/v1", timeout_s: 10}}
models:
  support:
    provider: {provider}
    model: {upstream}
    capture: full
    retry: {{attempts: 1}}
    rollout:
      mode: {mode}
      steps: {steps}
      step_s: 1
      window_s: 120
      min_samples: {min_samples}
      sticky: conversation
      gates: {{error_rate: 0.02, latency_p95_ratio: 50}}
"""


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
    env.update(NO_COLOR="1", COLUMNS="200", SHIPYARD_API_KEY=API_KEY,
               PYTHONPATH=os.pathsep.join([str(FIXTURES), str(REPO / "src")]))
    return subprocess.run([sys.executable, "-m", "shipyard", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def _admin(url: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else (
        b"" if method == "POST" else None)
    request = urllib.request.Request(url + path, method=method, data=data, headers={
        "authorization": f"Bearer {API_KEY}", "content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0)


def _ask(client: openai.OpenAI, conversation: str, *, stream: bool = False) -> str:
    """One chat request (each conversation sticks to one version); the answering version."""
    headers = {"x-shipyard-conversation": conversation}
    if stream:
        with client.chat.completions.with_streaming_response.create(
                model="support", messages=[{"role": "user", "content": "hello"}],
                stream=True, extra_headers=headers) as response:
            text = "".join(chunk.choices[0].delta.content or "" for chunk in response.parse()
                           if chunk.choices)
            assert text
            return str(response.headers["x-shipyard-version"])
    raw = client.chat.completions.with_raw_response.create(
        model="support", messages=[{"role": "user", "content": "hello"}],
        extra_headers=headers)
    assert raw.parse().choices[0].message.content
    return str(raw.headers["x-shipyard-version"])


def _rollout(url: str) -> dict[str, Any]:
    return _admin(url, "GET", "/v1/admin/models/support/versions")["rollouts"][0]


def _traffic_until(url: str, done: Callable[[], bool], *, what: str, limit_s: float = 90,
                   stream_every: int = 3) -> Counter[str]:
    """Send requests (every third one streamed) until `done()`; the answering versions."""
    seen: Counter[str] = Counter()
    deadline = time.monotonic() + limit_s
    n = 0
    with _client(url) as client:
        while not done():
            assert time.monotonic() < deadline, f"no {what} within {limit_s}s: {seen}"
            for _ in range(10):
                seen[_ask(client, f"c-{time.monotonic_ns()}-{n}",
                          stream=n % stream_every == 0)] += 1
                n += 1
    return seen


def _dashboard(gateway: Proc, path: str) -> str:
    with httpx.Client(base_url=gateway.url, follow_redirects=True, timeout=30) as client:
        form = client.get("/ui/login").text
        found = re.search(r'name="csrf" value="([^"]+)"', form)
        assert found is not None, form[:500]
        client.post("/ui/login", data={"key": API_KEY, "csrf": found.group(1), "next": path})
        answer = client.get(path)
        assert answer.status_code == 200 and "/ui/login" not in str(answer.url), answer.text
        return answer.text


def _rows(store: Path, *columns: Any, where: Any) -> list[Any]:
    engine = create_store_engine(f"sqlite:///{store}")
    try:
        with engine.connect() as connection:
            return list(connection.execute(select(*columns).where(where)))
    finally:
        engine.dispose()


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list[bytes] = []

    def do_POST(self) -> None:  # http.server calls it by this name
        _Hook.received.append(self.rfile.read(int(self.headers["content-length"])))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_a_failing_candidate_is_rolled_back_and_no_caller_sees_it(
        tmp_path: Path, start_sim: Any, start_gateway: Any) -> None:
    good, bad = start_sim(), start_sim("--error-rate", "500=1.0")
    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    _Hook.received = []
    try:
        _rolled_back(tmp_path, good, bad, start_gateway,
                     f"http://127.0.0.1:{hook.server_address[1]}/hook")
    finally:
        hook.shutdown()
        hook.server_close()


def _rolled_back(tmp_path: Path, good: Proc, bad: Proc, start_gateway: Any,
                 hook: str) -> None:
    gateway = start_gateway(_config(tmp_path, good, bad, hook=hook))
    config: Path = gateway.extra["config"]  # type: ignore[assignment]
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(_config(tmp_path, good, bad, provider="bad"))

    registered = _cli("versions", "register", "model/support", "--from-config",
                      str(candidate), "-c", str(config), cwd=tmp_path)
    assert registered.returncode == 0, registered.stderr
    assert "version 2" in registered.stdout
    started = _cli("versions", "rollout", "model/support", "2", "-c", str(config),
                   cwd=tmp_path)
    assert started.returncode == 0, started.stdout + started.stderr
    assert "canary at 50%" in started.stdout

    # Half the conversations go to version 2, whose upstream answers 500 to everything:
    # with `fallback` on, stable answers them, so every request succeeds (also streamed).
    seen = _traffic_until(gateway.url, lambda: _rollout(gateway.url)["state"] != "running",
                          what="rollback")
    assert set(seen) == {"1"}, seen
    rollout = _rollout(gateway.url)
    assert rollout["state"] == "rolled_back" and rollout["candidate"] == 2
    assert "error_rate: candidate 100.00%" in rollout["reason"]
    listed = _admin(gateway.url, "GET", "/v1/admin/models/support/versions")
    assert listed["aliases"] == {"stable": 1, "config": 1} and listed["serving"] == "1"

    store = tmp_path / "store.db"
    failed = _rows(store, traces.c.status, traces.c.upstream_model, where=(
        traces.c.route == "canary") & (traces.c.version == "2"))
    # 502: the upstream failed; 503: then its circuit opened.
    assert len(failed) >= 10 and {s for s, _ in failed} <= {502, 503}
    assert {m for _, m in failed} - {None} == {"sim-chat"}  # None: the circuit was open
    actions = {a for (a,) in _rows(store, audit_log.c.action,
                                   where=audit_log.c.target.like("model/support@%"))}
    assert {"rollout.start", "rollout.rollback"} <= actions
    history = _cli("versions", "history", "model/support", "-c", str(config), cwd=tmp_path)
    assert "rolled_back" in history.stdout and "canary_started" in history.stdout
    # The alert every rollback sends, through the configured channel.
    deadline = time.monotonic() + 20
    while not _Hook.received and time.monotonic() < deadline:
        time.sleep(0.1)
    alert = json.loads(_Hook.received[0])
    assert "model/support" in json.dumps(alert) and "rolled back" in json.dumps(alert)


def test_shadow_then_canary_steps_promote_a_good_candidate(
        tmp_path: Path, start_sim: Any, start_gateway: Any, request: Any) -> None:
    good, bad = start_sim(), start_sim("--error-rate", "500=1.0")
    gateway = start_gateway(_config(tmp_path, good, bad, mode="shadow", min_samples=12))
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(_config(tmp_path, good, bad, upstream="sim-chat-large"))
    config: Path = gateway.extra["config"]  # type: ignore[assignment]
    assert _cli("versions", "register", "model/support", "--from-config", str(candidate),
                "-c", str(config), cwd=tmp_path).returncode == 0
    started = _admin(gateway.url, "POST", "/v1/admin/models/support/rollouts",
                     {"version": 2, "mode": "shadow"})
    assert started["mode"] == "shadow" and started["stable"] == 1

    # Shadow: callers only ever get stable's answers; the candidate's are recorded.
    with _client(gateway.url) as client:
        answered = Counter(_ask(client, f"s-{i}", stream=i % 3 == 0) for i in range(9))
    assert answered == Counter({"1": 9})
    store = tmp_path / "store.db"
    deadline = time.monotonic() + 20
    while True:
        shadows = _rows(store, traces.c.status, traces.c.upstream_model, traces.c.attributes,
                        where=(traces.c.route == "shadow") & (traces.c.service == "support"))
        if len(shadows) >= 9 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(shadows) == 9
    assert {(s, m) for s, m, _ in shadows} == {(200, "sim-chat-large")}
    recorded = [json.loads(a)["shadow"] for _, _, a in shadows]
    assert {r["stable_version"] for r in recorded} == {"1"}
    assert all(r["error"] is None for r in recorded)

    # The gates pass: shadow becomes a canary at 50%, then 100%, then version 2 is promoted.
    seen = _traffic_until(gateway.url, lambda: _rollout(gateway.url)["state"] != "running",
                          what="promotion", limit_s=120)
    rollout = _rollout(gateway.url)
    assert rollout["state"] == "promoted", rollout
    assert seen["2"] > 0, seen
    client = _client(gateway.url)
    request.addfinalizer(client.close)
    assert _ask(client, "after") == "2" and _ask(client, "after-stream", stream=True) == "2"
    history = _cli("versions", "history", "model/support", "-c", str(config),
                   cwd=tmp_path).stdout
    for event in ("shadow_started", "shadow_passed", "step", "promoted"):
        assert event in history, history
    actions = {a for (a,) in _rows(store, audit_log.c.action,
                                   where=audit_log.c.target == "model/support@2")}
    assert {"rollout.start", "rollout.step", "version.promote"} <= actions

    # The dashboard's versions pages show the alias, its rollout and both versions' traffic.
    listing = _dashboard(gateway, "/ui/versions")
    assert 'href="/ui/versions/model/support"' in listing
    page = _dashboard(gateway, "/ui/versions/model/support")
    assert "Versions of model/support" in page and "promoted" in page
    assert "v2 (shadow)" in page and "shadow_passed" in page

    # The promoted version stays pinned over an unchanged reload ...
    assert _admin(gateway.url, "POST", "/v1/admin/reload")["model_versions"] == {
        "support": "2"}
    assert _ask(client, "reloaded") == "2"
    # ... a rollback returns to version 1 ...
    back = _admin(gateway.url, "POST", "/v1/admin/models/support/rollback")
    assert back == {"model": "support", "rolled_back": "stable", "stable": 1}
    assert _ask(client, "rolled-back") == "1"
    # ... and a changed config file deploys what it names.
    config.write_text(_config(tmp_path, good, bad, upstream="sim-chat-xl"))
    assert _admin(gateway.url, "POST", "/v1/admin/reload")["model_versions"] == {
        "support": "3"}
    assert _ask(client, "changed") == "3"
