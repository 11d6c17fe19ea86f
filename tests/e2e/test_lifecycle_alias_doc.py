"""docs/lifecycle.md's model alias example, run as printed from an empty folder outside the
repo: its files are written from the blocks marked `<!-- alias-file: NAME -->`, and every
`$ ` line of its console blocks is run in order (`export` lines set the environment; a
trailing `&` runs the command in the background until the test ends, waiting for its
port). The only change: ports 8000 and 9100 become free ports."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import free_port
from doc_blocks import take

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "lifecycle.md"
SECTION = "## Worked example: a new upstream model for an alias"
TAKEN = (take("docs/lifecycle.md", SECTION, marker="alias-file:")
         + take("docs/lifecycle.md", SECTION, lang="console"))
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def _section() -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(SECTION)
    return text[start:text.index("\n## ", start + 1)]


def _commands(text: str) -> list[tuple[str, str]]:
    """(command, expected output) of every `$ ` line of the console blocks, in order."""
    out: list[list[str]] = []
    for block in re.findall(r"```console\n(.*?)```", text, flags=re.DOTALL):
        for line in block.splitlines():
            if line.startswith("$ "):
                out.append([line[2:], ""])
            elif out and line.strip():
                out[-1][1] += line + "\n"
    return [(c, e) for c, e in out]


def _wait_port(port: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"nothing listens on port {port}")


def test_the_alias_example_runs_as_printed(tmp_path: Path) -> None:
    text = _section()
    ports = {"8000": str(free_port()), "9100": str(free_port())}

    def local(value: str) -> str:
        for printed, used in ports.items():
            value = value.replace(printed, used)
        return value

    files = dict(re.findall(r"<!-- alias-file: (\S+) -->\n```\w*\n(.*?)```", text,
                            flags=re.DOTALL))
    assert set(files) == {"shipyard.yaml", "candidate.yaml", "ask.py"}
    for name, content in files.items():
        (tmp_path / name).write_text(local(content), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
    env.update(PATH=f"{BIN}{os.pathsep}{env['PATH']}", PYTHONPATH=str(REPO / "src"),
               NO_COLOR="1", COLUMNS="200")
    background: list[subprocess.Popen[bytes]] = []
    outputs: dict[str, str] = {}
    try:
        for command, expected in _commands(text):
            command = local(command)
            if command.startswith("export "):
                name, _, value = command.removeprefix("export ").partition("=")
                env[name] = value
                continue
            if command.endswith("&"):
                with (tmp_path / f"background-{len(background)}.log").open("wb") as log:
                    background.append(subprocess.Popen(
                        ["bash", "-c", command[:-1]], cwd=tmp_path, env=env, stdout=log,
                        stderr=subprocess.STDOUT, start_new_session=True))
                _wait_port(int(re.search(r"--port (\d+)", command).group(1)))  # type: ignore[union-attr]
                continue
            done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=300)
            logs = "".join(p.read_text(errors="replace")
                           for p in sorted(tmp_path.glob("background-*.log")))
            assert done.returncode == 0, (command, done.stdout, done.stderr, logs)
            for line in expected.splitlines():
                assert line in done.stdout, (command, line, done.stdout)
            outputs[command] = done.stdout
    finally:
        for process in background:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)
    # What the doc says happened, happened.
    history = next(v for k, v in outputs.items() if k.startswith("shipyard versions history"))
    for event in ("promoted", "step", "shadow_passed", "shadow_started", "registered"):
        assert event in history, history
    traffic = next(v for k, v in outputs.items() if k.startswith("python ask.py"))
    assert "'1'" in traffic and "'2'" in traffic, traffic  # both versions answered
