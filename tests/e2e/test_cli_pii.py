"""`shipyard pii scan|eval`, driven in subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from doc_blocks import parse, take

NOTES = (
    "Hi, I am Jane (jane.doe@example.com), card 4111 1111 1111 1111\n"
    "SSN: 078-05-1120, call +44 20 7946 0958\n"
    "DOB: 1985-03-12, meeting on 2026-01-05, order #123456789012\n"
)


def shipyard(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
    env.update(NO_COLOR="1", TERM="dumb", COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "shipyard", *args], cwd=cwd, env=env,
                          input=stdin, capture_output=True, text=True, timeout=120)


def test_scan_lists_findings_masked(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text(NOTES, encoding="utf-8")
    result = shipyard("pii", "scan", "notes.txt", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["entity"] for r in rows] == ["EMAIL", "CREDIT_CARD", "US_SSN", "PHONE",
                                           "DATE_OF_BIRTH"]
    assert (rows[2]["line"], rows[2]["column"]) == (2, 6)
    assert "jane.doe" not in result.stdout and "078-05" not in result.stdout  # masked
    shown = shipyard("pii", "scan", "notes.txt", "--show", "-e", "EMAIL", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "jane.doe@example.com" in shown.stdout and "1 findings" in shown.stdout


def test_scan_anonymizes_stdin(tmp_path: Path) -> None:
    result = shipyard("pii", "scan", "-", "--anonymize", "replace", cwd=tmp_path, stdin=NOTES)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "Hi, I am Jane (<EMAIL_1>), card <CREDIT_CARD_1>"
    assert "meeting on 2026-01-05, order #123456789012" in result.stdout


def test_scan_errors_name_the_fix(tmp_path: Path) -> None:
    missing = shipyard("pii", "scan", "nope.txt", cwd=tmp_path)
    assert missing.returncode == 1 and "nope.txt" in missing.stderr
    bad = shipyard("pii", "scan", "-", "--anonymize", "shred", cwd=tmp_path, stdin="x")
    assert bad.returncode == 1 and "replace, redact, mask" in bad.stderr
    ner = shipyard("pii", "scan", "-", "--ner", "en_core_web_definitely_missing", cwd=tmp_path,
                   stdin="x")
    assert ner.returncode == 1 and "never downloads" in ner.stderr


def test_eval_reports_per_entity(tmp_path: Path) -> None:
    pytest.importorskip("faker")
    result = shipyard("pii", "eval", "--n", "400", "--json", "--check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["samples"] == 400 and report["targets_met"] is True
    entities = {e["entity"]: e for e in report["entities"]}
    assert {"EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "US_SSN", "IP_ADDRESS"} <= set(entities)
    assert all(0 <= e["f2"] <= 1 for e in entities.values())
    table = shipyard("pii", "eval", "--n", "200", cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert "| `EMAIL` |" in table.stdout and "F2" in table.stdout


CORPUS_EXAMPLE = take("docs/privacy.md", marker="example: pii-eval-corpus")


def _doc_example(name: str) -> tuple[str, list[str]]:
    """The commands after `<!-- example: NAME -->` in docs/privacy.md and the output shown
    (the text block after them)."""
    [commands] = CORPUS_EXAMPLE if name == "pii-eval-corpus" else []
    every = parse("docs/privacy.md")
    shown = every[every.index(commands) + 1]
    assert shown.lang == "text"
    return commands.text, shown.text.splitlines()


def test_the_corpus_example_runs_as_printed(tmp_path: Path) -> None:
    commands, shown = _doc_example("pii-eval-corpus")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
    env.update(NO_COLOR="1", TERM="dumb", COLUMNS="200",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", commands], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    printed = done.stdout.splitlines()
    assert len(printed) == len(shown), done.stdout
    for got, want in zip(printed, shown, strict=True):
        if want.endswith("..."):
            assert got.startswith(want.removesuffix("...")), (got, want)
        else:
            assert got == want
