"""Data pipeline benchmark: `shipyard data run` on a generated, messy 1,000,000-row CSV next to
a naive pandas script doing the same steps (`bench/data_pandas_peer.py`), and near-duplicate
detection on 100,000 texts, in one run.

    .venv/bin/python bench/data_pipeline.py              # full run (writes docs + results)
    .venv/bin/python bench/data_pipeline.py --rows 100000 --no-write   # quick look

The CSV is a customer export as it arrives: a ragged first row, malformed rows, bad types and
impossible dates, duplicates (some with other case or spacing), mojibake, decomposed accents,
stray whitespace, a phone column in every form (valid, foreign, too short, bare, extensions),
an e-mail column with non-addresses, names, and free text with planted PII. The pipeline
validates, cleans, removes exact duplicates, replaces the e-mail, phone and name columns whole
and the PII found in the free text, and writes Parquet; so does the pandas script.

Goals: no more CPU time than the pandas script (the whole process tree: parent and workers,
imports included, for both); rows_in = out + quarantined + duplicates; the same content hash
with 1 and 2 workers; no phone, e-mail or name value left in the output; peak RSS <= 1.5 GB;
<= 60 s for near-duplicates on 100k texts. `--presidio` adds the old pandas + Presidio baseline
on a 10,000-row sample (in `bench/.venv-presidio`).
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
    wait_for_quiet,
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


def run_cli(pipeline: Path, workdir: Path,
            workers: int | None = None) -> tuple[dict[str, Any], float, float, float]:
    """Run `shipyard data run` in a child: (report, seconds, peak RSS MiB of the process tree,
    CPU seconds of the tree: the child and its workers, which it waits for)."""
    env = {**os.environ, "NO_COLOR": "1"}
    cpu = _children_cpu()
    started = time.perf_counter()
    extra = ["--workers", str(workers)] if workers else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "shipyard", "data", "run", str(pipeline), "--json",
         "--no-progress", "--store-url", f"sqlite:///{workdir}/store.db", *extra],
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


def run_peer(csv_path: Path, out: Path) -> tuple[dict[str, Any], float, float, float]:
    """The pandas script in a child: (its JSON line, seconds, peak RSS MiB, CPU seconds)."""
    cpu = _children_cpu()
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(BENCH_DIR / "data_pandas_peer.py"),
                             str(csv_path), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with RssSampler(proc.pid, interval_s=0.05) as rss:
        stdout, err = proc.communicate()
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"the pandas peer failed:\n{err.decode()[-3000:]}")
    return json.loads(stdout), seconds, rss.peak_kib / 1024, _children_cpu() - cpu


def leaks(parquet: Path) -> dict[str, int]:
    """Values left in the columns declared as PII (anything but the placeholder or null)."""
    import pyarrow.parquet as pq

    table = pq.read_table(parquet, columns=["name", "email", "phone"])
    return {c: sum(1 for v in table.column(c).to_pylist() if v not in (None, "[REDACTED]"))
            for c in table.column_names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--near-rows", type=int, default=100_000)
    parser.add_argument("--sample", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--presidio", action="store_true",
                        help="also run the pandas + Presidio baseline on a sample")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    results: dict[str, Any] = {"when": now_iso(), "git": git_revision(),
                               "machine": machine_info(), "rows": args.rows}
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
        results["machine_busy"] = round(wait_for_quiet(), 3)
        results["load_average_start"] = load_average()
        runs: dict[str, Any] = {}
        for workers in sorted({1, args.workers}):
            log(f"shipyard data run ({workers} worker{'s' if workers > 1 else ''})")
            report, seconds, peak, cpu = run_cli(pipeline, work, workers)
            rows = report["rows"]
            runs[str(workers)] = {
                "seconds": round(seconds, 2), "peak_rss_mib": round(peak, 1),
                "cpu_seconds": round(cpu, 1), "rows_per_s": round(rows["in"] / seconds),
                "report_rows": rows, "quarantine_by_rule": report["quarantine_by_rule"],
                "pii": report["pii"], "content_hash": report["content_hash"],
                "leaks": leaks(Path(report["path"]) / "data.parquet"),
                "internal_seconds": report["seconds"]}
            log(f"  {seconds:.1f} s wall, {cpu:.1f} CPU-s, peak RSS {peak:.0f} MiB, {rows}")
        results["pipeline"] = runs
        log("pandas peer (bench/data_pandas_peer.py)")
        peer, peer_s, peer_peak, peer_cpu = run_peer(csv_path, work / "peer.parquet")
        results["peer"] = {**peer, "seconds": round(peer_s, 2), "cpu_seconds": round(peer_cpu, 1),
                           "peak_rss_mib": round(peer_peak, 1)}
        log(f"  {peer_s:.1f} s wall, {peer_cpu:.1f} CPU-s, peak RSS {peer_peak:.0f} MiB, {peer}")
        results["load_average_end"] = load_average()
        for workers, run in runs.items():
            results[f"cpu_ratio_{workers}"] = round(peer_cpu / run["cpu_seconds"], 2)
            results[f"wall_ratio_{workers}"] = round(peer_s / run["seconds"], 2)
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
        if args.presidio:
            results["baseline"] = presidio_baseline(csv_path, work, args.sample)
    one, many = runs["1"], runs[str(args.workers)]
    results["goals"] = {
        "CPU time <= the pandas peer's (1 worker)": one["cpu_seconds"] <= results["peer"][
            "cpu_seconds"],
        f"CPU time <= the pandas peer's ({args.workers} workers)": many["cpu_seconds"] <= results[
            "peer"]["cpu_seconds"],
        "rows in = out + quarantined + duplicates": all(
            r["report_rows"]["in"] == r["report_rows"]["out"] + r["report_rows"]["quarantined"]
            + r["report_rows"]["duplicates_removed"] for r in runs.values()),
        f"same content hash with 1 and {args.workers} workers": len(
            {r["content_hash"] for r in runs.values()}) == 1,
        "no name, e-mail or phone value left": all(
            not any(r["leaks"].values()) for r in runs.values()),
        "peak RSS <= 1,536 MiB": all(r["peak_rss_mib"] <= 1536 for r in runs.values()),
        "near-duplicates on 100k texts <= 60 s": results["near"]["seconds"] <= 60,
    }
    print(json.dumps(results, indent=2))
    if not args.no_write:
        write_json(RESULTS_DIR / "data_pipeline.json", results)
        write_docs_section("data-pipeline", render(results))


def presidio_baseline(csv_path: Path, work: Path, rows: int) -> dict[str, Any] | None:
    python = ensure_presidio()
    if python is None:
        log("presidio venv unavailable: baseline skipped")
        return None
    sample = work / "sample.csv"
    with csv_path.open("rb") as src, sample.open("wb") as dst:
        for n, line in enumerate(src):
            if n > rows:
                break
            dst.write(line)
    script = work / "baseline.py"
    script.write_text(BASELINE)
    log(f"pandas + Presidio on {rows:,} rows")
    cpu = _children_cpu()
    out = subprocess.run([str(python), str(script), str(sample)], capture_output=True,
                         text=True, check=False)
    base_cpu = _children_cpu() - cpu
    if out.returncode != 0:
        raise SystemExit(f"baseline failed:\n{out.stderr[-3000:]}")
    base: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    base["rows_per_s"] = round(base["rows_in"] / base["seconds"])
    base["cpu_seconds"] = round(base_cpu, 1)
    return base


def render(r: dict[str, Any]) -> str:
    runs, peer, n = r["pipeline"], r["peer"], r["near"]
    workers = max(runs, key=int)
    one, many = runs["1"], runs[workers]
    rows = one["report_rows"]
    lines = [
        "## Data pipeline (`bench/data_pipeline.py`)",
        "",
        f"Run {r['when']} at `{r['git']}` on {r['machine'].get('cores', '?')} cores shared with "
        f"other work (1-min load average {r['load_average_start']:.1f} at the start, "
        f"{r['load_average_end']:.1f} at the end). Input: {r['input']['rows']:,} generated CSV "
        f"rows ({r['input']['bytes'] / 1e6:.0f} MB): a ragged first row, "
        f"{r['input']['bad']:,} malformed or invalid rows, {r['input']['duplicates']:,} "
        "duplicates (some with other case or spacing), mojibake, decomposed accents, stray "
        "whitespace, a phone column in every form, an e-mail column with non-addresses, names, "
        "two free-text columns with PII planted in 10% of texts. Steps: validate (types, enum, "
        "min), clean (ftfy, NFC, whitespace), exact dedup, PII (name, e-mail and phone replaced "
        "whole; the engine on the free text), Parquet. The peer is `bench/data_pandas_peer.py`, "
        "a naive pandas script doing the same steps (vectorised string methods, regexes for "
        "PII). CPU-seconds are the whole process tree's (parent and workers), imports included.",
        "",
        "| run | CPU-s | wall s | peak RSS | rows out / quarantined / duplicates | vs pandas "
        "(CPU) |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for w, run in sorted(runs.items(), key=lambda kv: int(kv[0])):
        rr = run["report_rows"]
        lines.append(
            f"| `shipyard data run`, {w} worker{'s' if int(w) > 1 else ''} | "
            f"{run['cpu_seconds']:.1f} | {run['seconds']:.1f} | {run['peak_rss_mib']:,.0f} MiB "
            f"| {rr['out']:,} / {rr['quarantined']:,} / {rr['duplicates_removed']:,} | "
            f"**{r[f'cpu_ratio_{w}']:.2f}x** less |")
    lines.append(
        f"| pandas peer (one process) | {peer['cpu_seconds']:.1f} | {peer['seconds']:.1f} | "
        f"{peer['peak_rss_mib']:,.0f} MiB | {peer['rows_out']:,} / {peer['quarantined']:,} / "
        f"{peer['duplicates']:,} | 1.00x |")
    lines += [
        "",
        f"Rows in = out + quarantined + duplicates removed: {rows['in']:,} = {rows['out']:,} + "
        f"{rows['quarantined']:,} + {rows['duplicates_removed']:,}; content hash "
        f"`{one['content_hash'][:16]}` with 1 worker, `{many['content_hash'][:16]}` with "
        f"{workers}. Values left in the name, e-mail and phone columns: {one['leaks']}. "
        f"Quarantined by rule: {one['quarantine_by_rule']}.",
        "",
        f"The pandas peer reads {peer['rows_in']:,} rows and keeps {peer['rows_out']:,}: "
        "`read_csv` skips rows with too many fields without a word and pads rows with too few "
        "(so truncated rows pass its validation as rows with empty fields), and without "
        "`index_col=False` "
        + ("it shifts every column by one on this file's ragged first row "
           "(`plain_read_csv_shifts_columns`: true)." if peer.get(
               "plain_read_csv_shifts_columns") else "it reads the ragged first row as is."),
        "",
        f"Near-duplicates (MinHash LSH, 64 perms, threshold 0.8) on {n['texts']:,} texts: "
        f"{n['seconds']:.1f} s wall, {n['cpu_seconds']:.0f} CPU-s; {n['found']:,} found "
        f"({n['planted']:,} planted).",
        "",
        "| goal | result |",
        "|---|---|",
    ]
    for goal, ok in r["goals"].items():
        lines.append(f"| {goal} | {'met' if ok else 'NOT met'} |")
    pii = one.get("pii") or {}
    e = r.get("engine") or {}
    lines += ["", f"PII: {pii.get('texts_scanned', 0):,} free texts went through the engine, "
              f"{pii.get('texts_skipped_by_prefilter', 0):,} were skipped by the prefilter; "
              f"findings {pii.get('findings')}. The PII engine alone (one process, analyze + "
              f"redact): {e.get('texts_with_pii_per_s', 0):,} texts/s on texts with candidates, "
              f"{e.get('plain_texts_per_s', 0):,} texts/s on plain texts. Wall times depend on "
              "the neighbours on a shared machine; CPU-seconds much less."]
    b = r.get("baseline")
    if b:
        lines += ["", f"pandas + Presidio (blank spaCy, one process) on a {b['rows_in']:,}-row "
                  f"sample: {b['seconds']:.1f} s ({b['rows_per_s']:,} rows/s)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
