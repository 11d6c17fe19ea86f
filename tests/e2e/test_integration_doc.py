"""docs/integration.md as printed: its YAML is a valid config, its shell commands run from a
folder outside the repo against a store with a dead-lettered delivery (and redeliver it), and
its Python example runs and prints what the page says. (The receiver example runs in
tests/integration/test_webhooks_gateway.py; the jobs, batch and idempotency examples in
tests/e2e/test_jobs_doc.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

from conftest import REPO
from doc_blocks import take
from shipyard.config import parse_config
from shipyard.store import create_store_engine, migrate
from shipyard.webhooks.delivery import WebhookOutbox, endpoints_from_config
from shipyard.work import WorkQueue

DOC = (REPO / "docs" / "integration.md").read_text()
# The webhook sections (the receiver runs in tests/integration/test_webhooks_gateway.py) and
# the Python example of "Building on it".
TAKEN = {"yaml": take("docs/integration.md", "### Endpoints", "yaml"),
         "bash": take("docs/integration.md", "### Endpoints", "bash")
         + take("docs/integration.md", "### The delivery log", "bash"),
         "python": take("docs/integration.md", "## Building on it", "python",
                        containing="run_until_idle")}


def blocks(language: str) -> list[str]:
    return [b.text for b in TAKEN[language]]


def _env(folder: Path, **extra: str) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "PYTHONPATH": str(REPO / "src"), **extra}


class Hook(BaseHTTPRequestHandler):
    status = 503
    received: list[dict[str, str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        Hook.received.append({k.lower(): v for k, v in self.headers.items()})
        self.send_response(Hook.status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_the_yaml_is_a_valid_config() -> None:
    [yaml] = [b for b in blocks("yaml") if "webhooks:" in b]
    config = parse_config(yaml, environ={"CRM_WEBHOOK_URL": "https://crm.example.com/hooks",
                                         "SHIPYARD_WEBHOOK_SECRET": "whsec_" + "A" * 43 + "="})
    [crm] = endpoints_from_config(config).values()
    assert crm.name == "webhooks.endpoints.crm" and crm.max_attempts == 8
    assert crm.wants("job.completed", "acme") and not crm.wants("alert.resolved", "acme")


def test_the_shell_commands_run_as_printed(tmp_path: Path) -> None:
    server = HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        secret_cmd, cli_cmds = [b for b in blocks("bash") if "webhooks" in b]
        made = subprocess.run(["bash", "-ec", secret_cmd + 'echo "$SHIPYARD_WEBHOOK_SECRET"'],
                              capture_output=True, text=True, cwd=tmp_path,
                              env=_env(tmp_path), timeout=60)
        assert made.returncode == 0, made.stderr
        secret = made.stdout.strip()
        assert secret.startswith("whsec_")
        config = tmp_path / "shipyard.yaml"
        config.write_text(f"""
store: {{url: "sqlite:///{tmp_path}/store.db"}}
webhooks:
  endpoints:
    crm:
      url: http://127.0.0.1:{server.server_port}/hooks
      secret: {{$env: SHIPYARD_WEBHOOK_SECRET}}
      max_attempts: 1
""")
        env = {"SHIPYARD_WEBHOOK_SECRET": secret}
        cfg = parse_config(config.read_text(), environ=env)
        engine = create_store_engine(cfg.store.url)
        migrate(engine)
        outbox = WebhookOutbox.from_config(cfg, WorkQueue(engine))
        [item] = outbox.publish("job.completed", {"job": {"id": "job_1"}})
        engine.dispose()
        first = subprocess.run(["shipyard", "webhooks", "flush"], capture_output=True,
                               text=True, cwd=tmp_path,
                               env=_env(tmp_path, SHIPYARD_CONFIG=str(config), **env),
                               timeout=120)
        assert first.returncode == 1 and "1 dead-lettered" in first.stdout, first.stdout
        Hook.status = 204  # the receiver is fixed: the commands as printed redeliver
        done = subprocess.run(["bash", "-ec", cli_cmds], capture_output=True, text=True,
                              cwd=tmp_path, timeout=180,
                              env=_env(tmp_path, SHIPYARD_CONFIG=str(config),
                                       DELIVERY=item.id, **env))
        assert done.returncode == 0, done.stdout + done.stderr
        assert item.id in done.stdout and "HTTP 503" in done.stdout  # list and show
        assert f"Queued {item.id} for redelivery" in done.stdout
        assert "1 delivered, 0 dead-lettered" in done.stdout
        assert [h["webhook-id"] for h in Hook.received] == [item.id, item.id]
    finally:
        server.shutdown()
        server.server_close()


def test_the_python_example_runs_as_printed(tmp_path: Path) -> None:
    [example] = [b for b in blocks("python") if "work_demo" in DOC and "run_until_idle" in b]
    script = tmp_path / "work_demo.py"
    script.write_text(example)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          cwd=tmp_path, env=_env(tmp_path), timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("{'queued': 0, 'running': 0, 'succeeded': 1, 'dead': 1, "
                                   "'cancelled': 0}")
    assert done.stdout.strip() in DOC
