"""docs/ray.md, run as printed from an empty folder outside the repo: its files are written
from the blocks marked `<!-- file: NAME -->`, and every `$ ` line of its console blocks is
run in order (`export` lines set the environment; a trailing `&` runs the command in the
background until the test ends). The only changes: the gateway's port 8000 and the Ray head's
port 6390 become free ports. Every process the background commands started (the Ray node's
raylet, GCS and workers included) is ended by pid afterwards."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port
from doc_blocks import take
from ray_cluster import descendants

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "ray.md"
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow

# What this test runs: the files it writes (python) and every console line.
take("docs/ray.md", lang="python")
take("docs/ray.md", lang="console")


def _files(text: str) -> dict[str, str]:
    return dict(re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", text, flags=re.DOTALL))


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


def _wait_http(url: str, process: subprocess.Popen[bytes], log: Path,
               timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{url}: the process exited\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer\n{log.read_text()[-4000:]}")


def _wait_port(port: int, process: subprocess.Popen[bytes], log: Path,
               timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"ray start exited\n{log.read_text()[-4000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                time.sleep(3)  # the GCS listens a moment before the node has registered
                return
        time.sleep(0.3)
    raise AssertionError(f"the Ray head did not listen on {port}\n{log.read_text()[-4000:]}")


def test_the_worked_example_runs_as_printed(tmp_path: Path) -> None:
    text = DOC.read_text(encoding="utf-8")
    ports = {"8000": str(free_port()), "6390": str(free_port())}

    def local(value: str) -> str:
        for old, new in ports.items():
            value = value.replace(old, new)
        return value

    for name, content in _files(text).items():
        (tmp_path / name).write_text(local(content), encoding="utf-8")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SHIPYARD_", "RAY_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(REPO / "src")  # this checkout, on the gateway and the replicas
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    background: list[subprocess.Popen[bytes]] = []
    outputs: dict[str, str] = {}
    try:
        for n, (command, expected) in enumerate(_commands(text)):
            command = local(command)
            if command.startswith("export "):
                name, _, value = command.removeprefix("export ").partition("=")
                env[name] = value
                continue
            if command.endswith("&"):
                log = tmp_path / f"background-{n}.log"
                with log.open("wb") as handle:
                    process = subprocess.Popen(
                        ["bash", "-c", command[:-1]], cwd=tmp_path, env=env, stdout=handle,
                        stderr=subprocess.STDOUT, start_new_session=True)
                background.append(process)
                if command.startswith("ray start"):
                    _wait_port(int(ports["6390"]), process, log)
                else:
                    _wait_http(f"http://127.0.0.1:{ports['8000']}/readyz", process, log)
                continue
            done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=300)
            logs = "\n".join(p.read_text(errors="replace")[-3000:]
                             for p in tmp_path.glob("background-*.log"))
            assert done.returncode == 0, (command, done.stdout, done.stderr, logs)
            for line in expected.splitlines():
                assert line in done.stdout, (command, line, done.stdout)
            outputs[command] = done.stdout
    finally:
        victims = descendants([p.pid for p in background])
        for process in reversed(background):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(10)
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    # Both data runs wrote the same bytes.
    parquet = sorted((tmp_path / "datasets" / "signups").glob("v*/data.parquet"))
    assert len(parquet) == 2 and parquet[0].read_bytes() == parquet[1].read_bytes()
