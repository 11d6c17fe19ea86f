"""docs/lifecycle.md, run as printed from an empty folder outside the repo: its files are
written from the blocks marked `<!-- file: NAME -->`, and every `$ ` line of its console
blocks is run in order (`export` lines set the environment; a trailing `&` runs the command
in the background until the test ends). The only change: port 8000 becomes a free port, so
the test never collides with a gateway already running on the machine."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port
from doc_blocks import take

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "lifecycle.md"
# every file it writes and every console block it runs (the test reads them from DOC in order)
# (the model alias example is tests/e2e/test_lifecycle_alias_doc.py's)
SECTION = "## Worked example: a pickle"
TAKEN = (take("docs/lifecycle.md", SECTION, marker="<!-- file:")
         + take("docs/lifecycle.md", SECTION, lang="console"))
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def _files(text: str) -> dict[str, str]:
    return dict(re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", text, flags=re.DOTALL))


def _commands(text: str) -> list[tuple[str, str]]:
    """(command, expected output) of every `$ ` line of the console blocks, in order."""
    out = []
    for block in re.findall(r"```console\n(.*?)```", text, flags=re.DOTALL):
        for line in block.splitlines():
            if line.startswith("$ "):
                out.append([line[2:], ""])
            elif out and line.strip():
                out[-1][1] += line + "\n"
    return [(c, e) for c, e in out]


def _wait(url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer")


def test_the_worked_example_runs_as_printed(tmp_path: Path) -> None:
    text = DOC.read_text(encoding="utf-8")
    text = text[text.index(SECTION):text.index("\n## ", text.index(SECTION) + 1)]
    port = str(free_port())
    for name, content in _files(text).items():
        (tmp_path / name).write_text(content.replace("8000", port), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(REPO / "src")  # this checkout, not an installed copy
    background: list[subprocess.Popen[bytes]] = []
    outputs: dict[str, str] = {}
    try:
        for command, expected in _commands(text):
            command = command.replace("8000", port)
            if command.startswith("export "):
                name, _, value = command.removeprefix("export ").partition("=")
                env[name] = value
                continue
            if command.endswith("&"):
                with (tmp_path / "serve.log").open("wb") as log:
                    background.append(subprocess.Popen(
                        ["bash", "-c", command[:-1]], cwd=tmp_path, env=env, stdout=log,
                        stderr=subprocess.STDOUT, start_new_session=True))
                _wait(f"http://127.0.0.1:{port}/readyz")
                continue
            done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, (command, done.stdout, done.stderr,
                                          (tmp_path / "serve.log").read_text(errors="replace"))
            for line in expected.splitlines():
                assert line in done.stdout, (command, line, done.stdout)
            outputs[command.split(" ")[0] + " " + command.split(" ")[1]] = done.stdout
            outputs[command] = done.stdout
    finally:
        for process in background:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)
    # What the doc says happened, happened.
    history = next(v for k, v in outputs.items() if k.startswith("shipyard versions history"))
    assert "promoted" in history and "v2" in history, history
    retrained = next(v for k, v in outputs.items() if k.startswith("shipyard retrain"))
    assert "version 2" in retrained and "canary started" in retrained, retrained
    traffic = [v for k, v in outputs.items() if k.startswith("python send_traffic.py")]
    assert all(", 0 failed" in t for t in traffic), traffic
    assert "'2'" in traffic[-1], traffic  # the last run was answered by version 2 too
    report = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "ROC curve" in report and "<script src" not in report  # plotly.js inline
