"""The Python and shell blocks of docs/privacy.md, docs/drift.md and docs/data.md that need no
gateway, run as printed from a folder outside the repository (with this checkout's sources on
PYTHONPATH). Where a doc shows what a snippet prints, the output is compared with it."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from doc_blocks import REPO, Shell, take

pytestmark = pytest.mark.slow

PRIVACY_FIRST = take("docs/privacy.md", "# Privacy", "python", containing="KeyedHash")[0]
PRIVACY_CONTEXT = take("docs/privacy.md", "### Context words", "python")[0]
PRIVACY_PHONES = take("docs/privacy.md", "### Phone numbers of other countries", "python")[0]
PRIVACY_LISTS = take("docs/privacy.md", "## Allow lists", "python")[0]
PRIVACY_OWN = take("docs/privacy.md", "## Your own recognizer", "python")[0]
DRIFT = take("docs/drift.md", "## Quick start", "python")[0]
DRIFT_EMBEDDINGS = take("docs/drift.md", "## Embedding drift", "python")[0]
DATA_SHELL = take("docs/data.md", "## Worked example", "sh")
DATA_PYTHON = take("docs/data.md", "### Python", "python")[0]


def test_the_privacy_snippets_run_as_printed(tmp_path: Path) -> None:
    with Shell(tmp_path) as shell:
        # the first block, and the blocks that go on with its `engine` and imports
        out = shell.python(PRIVACY_FIRST.text + PRIVACY_CONTEXT.text)
        shown = [line[2:] for line in PRIVACY_FIRST.text.splitlines()
                 if re.match(r"# [A-Z_]+ \d+ \d+ ", line)]
        assert out.splitlines() == shown
        shell.python(PRIVACY_FIRST.text + PRIVACY_LISTS.text)
        shell.python(PRIVACY_PHONES.text)
        shell.python(PRIVACY_OWN.text + 'print(engine.analyze("staff id EMP-123456"))\n')


def test_the_drift_snippets_run_as_printed(tmp_path: Path) -> None:
    with Shell(tmp_path) as shell:
        out = shell.python(DRIFT.text).splitlines()
        columns = {line.split()[0]: line.split() for line in out[:-1]}
        assert set(columns) == {"amount", "plan"}
        assert columns["amount"][-1] == "True"  # a 4% shift of the mean in 5,000 rows
        out = shell.python(DRIFT_EMBEDDINGS.text).split()
        assert out[-1] == "True", out


def test_the_data_worked_example_runs_as_printed(tmp_path: Path) -> None:
    """From a checkout's root: `cd examples/data`, run, look at the quarantine, run again,
    list, show, diff, export; then the Python block from the checkout's root."""
    shutil.copytree(REPO / "examples" / "data", tmp_path / "examples" / "data",
                    ignore=shutil.ignore_patterns("datasets", ".shipyard"))
    dry_run_and_run, quarantine, again = DATA_SHELL
    with Shell(tmp_path) as shell:
        first = shell.run(dry_run_and_run.text)
        assert "version 1 written" in first.stdout + first.stderr, first
        shown = quarantine_lines = shell.run(quarantine.text).stdout.splitlines()
        printed = re.findall(r"```text\n(39 malformed.*?)```", (REPO / "docs" / "data.md")
                             .read_text(), re.S)[0].splitlines()
        for line in printed:
            assert line == "..." or line in quarantine_lines, (line, shown)
        later = shell.run(again.text)
        assert "version 2" in later.stdout + later.stderr, later
    # the export lands beside the source, and never over it
    source = (tmp_path / "examples" / "data" / "applicants.csv").read_text()
    assert source == (REPO / "examples" / "data" / "applicants.csv").read_text()
    with Shell(tmp_path) as shell:
        out = shell.python(DATA_PYTHON.text).splitlines()
        assert out[0].startswith("111 ") and re.fullmatch(r"[0-9a-f]{64}", out[1]), out


SECURITY_TRACE_KEY = take("docs/security.md", "## Secrets and payloads", "bash")[0]


def test_the_trace_key_line_runs_as_printed(tmp_path: Path) -> None:
    with Shell(tmp_path) as shell:
        shell.run(SECURITY_TRACE_KEY.text)
        key = shell.run('printf %s "$TRACE_KEY"').stdout
        assert len(key) >= 32 and " " not in key, key
