"""The deployment `shipyard check` starts itself when it is given no `--url`.

The gateway serves the config on a free port; every provider whose `base_url` is on this
machine and where nothing listens gets a `shipyard sim` on a free port instead (through a
temporary copy of the config beside it), and those sims are the ones the chaos drills break.
Everything is stopped, and the copy removed, when the block ends::

    with started_deployment(Path("shipyard.yaml"), cfg, environ, log=Path("gw.log")) as d:
        run_check(CheckOptions(..., url=d.deployment.url, sims=d.deployment.sim_urls))

With `background=True` the block is entered at once and the processes start in a thread, so
work that needs no gateway (the data audit) overlaps their start-up; `wait()` blocks until
the gateway is ready::

    with started_deployment(..., background=True) as d:
        run_check(CheckOptions(..., sims=d.deployment.sim_urls), gateway=d.wait)
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from shipyard.config import Config
from shipyard.gateway.launch import (
    LocalDeployment,
    free_port,
    port_in_use,
    upstreams_on_this_machine,
    with_upstream_ports,
)

__all__ = ["StartedDeployment", "started_deployment"]


@dataclass
class StartedDeployment:
    deployment: LocalDeployment
    simulated: dict[str, int]  # provider name -> the port its config named
    startup_s: float | None = None  # launch to ready, once ready
    _thread: threading.Thread | None = field(default=None, repr=False)
    _error: BaseException | None = field(default=None, repr=False)

    def _start(self) -> None:
        t0 = time.perf_counter()
        try:
            self.deployment.start()
        except BaseException as exc:  # handed to wait(), in the caller's thread
            self._error = exc
        else:
            self.startup_s = time.perf_counter() - t0

    def wait(self) -> str:
        """Block until the gateway is ready and return its URL; raise why it did not start."""
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error
        return self.deployment.url

    def note(self) -> str:
        """What the report says about a deployment the check started itself."""
        sims = ", ".join(f"provider {name} (its base_url names 127.0.0.1:{port}, where "
                         "nothing listened)" for name, port in sorted(self.simulated.items()))
        return (f"the check started this deployment itself: the gateway on port "
                f"{self.deployment.port}" + (f", shipyard sim (a SIMULATED model) for {sims}"
                                             if sims else ""))


@contextlib.contextmanager
def started_deployment(file: Path, config: Config, environ: dict[str, str], *,
                       log: Path | None = None, ready_timeout: float = 180.0,
                       background: bool = False) -> Iterator[StartedDeployment]:
    """Start the gateway for `file` (store already migrated) and the sims it needs; with
    `background`, in a thread (`wait()` for it)."""
    upstreams = upstreams_on_this_machine(config)
    idle = {name: port for name, port in upstreams.items() if not port_in_use(port)}
    moves = {port: free_port() for port in sorted(set(idle.values()))}
    serve = with_upstream_ports(file, moves, tag=f"check-{free_port()}") if moves else file
    deployment = LocalDeployment(serve, free_port(), sorted(moves.values()), environ=environ,
                                 ready_timeout=ready_timeout, log=log)
    started = StartedDeployment(deployment, idle)
    try:
        if not background:
            started._start()
            started.wait()
            yield started
            return
        started._thread = threading.Thread(target=started._start, name="check-deployment",
                                           daemon=True)
        started._thread.start()
        try:
            yield started
        finally:
            if started._thread.is_alive():
                # Ending the processes ends the start-up's wait for them at once.
                deployment.stop()
                started._thread.join()
    finally:
        deployment.stop()
        if serve != file:
            serve.unlink(missing_ok=True)
