"""The help-centre articles the assistant answers from."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent  # examples/support-assistant
ARTICLES = HERE / "kb" / "articles.jsonl"      # written by `shipyard data export` (README.md)
QUESTIONS = HERE / "data" / "questions.jsonl"
TICKETS = HERE / "data" / "tickets.csv"


@dataclass(frozen=True)
class Article:
    id: str
    title: str
    body: str

    @property
    def text(self) -> str:
        """What retrieval indexes and the model reads: the title, then the body."""
        return f"{self.title}. {self.body}"


def load_articles(path: Path = ARTICLES) -> list[Article]:
    with path.open(encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return [Article(str(r["id"]), str(r["title"]), str(r["body"])) for r in rows]


def load_questions(path: Path = QUESTIONS) -> list[tuple[str, str]]:
    """(question, id of the article that answers it)."""
    with path.open(encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return [(str(r["question"]), str(r["article"])) for r in rows]
