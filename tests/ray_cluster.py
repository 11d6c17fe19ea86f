"""A real two-node Ray cluster on 127.0.0.1 for tests and benchmarks: a head node and a
second worker node, each a `ray start --block` process of its own (one CPU each, a small
object store), torn down by process id — every process each node started, and nothing else
on the machine (other Ray users are left alone).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
RAY = str(Path(sys.executable).parent / "ray")


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalRayCluster:
    """`address` is the head's GCS address (what `ray.address` or RAY_ADDRESS names)."""

    address: str
    temp_dir: Path
    nodes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def output(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in self.logs if p.exists())

    def processes(self) -> list[int]:
        """The pids of the node processes and all their descendants."""
        return descendants([n.pid for n in self.nodes])

    def stop(self) -> None:
        # Every process the nodes started (raylets, GCS, workers, replicas), by pid.
        victims = self.processes()
        for node in self.nodes:
            if node.poll() is None:
                node.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for node in self.nodes:
            try:
                node.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait(10)
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def descendants(roots: list[int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        if Path(f"/proc/{pid}").exists():
            found.append(pid)
        todo += children.get(pid, [])
    return found


def _env() -> dict[str, str]:
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1",
            # Workers and replicas import this checkout's sources and the test services.
            "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(FIXTURES)]),
            # Keep Ray small: the machine is shared.
            "RAY_num_heartbeats_timeout": "10", "RAY_memory_monitor_refresh_ms": "0"}


def _node_flags(cpus: int, object_store_mb: int) -> list[str]:
    return [f"--num-cpus={cpus}", f"--object-store-memory={object_store_mb * 1024 * 1024}",
            "--node-ip-address=127.0.0.1", f"--node-manager-port={_port()}",
            f"--object-manager-port={_port()}", f"--metrics-export-port={_port()}",
            f"--dashboard-agent-listen-port={_port()}",
            f"--dashboard-agent-grpc-port={_port()}", f"--runtime-env-agent-port={_port()}",
            "--disable-usage-stats", "--block"]


def start_cluster(folder: Path, *, workers: int = 1, cpus: int = 1,
                  object_store_mb: int = 100, timeout: float = 120.0) -> LocalRayCluster:
    """A head node plus `workers` worker nodes on this machine, ready when every node has
    joined."""
    port = _port()
    # A short temp dir: Ray's socket paths must fit in 107 bytes.
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    cluster = LocalRayCluster(f"127.0.0.1:{port}", temp)
    log = folder / "ray-head.log"
    cluster.logs.append(log)
    with log.open("wb") as handle:
        cluster.nodes.append(subprocess.Popen(
            [RAY, "start", "--head", f"--port={port}", f"--temp-dir={temp}",
             "--include-dashboard=false", f"--ray-client-server-port={_port()}",
             *_node_flags(cpus, object_store_mb)],
            stdout=handle, stderr=subprocess.STDOUT, env=_env(), start_new_session=True))
    try:
        _wait_nodes(cluster, 1, timeout)
        for i in range(workers):
            log = folder / f"ray-worker-{i}.log"
            cluster.logs.append(log)
            with log.open("wb") as handle:
                cluster.nodes.append(subprocess.Popen(
                    [RAY, "start", f"--address={cluster.address}",
                     *_node_flags(cpus, object_store_mb)],
                    stdout=handle, stderr=subprocess.STDOUT, env=_env(),
                    start_new_session=True))
        _wait_nodes(cluster, 1 + workers, timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait_nodes(cluster: LocalRayCluster, count: int, timeout: float) -> None:
    """Until `count` nodes are alive (asked by a short-lived driver process)."""
    probe = ("import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False, "
             "logging_level='ERROR'); print(sum(1 for n in ray.nodes() if n['Alive']))")
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        for node in cluster.nodes:
            if node.poll() is not None:
                raise RuntimeError(f"a Ray node exited with {node.returncode}:\n"
                                   f"{cluster.output()}")
        result = subprocess.run([sys.executable, "-c", probe, cluster.address],
                                capture_output=True, text=True, env=_env(), timeout=60)
        last = (result.stdout.strip() or result.stderr.strip()[-500:])
        if result.returncode == 0 and result.stdout.strip().isdigit() and int(
                result.stdout.strip()) >= count:
            return
        time.sleep(1)
    raise RuntimeError(f"the Ray cluster did not reach {count} nodes within {timeout}s: "
                       f"{last}\n{cluster.output()}")
