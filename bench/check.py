"""`shipyard check` wall time, quick and full, on two deployments.

1. The quick-start gateway and a sim, started here (examples/quickstart, its store in a
   temporary folder): `shipyard check --url ... --sim ...` with the example data pipeline
   audited.
2. The reference support assistant (examples/support-assistant/shipyard.yaml) with no --url:
   the check starts the gateway and the sim itself, so its wall time includes start-up.

Each wall time is reported against its budget (quick: 60 s, full: 300 s; the assistant's
start-up counts against it) with the time each challenge and each phase took (the report's
`timings`) and the 1-minute load average before and after each run: the machine is shared.
Writes bench/results/check.json and the "check" section of docs/benchmarks.md.

    .venv/bin/python bench/check.py
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _harness import (
    REPO_DIR,
    RESULTS_DIR,
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

BUDGETS = {"quick": 60.0, "full": 300.0}


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="bench-check-"))
    key = "sk-bench-" + secrets.token_urlsafe(18)
    env = {**os.environ, "SHIPYARD_API_KEY": key, "PYTHONPATH": str(REPO_DIR / "src")}
    shutil.copy(REPO_DIR / "examples/quickstart/support.py", folder / "support.py")
    sim_port, port = free_port(), free_port()
    text = (REPO_DIR / "examples/quickstart/shipyard.yaml").read_text().replace(
        "127.0.0.1:9100", f"127.0.0.1:{sim_port}").replace(
        "sqlite:///.shipyard/quickstart.db", f"sqlite:///{folder}/store.db")
    config = folder / "shipyard.yaml"
    config.write_text(text)
    load_before = load_average()
    runs: dict[str, dict[str, object]] = {}
    with managed_processes(folder) as group:
        sim = group.start("sim", [sys.executable, "-m", "shipyard", "sim", "--port",
                                  str(sim_port)], env=env, cwd=folder)
        gateway = group.start("serve", [sys.executable, "-m", "shipyard", "serve", "-c",
                                        str(config), "--port", str(port)], env=env, cwd=folder)
        for server, p in ((sim, sim_port), (gateway, port)):
            problem = wait_for_port(server, p, 60)
            if problem:
                raise SystemExit(problem)
        for mode in ("quick", "full"):
            out = folder / mode
            argv = [sys.executable, "-m", "shipyard", "check", "-c", str(config), "--url",
                    f"http://127.0.0.1:{port}", "--sim", f"http://127.0.0.1:{sim_port}",
                    "--pipeline", str(REPO_DIR / "examples/data/pipeline.yaml"), "--out",
                    str(out), "--no-save"] + (["--quick"] if mode == "quick" else [])
            log(f"shipyard check ({mode})")
            load = load_average()
            started = time.perf_counter()
            done = subprocess.run(argv, env=env, cwd=folder, capture_output=True, text=True)
            seconds = time.perf_counter() - started
            if done.returncode != 0:
                raise SystemExit(f"check failed ({done.returncode}):\n{done.stderr[-2000:]}")
            report = json.loads((out / "readiness.json").read_text())
            runs[mode] = {"seconds": round(seconds, 1), "budget_s": BUDGETS[mode],
                          "ratio": round(seconds / BUDGETS[mode], 2), "score": report["score"],
                          "load": [load, load_average()],
                          "sections": {s["key"]: s["seconds"] for s in report["sections"]},
                          "timings": report.get("timings", {})}
            log(f"{mode}: {seconds:.1f} s (budget {BUDGETS[mode]:g} s), score {report['score']}")
    assistant = folder / "assistant"
    assistant.mkdir()
    own_env = {k: v for k, v in env.items() if k != "SHIPYARD_API_KEY"}
    for mode in ("quick", "full"):
        out = assistant / mode
        argv = [sys.executable, "-m", "shipyard", "check", "-c",
                str(REPO_DIR / "examples/support-assistant/shipyard.yaml"), "--out", str(out),
                "--no-save"] + (["--quick"] if mode == "quick" else [])
        log(f"shipyard check on the assistant, no --url ({mode})")
        load = load_average()
        started = time.perf_counter()
        done = subprocess.run(argv, env=own_env, cwd=assistant, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"check failed ({done.returncode}):\n{done.stderr[-2000:]}")
        report = json.loads((out / "readiness.json").read_text())
        runs[f"assistant-{mode}"] = {
            "seconds": round(seconds, 1), "budget_s": BUDGETS[mode],
            "ratio": round(seconds / BUDGETS[mode], 2), "score": report["score"],
            "check_s": report["seconds"], "load": [load, load_average()],
            "trust": next(x["score"] for x in report["sections"] if x["key"] == "trust"),
            "sections": {x["key"]: x["seconds"] for x in report["sections"]},
            "timings": report.get("timings", {})}
        log(f"assistant {mode}: {seconds:.1f} s, score {report['score']}")
    shutil.rmtree(folder, ignore_errors=True)
    result = {"when": now_iso(), "command": command_line(), "revision": git_revision(),
              "machine": machine_info(), "load_average_before": load_before, "runs": runs}
    write_json(RESULTS_DIR / "check.json", result)
    def row(mode: str, r: dict[str, object]) -> str:
        target = ("support assistant, started by the check" if mode.startswith("assistant")
                  else "quick start + sim, given --url")
        quick = " --quick" if mode.endswith("quick") else ""
        sections = " · ".join(f"{k} {v:g} s"
                              for k, v in r["sections"].items())  # type: ignore[attr-defined]
        load = " → ".join(f"{x:.1f}" for x in r["load"])  # type: ignore[attr-defined]
        return (f"| `shipyard check{quick}` | {target} | **{r['seconds']} s** | "
                f"{r['budget_s']:g} s | {r['ratio']}x | {load} | {sections} | {r['score']} |")

    def phases(mode: str, r: dict[str, object]) -> str:
        timings = r["timings"]
        return (f"- `{mode}`: " + " · ".join(
            f"{k} {v:g} s" for k, v in timings.items()))  # type: ignore[attr-defined]

    rows = "\n".join(row(m, r) for m, r in runs.items())
    phase_lines = "\n".join(phases(m, r) for m, r in runs.items())
    write_docs_section("check", f"""## `shipyard check` wall time

{paragraph(f"Measured {result['when']} with `{result['command']}`, on a shared machine (load",
           f"average {load_before:.1f} on {os.cpu_count()} CPUs at the start; other agents'",
           "tests ran at the same time). Targets: the quick-start gateway in front of",
           "`shipyard sim` (chaos on the sim, the example data pipeline audited), and the",
           "reference support assistant with no --url, where the check starts the gateway and",
           "the sim itself (their start-up is in the wall time); ratio = wall time / budget",
           "(below 1 is within budget).")}

| run | target | wall time | budget | ratio | load avg before → after | per challenge | score |
|---|---|--:|--:|--:|---|---|--:|
{rows}

Where the time went, phase by phase (the report's `timings`; with no --url the deployment starts
while the data audit runs, so "waiting for the gateway" is the part of its start-up that the
audit did not cover):

{phase_lines}
""")
    print(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
