"""`shipyard check` wall time, quick and full, against the quick-start gateway and a sim.

Starts `shipyard sim` and `shipyard serve` (examples/quickstart, its store in a temporary
folder), runs `shipyard check --quick` and the full `shipyard check` (chaos on the sim, the
example data pipeline audited), and reports each wall time against its budget (quick: 60 s,
full: 300 s) with the time each challenge took. Writes bench/results/check.json and the
"check" section of docs/benchmarks.md.

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
            started = time.perf_counter()
            done = subprocess.run(argv, env=env, cwd=folder, capture_output=True, text=True)
            seconds = time.perf_counter() - started
            if done.returncode != 0:
                raise SystemExit(f"check failed ({done.returncode}):\n{done.stderr[-2000:]}")
            report = json.loads((out / "readiness.json").read_text())
            runs[mode] = {"seconds": round(seconds, 1), "budget_s": BUDGETS[mode],
                          "ratio": round(seconds / BUDGETS[mode], 2), "score": report["score"],
                          "sections": {s["key"]: s["seconds"] for s in report["sections"]}}
            log(f"{mode}: {seconds:.1f} s (budget {BUDGETS[mode]:g} s), score {report['score']}")
    shutil.rmtree(folder, ignore_errors=True)
    result = {"when": now_iso(), "command": command_line(), "revision": git_revision(),
              "machine": machine_info(), "load_average_before": load_before, "runs": runs}
    write_json(RESULTS_DIR / "check.json", result)
    rows = "\n".join(
        f"| `shipyard check{' --quick' if m == 'quick' else ''}` | **{r['seconds']} s** | "
        f"{r['budget_s']:g} s | {r['ratio']}x | "
        + " · ".join(f"{k} {v:g} s" for k, v in r["sections"].items())  # type: ignore[attr-defined]
        + f" | {r['score']} |" for m, r in runs.items())
    write_docs_section("check", f"""## `shipyard check` wall time

{paragraph(f"Measured {result['when']} with `{result['command']}`, on a shared machine (load",
           f"average {load_before:.1f} on {os.cpu_count()} CPUs at the start; other agents'",
           "tests ran at the same time). Target: the quick-start gateway in front of",
           "`shipyard sim`, with chaos on the sim and the example data pipeline audited;",
           "ratio = wall time / budget (below 1 is within budget).")}

| run | wall time | budget | ratio | per challenge | score |
|---|--:|--:|--:|---|--:|
{rows}
""")
    print(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
