"""Services on Ray Serve and `shipyard data --engine ray`, on a real local Ray cluster: a head
node and a second worker node (`ray start --block` processes with one CPU and a 100 MB object
store each, torn down by pid after the module), a real `shipyard serve` subprocess in front.

- `shipyard data run --engine ray` on the quick-start pipeline writes the same accounting,
  quarantine and Parquet bytes as the local engine;
- a service with 2 replicas answers behind the gateway's chain (auth, validation, traces,
  version header) from both replica processes;
- killing one replica process loses no request (calls in flight on it are sent again);
- overload is shed at once with 503 and Retry-After (Ray's bounded queue), never queued
  without bound;
- an autoscaling service goes from 1 to 2 replicas under load and back, and the decisions
  show in metrics and status;
- a new version (config reload) rolls out on Ray without a failed request, and the old
  version's application is retired.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import API_KEY, FIXTURES, REPO, Proc, launch_gateway
from ray_cluster import LocalRayCluster, start_cluster

pytestmark = pytest.mark.slow
HEADERS = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRayCluster]:
    found = start_cluster(tmp_path_factory.mktemp("ray"), workers=1, cpus=1,
                          object_store_mb=100)
    try:
        yield found
    finally:
        found.stop()
        shutil.rmtree(found.temp_dir, ignore_errors=True)


def _data_run(folder: Path, *flags: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "shipyard", "data", "run", str(folder / "pipeline.yaml"),
         "--json", "--store-url", f"sqlite:///{folder}/store.db", *flags],
        capture_output=True, text=True, timeout=300, cwd=folder,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert result.returncode == 0, result.stderr[-3000:]
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_data_engine_ray_matches_local(cluster: LocalRayCluster, tmp_path: Path) -> None:
    # Runs first: its actors take the cluster's CPUs, then give them back.
    folder = tmp_path / "data"
    shutil.copytree(REPO / "examples" / "data", folder)
    local = _data_run(folder)
    ray = _data_run(folder, "--engine", "ray", "--ray-address", cluster.address,
                    "--workers", "2")
    assert (local["engine"], ray["engine"]) == ("local", "ray")
    assert (local["version"], ray["version"]) == (1, 2)  # the same dataset's next version
    for key in ("rows", "quarantine_by_rule", "exact_duplicates", "near_duplicates",
                "near_duplicates_removed", "duplicate_clusters", "near_duplicate_clusters",
                "nulls", "columns", "pii", "bias_warnings", "warnings", "source",
                "content_hash", "config_hash"):
        assert ray[key] == local[key], key
    assert local["rows"]["quarantined"] > 0 and local["pii"]["findings"]
    for file in ("data.parquet", "quarantine.parquet", "bias.json"):
        assert (Path(ray["path"]) / file).read_bytes() == (
            Path(local["path"]) / file).read_bytes(), file


def gateway_config(tmp: Path, cluster: LocalRayCluster) -> str:
    small = "num_cpus: 0.25, health_check_period_s: 1, graceful_shutdown_s: 5"
    return f"""
python_path: ["{FIXTURES}"]
store: {{url: "sqlite:///{tmp}/shipyard.db"}}
traces: {{flush_interval_s: 0.05}}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
lifecycle: {{tick_s: 1}}
ray: {{address: "{cluster.address}", status_interval_s: 0.5, retire_after_s: 3}}
services:
  square:
    function: ray_services:square
    engine: ray
    timeout_s: 30
    input_schema: {{type: object, required: [x], properties: {{x: {{type: number}}}}}}
    ray: {{replicas: 2, max_ongoing_requests: 4, max_queued_requests: 64, {small}}}
  broken:
    function: ray_services:fails
    engine: ray
    ray: {{replicas: 1, {small}}}
  tight:
    function: ray_services:square
    engine: ray
    ray: {{replicas: 1, max_ongoing_requests: 1, max_queued_requests: 1, retry_after_s: 2,
          {small}}}
  auto:
    function: ray_services:square
    engine: ray
    ray:
      max_ongoing_requests: 4
      autoscaling: {{min_replicas: 1, max_replicas: 2, target_ongoing_requests: 1,
                    upscale_delay_s: 0, downscale_delay_s: 2, metrics_interval_s: 0.5,
                    look_back_period_s: 2}}
      num_cpus: 0.25
      health_check_period_s: 1
      graceful_shutdown_s: 5
"""


@pytest.fixture(scope="module")
def gateway(cluster: LocalRayCluster, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Proc]:
    folder = tmp_path_factory.mktemp("gateway")
    proc = launch_gateway(folder, gateway_config(folder, cluster), timeout=300)
    try:
        yield proc
    finally:
        proc.stop()


def _status(gateway: Proc, service: str) -> dict[str, Any]:
    answer = httpx.get(f"{gateway.url}/v1/admin/status", headers=HEADERS, timeout=10)
    answer.raise_for_status()
    ray: dict[str, Any] = answer.json()["services"][service]["ray"]
    return ray


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _serving(gateway: Proc, service: str) -> dict[str, Any]:
    """The version that serves now, once Ray reports its replicas."""
    def ready() -> dict[str, Any] | None:
        versions = [v for v in _status(gateway, service)["versions"] if not v["retiring"]]
        return versions[0] if versions and versions[0]["replica_processes"] else None
    found: dict[str, Any] = _wait(ready, 30, f"{service}'s replicas in status")
    return found


def _invoke(client: httpx.Client, gateway: Proc, service: str, body: dict[str, Any]
            ) -> httpx.Response:
    return client.post(f"{gateway.url}/v1/services/{service}/invoke", json=body,
                       headers=HEADERS, timeout=60)


def test_two_replicas_behind_the_gateway(gateway: Proc) -> None:
    with httpx.Client() as client:
        pids = set()
        for i in range(24):
            answer = _invoke(client, gateway, "square", {"x": i, "sleep": 0.02})
            assert answer.status_code == 200, answer.text
            assert answer.json()["output"]["y"] == i * i
            assert answer.headers["x-shipyard-version"] == "1"
            # The replica knows the request it serves (and its W3C trace).
            output = answer.json()["output"]
            assert output["request_id"] == answer.headers["x-request-id"]
            assert output["traceparent"].split("-")[1] == answer.headers["x-shipyard-trace-id"]
            pids.add(answer.json()["output"]["pid"])
        # Both replicas answered, and none of them is the gateway.
        assert len(pids) == 2 and gateway.process.pid not in pids
        serving = _serving(gateway, "square")
        assert serving["replicas"] == {"RUNNING": 2} and serving["target_replicas"] == 2
        assert {p["pid"] for p in serving["replica_processes"]} == pids
        # The chain stays in front: validation answers 422 without reaching Ray, a missing
        # key 401, and a function's exception is a 500 naming it.
        bad = _invoke(client, gateway, "square", {"x": "seven"})
        assert bad.status_code == 422 and "x" in bad.json()["error"]["message"]
        anonymous = client.post(f"{gateway.url}/v1/services/square/invoke", json={"x": 1})
        assert anonymous.status_code == 401
        broken = _invoke(client, gateway, "broken", {"x": 3})
        assert broken.status_code == 500
        assert "ValueError: cannot handle 3" in broken.json()["error"]["message"]
    metrics = httpx.get(f"{gateway.url}/metrics", headers=HEADERS).text
    assert 'shipyard_ray_replicas{service="square",state="RUNNING",version="1"} 2.0' in metrics
    ready = httpx.get(f"{gateway.url}/readyz").json()
    assert ready["status"] == "ready" and ready["checks"]["ray"] is True


def test_killing_a_replica_loses_no_request(gateway: Proc) -> None:
    victim = _serving(gateway, "square")["replica_processes"][0]["pid"]
    statuses: list[int] = []
    answered_by: set[int] = set()

    async def load(stop_at: float) -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            async def worker(n: int) -> None:
                i = 0
                while time.monotonic() < stop_at:
                    answer = await client.post(
                        f"{gateway.url}/v1/services/square/invoke", headers=HEADERS,
                        json={"x": n * 1000 + i, "sleep": 0.1})
                    statuses.append(answer.status_code)
                    if answer.status_code == 200:
                        answered_by.add(answer.json()["output"]["pid"])
                    i += 1

            async def kill() -> None:
                await asyncio.sleep(1.5)
                os.kill(victim, signal.SIGKILL)  # a replica process of this test's cluster

            await asyncio.gather(*(worker(n) for n in range(4)), kill())

    asyncio.run(load(time.monotonic() + 6))
    assert len(statuses) > 40
    assert set(statuses) == {200}, [s for s in statuses if s != 200]
    # Ray replaces the dead replica; the survivor carried the load meanwhile.
    _wait(lambda: (v := _serving(gateway, "square"))["replicas"] == {"RUNNING": 2}
          and victim not in {p["pid"] for p in v["replica_processes"]}, 60,
          "a new replica in place of the killed one")


def test_overload_sheds_503_with_retry_after(gateway: Proc) -> None:
    _serving(gateway, "tight")

    async def burst() -> list[tuple[int, float, dict[str, str]]]:
        async with httpx.AsyncClient(timeout=60) as client:
            async def one() -> tuple[int, float, dict[str, str]]:
                started = time.perf_counter()
                answer = await client.post(f"{gateway.url}/v1/services/tight/invoke",
                                           headers=HEADERS, json={"x": 2, "sleep": 3})
                return answer.status_code, time.perf_counter() - started, dict(
                    answer.headers)
            return await asyncio.gather(*(one() for _ in range(8)))

    results = asyncio.run(burst())
    ok = [r for r in results if r[0] == 200]
    shed = [r for r in results if r[0] == 503]
    assert len(ok) + len(shed) == 8, [r[0] for r in results]
    # One replica working on one request and one waiting: the rest are refused at once.
    assert 1 <= len(ok) <= 2 and len(shed) >= 6
    assert all(r[2]["retry-after"] == "2" for r in shed)
    assert all(r[1] < 2.0 for r in shed)  # refused, not queued behind the 3 s calls
    metrics = httpx.get(f"{gateway.url}/metrics", headers=HEADERS).text
    assert 'shipyard_requests_shed_total{scope="tight:ray"}' in metrics


def test_autoscaling_up_under_load_and_back(gateway: Proc) -> None:
    assert _serving(gateway, "auto")["target_replicas"] == 1

    async def load(seconds: float) -> list[int]:
        statuses: list[int] = []
        stop_at = time.monotonic() + seconds
        async with httpx.AsyncClient(timeout=60) as client:
            async def worker() -> None:
                while time.monotonic() < stop_at:
                    answer = await client.post(f"{gateway.url}/v1/services/auto/invoke",
                                               headers=HEADERS, json={"x": 1, "sleep": 0.3})
                    statuses.append(answer.status_code)
                    if _target(gateway) == 2 and _running(gateway) == 2:
                        return

            await asyncio.gather(*(worker() for _ in range(4)))
        return statuses

    statuses = asyncio.run(load(60))
    assert set(statuses) == {200}
    assert _running(gateway) == 2, "the autoscaler did not add a replica under load"
    # Idle: back to one replica after downscale_delay_s.
    _wait(lambda: _target(gateway) == 1 and _running(gateway) == 1, 60, "scale down to 1")
    status = _status(gateway, "auto")
    events = [e["event"] for e in status["events"]]
    assert "scale up" in events and "scale down" in events
    metrics = httpx.get(f"{gateway.url}/metrics", headers=HEADERS).text
    assert 'shipyard_ray_scaling_decisions_total{direction="up",service="auto"}' in metrics
    assert 'shipyard_ray_scaling_decisions_total{direction="down",service="auto"}' in metrics
    # The service's dashboard page shows the replicas and the decisions.
    page = _dashboard(gateway, "/ui/services/auto")
    assert "On Ray Serve" in page and "shipyard-auto-v1" in page
    assert "scale up" in page and "1 → 2 replicas" in page and "2 → 1 replicas" in page


def _dashboard(gateway: Proc, path: str) -> str:
    with httpx.Client(base_url=gateway.url, follow_redirects=True, timeout=30) as client:
        form = client.get("/ui/login").text
        found = re.search(r'name="csrf" value="([^"]+)"', form)
        assert found is not None, form[:500]
        client.post("/ui/login", data={"key": API_KEY, "csrf": found.group(1), "next": path})
        answer = client.get(path)
        assert answer.status_code == 200 and "/ui/login" not in str(answer.url), answer.text
        return answer.text


def _target(gateway: Proc) -> int | None:
    versions = [v for v in _status(gateway, "auto")["versions"] if not v["retiring"]]
    return versions[0]["target_replicas"] if versions else None


def _running(gateway: Proc) -> int:
    versions = [v for v in _status(gateway, "auto")["versions"] if not v["retiring"]]
    return int(versions[0]["replicas"].get("RUNNING", 0)) if versions else 0


def test_new_version_rolls_out_without_dropped_requests(gateway: Proc) -> None:
    config = Path(str(gateway.extra["config"]))
    statuses: list[int] = []
    versions: list[str] = []

    async def load(stop_at: float) -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            async def worker() -> None:
                while time.monotonic() < stop_at:
                    answer = await client.post(
                        f"{gateway.url}/v1/services/square/invoke", headers=HEADERS,
                        json={"x": 3, "sleep": 0.05})
                    statuses.append(answer.status_code)
                    if answer.status_code == 200:
                        versions.append(answer.headers["x-shipyard-version"])
                    if versions and versions[-1] == "2" and versions.count("2") > 20:
                        return

            async def reload() -> None:
                await asyncio.sleep(1)
                config.write_text(config.read_text().replace(
                    "function: ray_services:square\n    engine: ray\n    timeout_s: 30",
                    "function: ray_services:square_v2\n    engine: ray\n    timeout_s: 30"))
                gateway.process.send_signal(signal.SIGHUP)

            await asyncio.gather(*(worker() for _ in range(3)), reload())

    asyncio.run(load(time.monotonic() + 90))
    assert set(statuses) == {200}
    assert versions[0] == "1" and versions[-20:] == ["2"] * 20
    # The old version's application is deleted after retire_after_s.
    _wait(lambda: [v["version"] for v in _status(gateway, "square")["versions"]] == ["2"],
          60, "version 1 retired from the cluster")
