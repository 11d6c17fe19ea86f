"""Life after launch, measured: eval throughput against the model's own predict, time from a
failing canary to its rollback, and failed requests during hot swaps under load.

1. Eval throughput: a 100k-row classification dataset drawn from sklearn's breast-cancer
   data (rows resampled with 1% Gaussian noise per feature, labels kept), scored by
   `shipyard.lifecycle.evaluate.evaluate_classifier` (every metric) and, in the same run,
   by calling the model's `predict_proba` directly on the same rows; two models (a logistic
   regression pipeline and a 200-tree random forest). Ratio = direct time / eval time.
2. Rollback: a real `shipyard serve` (lifecycle.tick_s 1, min_samples 20) under steady
   client load; a version that raises on every input starts as a 50% canary; measured from
   the candidate's first failed attempt (its trace) to the rollback (the lifecycle event),
   and from the rollout's start. Repeated `--rollbacks` times.
3. Hot swaps: the same gateway under load from 4 client threads while the stable version is
   swapped `--swaps` times through the admin API (alternating two versions) and the config
   is reloaded `--swaps / 10` times; failed requests counted. Beside it, in the same run, the
   peer a team without hot swaps uses: a restart of the same gateway (SIGTERM, start again)
   under the same load, its failed requests and seconds without service counted.

    .venv/bin/python bench/lifecycle.py [--rows 100000] [--swaps 100] [--rollbacks 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sqlalchemy import select

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
from _lifecycle_models import Broken
from shipyard.lifecycle.artifacts import ModelCaller
from shipyard.lifecycle.evaluate import evaluate_classifier
from shipyard.store import create_store_engine
from shipyard.store.tables import lifecycle_events, rollouts, traces

KEY = "sk-bench-" + "l" * 24
X, Y = load_breast_cancer(return_X_y=True)


def _epoch(value: datetime) -> float:
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


# -- 1. eval throughput --------------------------------------------------------------------

def dataset(rows: int, seed: int = 7) -> tuple[Any, Any]:
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(X), rows)
    noise = rng.normal(0.0, 0.01, (rows, X.shape[1])) * X.std(axis=0)
    return X[pick] + noise, Y[pick]


def eval_throughput(rows: int, repeats: int = 5) -> list[dict[str, Any]]:
    x, y = dataset(rows)
    out = []
    for name, model in (
            ("logistic regression", make_pipeline(StandardScaler(),
                                                  LogisticRegression(max_iter=2000))),
            ("random forest, 200 trees", RandomForestClassifier(n_estimators=200,
                                                                random_state=0, n_jobs=1))):
        model.fit(X, Y)
        caller = ModelCaller(model, "predict_proba")
        labels = y
        direct, full, predict_only = [], [], []
        for _ in range(repeats):  # interleaved, best of `repeats` each
            started = time.perf_counter()
            model.predict_proba(x)
            direct.append(time.perf_counter() - started)
            started = time.perf_counter()
            result = evaluate_classifier(caller, x, labels)
            full.append(time.perf_counter() - started)
            predict_only.append(result["predict_s"])
        best_direct, best_full = min(direct), min(full)
        out.append({"model": name, "rows": rows, "direct_s": best_direct,
                    "eval_s": best_full, "eval_predict_s": min(predict_only),
                    "ratio": best_direct / best_full,
                    "predict_ratio": best_direct / min(predict_only),
                    "accuracy": result["accuracy"], "roc_auc": result.get("roc_auc")})
        log(f"eval {name}: direct {best_direct:.3f}s, eval {best_full:.3f}s "
            f"({best_direct / best_full:.2f}x)")
    return out


# -- a gateway under load --------------------------------------------------------------------

CONFIG = """
store: {{url: "sqlite:///{folder}/store.db"}}
auth: {{api_keys: ["{key}"]}}
traces: {{flush_interval_s: 0.2}}
lifecycle: {{tick_s: 1, lease_s: 2}}
services:
  cancer:
    model: {model}
    description: {description}
    rollout:
      steps: [50, 100]
      step_s: 3600
      window_s: 60
      min_samples: 20
      fallback: true
      gates: {{latency_p95_ratio: 100}}
"""


def call(port: int, row: list[float], conversation: str) -> tuple[int, str]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/services/cancer/invoke",
        data=json.dumps({"features": row}).encode(),
        headers={"authorization": f"Bearer {KEY}", "content-type": "application/json",
                 "x-shipyard-conversation": conversation})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
            return response.status, response.headers.get("x-shipyard-version", "")
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


def admin(port: int, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


class Load:
    def __init__(self, port: int, threads: int, pause_s: float = 0.002) -> None:
        self.port = port
        self.pause_s = pause_s
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.sent = self.failed = 0
        self.failed_at: list[float] = []
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(threads)]

    def _run(self, worker: int) -> None:
        i = worker
        while not self.stop.is_set():
            status, _ = call(self.port, X[i % len(X)].tolist(), f"w{worker}-{i}")
            with self.lock:
                self.sent += 1
                if status != 200:
                    self.failed += 1
                    self.failed_at.append(time.monotonic())
            i += len(self.threads)
            time.sleep(self.pause_s)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)


def gateway_runs(folder: Path, swaps: int, rollbacks: int) -> dict[str, Any]:
    good = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(X, Y)
    other = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=2000)).fit(X, Y)
    paths = {"v1": folder / "v1.joblib", "v2": folder / "v2.joblib"}
    joblib.dump(good, paths["v1"])
    joblib.dump(other, paths["v2"])
    port = free_port()
    config = folder / "shipyard.yaml"
    config.write_text(CONFIG.format(folder=folder, key=KEY, model=paths["v1"],
                                    description="bench"))
    argv = [sys.executable, "-m", "shipyard", "serve", "--config", str(config), "--port",
            str(port)]
    env = {"PYTHONPATH": f"{Path(__file__).resolve().parent}:{REPO_DIR / 'src'}",
           "PATH": str(Path(sys.executable).parent)}
    engine = create_store_engine(f"sqlite:///{folder}/store.db")
    out: dict[str, Any] = {}
    with managed_processes(folder) as group:
        server = group.start("gateway", argv, cwd=REPO_DIR, env=env)
        problem = wait_for_port(server, port, 120)
        if problem:
            raise SystemExit(f"the gateway did not start: {problem}")
        while call(port, X[0].tolist(), "warm")[0] != 200:
            time.sleep(0.2)
        admin(port, "POST", "/v1/admin/services/cancer/versions", {"model": str(paths["v2"])})

        # 2. rollbacks
        times = []
        for trial in range(rollbacks):
            broken = folder / f"broken-{trial}.joblib"
            joblib.dump(Broken(good, trial), broken)
            number = admin(port, "POST", "/v1/admin/services/cancer/versions",
                           {"model": str(broken)})["version"]
            with Load(port, threads=4) as load:
                time.sleep(2)
                started = time.time()
                admin(port, "POST", "/v1/admin/services/cancer/rollouts",
                      {"version": number, "share": 50})
                rolled = None
                while rolled is None and time.time() - started < 120:
                    time.sleep(0.1)
                    with engine.connect() as connection:
                        rolled = connection.execute(select(lifecycle_events.c.at).where(
                            lifecycle_events.c.event == "rolled_back",
                            lifecycle_events.c.version == number)).scalar()
                time.sleep(1)
            if rolled is None:
                raise SystemExit("the broken canary was not rolled back within 120 s")
            with engine.connect() as connection:
                first = connection.execute(select(traces.c.started_at).where(
                    traces.c.route == "canary", traces.c.version == str(number)).order_by(
                    traces.c.started_at).limit(1)).scalar()
            rolled_at, first_at = _epoch(rolled), _epoch(first)
            times.append({"from_first_failure_s": rolled_at - first_at,
                          "from_rollout_start_s": rolled_at - started,
                          "client_failures": load.failed, "requests": load.sent})
            log(f"rollback {trial + 1}: {rolled_at - first_at:.2f}s after the first failure, "
                f"{load.failed} client failures of {load.sent}")
        out["rollbacks"] = times

        # 3. hot swaps under load
        with Load(port, threads=4) as load:
            time.sleep(1)
            started = time.monotonic()
            for i in range(swaps):
                admin(port, "POST", "/v1/admin/services/cancer/promote", {"version": 2 - i % 2})
                if i % 10 == 9:
                    config.write_text(CONFIG.format(folder=folder, key=KEY, model=paths["v1"],
                                                    description=f"reload {i}"))
                    admin(port, "POST", "/v1/admin/reload")
                time.sleep(0.05)
            swap_s = time.monotonic() - started
            time.sleep(2)
        out["swaps"] = {"swaps": swaps, "reloads": swaps // 10, "seconds": swap_s,
                        "requests": load.sent, "failed": load.failed}
        log(f"{swaps} swaps + {swaps // 10} reloads: {load.failed} failed of {load.sent}")

        # the peer: a restart under the same load
        with Load(port, threads=4) as load:
            time.sleep(2)
            began = time.monotonic()
            group.stop(server)
            server = group.start("gateway-restarted", argv, cwd=REPO_DIR, env=env)
            while call(port, X[0].tolist(), "probe")[0] != 200:
                time.sleep(0.05)
            down = time.monotonic() - began
            time.sleep(2)
        out["restart"] = {"seconds_down": down, "requests": load.sent, "failed": load.failed}
        log(f"restart: {down:.1f}s down, {load.failed} failed of {load.sent}")
        with engine.connect() as connection:
            out["rollout_states"] = [r.state for r in connection.execute(
                select(rollouts.c.state))]
    engine.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--swaps", type=int, default=100)
    parser.add_argument("--rollbacks", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    load = load_average()
    log(f"eval throughput on {args.rows} rows")
    evals = eval_throughput(args.rows)
    with tempfile.TemporaryDirectory(prefix="shipyard-bench-lifecycle-") as tmp:
        served = gateway_runs(Path(tmp), args.swaps, args.rollbacks)
    rows = ["| model | rows | `predict_proba` alone | `shipyard eval` (all metrics) | "
            "ratio | ratio, predict stage only | accuracy |", "|---|--:|--:|--:|--:|--:|--:|"]
    for e in evals:
        rows.append(f"| {e['model']} | {e['rows']:,} | {e['direct_s']:.3f} s | "
                    f"{e['eval_s']:.3f} s | **{e['ratio']:.2f}x** | {e['predict_ratio']:.2f}x | "
                    f"{e['accuracy']:.4f} |")
    backs = served["rollbacks"]
    first = [b["from_first_failure_s"] for b in backs]
    start = [b["from_rollout_start_s"] for b in backs]
    swaps = served["swaps"]
    restart = served["restart"]
    text = "\n".join([
        "## Lifecycle: evals, rollbacks, hot swaps",
        "",
        paragraph(
            f"Measured {now_iso()} with `{command_line()}`, on a shared machine (load average",
            f"{load:.1f} on {machine_info().get('cores', '?')} CPUs at the start; other agents'",
            "tests ran at the same time, so absolute times are noisy — compare within a row)."),
        "",
        paragraph(
            f"**Eval throughput** on {args.rows:,} rows resampled from sklearn's",
            "breast-cancer data (1% Gaussian noise per feature): `evaluate_classifier`",
            "(accuracy, precision, recall, F1, ROC AUC and its curve, Brier, calibration bins)",
            "against calling the same model's `predict_proba` on the same rows, best of 5",
            "interleaved runs. Goal: at least 0.90x."),
        "",
        *rows,
        "",
        paragraph(
            "**Time to roll back** a canary that raises on every input (50% share, the",
            "gateway's `lifecycle.tick_s` 1 s, `min_samples` 20, four client threads): from",
            "the candidate's first failed attempt to the rollback, "
            + ", ".join(f"{v:.2f} s" for v in first)
            + f" (median {sorted(first)[len(first) // 2]:.2f} s; goal ≤ 5 s); from the",
            "rollout's start, " + ", ".join(f"{v:.2f} s" for v in start) + ". Client failures",
            "meanwhile: " + ", ".join(str(b["client_failures"]) for b in backs)
            + " (the canary's failures are answered by stable: `fallback: true`)."),
        "",
        "| change under load (4 client threads) | requests | failed | time without service |",
        "|---|--:|--:|--:|",
        f"| {swaps['swaps']} hot swaps of the stable version (admin API) + "
        f"{swaps['reloads']} config reloads | {swaps['requests']:,} | **{swaps['failed']}** "
        "| 0 s |",
        f"| peer: one restart of the same gateway (SIGTERM, start) | {restart['requests']:,} |"
        f" {restart['failed']} | {restart['seconds_down']:.1f} s |",
        "",
    ])
    print(text)
    if not args.no_write:
        write_docs_section("lifecycle", text)
        write_json(RESULTS_DIR / "lifecycle.json", {
            "machine": machine_info(), "load_average": load, "eval": evals, **served})


if __name__ == "__main__":
    main()
