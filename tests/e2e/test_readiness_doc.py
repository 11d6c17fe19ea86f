"""docs/readiness.md, run as printed from an empty folder outside the repo: its files are
written from the blocks marked `<!-- file: NAME -->`, and every `$ ` line of its console
blocks is run in order (`export` sets the environment; a trailing `&` runs the command in the
background until the test ends). The only change: ports 8000 and 9100 become free ports. A
printed output line must appear in the command's output."""

from __future__ import annotations

import json
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
DOC = REPO / "docs" / "readiness.md"
# every file it writes and every console block it runs (the test reads them from DOC in order)
TAKEN = take("docs/readiness.md", marker="file:") + take("docs/readiness.md", lang="console")
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def _files(text: str) -> dict[str, str]:
    return dict(re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", text, flags=re.DOTALL))


def _commands(text: str) -> list[tuple[str, str]]:
    out: list[list[str]] = []
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


def test_the_readiness_guide_runs_as_printed(tmp_path: Path) -> None:
    text = DOC.read_text(encoding="utf-8")
    ports = {"8000": str(free_port()), "9100": str(free_port())}

    def local(value: str) -> str:
        for old, new in ports.items():
            value = value.replace(old, new)
        return value

    for name, content in _files(text).items():
        (tmp_path / name).write_text(local(content), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(REPO / "src")  # this checkout, not an installed copy
    background: list[subprocess.Popen[bytes]] = []
    try:
        for command, expected in _commands(text):
            command = local(command)
            if command.startswith("export "):
                name, _, value = command.removeprefix("export ").partition("=")
                env[name] = value
                continue
            if command.endswith("&"):
                with (tmp_path / f"bg-{len(background)}.log").open("wb") as log:
                    background.append(subprocess.Popen(
                        ["bash", "-c", command[:-1]], cwd=tmp_path, env=env, stdout=log,
                        stderr=subprocess.STDOUT, start_new_session=True))
                port = re.search(r"--port (\d+)", command)[1]  # type: ignore[index]
                _wait(f"http://127.0.0.1:{port}/livez")
                continue
            done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=300)
            output = done.stdout + done.stderr
            assert done.returncode == 0, f"{command}\n{output}"
            for line in expected.splitlines():
                assert line in output, f"{command}: expected {line!r} in\n{output}"
    finally:
        for proc in background:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
    report = json.loads((tmp_path / "readiness" / "readiness.json").read_text())
    assert (tmp_path / "readiness" / "readiness.html").exists()
    # the guarded config of the guide does what its text says
    found = {f["id"]: f for s in report["sections"] for f in s["findings"]}
    assert found["lint.input-guards"]["status"] == "pass"
    assert found["trust.graceful"]["status"] == "pass", found["trust.graceful"]
    assert found["trust.escalation"]["status"] == "pass", found["trust.escalation"]
    assert found["trust.injection-detection"]["evidence"]["per_category"]
    assert report["gate"]["violations"]  # the last run, with --gate overall=99,no-fail
    assert [r["name"] for r in report["runbooks"]] == ["errors", "support-availability"]
