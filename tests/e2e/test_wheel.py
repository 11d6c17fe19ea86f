"""The built wheel ships the reference assistant, and `shipyard demo` finds it there.

The wheel is built the way pip builds it (`pip wheel --no-deps .`, hatchling from the
registry), unpacked as a non-editable install lays it out, and `shipyard demo` runs from a
folder outside the repository with only the unpacked wheel on the path: it must serve the
assistant from `shipyard/_examples/support-assistant` and answer a question.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from conftest import REPO, free_port

pytestmark = pytest.mark.slow

SHIPPED = "shipyard/_examples/support-assistant/"


def _tracked_example_files() -> set[str]:
    done = subprocess.run(["git", "ls-files", "examples/support-assistant"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        pytest.skip("not a git checkout")
    return {line.removeprefix("examples/support-assistant/")
            for line in done.stdout.splitlines() if not line.endswith(".gitignore")}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(REPO),
                           "-w", str(out)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert done.returncode == 0, done.stderr
    (built,) = out.glob("shipyard-*.whl")
    return built


def test_the_wheel_holds_the_example_and_nothing_local(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {n.removeprefix(SHIPPED) for n in names if n.startswith(SHIPPED)}
    assert shipped == _tracked_example_files()
    assert not [n for n in names if "/.shipyard/" in n or "/datasets/" in n
                or n.endswith((".db", ".pyc"))]


def test_demo_runs_the_assistant_from_the_installed_wheel(wheel: Path, tmp_path: Path) -> None:
    site, outside = tmp_path / "site-packages", tmp_path / "anywhere"
    outside.mkdir()
    zipfile.ZipFile(wheel).extractall(site)
    env = {k: v for k, v in os.environ.items()
           if k not in ("SHIPYARD_API_KEY", "SHIPYARD_CONFIG")}
    env["PYTHONPATH"] = str(site)  # the wheel, not this checkout
    found = subprocess.run([sys.executable, "-c", "from shipyard.cli.demo import "
                            "assistant_root; print(assistant_root())"], cwd=outside, env=env,
                           capture_output=True, text=True, timeout=60)
    assert found.stdout.strip() == str(site / SHIPPED.rstrip("/")), found.stderr
    port, sim = free_port(), free_port()
    log = tmp_path / "demo.out"
    with log.open("wb") as out:
        demo = subprocess.Popen([sys.executable, "-m", "shipyard", "demo", "--port", str(port),
                                 "--sim-port", str(sim)], cwd=outside, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while "Start the pieces yourself" not in log.read_text("utf-8", "replace"):
            assert demo.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        text = log.read_text("utf-8", "replace")
        assert f"# Written by 'shipyard demo' from {site / SHIPPED / 'shipyard.yaml'}" in (
            outside / ".shipyard" / "demo" / "shipyard.yaml").read_text()
        key = next(line.split("=", 1)[1] for line in text.splitlines()
                   if line.startswith("export SHIPYARD_API_KEY="))
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/services/support/invoke", timeout=60,
                            headers={"authorization": f"Bearer {key}"},
                            json={"question": "Do gift cards expire?"}).json()
        assert answer["output"]["citations"][0]["id"] == "gift-cards", answer
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGINT)
            try:
                demo.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(demo.pid, signal.SIGKILL)
                demo.wait(10)
