"""Run a deployment on this machine: the gateway on a port, and `shipyard sim` for the
upstreams the config points at on loopback.

`shipyard demo` serves with it, and `shipyard check` without `--url` starts the deployment it
scores with it::

    with LocalDeployment(Path("shipyard.yaml"), port=8000, sim_ports=[9100]) as deployment:
        httpx.get(deployment.url + "/readyz")

The sim of a provider whose `base_url` is `http://127.0.0.1:9100/v1` is what the examples
use; `upstreams_on_this_machine` finds those providers, and `with_upstream_ports` writes a
copy of the config (beside it, so its relative paths still hold) that points them elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from shipyard.config import Config
from shipyard.errors import ConfigError

__all__ = [
    "LocalDeployment",
    "free_port",
    "port_in_use",
    "server_argv",
    "sim_argv",
    "upstreams_on_this_machine",
    "with_upstream_ports",
]

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def server_argv(file: Path, host: str, port: int, workers: int) -> list[str]:
    """The command that serves `file` (the store is already migrated)."""
    return [sys.executable, "-m", "shipyard.gateway.server", "--config", str(file.resolve()),
            "--host", host, "--port", str(port), "--workers", str(workers), "--no-migrate"]


def sim_argv(port: int) -> list[str]:
    return [sys.executable, "-m", "shipyard", "sim", "--port", str(port)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def upstreams_on_this_machine(config: Config) -> dict[str, int]:
    """Providers whose `base_url` is on loopback: provider name -> port."""
    found: dict[str, int] = {}
    for name, provider in config.providers.items():
        base = getattr(provider, "base_url", None)
        if not base:
            continue
        parts = urlsplit(base)
        if parts.hostname in LOOPBACK:
            found[name] = parts.port or (443 if parts.scheme == "https" else 80)
    return found


def with_upstream_ports(file: Path, ports: Mapping[int, int], *, tag: str) -> Path:
    """A copy of `file` whose providers on loopback port `old` use port `ports[old]` instead.

    The copy is written beside `file` (hidden, named with `tag`) so that `python_path`,
    `$file` references and other paths relative to the config still resolve; the caller
    removes it. `$env` references are copied as written, never resolved.
    """
    data: dict[str, Any] = yaml.safe_load(file.read_text("utf-8")) or {}
    for provider in (data.get("providers") or {}).values():
        base = provider.get("base_url") if isinstance(provider, dict) else None
        if not isinstance(base, str):
            continue
        parts = urlsplit(base)
        if parts.hostname in LOOPBACK and parts.port is not None and parts.port in ports:
            netloc = f"{parts.hostname}:{ports[parts.port]}"
            provider["base_url"] = urlunsplit(parts._replace(netloc=netloc))
    copy = file.parent / f".{file.stem}.{tag}.yaml"
    copy.write_text(f"# A temporary copy of {file.name} (upstream ports moved); remove it.\n"
                    + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return copy


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def _stop(process: subprocess.Popen[bytes] | None, grace: float) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


@dataclass
class LocalDeployment:
    """The gateway serving `config_file` on `port`, with a `shipyard sim` on each of
    `sim_ports`; `start()` returns once `/readyz` answers, `stop()` ends them all."""

    config_file: Path
    port: int
    sim_ports: list[int] = field(default_factory=list)
    environ: dict[str, str] | None = None
    host: str = "127.0.0.1"
    ready_timeout: float = 180.0
    log: Path | None = None       # where the processes' output goes (default: our stdout)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list, init=False)
    server: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _log_file: IO[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def sim_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.sim_ports]

    def start(self) -> None:
        environ = dict(os.environ if self.environ is None else self.environ)
        output: IO[bytes] | None = None
        where = "its error is above"
        if self.log is not None:
            output = self._log_file = self.log.open("ab")
            where = f"its output is in {self.log}"
        try:
            sims = [(port, subprocess.Popen(sim_argv(port), stdout=subprocess.DEVNULL,
                                            stderr=output, env=environ))
                    for port in self.sim_ports]
            self.processes += [process for _, process in sims]
            self.server = subprocess.Popen(
                server_argv(self.config_file, self.host, self.port, 1), env=environ,
                stdout=output, stderr=subprocess.STDOUT if output else None)
            self.processes.append(self.server)
            for port, sim in sims:
                if not _wait_ready(f"http://127.0.0.1:{port}/livez", sim, 30):
                    raise ConfigError(f"The simulated upstream did not start on port {port}; "
                                      "is the port free? (--sim-port picks another)")
            if not _wait_ready(f"{self.url}/readyz", self.server, self.ready_timeout):
                code = self.server.poll()
                raise ConfigError(
                    f"The gateway did not become ready on port {self.port}"
                    + (f" (it exited with status {code}; {where})"
                       if code is not None else f" within {self.ready_timeout:.0f} s")
                    + "; is the port free? (--port picks another)")
        except BaseException:
            self.stop()
            raise

    def wait(self) -> None:
        """Block until the gateway exits (Ctrl-C in `shipyard demo`)."""
        if self.server is not None:
            with contextlib.suppress(KeyboardInterrupt, SystemExit):
                self.server.wait()

    def stop(self) -> None:
        # The gateway first (it drains), then its upstreams.
        for process in reversed(self.processes):
            _stop(process, 30 if process is self.server else 10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> LocalDeployment:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

