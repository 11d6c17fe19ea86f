"""The openai SDK's own examples run unchanged against `shipyard sim` (and through a gateway),
and the simulator refuses absurd sizes over HTTP with a 400 instead of allocating.

The examples are vendored byte for byte in tests/fixtures/openai_examples (see NOTICE.md);
`OpenAI()` reads OPENAI_BASE_URL and OPENAI_API_KEY, so pointing them here needs no edit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import API_KEY, FIXTURES, Proc, gateway_config, launch_gateway, launch_sim

EXAMPLES = FIXTURES / "openai_examples"
# What each example prints when the parsed answer came back as its pydantic model.
EXPECTED = {
    "parsing.py": ["answer: "],
    "parsing_stream.py": ["answer: ", "---------------", "ParsedChatCompletion"],
    "parsing_tools.py": ["ParsedFunction", "Table."],
    "parsing_tools_stream.py": ["tool_calls.function.arguments.done", "ParsedChatCompletion"],
}


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    proc = launch_sim(tmp_path_factory.mktemp("sim-examples"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def gateway(sim: Proc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    folder = tmp_path_factory.mktemp("gateway-examples")
    extra = """  gpt-4o-2024-08-06:
    provider: sim
"""
    proc = launch_gateway(folder, gateway_config(sim.port, f"sqlite:///{folder}/store.db",
                                                 extra=extra))
    yield proc
    proc.stop()


def run_example(name: str, base_url: str, api_key: str, folder: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SHIPYARD_"))}
    env.update(OPENAI_BASE_URL=f"{base_url}/v1", OPENAI_API_KEY=api_key, NO_COLOR="1",
               COLUMNS="100", PYTHONWARNINGS="error")
    result = subprocess.run([sys.executable, str(EXAMPLES / name)], cwd=folder, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    for words in EXPECTED[name]:
        assert words in result.stdout, f"{name} printed:\n{result.stdout}"
    return result.stdout


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sdk_example_runs_unchanged_against_the_sim(name: str, sim: Proc,
                                                    tmp_path: Path) -> None:
    out = run_example(name, sim.url, "sk-sim-anything", tmp_path)
    if name == "parsing_tools.py":
        assert any(f"Table.{t}" in out for t in ("orders", "customers", "products"))


@pytest.mark.parametrize("name", ["parsing.py", "parsing_stream.py", "parsing_tools.py"])
def test_sdk_example_runs_through_the_gateway(name: str, gateway: Proc, tmp_path: Path) -> None:
    run_example(name, gateway.url, API_KEY, tmp_path)


def post(url: str, body: dict[str, Any], key: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize(("route", "body", "param"), [
    ("embeddings", {"model": "sim-embed", "input": "x", "dimensions": 39928267929292},
     "dimensions"),
    ("embeddings", {"model": "sim-embed", "input": ["x"] * 5000}, "input"),
    ("chat/completions", {"model": "sim-chat", "n": 100000,
                          "messages": [{"role": "user", "content": "hi"}]}, "n"),
    ("chat/completions", {"model": "sim-chat", "max_tokens": 10**15,
                          "messages": [{"role": "user", "content": "hi"}]}, "max_tokens"),
    ("chat/completions", {"model": "sim-chat", "logprobs": True, "top_logprobs": 500,
                          "messages": [{"role": "user", "content": "hi"}]}, "top_logprobs"),
])
def test_the_sim_refuses_absurd_sizes_with_a_400(route: str, body: dict[str, Any], param: str,
                                                 sim: Proc) -> None:
    started = time.monotonic()
    status, answer = post(f"{sim.url}/v1/{route}", body)
    assert status == 400, answer
    error = answer["error"]
    assert error["param"] == param and "maximum" in error["message"]
    assert time.monotonic() - started < 5  # refused, not computed
    # The simulator is still healthy afterwards.
    status, answer = post(f"{sim.url}/v1/embeddings", {"model": "sim-embed", "input": "ok"})
    assert status == 200 and len(answer["data"][0]["embedding"]) == 64
    with urllib.request.urlopen(f"{sim.url}/_sim/stats", timeout=5) as response:
        stats = json.loads(response.read())
    assert stats[f"{route.split('/')[0]}:invalid"] >= 1


def test_a_huge_dimensions_reaches_the_client_as_a_400_not_an_open_circuit(
        gateway: Proc) -> None:
    for _ in range(6):  # more than a circuit's failure threshold
        status, answer = post(f"{gateway.url}/v1/embeddings", {
            "model": "demo-embed", "input": "x", "dimensions": 39928267929292}, API_KEY)
        assert status == 400, answer
        assert "dimensions" in answer["error"]["message"]
    status, answer = post(f"{gateway.url}/v1/chat/completions", {
        "model": "demo", "messages": [{"role": "user", "content": "still there?"}]}, API_KEY)
    assert status == 200, answer
