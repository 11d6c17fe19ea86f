"""The Ray engine, measured on this machine: a local two-node Ray cluster (head + worker node,
one CPU each) and one real `shipyard serve` in front of it.

1. Capacity of a CPU-bound service — a scikit-learn random forest served from its joblib
   file — hosted in the gateway's process, on 1 Ray replica and on 2 Ray replicas: the best
   requests/s whose p95 stays within the SLO, over a ladder of concurrency levels.
2. What routing through a Ray deployment handle costs: p50/p95 of a trivial function in
   process vs on Ray, one request at a time.
3. `shipyard data run` on a larger generated CSV with the local engine (2 worker processes)
   and the Ray engine (2 actors): seconds, rows/s, and the same output bytes.

    .venv/bin/python bench/ray_engine.py [--seconds 6] [--rows 200000] [--slo-ms 250] [--no-write]

Everything shares one 2-core machine with other agents, so the Ray rows cannot show more
CPUs than the host has; what they show is the cost of the hop and that capacity does not
collapse. The Ray engine's point is the next machine, which this benchmark cannot add.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import httpx

from _harness import (
    REPO_DIR,
    RESULTS_DIR,
    command_line,
    free_port,
    load_average,
    log,
    machine_info,
    now_iso,
    paragraph,
    write_docs_section,
    write_json,
)
from ray_cluster import start_cluster

KEY = "sk-bench-ray-" + "r" * 20
_SHUTDOWN = ("import sys, ray\nfrom ray import serve\n"
             "ray.init(address=sys.argv[1], log_to_driver=False)\nserve.shutdown()\n")
HEADERS = {"Authorization": f"Bearer {KEY}"}
LEVELS = (1, 2, 4, 8)


def train(folder: Path) -> list[list[float]]:
    import joblib
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier

    X, y = load_breast_cancer(return_X_y=True)
    model = RandomForestClassifier(n_estimators=150, random_state=0, n_jobs=1).fit(X, y)
    joblib.dump(model, folder / "forest.joblib")
    (folder / "bench_echo.py").write_text("def echo(data):\n    return data\n")
    rows: list[list[float]] = X[:50].tolist()
    return rows


def config(folder: Path, address: str) -> str:
    ray = "engine: ray\n    ray: {{replicas: {n}, num_cpus: 0.5, max_ongoing_requests: 8, " \
          "max_queued_requests: 256}}"
    return f"""
python_path: ["{folder}"]
store: {{url: "sqlite:///{folder}/shipyard.db"}}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
server: {{max_in_flight: 512}}
ray: {{address: "{address}"}}
services:
  forest-process: {{model: "{folder}/forest.joblib", call: predict_proba}}
  forest-ray1:
    model: "{folder}/forest.joblib"
    call: predict_proba
    {ray.format(n=1)}
  forest-ray2:
    model: "{folder}/forest.joblib"
    call: predict_proba
    {ray.format(n=2)}
  echo-process: {{function: bench_echo:echo}}
  echo-ray:
    function: bench_echo:echo
    {ray.format(n=1)}
"""


def start_gateway(folder: Path, address: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    path = folder / "shipyard.yaml"
    path.write_text(config(folder, address))
    log_file = (folder / "serve.log").open("wb")
    env = {**os.environ, "SHIPYARD_API_KEY": KEY, "PYTHONPATH": str(REPO_DIR / "src")}
    process = subprocess.Popen([sys.executable, "-m", "shipyard", "serve", "--config",
                                str(path), "--port", str(port)], stdout=log_file,
                               stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError((folder / "serve.log").read_text()[-3000:])
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the gateway did not get ready")


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def closed_loop(url: str, service: str, bodies: list[dict[str, Any]],
                      concurrency: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    stop = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(
            max_connections=concurrency + 4)) as client:
        async def worker(n: int) -> None:
            nonlocal errors
            i = n
            while time.monotonic() < stop:
                started = time.perf_counter()
                answer = await client.post(f"{url}/v1/services/{service}/invoke",
                                           json=bodies[i % len(bodies)], headers=HEADERS)
                if answer.status_code == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1
                i += concurrency

        began = time.monotonic()
        await asyncio.gather(*(worker(n) for n in range(concurrency)))
        elapsed = time.monotonic() - began
    return {"concurrency": concurrency, "rps": len(latencies) / elapsed,
            "p50_ms": _p(latencies, 0.5) * 1000, "p95_ms": _p(latencies, 0.95) * 1000,
            "errors": errors, "requests": len(latencies)}


def capacity(url: str, service: str, bodies: list[dict[str, Any]], seconds: float,
             slo_ms: float) -> dict[str, Any]:
    asyncio.run(closed_loop(url, service, bodies, 2, 2))  # warm up
    levels = []
    for c in LEVELS:
        row = asyncio.run(closed_loop(url, service, bodies, c, seconds))
        log(f"{service} c={c}: {row['rps']:.1f} req/s p95 {row['p95_ms']:.0f} ms")
        levels.append(row)
    within = [r for r in levels if r["p95_ms"] <= slo_ms and not r["errors"]]
    best = max(within, key=lambda r: r["rps"]) if within else None
    return {"service": service, "levels": levels, "best": best}


def make_csv(path: Path, rows: int) -> None:
    rng = random.Random(7)
    words = ["order", "late", "refund", "great", "broken", "support", "fast", "slow", "size"]
    with path.open("w") as f:
        f.write("id,age,email,notes\n")
        for i in range(1, rows + 1):
            n = i if rng.random() > 0.01 else max(1, i - 1)  # a few duplicate ids
            age = rng.choice([str(rng.randint(18, 90))] * 20 + ["", "abc", "150"])
            text = " ".join(rng.choice(words) for _ in range(8))
            if rng.random() < 0.1:
                text += f" mail me at user{i}@example.com"
            f.write(f"{n},{age},user{i}@example.com,{text}\n")


def data_runs(folder: Path, address: str, rows: int) -> dict[str, Any]:
    folder = folder / "data"
    folder.mkdir()
    make_csv(folder / "big.csv", rows)
    (folder / "pipeline.yaml").write_text(
        "name: big\nsource: {path: big.csv, batch_size: 20000}\nschema:\n  columns:\n"
        "    id: {type: int, required: true, unique: true}\n"
        "    age: {type: int, min: 18, max: 120}\n    email: {type: string}\n"
        "    notes: {type: string}\ndedup: {exact: true}\n"
        "pii: {columns: [notes], mode: redact}\noutput: {dir: datasets}\n")
    out: dict[str, Any] = {}
    env = {**os.environ, "PYTHONPATH": str(REPO_DIR / "src")}
    for name, flags in (("local, 2 processes", ["--workers", "2"]),
                        ("ray, 2 actors", ["--engine", "ray", "--ray-address", address,
                                           "--workers", "2"])):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "shipyard", "data", "run",
                               "pipeline.yaml", "--json", "--store-url",
                               f"sqlite:///{folder}/data.db", *flags],
                              cwd=folder, capture_output=True, text=True, env=env,
                              timeout=1200)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-3000:])
        report = json.loads(done.stdout)
        seconds = time.perf_counter() - started
        out[name] = {"seconds": seconds, "rows_per_s": rows / seconds,
                     "content_hash": report["content_hash"], "rows": report["rows"]}
        log(f"data {name}: {seconds:.1f} s")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--slo-ms", type=float, default=250.0)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    load_before = load_average()
    folder = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    rows = train(folder)
    bodies = [{"features": r} for r in rows]
    log("starting a two-node Ray cluster")
    cluster = start_cluster(folder, workers=1, cpus=1, object_store_mb=150)
    gateway = None
    try:
        log("starting the gateway (deploys 4 Ray applications)")
        gateway, url = start_gateway(folder, cluster.address)
        results = {s: capacity(url, s, bodies, args.seconds, args.slo_ms)
                   for s in ("forest-process", "forest-ray1", "forest-ray2")}
        hop = {}
        for s in ("echo-process", "echo-ray"):
            asyncio.run(closed_loop(url, s, [{"x": 1}], 1, 2))
            hop[s] = asyncio.run(closed_loop(url, s, [{"x": 1}], 1, args.seconds))
            log(f"{s}: p50 {hop[s]['p50_ms']:.2f} ms")
        gateway.terminate()
        gateway.wait(30)
        gateway = None
        # The gateway leaves its applications on the cluster (by design); free their CPUs.
        subprocess.run([sys.executable, "-c", _SHUTDOWN, cluster.address], check=True,
                       timeout=120, env={**os.environ, "PYTHONPATH": str(REPO_DIR / "src")})
        data = data_runs(folder, cluster.address, args.rows)
    finally:
        if gateway is not None:
            gateway.kill()
        cluster.stop()
    load_after = load_average()
    machine = machine_info()

    def best(s: str) -> str:
        b = results[s]["best"]
        return "none" if b is None else f"{b['rps']:.1f} (at {b['concurrency']} callers)"

    base = results["forest-process"]["best"]
    table = ["| host | best req/s with p95 ≤ SLO | vs in process | req/s and p95 at 1 / 2 / "
             "4 / 8 callers |", "|---|---:|---:|---|"]
    names = {"forest-process": "in the gateway's process", "forest-ray1": "Ray, 1 replica",
             "forest-ray2": "Ray, 2 replicas"}
    for s, label in names.items():
        b = results[s]["best"]
        ratio = (f"{b['rps'] / base['rps']:.2f}x" if b is not None and base is not None
                 else "-")
        ladder = " · ".join(f"{r['rps']:.0f}/{r['p95_ms']:.0f} ms" for r in results[s]["levels"])
        table.append(f"| {label} | {best(s)} | {ratio} | {ladder} |")
    p, r = hop["echo-process"], hop["echo-ray"]
    hop_table = ["| trivial function | p50 ms | p95 ms | req/s (1 caller) |",
                 "|---|---:|---:|---:|",
                 f"| in process | {p['p50_ms']:.2f} | {p['p95_ms']:.2f} | {p['rps']:.0f} |",
                 f"| through a Ray handle | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | "
                 f"{r['rps']:.0f} |",
                 f"| Ray hop costs | +{r['p50_ms'] - p['p50_ms']:.2f} | "
                 f"+{r['p95_ms'] - p['p95_ms']:.2f} | {r['rps'] / p['rps']:.2f}x |"]
    local, ray = data["local, 2 processes"], data["ray, 2 actors"]
    data_table = ["| engine | seconds | rows/s | output content hash |", "|---|---:|---:|---|"]
    data_table += [f"| {n} | {d['seconds']:.1f} | {d['rows_per_s']:,.0f} | "
                   f"`{d['content_hash'][:12]}` |" for n, d in data.items()]
    same = local["content_hash"] == ray["content_hash"]
    markdown = "\n".join([
        "## Ray engine (`bench/ray_engine.py`)", "",
        paragraph(
            "A local two-node Ray cluster (a head and a worker node, one CPU and a 150 MB "
            "object store each) on the same 2-core machine as the gateway, the load generator "
            f"and other agents (load average {load_before:.1f} at the start, "
            f"{load_after:.1f} at the end). A random forest (150 trees, scikit-learn, the "
            "breast-cancer data) is served from its joblib file: in the gateway's process, on "
            "one Ray replica and on two, each replica reserving half a CPU, called by closed "
            f"loops of 1, 2, 4 and 8 callers for {args.seconds:g} s each; capacity is the "
            f"best rate whose p95 stays within {args.slo_ms:g} ms. Two replicas cannot add "
            "cores this machine does not have: the rows show what the Ray hop costs and that "
            "capacity holds; on a cluster each replica brings its own CPUs."), "",
        *table, "",
        paragraph("The Ray hop: a function that returns its input, one caller, "
                  "through the whole gateway chain either way."), "",
        *hop_table, "",
        paragraph(
            f"`shipyard data run` on a generated {args.rows:,}-row CSV (ages to validate, "
            "duplicate ids, e-mail addresses in free text to redact): the local engine with "
            "2 worker processes and the Ray engine with 2 actors on the cluster above. "
            + ("Both wrote the same Parquet bytes. " if same else
               "The outputs DIFFERED (a bug). ")
            + f"The Ray engine took {ray['seconds'] / local['seconds']:.2f}x the local "
            "engine's time on this run. Both use the same 2 cores: the difference is start-up "
            "(spawned processes import the pipeline's libraries; Ray actors start in worker "
            "processes the node keeps) against object-store copies, plus the noise of a "
            "shared machine. The Ray engine's value is the second machine, which this run "
            "does not have."), "",
        *data_table, "",
        f"Machine: {machine.get('cores')} cores, {machine.get('ram_gib')} GiB, shared with "
        f"other agents. Run: `{command_line()}` at {now_iso()}.",
    ])
    print(markdown)
    write_json(RESULTS_DIR / "ray_engine.json", {
        "capacity": results, "hop": hop, "data": data, "slo_ms": args.slo_ms,
        "seconds": args.seconds, "rows": args.rows, "machine": machine,
        "load_before": load_before, "load_after": load_after})
    if not args.no_write:
        write_docs_section("ray-engine", markdown)
    if not same:
        raise SystemExit("the Ray engine's output differs from the local engine's")


if __name__ == "__main__":
    main()
