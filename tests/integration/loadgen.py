"""A small async client for the chaos tests: fire requests, keep every outcome."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from conftest import API_KEY, Proc

CHAT = {"model": "demo", "messages": [{"role": "user", "content": "Hello chaos"}]}


@dataclass
class Outcome:
    status: int
    latency_s: float
    sent_at: float
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    error: str | None = None


async def _one(session: aiohttp.ClientSession, url: str, body: dict[str, Any],
               headers: dict[str, str] | None = None) -> Outcome:
    sent = time.monotonic()
    try:
        async with session.post(url, json=body, headers=headers) as response:
            raw = await response.read()
            try:
                parsed: Any = json.loads(raw) if raw else None
            except ValueError:
                parsed = raw.decode(errors="replace")
            return Outcome(response.status, time.monotonic() - sent, sent,
                           {k.lower(): v for k, v in response.headers.items()}, parsed)
    except (TimeoutError, aiohttp.ClientError) as exc:
        return Outcome(0, time.monotonic() - sent, sent, error=type(exc).__name__)


async def _run_closed(url: str, n: int, concurrency: int, body: dict[str, Any],
                      headers: dict[str, str] | None) -> list[Outcome]:
    semaphore = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers={
            "authorization": f"Bearer {API_KEY}"}) as session:
        async def guarded() -> Outcome:
            async with semaphore:
                return await _one(session, url, body, headers)

        return list(await asyncio.gather(*(guarded() for _ in range(n))))


def burst(gateway: Proc, n: int, *, concurrency: int = 32, body: dict[str, Any] | None = None,
          headers: dict[str, str] | None = None) -> list[Outcome]:
    """n requests with at most `concurrency` in flight (closed loop)."""
    return asyncio.run(_run_closed(f"{gateway.url}/v1/chat/completions", n, concurrency,
                                   body or CHAT, headers))


async def _run_open(url: str, rate: float, seconds: float,
                    body: dict[str, Any]) -> list[Outcome]:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers={
            "authorization": f"Bearer {API_KEY}"}) as session:
        tasks = []
        start = time.monotonic()
        total = int(rate * seconds)
        for i in range(total):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_one(session, url, body)))
        return list(await asyncio.gather(*tasks))


def open_loop(gateway: Proc, rate: float, seconds: float,
              body: dict[str, Any] | None = None) -> list[Outcome]:
    """Requests at a fixed arrival rate, whatever the answers (open loop)."""
    return asyncio.run(_run_open(f"{gateway.url}/v1/chat/completions", rate, seconds,
                                 body or CHAT))


def p99(outcomes: list[Outcome]) -> float:
    latencies = sorted(o.latency_s for o in outcomes)
    return latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]


def faults(sim: Proc, **knobs: Any) -> None:
    """Replace the sim's faults (unset knobs go back to healthy)."""
    request = urllib.request.Request(f"{sim.url}/_sim/faults", method="PUT",
                                     data=json.dumps(knobs).encode(),
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        response.read()


def sim_stats(sim: Proc, reset: bool = False) -> dict[str, int]:
    if reset:
        request = urllib.request.Request(f"{sim.url}/_sim/reset", method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=5) as response:
            response.read()
        return {}
    with urllib.request.urlopen(f"{sim.url}/_sim/stats", timeout=5) as response:
        return dict(json.loads(response.read()))


def status(gateway: Proc) -> dict[str, Any]:
    request = urllib.request.Request(f"{gateway.url}/v1/admin/status",
                                     headers={"authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return dict(json.loads(response.read()))


def circuit(gateway: Proc, alias: str = "demo", index: int = 0) -> str:
    return str(status(gateway)["models"][alias]["deployments"][index]["circuit"])


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
