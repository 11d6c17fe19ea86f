"""What docs/providers.md (the local model) and docs/sim.md print, run as printed, from a
folder outside the repository."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, REQUIRE_SERVICES, wait_http
from doc_blocks import take
from shipyard.providers.local import INSTALL_HINT

BIN = Path(sys.executable).parent


def blocks(doc: str, section: str, language: str) -> list[str]:
    """The fenced `language` blocks of one `## section` of a doc."""
    return [b.text for b in take(f"docs/{doc}", section, language)]


# What the tests below run (taken here, at import, so the docs coverage test sees them).
TAKEN = (take("docs/providers.md", "## Local models", "bash")
         + take("docs/providers.md", "## Local models", "yaml")
         + take("docs/providers.md", "## Local models", "python")
         + take("docs/sim.md", "## Like a real model", "python")
         + take("docs/sim.md", "## Requests it refuses", "bash"))


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHIPYARD_", "OPENAI_"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", NO_COLOR="1", **extra)
    return env


def start_shell(script: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with (cwd / "shell.log").open("wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen(["bash", "-euc", script], cwd=cwd, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def stop_shell(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def run_python(code: str, cwd: Path, env: dict[str, str]) -> str:
    (cwd / "snippet.py").write_text(code)
    result = subprocess.run([sys.executable, "snippet.py"], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    return result.stdout


def test_the_local_model_docs_run_as_printed(tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        if REQUIRE_SERVICES:
            pytest.fail(f"the local extra is missing; run: {INSTALL_HINT}")
        pytest.skip(f"the local extra is missing; run: {INSTALL_HINT}")
    section = "## Local models (`kind: local`)"
    install, serve = blocks("providers.md", section, "bash")
    # The install line is the one the code prints when the extra is missing (running it here
    # would install from the index, not this checkout).
    assert install.strip() == INSTALL_HINT
    [config] = blocks("providers.md", section, "yaml")
    [snippet] = blocks("providers.md", section, "python")
    (tmp_path / "shipyard.yaml").write_text(config)
    key = shlex.split(serve.splitlines()[0].removeprefix("export "))[0].split("=", 1)[1]
    port = re.search(r"--port (\d+)", serve)
    assert port is not None
    shell = start_shell(serve, tmp_path, clean_env())
    try:
        wait_http(f"http://127.0.0.1:{port.group(1)}/livez", 180, proc=shell)  # type: ignore[arg-type]
        out = run_python(snippet, tmp_path, clean_env(SHIPYARD_API_KEY=key))
    finally:
        stop_shell(shell)
    lines = out.strip().splitlines()
    assert lines[0].startswith("name=") and "country=" in lines[0], out
    assert lines[1].startswith("CompletionUsage(") and "completion_tokens=" in lines[1]
    assert (tmp_path / ".shipyard").is_dir()  # the default store, in the folder it ran from


def test_the_sim_docs_run_as_printed(tmp_path: Path) -> None:
    section = "## Like a real model"
    [snippet] = blocks("sim.md", section, "python")
    port = re.search(r"`(shipyard sim --port (\d+))`", (REPO / "docs" / "sim.md").read_text())
    assert port is not None
    sim = start_shell(port.group(1), tmp_path, clean_env())
    try:
        wait_http(f"http://127.0.0.1:{port.group(2)}/livez", 60, proc=sim)  # type: ignore[arg-type]
        out = run_python(snippet, tmp_path, clean_env())
        [curl] = blocks("sim.md", "## Requests it refuses", "bash")
        refused = subprocess.run(["bash", "-euc", curl], cwd=tmp_path, env=clean_env(),
                                 capture_output=True, text=True, timeout=30)
    finally:
        stop_shell(sim)
    lines = out.strip().splitlines()
    assert [line.split(" ")[0] for line in lines] == ["0", "1"]
    assert all("name=" in line and "crew=" in line and "ports=[" in line for line in lines)
    assert lines[0] != lines[1]
    error = json.loads(refused.stdout)["error"]
    text = (REPO / "docs" / "sim.md").read_text()
    assert error["param"] == "dimensions"
    assert " ".join(error["message"].split()) in " ".join(text.split())  # the doc shows it


def test_the_doc_links_resolve() -> None:
    text = (REPO / "docs" / "providers.md").read_text()
    targets = re.findall(r"\]\(([a-z_]+\.md)", text)
    assert "sim.md" in targets and "benchmarks.md" in targets
    for target in targets:
        assert (REPO / "docs" / target).exists(), target
