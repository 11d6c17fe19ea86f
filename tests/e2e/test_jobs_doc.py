"""docs/integration.md's jobs, batch and idempotency examples run as printed against a real
`shipyard serve` with `shipyard sim` upstream: the curl commands, the `shipyard jobs`
commands, the openai SDK batch script (its output is what the page says) and the settings
block (a valid config)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from test_integration_doc import DOC, _env

from conftest import API_KEY, Proc, gateway_config, launch_gateway, launch_sim
from doc_blocks import take
from shipyard.config import parse_config

DOC_PATH = "docs/integration.md"
[JOBS_CURL] = take(DOC_PATH, "## Jobs", "bash", containing="JOB=$(curl")
[JOBS_CLI] = take(DOC_PATH, "## Jobs", "bash", containing="shipyard jobs list")
[BATCH_SCRIPT] = take(DOC_PATH, "## Batches and files", "python", containing="batches")
[IDEMPOTENCY] = take(DOC_PATH, "## Idempotency keys", "bash")
[SETTINGS] = take(DOC_PATH, lang="yaml", containing="batches:")

EXTRA = """
  support-bot:
    provider: sim
    model: sim-chat
services:
  classify: {function: "sample_services:classify",
             input_schema: {type: object, required: [text]}}
work: {poll_interval_s: 0.1}
"""


def _bash(script: str, folder: Path, gateway: Proc, **extra: str) -> str:
    env = _env(folder, SHIPYARD_URL=gateway.url, SHIPYARD_API_KEY=API_KEY,
               SHIPYARD_CONFIG=str(gateway.extra["config"]), **extra)
    done = subprocess.run(["bash", "-ec", script], capture_output=True, text=True, cwd=folder,
                          env=env, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_examples_run_as_printed(tmp_path: Path) -> None:
    sim = launch_sim(tmp_path)
    config = gateway_config(sim.port, f"sqlite:///{tmp_path}/store.db", extra=EXTRA)
    gateway = launch_gateway(tmp_path, config, env={"SHIPYARD_API_KEY": API_KEY})
    try:
        jobs_curl, jobs_cli, idem = JOBS_CURL.text, JOBS_CLI.text, IDEMPOTENCY.text
        polled = _bash(jobs_curl, tmp_path, gateway)
        assert '"status":"succeeded"' in polled and '"label":"complaint"' in polled, polled
        job_id = re.search(r'"id":"(job_[0-9a-f]+)"', polled)
        assert job_id is not None
        again = _bash(jobs_curl, tmp_path, gateway)  # the same Idempotency-Key: same job
        assert job_id.group(1) in again

        shown = _bash(jobs_cli, tmp_path, gateway, JOB=job_id.group(1), NO_COLOR="1",
                      COLUMNS="200")
        assert job_id.group(1) in shown and '"attempt_log"' in shown
        assert f"Queued {job_id.group(1)} (classify)" in shown

        assert "batch_demo.py" in DOC
        (tmp_path / "batch_demo.py").write_text(BATCH_SCRIPT.text)
        ran = subprocess.run([sys.executable, "batch_demo.py"], capture_output=True, text=True,
                             cwd=tmp_path, timeout=180,
                             env=_env(tmp_path, SHIPYARD_URL=gateway.url,
                                      SHIPYARD_API_KEY=API_KEY))
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.splitlines() == ["completed 3 answered, 0 failed", "q0 200",
                                           "q1 200", "q2 200"]
        assert "It prints `completed 3 answered, 0 failed`, then `q0 200`, `q1 200` and " \
               "`q2 200`." in DOC

        replayed = _bash(idem, tmp_path, gateway)
        assert replayed.lower().count("idempotent-replayed: true") == 1
        bodies = [line for line in replayed.splitlines() if line.startswith("{")]
        assert len(bodies) == 2 and bodies[0] == bodies[1]
    finally:
        gateway.stop()
        sim.stop()


def test_the_settings_block_is_a_valid_config() -> None:
    config = parse_config(SETTINGS.text)
    assert config.jobs.for_target("classify").concurrency == 16
    assert config.batches.completion_windows == ["24h", "1h"]
