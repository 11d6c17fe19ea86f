"""Data pipeline benchmark: a generated 1,000,000-row CSV through validate + clean + exact dedup
+ PII redaction of two text columns, near-duplicate detection on 100,000 texts, and a pandas +
Presidio baseline on a 10,000-row sample, in one run.

    .venv/bin/python bench/data_pipeline.py              # full run (writes docs + results)
    .venv/bin/python bench/data_pipeline.py --rows 100000 --no-write   # quick look

Goals: ≤ 60 s and peak RSS ≤ 1.5 GB (whole process tree) on 2 cores for the 1M rows; ≤ 60 s for
near-duplicates on 100k texts. The Presidio baseline runs in `bench/.venv-presidio` (created on
first use: presidio-analyzer, presidio-anonymizer, pandas; a BLANK spaCy pipeline, so nothing is
downloaded) and is reported as a throughput ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    BENCH_DIR,
    RESULTS_DIR,
    RssSampler,
    git_revision,
    load_average,
    log,
    machine_info,
    now_iso,
    write_docs_section,
    write_json,
)

PRESIDIO_VENV = BENCH_DIR / ".venv-presidio"
CATEGORIES = ["books", "electronics", "garden", "toys", "grocery", "sports", "beauty", "auto"]
WORDS = [
    "the", "order", "arrived", "late", "but", "support", "was", "helpful", "and", "item", "works",
    "as", "described", "great", "value", "would", "buy", "again", "packaging", "damaged",
    "refund", "requested", "quality", "excellent", "shipping", "fast", "slow", "color", "size",
    "fits", "small", "large", "battery", "screen", "price", "cheap"]
FIRST = ["anna", "bob", "chen", "dina", "emil", "fatima", "george", "hana", "ivan", "julia"]
LAST = ["Smith", "Okafor", "Müller", "García", "Nguyen", "Kowalski", "Rossi", "Dubois", "Sato",
        "Haddad"]


def _pii(rng: random.Random) -> str:
    kind = rng.randrange(5)
    if kind == 0:
        return f"{rng.choice(FIRST)}.{rng.randrange(10_000)}@example.com"
    if kind == 1:
        return f"+1 415-555-{rng.randrange(10_000):04d}"
    if kind == 2:
        return "4111 1111 1111 1111"
    if kind == 3:
        return f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"
    return f"{rng.randrange(100, 665)}-{rng.randrange(10, 99)}-{rng.randrange(1000, 9999)}"


def _text(rng: random.Random, words: int) -> str:
    text = " ".join(rng.choice(WORDS) for _ in range(words))
    if rng.random() < 0.10:  # planted PII in 10% of texts
        cut = rng.randrange(words)
        parts = text.split(" ")
        parts.insert(cut, ("contact " if rng.random() < 0.5 else "") + _pii(rng))
        text = " ".join(parts)
    r = rng.random()
    if r < 0.01:
        text = text.replace("e", "é", 1).encode("utf-8").decode("cp1252")  # mojibake: "Ã©"
    elif r < 0.02:
        text = text + " cafe\u0301"  # decomposed é: not NFC
    elif r < 0.07:
        text = "  " + text.replace(" ", "   ", 2) + " "  # stray whitespace
    return text


def _phone(rng: random.Random) -> str:
    """A phone column as people fill it in: every form, valid or not, all of it personal."""
    kind = rng.randrange(10)
    n = rng.randrange(10_000)
    if kind < 3:
        return f"({rng.randrange(201, 990)}) 555-{n:04d}"
    if kind == 3:
        return f"+44 20 7946 {n:04d}"
    if kind == 4:
        return f"0{rng.randrange(10, 99)} {rng.randrange(100, 999)} {n:04d}"  # national, any
    if kind == 5:
        return f"{rng.randrange(200, 999)}{rng.randrange(200, 999)}{n:04d}"  # bare ten digits
    if kind == 6:
        return f"555-{n:04d}"  # too short for any country: still somebody's number
    if kind == 7:
        return f"{rng.randrange(200, 999)}-555-{n:04d} x{rng.randrange(10, 999)}"
    if kind == 8:
        return f"+49 30 {rng.randrange(100_000, 999_999)}"
    return f"1{n:04d}"  # five digits: an extension


def _email(rng: random.Random) -> str:
    r = rng.random()
    user = f"{rng.choice(FIRST)}.{rng.randrange(100_000)}"
    if r < 0.9:
        return f"{user}@example.com"
    if r < 0.95:
        return f"{user} at example dot com"  # not an address by any pattern: still personal
    return ""


def generate(path: Path, rows: int, seed: int = 7) -> dict[str, int]:
    """A messy customer export: ids, timestamps, name, e-mail, phone, category, amount and two
    free-text columns. The first data row is ragged (one field too many), about 2% of rows are
    malformed (too few fields) or fail a type or rule, 3.5% repeat an earlier row (some with
    other case or spacing), texts carry mojibake, decomposed accents, stray whitespace and
    planted PII (10%)."""
    rng = random.Random(seed)
    recent: list[list[str]] = []
    dups = bad = 0
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write("id,created_at,name,email,phone,category,amount,review,note\n")
        for i in range(1, rows + 1):
            r = rng.random()
            if i > 1 and r < 0.035 and recent:
                fields = list(rng.choice(recent))
                if rng.random() < 0.3:  # the same row, typed again with other case/spacing
                    fields[7] = fields[7].upper()
                    fields[8] = fields[8].replace(" ", "  ")
                f.write(",".join(_quote(v) for v in fields) + "\n")
                dups += 1
                continue
            ts = f"2026-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}T" \
                 f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}"
            fields = [str(i), ts, f"{rng.choice(FIRST).title()} {rng.choice(LAST)}",
                      _email(rng), _phone(rng), rng.choice(CATEGORIES),
                      f"{rng.randrange(1, 100_000) / 100}", _text(rng, rng.randrange(10, 22)),
                      _text(rng, rng.randrange(8, 18))]
            if i == 1:
                f.write(",".join(_quote(v) for v in fields) + ",\n")  # ragged: one field more
                bad += 1
                continue
            if r < 0.045:
                bad += 1
                f.write(",".join(_quote(v) for v in fields[:5]) + "\n")  # too few fields
                continue
            if r < 0.055:
                bad += 1
                column, value = rng.choice([(1, "not-a-date"), (6, "abc"), (6, "-3.5"),
                                            (5, "unknown"), (0, ""), (1, "2026-02-30T10:00:00")])
                fields[column] = value
            if rng.random() < 0.01:
                fields[5] = "NULL"  # a null marker: valid (the category is optional)
            f.write(",".join(_quote(v) for v in fields) + "\n")
            if len(recent) < 2000:
                recent.append(fields)
            elif rng.random() < 0.01:
                recent[rng.randrange(2000)] = fields
    return {"rows": rows, "duplicates": dups, "bad": bad, "bytes": path.stat().st_size}


def _quote(value: str) -> str:
    if any(ch in value for ch in ',"\n') or value != value.strip():
        return '"' + value.replace('"', '""') + '"'
    return value


PIPELINE = """
name: bench
source: {{path: {csv}, batch_size: 20000}}
schema:
  columns:
    id: {{type: int, required: true}}
    created_at: {{type: datetime, required: true}}
    name: {{type: string}}
    email: {{type: string}}
    phone: {{type: string}}
    category: {{type: string, enum: {categories}}}
    amount: {{type: float, min: 0}}
    review: {{type: string}}
    note: {{type: string}}
dedup: {{exact: true, columns: [created_at, name, category, amount, review, note]}}
pii: {{columns: [review, note], value_columns: {{email: EMAIL, phone: PHONE, name: PERSON}},
       mode: redact}}
output: {{dir: {out}}}
workers: {workers}
"""

NEAR = """
name: bench-near
source: {{path: {csv}, batch_size: 10000}}
schema: {{columns: {{id: {{type: int}}, text: {{type: string}}}}}}
dedup: {{exact: false, near: {{column: text, threshold: 0.8, num_perm: 64}}}}
output: {{dir: {out}}}
workers: {workers}
"""


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_cli(pipeline: Path, workdir: Path) -> tuple[dict[str, Any], float, float, float]:
    """Run `shipyard data run` in a child: (report, seconds, peak RSS MiB of the process tree,
    CPU seconds of the tree: the child and its workers, which it waits for)."""
    env = {**os.environ, "NO_COLOR": "1"}
    cpu = _children_cpu()
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "shipyard", "data", "run", str(pipeline), "--json",
         "--no-progress", "--store-url", f"sqlite:///{workdir}/store.db"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=workdir)
    with RssSampler(proc.pid, interval_s=0.05) as rss:
        out, err = proc.communicate()
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"shipyard data run failed:\n{err.decode()[-3000:]}")
    return json.loads(out), seconds, rss.peak_kib / 1024, _children_cpu() - cpu


def engine_speed(rows: int = 3000) -> dict[str, float]:
    """The PII engine alone (analyze + anonymize, one process) on texts like the benchmark's."""
    from shipyard.privacy import PIIEngine, Redact

    rng = random.Random(5)
    with_pii = []
    while len(with_pii) < rows:
        text = _text(rng, 16)
        if any(ch.isdigit() for ch in text) or "@" in text:
            with_pii.append(text)
    plain = [" ".join(rng.choice(WORDS) for _ in range(16)) for _ in range(rows)]
    engine, op = PIIEngine(), Redact()
    out = {}
    for name, texts in (("texts_with_pii_per_s", with_pii), ("plain_texts_per_s", plain)):
        started = time.perf_counter()
        for t in texts:
            engine.anonymize(t, engine.analyze(t), op)
        out[name] = round(len(texts) / (time.perf_counter() - started))
    return out


def generate_near(path: Path, rows: int, seed: int = 11) -> int:
    rng = random.Random(seed)
    base: list[str] = []
    planted = 0
    with path.open("w", encoding="utf-8") as f:
        f.write("id,text\n")
        for i in range(1, rows + 1):
            if base and rng.random() < 0.1:
                words = rng.choice(base).split(" ")
                words[rng.randrange(len(words))] = rng.choice(WORDS)  # one word changed
                text = " ".join(words)
                planted += 1
            else:
                text = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(25, 40)))
                if len(base) < 5000:
                    base.append(text)
            f.write(f"{i},\"{text}\"\n")
    return planted


BASELINE = r'''
import csv, json, sys, time, unicodedata
import pandas as pd
import spacy
from presidio_analyzer import AnalyzerEngine
from presidio_analyzer.nlp_engine import SpacyNlpEngine
from presidio_anonymizer import AnonymizerEngine

class BlankSpacy(SpacyNlpEngine):
    """Presidio's spaCy engine on a blank pipeline: pattern recognizers only, nothing downloaded."""
    def load(self):
        self.nlp = {"en": spacy.blank("en")}

path = sys.argv[1]
nlp = BlankSpacy(models=[{"lang_code": "en", "model_name": "blank"}])
nlp.load()
analyzer = AnalyzerEngine(nlp_engine=nlp, supported_languages=["en"])
anonymizer = AnonymizerEngine()
started = time.perf_counter()
df = pd.read_csv(path, on_bad_lines="skip", dtype=str, keep_default_na=False, engine="python")
rows_in = len(df)
df = df.fillna("")
df["id"] = pd.to_numeric(df["id"], errors="coerce")
df["amount"] = pd.to_numeric(df["amount"], errors="coerce")
df["created_at"] = pd.to_datetime(df["created_at"], errors="coerce", format="ISO8601")
df = df.dropna(subset=["id", "created_at"])
for col in ("category", "review", "note"):
    df[col] = df[col].map(lambda s: unicodedata.normalize("NFC", " ".join(s.split())))
df = df.drop_duplicates(subset=["created_at", "category", "amount", "review", "note"])
def redact(text):
    results = analyzer.analyze(text=text, language="en")
    return anonymizer.anonymize(text=text, analyzer_results=results).text if results else text
for col in ("review", "note"):
    df[col] = df[col].map(redact)
seconds = time.perf_counter() - started
print(json.dumps({"rows_in": rows_in, "rows_out": len(df), "seconds": seconds}))
'''


def ensure_presidio() -> Path | None:
    python = PRESIDIO_VENV / "bin" / "python"
    if not python.exists():
        log("creating bench/.venv-presidio (presidio-analyzer, presidio-anonymizer, pandas)")
        subprocess.run([sys.executable, "-m", "venv", str(PRESIDIO_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "presidio-analyzer",
                        "presidio-anonymizer", "pandas"], check=True)
    check = subprocess.run([str(python), "-c", "import presidio_analyzer, pandas, spacy"],
                           capture_output=True)
    return python if check.returncode == 0 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--near-rows", type=int, default=100_000)
    parser.add_argument("--sample", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    results: dict[str, Any] = {"when": now_iso(), "git": git_revision(),
                               "machine": machine_info(), "rows": args.rows,
                               "load_average_start": load_average()}
    with tempfile.TemporaryDirectory(prefix="shipyard-data-bench-") as tmp:
        work = Path(tmp)
        csv_path = work / "big.csv"
        log(f"generating {args.rows:,} rows")
        t0 = time.perf_counter()
        results["input"] = generate(csv_path, args.rows)
        log(f"  {results['input']['bytes'] / 1e6:.0f} MB in {time.perf_counter() - t0:.1f} s")
        pipeline = work / "pipeline.yaml"
        pipeline.write_text(PIPELINE.format(csv=csv_path, out=work / "out",
                                            categories=json.dumps(CATEGORIES),
                                            workers=args.workers))
        log(f"shipyard data run ({args.workers} workers)")
        report, seconds, peak, cpu = run_cli(pipeline, work)
        rows = report["rows"]
        results["pipeline"] = {"seconds": round(seconds, 2), "peak_rss_mib": round(peak, 1),
                               "cpu_seconds": round(cpu, 1),
                               "rows_per_s": round(rows["in"] / seconds), "report_rows": rows,
                               "quarantine_by_rule": report["quarantine_by_rule"],
                               "pii": report["pii"], "internal_seconds": report["seconds"]}
        log(f"  {seconds:.1f} s ({cpu:.0f} CPU-s), peak RSS {peak:.0f} MiB, {rows}")
        near_csv = work / "near.csv"
        planted = generate_near(near_csv, args.near_rows)
        near_yaml = work / "near.yaml"
        near_yaml.write_text(NEAR.format(csv=near_csv, out=work / "out", workers=args.workers))
        log(f"near-duplicates on {args.near_rows:,} texts ({planted:,} planted)")
        near, near_s, near_peak, near_cpu = run_cli(near_yaml, work)
        results["near"] = {"texts": args.near_rows, "planted": planted, "seconds": round(near_s, 2),
                           "cpu_seconds": round(near_cpu, 1),
                           "found": near["near_duplicates"],
                           "clusters": len(near["near_duplicate_clusters"]),
                           "peak_rss_mib": round(near_peak, 1)}
        log(f"  {near_s:.1f} s, {near['near_duplicates']:,} found")
        results["engine"] = engine_speed()
        log(f"PII engine alone: {results['engine']}")
        python = ensure_presidio()
        if python is None:
            results["baseline"] = None
            log("presidio venv unavailable: baseline skipped")
        else:
            sample = work / "sample.csv"
            with csv_path.open("rb") as src, sample.open("wb") as dst:
                for n, line in enumerate(src):
                    if n > args.sample:
                        break
                    dst.write(line)
            script = work / "baseline.py"
            script.write_text(BASELINE)
            log(f"pandas + Presidio on {args.sample:,} rows")
            cpu = _children_cpu()
            out = subprocess.run([str(python), str(script), str(sample)], capture_output=True,
                                 text=True, check=False)
            base_cpu = _children_cpu() - cpu
            if out.returncode != 0:
                raise SystemExit(f"baseline failed:\n{out.stderr[-3000:]}")
            base = json.loads(out.stdout.strip().splitlines()[-1])
            base["rows_per_s"] = round(base["rows_in"] / base["seconds"])
            base["cpu_seconds"] = round(base_cpu, 1)  # includes its imports (~a few s)
            results["baseline"] = base
            results["ratio"] = round(results["pipeline"]["rows_per_s"] / base["rows_per_s"], 1)
            ours_per_cpu = rows["in"] / results["pipeline"]["cpu_seconds"]
            results["ratio_per_cpu_s"] = round(ours_per_cpu / (base["rows_in"] / base_cpu), 1)
            log(f"  {base['seconds']:.1f} s = {base['rows_per_s']:,} rows/s; Shipyard is "
                f"{results['ratio']}x")
    results["load_average_end"] = load_average()
    print(json.dumps(results, indent=2))
    if not args.no_write:
        write_json(RESULTS_DIR / "data_pipeline.json", results)
        write_docs_section("data-pipeline", render(results))


def render(r: dict[str, Any]) -> str:
    p, n, b = r["pipeline"], r["near"], r.get("baseline")
    rows = p["report_rows"]
    lines = [
        "## Data pipeline (`bench/data_pipeline.py`)",
        "",
        f"Run {r['when']} at `{r['git']}` on {r['machine'].get('cores', '?')} cores shared with "
        f"other work (1-min load average {r['load_average_start']:.1f} at the start, "
        f"{r['load_average_end']:.1f} at the end). Input: "
        f"{r['input']['rows']:,} generated CSV rows ({r['input']['bytes'] / 1e6:.0f} MB; "
        f"{r['input']['duplicates']:,} duplicates, {r['input']['malformed']:,} malformed), "
        "two free-text columns with planted PII in 10% of texts.",
        "",
        "| measurement | result | goal |",
        "|---|---|---|",
        f"| validate + clean + exact dedup + PII redaction (2 text columns), 2 workers | "
        f"{p['seconds']:.1f} s wall ({p['rows_per_s']:,} rows/s); {p['cpu_seconds']:.0f} CPU-s, "
        f"i.e. ≥ {p['cpu_seconds'] / 2:.0f} s on 2 idle cores | ≤ 60 s |",
        f"| peak RSS, whole process tree | {p['peak_rss_mib']:,.0f} MiB | ≤ 1,536 MiB |",
        f"| rows in = out + quarantined + duplicates removed | {rows['in']:,} = {rows['out']:,} + "
        f"{rows['quarantined']:,} + {rows['duplicates_removed']:,} | adds up |",
        f"| near-duplicates (MinHash LSH, 64 perms, threshold 0.8) on {n['texts']:,} texts | "
        f"{n['seconds']:.1f} s wall, {n['cpu_seconds']:.0f} CPU-s; {n['found']:,} found "
        f"({n['planted']:,} planted) | ≤ 60 s |",
    ]
    if b:
        lines.append(f"| pandas + Presidio (blank spaCy, one process) on a {b['rows_in']:,}-row "
                     f"sample | {b['seconds']:.1f} s ({b['rows_per_s']:,} rows/s); Shipyard "
                     f"**{r['ratio']}x** its throughput (wall, 2 workers vs 1 process), "
                     f"**{r.get('ratio_per_cpu_s', '?')}x** per CPU-second | faster |")
    share = p["cpu_seconds"] / p["seconds"] / 2
    lines += ["", f"Wall times include waiting for the CPU: the machine was shared, and this run "
              f"got {share:.0%} of its two cores. CPU-seconds (the whole process tree: parent "
              "and workers) do not depend on that; half of them is what the same work takes on "
              "two idle cores, since the parent's reading and writing overlap the workers."]
    e = r.get("engine") or {}
    pii = p.get("pii") or {}
    lines += ["", f"PII: {pii.get('texts_scanned', 0):,} texts went through the engine, "
              f"{pii.get('texts_skipped_by_prefilter', 0):,} were skipped by the prefilter (no "
              f"'@', ':', 'www.' and fewer than 4 digits); findings {pii.get('findings')}. "
              f"Quarantined by rule: {p['quarantine_by_rule']}. The PII engine alone (one "
              f"process, analyze + redact): {e.get('texts_with_pii_per_s', 0):,} texts/s on "
              f"texts with candidates, {e.get('plain_texts_per_s', 0):,} texts/s on plain "
              "texts."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
