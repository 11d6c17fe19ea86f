"""`shipyard serve --workers N` on the memory state backend: refused at start (limits would be
per worker), started with a warning once `state.per_process: true` accepts that."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from conftest import free_port, wait_http

CONFIG = """
store: {{url: "sqlite:///{folder}/store.db"}}
providers: {{sim: {{kind: sim}}}}
models: {{demo: {{provider: sim, model: sim-chat}}}}
rate_limits: {{key: {{rpm: 60}}}}
{extra}
"""


def test_several_workers_on_memory_state_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "shipyard.yaml"
    config.write_text(CONFIG.format(folder=tmp_path, extra=""))
    result = subprocess.run(
        [sys.executable, "-m", "shipyard", "serve", "--config", str(config), "--workers", "2",
         "--port", str(free_port())], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    message = " ".join(result.stderr.split())
    assert "server.workers is 2 but state.backend is 'memory'" in message
    assert "would get 120" in message
    assert "state.backend: redis (pip install 'shipyard[redis]')" in message
    assert "state.per_process: true" in message


def test_per_process_state_starts_with_a_loud_warning(tmp_path: Path) -> None:
    config = tmp_path / "shipyard.yaml"
    config.write_text(CONFIG.format(folder=tmp_path, extra="state: {per_process: true}"))
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "shipyard", "serve", "--config", str(config), "--workers",
             "2", "--port", str(port)], cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/livez", timeout=60, proc=process)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
            assert answer.status == 200
        deadline = time.monotonic() + 10
        while "each of the 2 workers keeps its own rate limits" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
