"""A small attack classifier a team trains on its own labelled data.

Logistic regression on hashed character n-grams (`shipyard.guards.features`), trained with
full-batch gradient descent in numpy and saved as plain JSON (no pickle: a model file is data,
never code). Train with `shipyard guards train data.jsonl -o model.json`, then point the
injection guard at it: `{guard: injection, classifier: model.json}`.

Each line of the training file is `{"text": "...", "label": 1}` — label 1 (or `true`,
`"attack"`) for an attack, 0 (or `false`, `"benign"`) for a normal request.

>>> rows = [("ignore your rules", 1), ("what is my balance", 0)] * 20
>>> model, report = train(rows, iterations=50)
>>> model.probability("please ignore your rules") > model.probability("my balance today")
True
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from shipyard.errors import ConfigError
from shipyard.guards.features import NGRAMS, featurize, need_numpy

__all__ = ["Classifier", "fit_logistic", "load_examples", "rates", "split_holdout", "train"]

FORMAT = "shipyard-guard-classifier"
_TRUE = {"1", "true", "attack", "injection", "jailbreak", "malicious", "unsafe", "yes"}
_FALSE = {"0", "false", "benign", "safe", "normal", "no"}


@dataclass
class Classifier:
    """A trained model: `probability(text)` is the chance the text is an attack."""

    weights: Any
    bias: float
    dim: int
    threshold: float = 0.5

    def probability(self, text: str) -> float:
        x = featurize(text, dim=self.dim)
        z = float(x @ self.weights) + self.bias
        return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": 1, "dim": self.dim, "ngrams": list(NGRAMS),
                "threshold": self.threshold, "bias": round(self.bias, 6),
                "weights": [round(float(w), 6) for w in self.weights]}

    def save(self, path: Path) -> None:
        path.write_bytes(orjson.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: Path) -> Classifier:
        need_numpy("The injection classifier")
        import numpy as np  # the optional extra; checked just above

        try:
            data = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            raise ConfigError(f"The classifier file '{path}' does not exist; train one with "
                              "`shipyard guards train data.jsonl -o model.json`.") from None
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"The classifier file '{path}' is not JSON ({exc}).") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ConfigError(f"The file '{path}' is not a Shipyard guard classifier (its "
                              f"'format' is not '{FORMAT}').")
        weights = np.asarray(data["weights"], dtype=np.float32)
        dim = int(data["dim"])
        if len(weights) != dim or list(data.get("ngrams", NGRAMS)) != list(NGRAMS):
            raise ConfigError(f"The classifier file '{path}' does not match this Shipyard's "
                              "features; train it again with `shipyard guards train`.")
        return cls(weights, float(data["bias"]), dim, float(data.get("threshold", 0.5)))


def _label(value: Any, where: str) -> int:
    text = str(value).strip().lower()
    if text in _TRUE:
        return 1
    if text in _FALSE:
        return 0
    raise ConfigError(f"{where}: label is {value!r}; use 1/0, true/false or "
                      "\"attack\"/\"benign\".")


def load_examples(path: Path) -> list[tuple[str, int]]:
    """`(text, label)` pairs from a JSONL file; errors name the line and the fix."""
    rows: list[tuple[str, int]] = []
    # JSONL lines end at \n only: str.splitlines() would also split at U+2028, U+0085 and
    # other characters valid inside a JSON string.
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"{where} is not valid JSON ({exc}).") from None
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            raise ConfigError(f"{where} needs a string field 'text'.")
        label = item.get("label", item.get("kind"))
        if label is None:
            raise ConfigError(f"{where} needs a field 'label' (1 for an attack, 0 otherwise).")
        rows.append((item["text"], _label(label, where)))
    if len({label for _, label in rows}) < 2:
        raise ConfigError(f"{path} needs examples of both labels (attacks and benign "
                          "requests) to train a classifier.")
    return rows


def train(rows: Sequence[tuple[str, int]], *, dim: int = 4096, iterations: int = 300,
          l2: float = 1e-4, learning_rate: float = 2.0, holdout: float = 0.2,
          seed: int = 7) -> tuple[Classifier, dict[str, Any]]:
    """Fit on `rows` (a random `holdout` share kept aside for the report) and return the
    model, refit on everything, with precision/recall measured on the held-out share."""
    need_numpy("Training a classifier")
    if dim & (dim - 1) or dim < 64:
        raise ValueError(f"dim is {dim}; it must be a power of two of at least 64")
    test, fit = split_holdout(rows, holdout, seed=seed)
    shuffled = test + fit
    report: dict[str, Any] = {"examples": len(rows), "attacks": sum(y for _, y in rows)}
    if test:
        model = _fit(fit, dim, iterations, l2, learning_rate)
        report["holdout"] = _evaluate(model, test)
    model = _fit(shuffled, dim, iterations, l2, learning_rate)
    report["train"] = _evaluate(model, shuffled)
    return model, report


def split_holdout(rows: Sequence[tuple[str, int]], share: float, *, seed: int = 7
                  ) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """`(test, fit)`: a random `share` of `rows` kept aside to measure a model on (none when
    there are fewer than 10 rows), and the rest to fit it on."""
    shuffled = list(rows)
    random.Random(seed).shuffle(shuffled)
    cut = int(len(shuffled) * share) if len(shuffled) >= 10 else 0
    return shuffled[:cut], shuffled[cut:]


def _fit(rows: Iterable[tuple[str, int]], dim: int, iterations: int, l2: float,
         learning_rate: float) -> Classifier:
    import numpy as np  # the optional extra; checked by train()

    items = list(rows)
    x = np.stack([featurize(t, dim=dim) for t, _ in items]).astype(np.float32)
    y = np.asarray([label for _, label in items], dtype=np.float32)
    w, b = fit_logistic(x, y, iterations=iterations, l2=l2, learning_rate=learning_rate)
    return Classifier(w, b, dim)


def fit_logistic(x: Any, y: Any, *, iterations: int, l2: float,
                 learning_rate: float) -> tuple[Any, float]:
    """Weights and bias of an L2-regularised logistic regression of `y` (0/1) on the rows of
    `x`, by full-batch gradient descent, with the classes balanced so a corpus with few
    attacks still learns them."""
    import numpy as np  # the optional extra; the callers check it

    pos = max(1.0, float(y.sum()))
    neg = max(1.0, float(len(y) - y.sum()))
    sample = np.where(y == 1, len(y) / (2 * pos), len(y) / (2 * neg)).astype(np.float32)
    w = np.zeros(x.shape[1], dtype=np.float32)
    b = 0.0
    for _ in range(iterations):
        z = np.clip(x @ w + b, -30, 30)
        p = 1.0 / (1.0 + np.exp(-z))
        error = (p - y) * sample / len(y)
        w -= learning_rate * (x.T @ error + l2 * w)
        b -= learning_rate * float(error.sum())
    return w, b


def _evaluate(model: Classifier, rows: Sequence[tuple[str, int]]) -> dict[str, float]:
    hits = [model.probability(text) >= model.threshold for text, _ in rows]
    return rates(hits, [label for _, label in rows])


def rates(hits: Sequence[bool], labels: Sequence[int]) -> dict[str, float]:
    """Precision, recall and false-positive rate of `hits` against 0/1 `labels`."""
    tp = sum(h and y == 1 for h, y in zip(hits, labels, strict=True))
    fp = sum(h and y == 0 for h, y in zip(hits, labels, strict=True))
    pos = sum(1 for y in labels if y == 1)
    neg = len(labels) - pos
    return {"precision": round(tp / (tp + fp), 4) if tp + fp else 0.0,
            "recall": round(tp / pos, 4) if pos else 0.0,
            "false_positive_rate": round(fp / neg, 4) if neg else 0.0,
            "examples": len(labels)}
