"""What escalation to a human costs on the request path.

1. The user-request detector alone on a 1 KB user message (no ask, and an ask at the end).
2. Two real `shipyard serve` gateways side by side in one run, the same in-process simulated
   model behind both, one with `escalation` on (user request, low confidence, repeated
   failures with a conversation header) and one without; requests interleaved over keep-alive
   connections; Shipyard's own time per request from `x-shipyard-overhead-ms`.

    .venv/bin/python bench/escalation.py [--requests 2000] [--no-write]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _harness import (
    REPO_DIR,
    RESULTS_DIR,
    command_line,
    free_port,
    load_average,
    log,
    machine_info,
    managed_processes,
    now_iso,
    paragraph,
    wait_for_port,
    write_docs_section,
    write_json,
)
from shipyard.escalation import asks_for_person

KEY = "sk-bench-" + "e" * 24
SENTENCE = ("I ordered a kettle two weeks ago and the tracking page still says the parcel is "
            "being prepared; could you check the status and tell me when it ships? ")
MESSAGE = (SENTENCE * 8)[:1024]
ASK = MESSAGE[:-40] + " Can I talk to a person?"


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50": statistics.median(ordered), "p99": ordered[int(len(ordered) * 0.99) - 1]}


def detector(n: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name, text in (("no ask", MESSAGE), ("ask at the end", ASK)):
        for _ in range(200):
            asks_for_person(text)  # warm up
        times = []
        for _ in range(n):
            start = time.perf_counter_ns()
            asks_for_person(text)
            times.append((time.perf_counter_ns() - start) / 1000.0)
        out[name] = _percentiles(times)
    return out


CONFIG = """
store: {{url: "sqlite:///{folder}/{name}.db"}}
auth: {{api_keys: ["{key}"]}}
providers:
  sim: {{kind: sim}}
models:
  support:
    provider: sim
    model: sim-chat
{escalation}
"""
ESCALATION = """    escalation:
      enabled: true
      min_confidence: 0.5
      max_failures: 3
"""


def gateways(requests: int, folder: Path) -> dict[str, dict[str, float]]:
    body = json.dumps({"model": "support", "max_tokens": 16,
                       "messages": [{"role": "user", "content": MESSAGE}]}).encode()
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json",
               "x-shipyard-conversation": "bench-conversation"}
    samples: dict[str, list[float]] = {"escalation off": [], "escalation on": []}
    with managed_processes(folder) as group:
        ports: dict[str, int] = {}
        for name, block in (("escalation off", ""), ("escalation on", ESCALATION)):
            port = free_port()
            config = folder / f"{name.replace(' ', '-')}.yaml"
            config.write_text(CONFIG.format(folder=folder, name=name.replace(" ", "-"),
                                            key=KEY, escalation=block))
            server = group.start(name, [sys.executable, "-m", "shipyard", "serve", "--config",
                                        str(config), "--port", str(port)], cwd=REPO_DIR)
            problem = wait_for_port(server, port, 60)
            if problem:
                raise SystemExit(f"{name} did not start: {problem}")
            ports[name] = port
        connections = {n: http.client.HTTPConnection("127.0.0.1", p, timeout=30)
                       for n, p in ports.items()}
        for i in range(requests + 200):
            for name, conn in connections.items():
                conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    raise SystemExit(f"{name} answered {response.status}")
                if i >= 200:  # after warm-up
                    samples[name].append(float(response.getheader("x-shipyard-overhead-ms")
                                               or "nan"))
        for conn in connections.values():
            conn.close()
    return {name: _percentiles(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--detector-runs", type=int, default=20000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    load = load_average()
    log("detector on a 1 KB message")
    detected = detector(args.detector_runs)
    with tempfile.TemporaryDirectory(prefix="shipyard-bench-esc-") as tmp:
        log(f"two gateways, {args.requests} interleaved requests each")
        served = gateways(args.requests, Path(tmp))
    off, on = served["escalation off"], served["escalation on"]
    added = on["p50"] - off["p50"]
    rows = ["| measured | p50 | p99 |", "|---|--:|--:|"]
    for name, value in detected.items():
        rows.append(f"| detector, 1 KB message, {name} | {value['p50']:.1f} µs | "
                    f"{value['p99']:.1f} µs |")
    for name, value in served.items():
        rows.append(f"| Shipyard overhead per request, {name} | {value['p50']:.3f} ms | "
                    f"{value['p99']:.3f} ms |")
    text = "\n".join([
        "## Escalation to a human: cost on the request path",
        "",
        paragraph(
            f"Measured {now_iso()} with `{command_line()}`. Two `shipyard serve` gateways side",
            "by side in one run, the same in-process simulated model behind both, one with",
            "`escalation` on (user request, `min_confidence`, `max_failures` with a",
            "conversation header: the failure counter is not touched on success) and one",
            f"without; {args.requests} interleaved 1 KB chat requests each over keep-alive",
            "connections; overhead is Shipyard's own time (`x-shipyard-overhead-ms`).",
            f"Load average at the start: {load:.1f} on {machine_info().get('cores', '?')} CPUs",
            "(a shared machine: p99s are noisy; compare the p50s)."),
        "",
        *rows,
        "",
        f"Added p50: **{added:+.3f} ms** (ratio on/off {on['p50'] / off['p50']:.2f}x).",
        "",
    ])
    print(text)
    if not args.no_write:
        write_docs_section("escalation", text)
        write_json(RESULTS_DIR / "escalation.json", {
            "machine": machine_info(), "load_average": load, "detector_us": detected,
            "overhead_ms": served, "added_p50_ms": added})


if __name__ == "__main__":
    main()
