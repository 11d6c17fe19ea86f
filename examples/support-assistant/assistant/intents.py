"""What a message is about (returns, shipping, billing, account, product), learned from the
labelled tickets in data/tickets.csv when the service starts.

With scikit-learn installed (`pip install 'shipyard[lifecycle]'`): TF-IDF over words and word
pairs, and a logistic regression. Without it: multinomial naive Bayes in plain Python, so the
base install still runs the assistant.
"""

from __future__ import annotations

import csv
import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from assistant.kb import TICKETS
from assistant.retrieval import tokens


def load_tickets(path: Path = TICKETS) -> tuple[list[str], list[str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [r["text"] for r in rows], [r["intent"] for r in rows]


class NaiveBayes:
    name = "naive-bayes"

    def fit(self, texts: Sequence[str], labels: Sequence[str]) -> NaiveBayes:
        self.counts: dict[str, Counter[str]] = defaultdict(Counter)
        self.priors = Counter(labels)
        for text, label in zip(texts, labels, strict=True):
            self.counts[label].update(tokens(text))
        self.vocab = {t for c in self.counts.values() for t in c}
        self.totals = {label: sum(c.values()) for label, c in self.counts.items()}
        return self

    def predict(self, text: str) -> tuple[str, float]:
        words = tokens(text)
        logits = {}
        for label, prior in self.priors.items():
            denominator = self.totals[label] + len(self.vocab)
            logits[label] = math.log(prior) + sum(
                math.log((self.counts[label][w] + 1) / denominator) for w in words
                if w in self.vocab)
        top = max(logits.values())
        total = sum(math.exp(v - top) for v in logits.values())
        label = max(logits, key=lambda k: logits[k])
        return label, 1.0 / total


class Logistic:
    name = "scikit-learn"

    def fit(self, texts: Sequence[str], labels: Sequence[str]) -> Logistic:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        self.model: Any = make_pipeline(
            TfidfVectorizer(analyzer=lambda t: _grams(tokens(t)), sublinear_tf=True),
            LogisticRegression(C=10.0, max_iter=1000))
        self.model.fit(list(texts), list(labels))
        return self

    def predict(self, text: str) -> tuple[str, float]:
        probabilities = self.model.predict_proba([text])[0]
        best = int(probabilities.argmax())
        return str(self.model.classes_[best]), float(probabilities[best])


def _grams(words: list[str]) -> list[str]:
    return words + [f"{a} {b}" for a, b in itertools.pairwise(words)]


def sklearn_available() -> bool:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return False
    return True


def train(texts: Sequence[str], labels: Sequence[str]) -> Logistic | NaiveBayes:
    model = Logistic() if sklearn_available() else NaiveBayes()
    return model.fit(texts, labels)


@lru_cache(maxsize=1)
def classifier() -> Logistic | NaiveBayes:
    """The process's classifier, trained on the shipped tickets on first use."""
    return train(*load_tickets())
