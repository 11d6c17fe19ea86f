"""Translation overhead per request of each provider kind, against the OpenAI pass-through.

Everything a provider does to a request and its answer besides the network, in process, on
the same payloads, in one run:
- `openai` (pass-through): serialise the OpenAI request; the gateway parses the answer.
- each translating kind: translate the request, serialise it, parse the native answer,
  translate it to a `chat.completion`, serialise that (the gateway then needs no parse).
- streams: per streamed answer (~100 chunks), parse each native event and write the OpenAI chunk,
  against the pass-through (its bytes are relayed; the relay parses both alike).
- bedrock adds SigV4 signing (botocore) as its own row.
The request is a realistic chat turn (system prompt, three turns, one tool call and result,
one tool declared); the answer ~100 words. Each row is the p50/p99 of per-request times;
the goal is ≤ 0.1 ms p50 added per request.

    .venv/bin/python bench/providers.py [--requests 20000] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from botocore.eventstream import EventStreamBuffer

from _harness import RESULTS_DIR, log, machine_info, now_iso, paragraph, write_docs_section
from _harness import write_json as save_json
from shipyard.providers.bedrock import Signer
from shipyard.providers.formats import anthropic, bedrock, gemini, ollama
from shipyard.providers.formats.openai import ChunkWriter, ndjson_lines, sse, sse_events
from shipyard.sim.formats import answer_chunks

WORDS = ("the model considered your request carefully and here is an answer that reads like "
         "real prose with a few longer sentences about latency budgets traces and retries ")
TEXT = " ".join((WORDS * 8).split()[:100])
REQUEST: dict[str, Any] = {
    "model": "m", "max_tokens": 512, "temperature": 0.3,
    "tools": [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}],
    "messages": [
        {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
        {"role": "user", "content": "What is the weather in Oslo, and should I bike?"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 7, "rain": false}'},
        {"role": "user", "content": "Thanks. Anything else I should know?"},
    ],
}
OPENAI_ANSWER: dict[str, Any] = {
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": TEXT},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 80, "completion_tokens": 130, "total_tokens": 210}}


def _native_answers() -> dict[str, bytes]:
    return {
        "anthropic": orjson.dumps(anthropic.to_anthropic_response(OPENAI_ANSWER, model="m")),
        "gemini": orjson.dumps(gemini.to_gemini_response(OPENAI_ANSWER, model="m")),
        "bedrock": orjson.dumps(bedrock.to_converse_response(OPENAI_ANSWER)),
        "ollama": orjson.dumps(ollama.to_ollama_response(OPENAI_ANSWER, model="m",
                                                         started=time.perf_counter())),
    }


def _native_streams() -> dict[str, bytes]:
    chunks = list(answer_chunks(OPENAI_ANSWER))
    a_writer = anthropic.StreamWriter(model="m", input_tokens=80)
    g_writer = gemini.StreamWriter(model="m")
    b_writer = bedrock.StreamWriter()
    o_writer = ollama.StreamWriter(model="m", started=time.perf_counter())
    a = [e for c in chunks for e in a_writer.feed(c)] + a_writer.end()
    g = [e for c in chunks for e in g_writer.feed(c)] + g_writer.end()
    b = [e for c in chunks for e in b_writer.feed(c)] + b_writer.end()
    o = [e for c in chunks for e in o_writer.feed(c)] + o_writer.end()
    return {"openai": b"".join(sse(c) for c in chunks),
            "anthropic": b"".join(sse(data, name) for name, data in a),
            "gemini": b"".join(sse(e) for e in g),
            "bedrock": b"".join(bedrock.encode_event(k, p) for k, p in b),
            "ollama": b"".join(ollama.encode_line(e) for e in o)}


def _request_steps() -> dict[str, Callable[[], Any]]:
    answers = _native_answers()
    payload = REQUEST
    body = orjson.dumps(OPENAI_ANSWER)
    signer = Signer("AKIDEXAMPLE", "secret", None, region="us-east-1")

    def passthrough() -> Any:
        orjson.dumps(payload)
        return orjson.loads(body)  # the gateway parses what the upstream sent

    def via_anthropic() -> Any:
        orjson.dumps(anthropic.to_anthropic(payload))
        return orjson.dumps(anthropic.from_anthropic(orjson.loads(answers["anthropic"])))

    def via_gemini() -> Any:
        orjson.dumps(gemini.to_gemini(payload))
        return orjson.dumps(gemini.from_gemini(orjson.loads(answers["gemini"]), model="m"))

    def via_bedrock() -> Any:
        orjson.dumps(bedrock.to_converse(payload))
        return orjson.dumps(bedrock.from_converse(orjson.loads(answers["bedrock"]), model="m"))

    def via_bedrock_signed() -> Any:
        raw = orjson.dumps(bedrock.to_converse(payload))
        signer.sign("POST", "https://bedrock-runtime.us-east-1.amazonaws.com/model/m/converse",
                    {"content-type": "application/json"}, raw)
        return orjson.dumps(bedrock.from_converse(orjson.loads(answers["bedrock"]), model="m"))

    def via_ollama() -> Any:
        orjson.dumps(ollama.to_ollama(payload, stream=False))
        return orjson.dumps(ollama.from_ollama(orjson.loads(answers["ollama"]), payload))

    return {"openai (pass-through)": passthrough, "anthropic": via_anthropic,
            "gemini": via_gemini, "bedrock": via_bedrock, "bedrock + SigV4": via_bedrock_signed,
            "ollama": via_ollama}


async def _pieces(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 512):
        yield data[i:i + 512]


async def _stream_once(kind: str, data: bytes) -> int:
    writer = ChunkWriter(id="x", model="m", created=1)
    out = 0
    if kind == "anthropic":
        a_reader = anthropic.StreamReader(writer)
        async for _, event in sse_events(_pieces(data), provider="b"):
            for chunk in a_reader.feed(orjson.loads(event)):
                out += len(orjson.dumps(chunk))
    elif kind == "gemini":
        g_reader = gemini.StreamReader(writer)
        async for _, event in sse_events(_pieces(data), provider="b"):
            for chunk in g_reader.feed(orjson.loads(event)):
                out += len(orjson.dumps(chunk))
    elif kind == "bedrock":
        b_reader = bedrock.StreamReader(writer)
        buffer = EventStreamBuffer()
        async for piece in _pieces(data):
            buffer.add_data(piece)
            for message in buffer:
                for chunk in b_reader.feed(message.headers[":event-type"],
                                           orjson.loads(message.payload)):
                    out += len(orjson.dumps(chunk))
    elif kind == "ollama":
        o_reader = ollama.StreamReader(writer, REQUEST)
        async for line in ndjson_lines(_pieces(data)):
            for chunk in o_reader.feed(orjson.loads(line)):
                out += len(orjson.dumps(chunk))
    else:
        async for piece in _pieces(data):
            out += len(piece)  # relayed as it came
    return out


def _time(step: Callable[[], Any], n: int) -> list[float]:
    for _ in range(min(1000, n)):
        step()
    times = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        step()
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return times


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    base: float | None = None
    # Interleave kinds round by round so machine noise falls on all of them alike.
    steps = _request_steps()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    rounds = 5
    for r in range(rounds):
        log(f"requests: round {r + 1}/{rounds}")
        for name, step in steps.items():
            samples[name] += _time(step, args.requests // rounds)
    for name, times in samples.items():
        p50 = statistics.median(times)
        base = base if base is not None else p50
        rows.append({"path": name, "what": "request + answer", "p50_ms": p50,
                     "p99_ms": _pct(times, 0.99), "added_p50_ms": p50 - base})
    streams = _native_streams()
    loop = asyncio.new_event_loop()
    stream_base: float | None = None
    for kind in ("openai", "anthropic", "gemini", "bedrock", "ollama"):
        data = streams[kind]
        times = _time(lambda d=data, k=kind: loop.run_until_complete(  # type: ignore[misc]
            _stream_once(k, d)), max(200, args.requests // 20))
        p50 = statistics.median(times)
        stream_base = stream_base if stream_base is not None else p50
        name = "openai (pass-through)" if kind == "openai" else kind
        rows.append({"path": name, "what": f"stream ({len(list(answer_chunks(OPENAI_ANSWER)))}"
                     " chunks)", "p50_ms": p50, "p99_ms": _pct(times, 0.99),
                     "added_p50_ms": p50 - stream_base})
    loop.close()
    for row in rows:
        print(f"{row['what']:<22} {row['path']:<22} p50 {row['p50_ms']:.4f} ms  "
              f"p99 {row['p99_ms']:.4f} ms  added p50 {row['added_p50_ms']:+.4f} ms")
    result = {"when": now_iso(), "machine": machine_info(), "requests": args.requests,
              "rows": rows}
    if args.no_write:
        return
    save_json(RESULTS_DIR / "providers.json", result)
    lines = ["## Provider translation overhead (`bench/providers.py`)", "",
             paragraph("What each translating provider kind adds to one request besides the "
                       "network, in process, against the OpenAI pass-through path, measured "
                       "side by side in one run (kinds interleaved round by round). Request: "
                       "a system prompt, three turns, a tool call and its result, one tool "
                       "declared; answer: ~100 words. Streams: the same answer as native "
                       "events turned into OpenAI chunks. Goal: at most 0.1 ms p50 added per "
                       f"request. Run {result['when']} on a shared 2-core machine."), "",
             "| what | path | p50 ms | p99 ms | added p50 ms |", "|---|---|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['what']} | {row['path']} | {row['p50_ms']:.4f} | "
                     f"{row['p99_ms']:.4f} | {row['added_p50_ms']:+.4f} |")
    write_docs_section("providers", "\n".join(lines))
    log("wrote docs/benchmarks.md (providers) and bench/results/providers.json")


if __name__ == "__main__":
    main()
