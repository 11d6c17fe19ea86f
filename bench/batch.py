"""The Batch API at scale: a 100,000-line batch through `shipyard serve` in front of
`shipyard sim`, against a bare client that posts the same lines to the sim directly.

    .venv/bin/python bench/batch.py [--lines 100000] [--concurrency 16] [--no-write]

Shipyard (`shipyard serve --workers 1`, API-key auth, SQLite store, traces on) takes the JSONL
file through the official openai SDK (`files.create`, `batches.create`, `batches.retrieve`,
`files.content`) and runs every line through the alias's full chain (limits, admission,
guards, traces, cost) with `batches.line_concurrency` in flight. The peer is a bare aiohttp
client (its own process) that reads the same file line by line and posts each body to the sim
with the same concurrency, writing the answers to a file: no durability, no checkpoints, no
traces. Reported: wall time, lines/s, the gateway's peak RSS (sampled every 0.1 s, the whole
process tree) and its RSS at 10 %, 50 % and 100 % of the lines (flat means memory does not
grow with the batch), and the ratio of the two times. Results go to stdout,
`bench/results/batch.json` and `docs/benchmarks.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    REPO_DIR,
    RESULTS_DIR,
    RssSampler,
    command_line,
    free_port,
    git_revision,
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

PYTHON = sys.executable


def write_input(path: Path, lines: int) -> int:
    with path.open("w") as handle:
        for i in range(lines):
            handle.write(json.dumps({
                "custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": "demo", "max_tokens": 8,
                         "messages": [{"role": "user", "content": f"line {i}: hello"}]}}) + "\n")
    return path.stat().st_size


async def bare(input_path: Path, output_path: Path, url: str, concurrency: int) -> int:
    """The peer: read lines, post bodies to the sim, write answers (no durability)."""
    import aiohttp

    done = 0
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=concurrency * 4)

    async def worker(session: aiohttp.ClientSession, out: Any) -> None:
        nonlocal done
        while (raw := await queue.get()) is not None:
            line = json.loads(raw)
            async with session.post(url, json={**line["body"], "model": "sim-chat"}) as answer:
                body = await answer.json()
            out.write(json.dumps({"custom_id": line["custom_id"], "response": {
                "status_code": answer.status, "body": body}}) + "\n")
            done += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        with output_path.open("w") as out:
            workers = [asyncio.create_task(worker(session, out)) for _ in range(concurrency)]
            with input_path.open("rb") as handle:
                for raw in handle:
                    await queue.put(raw)
                    if any(w.done() for w in workers):  # a worker failed: say why
                        await asyncio.gather(*workers)
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers)
    return done


def run_bare(group: Any, folder: Path, input_path: Path, sim_port: int,
             concurrency: int) -> dict[str, Any]:
    output = folder / "bare-output.jsonl"
    started = time.perf_counter()
    proc = group.start("bare", [PYTHON, __file__, "--bare-child", str(input_path), str(output),
                                f"http://127.0.0.1:{sim_port}/v1/chat/completions",
                                str(concurrency)], env={**os.environ})
    with RssSampler(proc.pid) as rss:
        proc.proc.wait()
    seconds = time.perf_counter() - started
    lines = sum(1 for _ in output.open())
    return {"seconds": round(seconds, 2), "lines": lines,
            "lines_per_s": round(lines / seconds, 1), "peak_rss_mib": round(rss.peak_mib, 1)}


def run_gateway(group: Any, folder: Path, input_path: Path, sim_port: int, lines: int,
                concurrency: int) -> dict[str, Any]:
    import openai

    key = "sk-bench-" + secrets.token_hex(12)
    port = free_port()
    config = folder / "shipyard.yaml"
    config.write_text(f"""
store: {{url: "sqlite:///{folder}/store.db"}}
auth: {{api_keys: [{{$env: BENCH_KEY}}]}}
providers:
  sim: {{kind: openai, base_url: "http://127.0.0.1:{sim_port}/v1", timeout_s: 30}}
models:
  demo: {{provider: sim, model: sim-chat}}
batches:
  line_concurrency: {concurrency}
  max_file_bytes: 1073741824
""")
    env = {**os.environ, "BENCH_KEY": key, "PYTHONPATH": str(REPO_DIR / "src")}
    server = group.start("gateway", [PYTHON, "-m", "shipyard", "serve", "--config", str(config),
                                     "--port", str(port), "--workers", "1"], env=env)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key,
                           max_retries=5, timeout=600)
    deadline = time.monotonic() + 60
    while True:
        try:
            client.models.list()
            break
        except openai.APIConnectionError:
            if time.monotonic() > deadline or not server.alive():
                raise RuntimeError("the gateway did not start:\n" + server.log_tail()) from None
            time.sleep(0.2)
    marks: dict[str, float] = {}
    with RssSampler(server.pid) as rss:
        idle_mib = rss.first_mib
        started = time.perf_counter()
        with input_path.open("rb") as handle:
            uploaded = client.files.create(file=handle, purpose="batch")
        upload_s = time.perf_counter() - started
        batch = client.batches.create(input_file_id=uploaded.id,
                                      endpoint="/v1/chat/completions", completion_window="24h")
        while batch.status not in ("completed", "failed", "expired", "cancelled"):
            time.sleep(0.5)
            batch = client.batches.retrieve(batch.id)
            done = batch.request_counts.completed if batch.request_counts else 0
            for share in (0.1, 0.5):
                if done >= share * lines and f"{share:.0%}" not in marks:
                    rss.sample()
                    marks[f"{share:.0%}"] = round(rss.peak_mib, 1)
        seconds = time.perf_counter() - started
        rss.sample()
        marks["100%"] = round(rss.peak_mib, 1)
    if batch.status != "completed" or batch.output_file_id is None:
        raise RuntimeError(f"the batch ended {batch.status}: {batch}")
    counts = batch.request_counts
    written = 0
    with client.files.with_streaming_response.content(batch.output_file_id) as answer:
        for _ in answer.iter_lines():
            written += 1
    client.close()
    return {"seconds": round(seconds, 2), "upload_s": round(upload_s, 2),
            "lines": written, "completed": counts.completed if counts else None,
            "failed": counts.failed if counts else None,
            "lines_per_s": round(lines / seconds, 1), "idle_rss_mib": round(idle_mib, 1),
            "peak_rss_mib": round(rss.peak_mib, 1), "rss_at": marks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--bare-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_child:
        source, output, url, concurrency = args.bare_child
        asyncio.run(bare(Path(source), Path(output), url, int(concurrency)))
        return
    load = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp, \
            managed_processes(Path(tmp)) as group:
        folder = Path(tmp)
        input_path = folder / "requests.jsonl"
        size = write_input(input_path, args.lines)
        log(f"{args.lines} lines, {size / 1e6:.1f} MB")
        sim_port = free_port()
        sim = group.start("sim", [PYTHON, "-m", "shipyard", "sim", "--port", str(sim_port)],
                          env={**os.environ, "PYTHONPATH": str(REPO_DIR / "src")})
        if wait_for_port(sim, sim_port, 60) is not None:
            raise RuntimeError("shipyard sim did not start:\n" + sim.log_tail())
        log("bare client ...")
        peer = run_bare(group, folder, input_path, sim_port, args.concurrency)
        log(f"bare: {peer}")
        log("shipyard batch ...")
        ours = run_gateway(group, folder, input_path, sim_port, args.lines, args.concurrency)
        log(f"shipyard: {ours}")
    ratio = round(ours["seconds"] / peer["seconds"], 2)
    result = {"when": now_iso(), "revision": git_revision(), "machine": machine_info(),
              "load_average_at_start": load, "lines": args.lines, "input_mb": round(size / 1e6, 1),
              "concurrency": args.concurrency, "bare": peer, "shipyard": ours,
              "time_ratio": ratio, "command": command_line()}
    print(json.dumps(result, indent=2))
    if args.no_write:
        return
    write_json(RESULTS_DIR / "batch.json", result)
    marks = ours["rss_at"]
    write_docs_section("batch", "\n".join([
        "## Batch API at scale (`bench/batch.py`)",
        "",
        paragraph(
            f"A {args.lines:,}-line chat batch ({size / 1e6:.1f} MB of JSONL) through `shipyard "
            "serve` (1 worker, SQLite store, traces on) in front of `shipyard sim`, driven by the "
            "official openai SDK (upload, create, poll, download), against a bare aiohttp client "
            "that posts the same lines to the sim directly and writes the answers to a file (no "
            "durability, no checkpoints, no traces), both with "
            f"{args.concurrency} requests in flight, in one run. Machine: 2 cores shared with "
            f"other agents' work (load average {load:.1f} at the start), so read the rates as a "
            "floor and compare the rows of one run."),
        "",
        "| run | wall time | lines/s | peak RSS | bare is N times faster |",
        "|---|---:|---:|---:|---:|",
        f"| bare client to the sim (the peer) | {peer['seconds']:.1f} s | "
        f"{peer['lines_per_s']:,.0f} | {peer['peak_rss_mib']:.0f} MiB | 1 |",
        f"| Shipyard Batch API (every line through the chain) | {ours['seconds']:.1f} s | "
        f"{ours['lines_per_s']:,.0f} | {ours['peak_rss_mib']:.0f} MiB | {ratio:.2f} |",
        "",
        paragraph(
            f"The gateway's resident memory (whole process tree) was {ours['idle_rss_mib']:.0f} "
            f"MiB before the upload, {marks.get('10%', 0):.0f} MiB at 10 % of the lines, "
            f"{marks.get('50%', 0):.0f} MiB at 50 % and {marks.get('100%', 0):.0f} MiB at the "
            f"end: {marks.get('100%', 0) - marks.get('10%', 0):+.0f} MiB over the last 90 % of "
            "the lines, not the size of the batch (lines are read, answered and written one "
            "window at a time; the small drift is the process's caches and allocator, not the "
            f"lines). The upload took {ours['upload_s']:.1f} s; {ours['lines']:,} answers came "
            f"back ({ours['failed']} failed)."),
        "",
        f"Run: `{command_line()}` at {result['when']}.",
    ]))


if __name__ == "__main__":
    main()
