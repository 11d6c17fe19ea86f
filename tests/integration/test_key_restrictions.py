"""Key restrictions are honest: a key lists the models and services it may use, and nothing
else — through a real `shipyard serve`, with keys made by `shipyard keys create`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from test_openai_sdk import _http

from conftest import Proc


def _create(url: str, folder: Path, *flags: str) -> tuple[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
    env.update(NO_COLOR="1", TERM="dumb", COLUMNS="200")
    made = subprocess.run([sys.executable, "-m", "shipyard", "keys", "create", "--tenant",
                           "acme", "--role", "client", "--store-url", url, *flags],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    lines = made.stdout.strip().splitlines()
    return " ".join(lines[:-1]), lines[-1]


def test_keys_may_use_only_what_they_list(start_gateway: Callable[..., Proc],
                                          tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    gateway = start_gateway(f"""
store: {{url: "{url}"}}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
providers:
  py: {{kind: python, function: "sample_services:echo_model"}}
models:
  demo: {{provider: py}}
  other: {{provider: py}}
services:
  triage: {{function: parity_services:echo}}
  billing: {{function: parity_services:echo}}
""")
    status, _ = _http("POST", f"{gateway.url}/v1/admin/tenants", json.dumps({"id": "acme"})
                      .encode())
    assert status in (200, 201)
    said = {}
    keys = {}
    for name, flags in {"services": ("--service", "triage"), "models": ("--model", "demo"),
                        "both": ("--model", "demo", "--service", "triage"),
                        "all": ()}.items():
        said[name], keys[name] = _create(url, tmp_path, "--name", name, *flags)
    assert "may use no model and services triage" in said["services"]
    assert "may use models demo and no service" in said["models"]
    assert "may use models demo and services triage" in said["both"]
    assert "may use every model and service" in said["all"]

    def chat(key: str, model: str) -> int:
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
        return _http("POST", f"{gateway.url}/v1/chat/completions", body.encode(),
                     {"authorization": f"Bearer {key}"})[0]

    def invoke(key: str, service: str) -> int:
        return _http("POST", f"{gateway.url}/v1/services/{service}/invoke", b'{"text": "x"}',
                     {"authorization": f"Bearer {key}"})[0]

    assert (chat(keys["services"], "demo"), invoke(keys["services"], "triage")) == (403, 200)
    assert invoke(keys["services"], "billing") == 403
    assert (chat(keys["models"], "demo"), invoke(keys["models"], "triage")) == (200, 403)
    assert chat(keys["models"], "other") == 403
    assert (chat(keys["both"], "demo"), invoke(keys["both"], "triage")) == (200, 200)
    assert (chat(keys["both"], "other"), invoke(keys["both"], "billing")) == (403, 403)
    assert (chat(keys["all"], "other"), invoke(keys["all"], "billing")) == (200, 200)

    status, body = _http("POST", f"{gateway.url}/v1/chat/completions", json.dumps(
        {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}).encode(),
        {"authorization": f"Bearer {keys['services']}"})
    assert "it may use no model and services triage" in body["error"]["message"]
    listing = _http("GET", f"{gateway.url}/v1/models", None,
                    {"authorization": f"Bearer {keys['services']}"})[1]
    assert listing["data"] == []
    listing = _http("GET", f"{gateway.url}/v1/services", None,
                    {"authorization": f"Bearer {keys['models']}"})[1]
    assert listing["data"] == []
