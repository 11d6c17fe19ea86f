"""PII engine: Shipyard's PIIEngine next to Presidio's AnalyzerEngine on the same corpus.

    .venv/bin/python bench/pii.py [--n 5000] [--seed 2026] [--messages 400] [--no-write]

One run, one machine, one corpus (`shipyard.privacy.corpus.generate_corpus`, Faker-generated,
labelled):

- **Shipyard**: `PIIEngine()` with every built-in recognizer (ten entity types), in this
  process; and the same engine limited to the entity types Presidio shares with it.
- **Presidio**: `presidio-analyzer`'s `AnalyzerEngine` with its predefined pattern recognizers
  on a BLANK spaCy `en` pipeline (its NER recognizer removed: nothing is downloaded), asked for
  the shared entity types only, in its own venv `bench/.venv-presidio` (created on first use
  with presidio-analyzer, presidio-anonymizer and pandas; `--presidio-python` points elsewhere).

Both analyze every sample once after a warm-up pass, timed in CPU seconds of the analysing
process (`time.process_time`: on a shared machine, wall time mostly measures the neighbours;
both engines are single-threaded pure Python, so CPU time is their cost); the report shows
samples/s and MB/s, the
ratio, and precision and recall per shared entity type for both (exact spans, and "overlap"
recall that forgives off-by-a-character spans). A second measurement times Shipyard's
`analyze` + `anonymize` on distinct ~1 KB chat messages (prose with 0-2 planted values): the
gateway budget is 0.2 ms p50.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import (
    BENCH_DIR,
    RESULTS_DIR,
    command_line,
    git_revision,
    log,
    machine_info,
    now_iso,
    paragraph,
    wait_for_quiet,
    write_docs_section,
    write_json,
)
from shipyard.privacy import PIIEngine, Replace
from shipyard.privacy.corpus import Sample, generate_corpus

PRESIDIO_VENV = BENCH_DIR / ".venv-presidio"
# The data benchmark shares this venv: the same packages, so either script can create it.
PRESIDIO_PACKAGES = ("presidio-analyzer", "presidio-anonymizer", "pandas")
# Shipyard entity type -> Presidio entity type, for the types both recognise.
SHARED = {
    "CREDIT_CARD": "CREDIT_CARD",
    "EMAIL": "EMAIL_ADDRESS",
    "IBAN": "IBAN_CODE",
    "IP_ADDRESS": "IP_ADDRESS",
    "PHONE": "PHONE_NUMBER",
    "URL": "URL",
    "US_SSN": "US_SSN",
}
TARGET_RATIO = 20.0
BUDGET_MS = 0.2

PRESIDIO_WORKER = r'''
import json, sys, time
import spacy
import tldextract
from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
from presidio_analyzer.nlp_engine import SpacyNlpEngine


class BlankSpacy(SpacyNlpEngine):
    """Presidio's spaCy engine on a blank pipeline: tokenizer only, nothing downloaded."""

    def load(self):
        self.nlp = {"en": spacy.blank("en")}


# The email recognizer calls tldextract, which would fetch the public suffix list over the
# network on first use: use the snapshot bundled with the package instead.
tldextract.tldextract.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=())

corpus_path, out_path, entities = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
texts = [json.loads(line)["text"] for line in open(corpus_path, encoding="utf-8")]
nlp = BlankSpacy(models=[{"lang_code": "en", "model_name": "blank"}])
nlp.load()
registry = RecognizerRegistry(supported_languages=["en"])
registry.load_predefined_recognizers(nlp_engine=nlp, languages=["en"])
for name in ("SpacyRecognizer",):
    try:
        registry.remove_recognizer(name)
    except Exception:
        pass
analyzer = AnalyzerEngine(registry=registry, nlp_engine=nlp, supported_languages=["en"])
recognizers = sorted({type(r).__name__ for r in registry.get_recognizers("en", entities)})
for text in texts[:200]:  # warm-up
    analyzer.analyze(text=text, language="en", entities=entities)
started = time.process_time()
results = [analyzer.analyze(text=t, language="en", entities=entities) for t in texts]
seconds = time.process_time() - started
found = [[[r.entity_type, r.start, r.end, r.score] for r in rs] for rs in results]
json.dump({"seconds": seconds, "findings": found, "recognizers": recognizers}, open(out_path, "w"))
'''


def ensure_presidio(python: Path | None) -> Path:
    """The Presidio venv's python; creates the venv with pip on first use."""
    if python is not None:
        return python
    python = PRESIDIO_VENV / "bin" / "python"
    if not python.exists():
        shown = PRESIDIO_VENV.relative_to(BENCH_DIR.parent)
        log(f"creating {shown} ({', '.join(PRESIDIO_PACKAGES)})")
        subprocess.run([sys.executable, "-m", "venv", str(PRESIDIO_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        *PRESIDIO_PACKAGES], check=True)  # fmt: skip
    return python


def presidio_versions(python: Path) -> dict[str, str]:
    code = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "('presidio-analyzer', 'spacy')}))")  # fmt: skip
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    return dict(json.loads(done.stdout))


def run_presidio(python: Path, samples: list[Sample], work: Path) -> dict[str, Any]:
    corpus = work / "corpus.jsonl"
    with corpus.open("w", encoding="utf-8") as handle:
        for s in samples:
            handle.write(json.dumps({"text": s.text}) + "\n")
    out = work / "presidio.json"
    worker = work / "presidio_worker.py"
    worker.write_text(PRESIDIO_WORKER)
    subprocess.run([str(python), str(worker), str(corpus), str(out), ",".join(SHARED.values())],
                   check=True)  # fmt: skip
    result: dict[str, Any] = json.loads(out.read_text())
    back = {v: k for k, v in SHARED.items()}
    result["findings"] = [
        [(back[e], start, end) for e, start, end, _score in found if e in back]
        for found in result["findings"]
    ]
    return result


def run_shipyard(engine: PIIEngine, samples: list[Sample]) -> dict[str, Any]:
    for s in samples[:200]:  # warm-up
        engine.analyze(s.text)
    started = time.process_time()
    results = [engine.analyze(s.text) for s in samples]
    seconds = time.process_time() - started
    return {"seconds": seconds,
            "findings": [[(f.entity, f.start, f.end) for f in fs] for fs in results]}


def accuracy(samples: list[Sample], findings: list[list[tuple[str, int, int]]]) -> dict[str, Any]:
    """Precision, exact recall and overlap recall per shared entity type."""
    out: dict[str, Any] = {}
    for entity in SHARED:
        tp = fp = fn = overlap_hits = 0
        for sample, found in zip(samples, findings, strict=True):
            gold = {(s.start, s.end) for s in sample.spans if s.entity == entity}
            got = {(start, end) for e, start, end in found if e == entity}
            tp += len(gold & got)
            fp += len(got - gold)
            fn += len(gold - got)
            overlap_hits += sum(1 for g in gold if any(a < g[1] and g[0] < b for a, b in got))
        support = tp + fn
        out[entity] = {
            "support": support,
            "precision": round(tp / (tp + fp), 4) if tp + fp else 1.0,
            "recall": round(tp / support, 4) if support else 1.0,
            "overlap_recall": round(overlap_hits / support, 4) if support else 1.0,
        }
    return out


def chat_messages(count: int, seed: int) -> list[str]:
    """Distinct ~1 KB chat messages: prose with 0-2 planted values from the corpus."""
    from faker import Faker

    fake = Faker("en_US")
    fake.seed_instance(seed)
    planted = [s.text for s in generate_corpus(count * 2, seed=seed + 1) if s.spans]
    messages = []
    for i in range(count):
        parts = [fake.paragraph(nb_sentences=4)]
        for text in planted[2 * i : 2 * i + (i % 3)]:  # 0, 1 or 2 values
            parts.append(text)
        while sum(len(p) + 1 for p in parts) < 1024:
            parts.insert(len(parts) // 2, fake.paragraph(nb_sentences=3))
        messages.append(" ".join(parts)[:1024])
    return messages


def latency(engine: PIIEngine, messages: list[str], rounds: int) -> dict[str, float]:
    operator = Replace()
    for m in messages:  # warm-up
        engine.anonymize(m, engine.analyze(m), operator)
    times, walls = [], []
    for _ in range(rounds):
        for m in messages:
            w0, t0 = time.perf_counter(), time.process_time()
            engine.anonymize(m, engine.analyze(m), operator)
            times.append(time.process_time() - t0)
            walls.append(time.perf_counter() - w0)
    times.sort()
    walls.sort()
    return {
        "messages": len(messages),
        "calls": len(times),
        "mean_chars": round(statistics.mean(len(m) for m in messages)),
        "p50_ms": round(times[len(times) // 2] * 1000, 4),
        "p90_ms": round(times[int(len(times) * 0.9)] * 1000, 4),
        "p99_ms": round(times[int(len(times) * 0.99)] * 1000, 4),
        "wall_p50_ms": round(walls[len(walls) // 2] * 1000, 4),
    }


def render(results: dict[str, Any]) -> str:
    sy, sy_shared, pr = results["shipyard"], results["shipyard_shared"], results.get("presidio")
    mb = results["corpus"]["chars"] / 1e6
    lines = [
        "## PII engine",
        "",
        paragraph(
            f"`{results['command']}` on {results['when']} (git {results['git']}),",
            f"{results['machine']['cpu']}, {results['machine']['cores']} cores, Python",
            f"{results['machine']['python']}. Corpus: {results['corpus']['samples']:,} generated",
            f"samples ({results['corpus']['chars'] / 1e3:,.0f} k chars, seed",
            f"{results['corpus']['seed']}), each engine analysing every sample once after a",
            "warm-up, single thread, timed in CPU seconds of its process (`time.process_time`).",
        ),
        "",
        "| engine | samples/s | MB/s | vs Presidio |",
        "|---|---:|---:|---:|",
    ]
    base = pr["samples_per_s"] if pr else None
    for name, r in (("Shipyard `PIIEngine()` (all 10 entity types)", sy),
                    ("Shipyard, the 7 shared types only", sy_shared)):
        ratio = f"**{r['samples_per_s'] / base:.1f}x**" if base else "n/a"
        lines.append(f"| {name} | {r['samples_per_s']:,.0f} | {mb / r['seconds']:.2f} | {ratio} |")
    if pr:
        lines.append(
            f"| Presidio {pr['versions']['presidio-analyzer']} `AnalyzerEngine` (pattern "
            f"recognizers, blank spaCy {pr['versions']['spacy']}, 7 shared types) | "
            f"{pr['samples_per_s']:,.0f} | {mb / pr['seconds']:.2f} | 1.0x |"
        )
    else:
        lines.append(f"| Presidio | unavailable: {results.get('presidio_error', '?')} | | |")
    lines += ["", "Accuracy on the shared entity types (Presidio with its default threshold, 0):",
              "", "| entity | support | Shipyard precision | Shipyard recall | Presidio precision "
              "| Presidio recall (exact / overlap) |", "|---|---:|---:|---:|---:|---:|"]
    for entity in SHARED:
        a = sy["accuracy"][entity]
        p = pr["accuracy"][entity] if pr else None
        lines.append(
            f"| `{entity}` | {a['support']} | {a['precision']:.4f} | {a['recall']:.4f} | "
            + (f"{p['precision']:.4f} | {p['recall']:.4f} / {p['overlap_recall']:.4f} |"
               if p else "n/a | n/a |")
        )
    lat = results["latency"]
    lines += [
        "",
        paragraph(
            f"Gateway budget: `analyze` + `anonymize` (typed placeholders) on {lat['messages']}",
            f"distinct chat messages of ~{lat['mean_chars']} characters (prose with 0-2 planted",
            f"values), {lat['calls']:,} calls, CPU time per call: **p50 {lat['p50_ms']:.3f}",
            f"ms**, p90 {lat['p90_ms']:.3f} ms, p99 {lat['p99_ms']:.3f} ms (budget {BUDGET_MS} ms",
            f"p50); wall-clock p50 {lat['wall_p50_ms']:.3f} ms.",
        ),
    ]
    goals = results["goals"]
    lines += ["", "| goal | result |", "|---|---|"]
    for goal, ok in goals.items():
        lines.append(f"| {goal} | {'met' if ok else 'NOT met'} |")
    busy = results.get("machine_busy")
    if busy is not None and busy > 0.15:
        lines += ["", paragraph(f"Note: the machine was {busy:.0%} busy with other work when the",
                                "run started; absolute numbers are pessimistic, ratios less so.")]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="corpus samples (default 5000)")
    parser.add_argument("--seed", type=int, default=2026,
                        help="corpus seed (default 2026: not the one used for tuning)")
    parser.add_argument("--messages", type=int, default=400, help="1 KB messages for latency")
    parser.add_argument("--rounds", type=int, default=5, help="latency rounds over the messages")
    parser.add_argument("--presidio-python", type=Path, default=None,
                        help="a python with presidio-analyzer (default: bench/.venv-presidio)")
    parser.add_argument("--no-presidio", action="store_true", help="skip Presidio")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    results: dict[str, Any] = {"when": now_iso(), "git": git_revision(), "command": command_line(),
                               "machine": machine_info()}  # fmt: skip
    log(f"generating {args.n:,} samples (seed {args.seed})")
    samples = generate_corpus(args.n, seed=args.seed)
    chars = sum(len(s.text) for s in samples)
    results["corpus"] = {"samples": len(samples), "chars": chars, "seed": args.seed}
    messages = chat_messages(args.messages, args.seed)

    python = None
    if not args.no_presidio:
        try:
            python = ensure_presidio(args.presidio_python)
        except (OSError, subprocess.CalledProcessError) as exc:
            results["presidio_error"] = f"{type(exc).__name__}: {exc}"
            log(f"Presidio unavailable: {results['presidio_error']}")

    results["machine_busy"] = round(wait_for_quiet(), 3)
    full, shared = PIIEngine(), PIIEngine(entities=SHARED)
    for key, engine in (("shipyard", full), ("shipyard_shared", shared)):
        log(f"{key}: analysing")
        r = run_shipyard(engine, samples)
        results[key] = {"seconds": round(r["seconds"], 4),
                        "samples_per_s": round(len(samples) / r["seconds"], 1),
                        "accuracy": accuracy(samples, r["findings"])}  # fmt: skip
    if python is not None:
        log("presidio: analysing (pattern recognizers, blank spaCy pipeline)")
        try:
            with tempfile.TemporaryDirectory(prefix="shipyard-pii-bench-") as tmp:
                r = run_presidio(python, samples, Path(tmp))
            results["presidio"] = {
                "seconds": round(r["seconds"], 4),
                "samples_per_s": round(len(samples) / r["seconds"], 1),
                "accuracy": accuracy(samples, r["findings"]),
                "recognizers": r["recognizers"],
                "versions": presidio_versions(python),
            }
        except (OSError, subprocess.CalledProcessError, ValueError) as exc:
            results["presidio_error"] = f"{type(exc).__name__}: {exc}"
            log(f"Presidio failed: {results['presidio_error']}")
    log(f"latency: {args.messages} messages x {args.rounds} rounds")
    results["latency"] = latency(full, messages, args.rounds)

    pr = results.get("presidio")
    goals: dict[str, bool] = {}
    if pr:
        ratio = results["shipyard"]["samples_per_s"] / pr["samples_per_s"]
        results["ratio"] = round(ratio, 2)
        goals[f">= {TARGET_RATIO:.0f}x Presidio's throughput (all Shipyard recognizers)"] = (
            ratio >= TARGET_RATIO)
        goals["recall >= Presidio's on every shared type"] = all(
            results["shipyard"]["accuracy"][e]["recall"] >= pr["accuracy"][e]["recall"]
            for e in SHARED)  # fmt: skip
    goals[f"analyze + anonymize p50 <= {BUDGET_MS} ms on ~1 KB messages"] = (
        results["latency"]["p50_ms"] <= BUDGET_MS)
    results["goals"] = goals

    markdown = render(results)
    print(markdown)
    if not args.no_write:
        write_docs_section("pii", markdown)
        write_json(RESULTS_DIR / "pii.json", results)
        log("wrote docs/benchmarks.md (section pii) and bench/results/pii.json")
    return 0 if all(goals.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
