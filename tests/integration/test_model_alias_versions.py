"""A model alias's configuration is versioned: a real `shipyard serve` in front of a real
`shipyard sim`, called with the official OpenAI SDK, reloaded with a changed config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import openai
from sqlalchemy import select

from conftest import API_KEY, FIXTURES, REPO, Proc
from shipyard.store import create_store_engine
from shipyard.store.tables import traces


def _config(folder: Path, sim: Proc, *, upstream: str = "sim-chat") -> str:
    return f"""
store: {{url: "sqlite:///{folder}/store.db"}}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
traces: {{flush_interval_s: 0.05}}
providers:
  sim: {{kind: openai, base_url: "http://127.0.0.1:{sim.port}/v1", timeout_s: 10}}
models:
  chat:
    provider: sim
    model: {upstream}
    capture: full
"""


def _admin(url: str, method: str, path: str) -> Any:
    request = urllib.request.Request(url + path, method=method, data=b"" if method == "POST"
                                     else None,
                                     headers={"authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def _ask(url: str) -> str:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "hello"}])
    assert raw.parse().choices[0].message.content
    return str(raw.headers.get("x-shipyard-version"))


def _trace_versions(store: Path, want: int) -> list[str | None]:
    engine = create_store_engine(f"sqlite:///{store}")
    try:
        deadline = time.monotonic() + 20
        while True:
            with engine.connect() as connection:
                rows = connection.execute(select(traces.c.attributes, traces.c.version).where(
                    traces.c.service == "chat").order_by(traces.c.started_at)).all()
            if len(rows) >= want or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        engine.dispose()
    assert [v for _, v in rows] == [json.loads(a or "{}").get("alias_version")
                                    for a, _ in rows]
    return [json.loads(a or "{}").get("alias_version") for a, _ in rows]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
    env.update(NO_COLOR="1", COLUMNS="200", SHIPYARD_API_KEY=API_KEY,
               PYTHONPATH=os.pathsep.join([str(FIXTURES), str(REPO / "src")]))
    return subprocess.run([sys.executable, "-m", "shipyard", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_config_change_and_reload_makes_version_2_unchanged_keeps_it(
        tmp_path: Path, start_sim: Any, start_gateway: Any) -> None:
    sim = start_sim()
    gateway = start_gateway(_config(tmp_path, sim))
    config_path: Path = gateway.extra["config"]  # type: ignore[assignment]

    assert _ask(gateway.url) == "1"
    listed = _admin(gateway.url, "GET", "/v1/admin/models/chat/versions")
    assert listed["aliases"] == {"stable": 1, "config": 1} and listed["serving"] == "1"
    assert [(v["version"], v["kind"]) for v in listed["data"]] == [(1, "config")]
    assert listed["data"][0]["config"]["deployments"][0]["model"] == "sim-chat"

    # The config changes (another upstream model name) and is reloaded: version 2.
    config_path.write_text(_config(tmp_path, sim, upstream="sim-chat-large"))
    reloaded = _admin(gateway.url, "POST", "/v1/admin/reload")
    assert reloaded["model_versions"] == {"chat": "2"}
    assert _ask(gateway.url) == "2"

    # Reloaded again unchanged: still version 2, nothing new registered.
    assert _admin(gateway.url, "POST", "/v1/admin/reload")["model_versions"] == {"chat": "2"}
    assert _ask(gateway.url) == "2"
    one = _admin(gateway.url, "GET", "/v1/admin/models/chat/versions/2")
    assert one["kind"] == "config" and one["config"]["deployments"][0]["model"] == (
        "sim-chat-large")

    # Each answer's trace names the alias's version (attribute and version column; the
    # upstream model is in upstream_model).
    assert _trace_versions(tmp_path / "store.db", 3) == ["1", "2", "2"]

    shown = _cli("versions", "list", "model/chat", "--json", "-c", str(config_path),
                 cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["aliases"] == {"stable": 2, "config": 2}
    assert [v["version"] for v in data["versions"]] == [1, 2]
