"""The reference assistant's retrieval and knowledge base, measured on what it ships.

hit@3: the article that answers each question of examples/support-assistant/data/
questions.jsonl (46 questions written for the 25 articles) is among the top three, for the
packaged MiniLM embeddings and for the BM25 fallback. The committed kb/articles.jsonl must be
exactly what `shipyard data` makes of the raw export (duplicates dropped, PII redacted).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REPO

EXAMPLE = REPO / "examples" / "support-assistant"


@pytest.fixture()
def assistant_path() -> Iterator[None]:
    sys.path.insert(0, str(EXAMPLE))
    try:
        yield
    finally:
        sys.path.remove(str(EXAMPLE))


@pytest.mark.parametrize("backend", ["minilm", "bm25"])
def test_hit_at_3_on_the_shipped_questions(backend: str, assistant_path: None) -> None:
    if backend == "minilm":
        pytest.importorskip("sentence_transformers")
    from assistant.evaluate import hit_at
    from assistant.kb import load_articles, load_questions
    from assistant.retrieval import build

    result = hit_at(build(load_articles(), backend), load_questions(), 3)
    assert result["questions"] == 46
    assert result["hit@3"] >= 0.9, result["misses"]


def test_the_kb_is_what_shipyard_data_makes_of_the_export(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    store = f"sqlite:///{tmp_path}/store.db"
    out = tmp_path / "articles.jsonl"
    shipyard = [sys.executable, "-m", "shipyard", "data"]
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}
    kb = tmp_path / "kb"
    kb.mkdir()
    for name in ("pipeline.yaml", "articles.raw.jsonl"):
        (kb / name).write_bytes((EXAMPLE / "kb" / name).read_bytes())
    for argv in (["run", "pipeline.yaml", "--store-url", store],
                 ["export", "support-kb", "-o", str(out), "--format", "jsonl",
                  "--store-url", store]):
        done = subprocess.run([*shipyard, *argv], cwd=kb, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    assert out.read_text() == (EXAMPLE / "kb" / "articles.jsonl").read_text()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    raw = (EXAMPLE / "kb" / "articles.raw.jsonl").read_text()
    assert len(rows) == 25 and len(raw.splitlines()) == 28   # three duplicates dropped
    text = out.read_text()
    for planted in ("maria.jensen@", "4111 1111 1111 1111", "020 7946 0958", "Tom Becker"):
        assert planted in raw and planted not in text
