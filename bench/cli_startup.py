"""CLI start-up: wall time of `shipyard --help`, `shipyard version` and `shipyard serve --help`
with this checkout's src/, next to an older revision's (`--baseline REV`, default: before the
CLI imported its domains lazily) and to a bare `python -c "import typer, rich"`.

    .venv/bin/python bench/cli_startup.py                 # 5 interleaved rounds
    .venv/bin/python bench/cli_startup.py --rounds 9 --no-write
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from _harness import (
    REPO_DIR,
    RESULTS_DIR,
    command_line,
    load_average,
    log,
    machine_info,
    now_iso,
    paragraph,
    write_docs_section,
    write_json,
)

# The last commit whose CLI imported the gateway, the store and every domain at start-up.
BEFORE = "1ef7e60"
COMMANDS = (["--help"], ["version"], ["serve", "--help"])


def _src_of(revision: str, into: Path) -> Path:
    """src/ of `revision`, extracted from git (no checkout is touched)."""
    archive = into / "src.tar"
    with archive.open("wb") as handle:
        subprocess.run(["git", "archive", revision, "src"], cwd=REPO_DIR, stdout=handle,
                       check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def _wall_s(argv: list[str], src: Path | None) -> float:
    environ = {**os.environ, "NO_COLOR": "1"}
    if src is not None:
        environ["PYTHONPATH"] = str(src)
    start = time.perf_counter()
    subprocess.run(argv, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=BEFORE, help="Revision to compare with.")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="Print only.")
    args = parser.parse_args()
    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        runs = {"baseline": _src_of(args.baseline, Path(tmp)), "now": REPO_DIR / "src"}
        samples: dict[str, list[float]] = {}
        bare = [sys.executable, "-c", "import typer, rich"]
        for round_ in range(args.rounds):  # interleaved: load changes hit every row alike
            log(f"round {round_ + 1}/{args.rounds}")
            samples.setdefault("bare", []).append(_wall_s(bare, None))
            for cmd in COMMANDS:
                for name, src in runs.items():
                    argv = [sys.executable, "-m", "shipyard", *cmd]
                    samples.setdefault(f"{name} {' '.join(cmd)}", []).append(
                        _wall_s(argv, src))
    median = {k: statistics.median(v) for k, v in samples.items()}
    rows = []
    for cmd in COMMANDS:
        shown = " ".join(cmd)
        before, after = median[f"baseline {shown}"], median[f"now {shown}"]
        rows.append(f"| `shipyard {shown}` | {before:.2f} s | {after:.2f} s | "
                    f"{before / after:.1f}x | {after / median['bare']:.1f}x |")
    machine = machine_info()
    markdown = "\n".join([
        "## CLI start-up (`bench/cli_startup.py`)", "",
        paragraph(f"Wall time of one `python -m shipyard ...` process, median of "
                  f"{args.rounds} interleaved rounds, with `src/` of `{args.baseline}` (the "
                  "CLI imported the gateway, the store, sqlalchemy and every domain at "
                  "start-up) and of this checkout (CLI modules import their domains inside "
                  "the commands; `tests/unit/test_cli_startup.py` keeps it so). The bare "
                  f"peer, `python -c \"import typer, rich\"`, takes {median['bare']:.2f} s. "
                  f"Machine: {machine.get('cores')} cores, shared with other agents' work "
                  f"(load average {load_before:.1f} at the start), so absolute times are "
                  "inflated; compare rows of one run. What is left over the bare peer is "
                  "typer's own work: building about 80 commands from their signatures, "
                  "rendering help with rich (`rich.markdown`, `rich.traceback`), and loading "
                  "pydantic, which typer uses to convert arguments."), "",
        "| command | before | now | faster | now vs bare typer + rich |",
        "|---|---:|---:|---:|---:|",
        *rows, "",
        f"Run: `{command_line()}` at {now_iso()}.",
    ])
    print(markdown)
    write_json(RESULTS_DIR / "cli_startup.json", {
        "baseline": args.baseline, "rounds": args.rounds, "samples_s": samples,
        "median_s": median, "machine": machine, "load_before": load_before})
    if not args.no_write:
        write_docs_section("cli_startup", markdown)


if __name__ == "__main__":
    main()
