"""examples/support-assistant/README.md: every command in it, executed exactly as printed.

Each bash block runs through `bash -e` with this venv's `shipyard` and `python` first on
PATH, as a user's activated venv has them. "From anywhere" runs in a folder outside the
repository; "from this folder" runs in a copy of the example outside the repository (the
commands write stores and datasets; the checkout stays clean). Long-running lines (`shipyard
demo`, `shipyard serve`) are started, probed and stopped. Ports come from
`SHIPYARD_SERVER_PORT` (which the README names); in the copy the upstream's port 9100 is moved
to a free one, with `shipyard sim` started there as the README says.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import REPO, free_port, launch_sim

pytestmark = pytest.mark.slow

EXAMPLE = REPO / "examples" / "support-assistant"
README = EXAMPLE / "README.md"


def _blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README.read_text("utf-8"), re.S)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("SHIPYARD_API_KEY", "SHIPYARD_CONFIG", "SHIPYARD_SERVER_PORT")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = str(REPO / "src")  # this checkout's sources, not the venv's copy
    env.update(extra)
    return env


def _copy(tmp_path: Path) -> Path:
    folder = tmp_path / "support-assistant"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns(
        ".shipyard", "datasets", "__pycache__", ".*.check-*.yaml"))
    return folder


class Running:
    """A long-running README line, started in its own process group."""

    def __init__(self, script: str, cwd: Path, env: dict[str, str]) -> None:
        self.log = cwd.parent / f"{cwd.name}-{time.monotonic_ns()}.out"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(["bash", "-e", "-c", script], cwd=cwd, env=env,
                                            stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def text(self) -> str:
        return self.log.read_text("utf-8", "replace")

    def wait_ready(self, url: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"exited ({self.process.returncode}):\n{self.text()}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"{url} never answered:\n{self.text()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        return int(self.process.returncode)


def _ask(url: str, key: str) -> dict[str, object]:
    response = httpx.post(f"{url}/v1/services/support/invoke", timeout=60,
                          headers={"authorization": f"Bearer {key}"},
                          json={"question": "Do gift cards expire?"})
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_the_readme_has_the_blocks_this_test_runs() -> None:
    assert [b.strip() for b in _blocks()] == [
        "shipyard demo",
        "export SHIPYARD_API_KEY=sk-support-0123456789abcdef0123\n"
        "shipyard serve --config shipyard.yaml",
        "python -m assistant.evaluate --backend minilm\n"
        "python -m assistant.evaluate --backend bm25",
        "cd kb\nshipyard data run pipeline.yaml\n"
        "shipyard data export support-kb -o articles.jsonl --format jsonl"]


def test_run_it_shipyard_demo_from_anywhere(tmp_path: Path) -> None:
    port = free_port()
    demo = Running(_blocks()[0], tmp_path, _env(SHIPYARD_SERVER_PORT=str(port)))
    try:
        demo.wait_ready(f"http://127.0.0.1:{port}/readyz")
        deadline = time.monotonic() + 30
        while "Start the pieces yourself" not in demo.text():
            assert time.monotonic() < deadline, demo.text()
            time.sleep(0.2)
        key = next(line.split("=", 1)[1] for line in demo.text().splitlines()
                   if line.startswith("export SHIPYARD_API_KEY="))
        answer = _ask(f"http://127.0.0.1:{port}", key)
        assert answer["output"]["citations"][0]["id"] == "gift-cards"  # type: ignore[index]
        assert (tmp_path / ".shipyard" / "demo" / "support.db").is_file()
    finally:
        demo.stop()


def test_serve_it_yourself_from_this_folder(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    sim = launch_sim(tmp_path)  # "with shipyard sim --port 9100 running", on a free port
    config = folder / "shipyard.yaml"
    text = config.read_text()
    assert "http://127.0.0.1:9100/v1" in text
    config.write_text(text.replace("127.0.0.1:9100", f"127.0.0.1:{sim.port}"))
    port = free_port()
    serve = Running(_blocks()[1], folder, _env(SHIPYARD_SERVER_PORT=str(port)))
    try:
        serve.wait_ready(f"http://127.0.0.1:{port}/readyz")
        answer = _ask(f"http://127.0.0.1:{port}", "sk-support-0123456789abcdef0123")
        assert "never expire" in str(answer["output"])
        assert (folder / ".shipyard" / "support.db").is_file()  # as the README says
    finally:
        serve.stop()
        sim.stop()


def test_measure_retrieval_prints_the_readmes_figures(tmp_path: Path) -> None:
    pytest.importorskip("sentence_transformers")
    folder = _copy(tmp_path)
    done = subprocess.run(["bash", "-e", "-c", _blocks()[2]], cwd=folder, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    decoder, found, at = json.JSONDecoder(), [], 0
    while (start := done.stdout.find("{", at)) != -1:
        result, at = decoder.raw_decode(done.stdout, start)
        found.append(result)
    assert [(r["backend"], r["questions"]) for r in found] == [("minilm", 46), ("bm25", 46)]
    prose = README.read_text("utf-8")
    names = {"minilm": "MiniLM", "bm25": "BM25"}
    for result in found:  # the figures the README states are the ones these lines print
        assert f"{result['hit@3']:.2f} with {names[result['backend']]}" in prose, result


def test_rebuild_the_knowledge_base(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    folder = _copy(tmp_path)
    (folder / "kb" / "articles.jsonl").unlink()
    done = subprocess.run(["bash", "-e", "-c", _blocks()[3]], cwd=folder, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    rebuilt = (folder / "kb" / "articles.jsonl").read_text()
    assert rebuilt == (EXAMPLE / "kb" / "articles.jsonl").read_text()
