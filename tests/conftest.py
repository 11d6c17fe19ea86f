"""Shared fixtures: real processes on 127.0.0.1, real PostgreSQL, no mocks of our own parts.

Tests that need PostgreSQL or Redis skip with a clear reason when they are unreachable,
unless SHIPYARD_REQUIRE_SERVICES=1 (set by .ci/run), where they fail instead.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
API_KEY = "sk-test-" + "k" * 24
PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REQUIRE_SERVICES = os.environ.get("SHIPYARD_REQUIRE_SERVICES") == "1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            # Probes only: a self-signed test certificate is fine here.
            context = ssl._create_unverified_context() if url.startswith("https") else None
            with urllib.request.urlopen(url, timeout=1, context=context):
                return
        except urllib.error.HTTPError:
            return  # it answered, even if not 200
        except OSError as exc:
            last = exc
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout}s: {last}")


@dataclass
class Proc:
    """A real child process serving HTTP on 127.0.0.1."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path
    extra: dict[str, object] = field(default_factory=dict)
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return int(self.process.returncode)


def _spawn(args: list[str], log: Path, env: dict[str, str] | None = None,
           cwd: Path | None = None) -> subprocess.Popen[bytes]:
    merged = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with log.open("wb") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "shipyard", *args], stdout=handle,
                                stderr=subprocess.STDOUT, env=merged, cwd=cwd or REPO)


def launch_sim(folder: Path, *flags: str) -> Proc:
    """Start `shipyard sim` on a free port and wait until it answers."""
    port = free_port()
    log = folder / f"sim-{port}.log"
    proc = Proc(_spawn(["sim", "--port", str(port), *flags], log), port, log)
    wait_http(f"{proc.url}/livez", proc=proc.process)
    return proc


def launch_gateway(folder: Path, config_text: str, *, env: dict[str, str] | None = None,
                   workers: int = 1, timeout: float = 60.0) -> Proc:
    """Write a config and start `shipyard serve` on a free port; waits until it answers."""
    port = free_port()
    config = folder / f"shipyard-{port}.yaml"
    config.write_text(config_text)
    log = folder / f"serve-{port}.log"
    process = _spawn(["serve", "--config", str(config), "--port", str(port),
                      "--workers", str(workers)], log,
                     env={"SHIPYARD_API_KEY": API_KEY,
                          # this checkout's sources first, even when the venv installed another
                          "PYTHONPATH": os.pathsep.join([str(FIXTURES), str(REPO / "src")]),
                          **(env or {})})
    scheme = "https" if "tls_certfile" in config_text else "http"
    proc = Proc(process, port, log, {"config": config}, scheme=scheme)
    try:
        wait_http(f"{proc.url}/livez", timeout, proc=process)
    except RuntimeError as exc:
        proc.stop()
        raise RuntimeError(f"{exc}\n--- serve output ---\n{proc.output()}") from None
    return proc


@pytest.fixture
def start_sim(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Factory: start `shipyard sim` with CLI flags; stopped after the test."""
    started: list[Proc] = []

    def start(*flags: str) -> Proc:
        proc = launch_sim(tmp_path, *flags)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Factory: write a config and start `shipyard serve`; stopped after the test."""
    started: list[Proc] = []

    def start(config_text: str, *, env: dict[str, str] | None = None,
              workers: int = 1) -> Proc:
        proc = launch_gateway(tmp_path, config_text, env=env, workers=workers)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def gateway_config(sim_port: int | None, store_url: str, *, extra: str = "") -> str:
    provider = (f"""
  sim:
    kind: openai
    base_url: http://127.0.0.1:{sim_port}/v1
    timeout_s: 10""" if sim_port else """
  sim:
    kind: sim""")
    return f"""
store:
  url: {store_url}
traces:
  flush_interval_s: 0.05
auth:
  api_keys:
    - {{$env: SHIPYARD_API_KEY}}
providers:{provider}
models:
  demo:
    provider: sim
    model: sim-chat
  demo-full:
    provider: sim
    model: sim-chat
    capture: full
  demo-embed:
    provider: sim
    model: sim-embed
    type: embedding
{extra}
"""


def _pg_reachable() -> str | None:
    try:
        import psycopg

        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test",
                             connect_timeout=3):
            return None
    except Exception as exc:  # any failure means "not reachable"
        return f"{type(exc).__name__}: {exc}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test, dropped afterwards."""
    problem = _pg_reachable()
    if problem is not None:
        reason = f"PostgreSQL on 127.0.0.1:5432 is unreachable ({problem})"
        if REQUIRE_SERVICES:
            pytest.fail(reason + " and SHIPYARD_REQUIRE_SERVICES=1")
        pytest.skip(reason)
    import psycopg

    name = f"shipyard_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test",
                         autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test",
                             autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Both store backends: SQLite in a temp folder, and a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    return str(request.getfixturevalue("postgres_url"))


def _redis_reachable() -> str | None:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=3) as sock:
            sock.sendall(b"PING\r\n")
            if not sock.recv(16).startswith(b"+PONG"):
                return "it did not answer PING"
        return None
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test's own on the Redis at 127.0.0.1:6379; its keys are deleted
    afterwards."""
    problem = _redis_reachable()
    if problem is not None:
        reason = f"Redis on 127.0.0.1:6379 is unreachable ({problem})"
        if REQUIRE_SERVICES:
            pytest.fail(reason + " and SHIPYARD_REQUIRE_SERVICES=1")
        pytest.skip(reason)
    import redis

    prefix = f"shipyard-test-{uuid.uuid4().hex[:12]}:"
    try:
        yield prefix
    finally:
        client = redis.Redis(host="127.0.0.1", port=6379)
        for key in client.scan_iter(match=prefix + "*"):
            client.delete(key)
        client.close()
