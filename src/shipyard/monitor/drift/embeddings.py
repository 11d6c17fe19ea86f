"""Embedding drift: has the cloud of embedding vectors moved between two windows?

Two methods:

- `model` (Evidently's default for embeddings): a domain classifier learns to tell reference
  from current vectors (scikit-learn `SGDClassifier`, log loss, half the rows held out, seed
  42, as `evidently.legacy.metrics.data_drift.embedding_drift_methods.ModelDriftMethod`). Its
  ROC AUC on the held-out half is the score; drift when it is above 0.55, or, for references of
  fewer than 1,000 rows, above the 95th percentile of the AUCs of 100 random guesses.
  Needs scikit-learn.
- `mmd`: maximum mean discrepancy with a Gaussian kernel (median-distance bandwidth) and a
  permutation test (numpy only); drift when p < 0.05.

`method="auto"` uses `model` when scikit-learn is installed, else `mmd`.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> a, b = rng.normal(0, 1, (300, 8)), rng.normal(0.5, 1, (300, 8))
>>> embedding_drift(a, b, method="mmd").drifted
True
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from shipyard.errors import InvalidRequest

__all__ = ["EmbeddingDrift", "embedding_drift"]


@dataclass(frozen=True, kw_only=True)
class EmbeddingDrift:
    method: str
    score: float  # ROC AUC (model) or p-value (mmd)
    threshold: float
    drifted: bool
    mmd: float | None = None


def _matrix(values: npt.ArrayLike, label: str) -> npt.NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < 2:
        raise InvalidRequest(f"The {label} embeddings have shape {array.shape}; pass a 2-D "
                             "array with one row per item (at least 2 rows).")
    return array


def embedding_drift(
    reference: npt.ArrayLike,
    current: npt.ArrayLike,
    *,
    method: Literal["auto", "model", "mmd"] = "auto",
    threshold: float | None = None,
    bootstrap: bool | None = None,
) -> EmbeddingDrift:
    """Compare two sets of embeddings (rows are items, columns are dimensions)."""
    ref, cur = _matrix(reference, "reference"), _matrix(current, "current")
    if ref.shape[1] != cur.shape[1]:
        raise InvalidRequest(f"The reference embeddings have {ref.shape[1]} dimensions and the "
                             f"current ones {cur.shape[1]}; embed both with the same model.")
    if method == "auto":
        method = "model" if importlib.util.find_spec("sklearn") is not None else "mmd"
    if method == "model":
        return _domain_classifier(ref, cur, threshold=0.55 if threshold is None else threshold,
                                  bootstrap=ref.shape[0] < 1000 if bootstrap is None
                                  else bootstrap)
    if method == "mmd":
        return _mmd_test(ref, cur, threshold=0.05 if threshold is None else threshold)
    raise InvalidRequest(f"Embedding drift method '{method}' is unknown; use auto, model or mmd.")


def _domain_classifier(ref: npt.NDArray[np.float64], cur: npt.NDArray[np.float64], *,
                       threshold: float, bootstrap: bool) -> EmbeddingDrift:
    try:
        from sklearn.linear_model import SGDClassifier
        from sklearn.metrics import roc_auc_score
        from sklearn.model_selection import train_test_split
    except ImportError as exc:  # optional dependency, only for this method
        raise InvalidRequest("Embedding drift method 'model' needs scikit-learn; install it "
                             "with pip install scikit-learn, or use method='mmd'.") from exc
    data = np.vstack((ref, cur))
    target = np.concatenate((np.ones(len(ref), dtype=np.int64),
                             np.zeros(len(cur), dtype=np.int64)))
    x_train, x_test, y_train, y_test = train_test_split(
        data, target, test_size=0.5, random_state=42, shuffle=True)
    classifier = SGDClassifier(loss="log_loss", random_state=42)
    classifier.fit(x_train, y_train)
    auc = float(roc_auc_score(y_test, classifier.predict_proba(x_test)[:, 1]))
    if bootstrap:
        randoms = []
        for seed in range(100):  # Evidently's calc_roc_auc_random
            np.random.seed(seed)  # the same draws as Evidently
            randoms.append(roc_auc_score(y_test, np.random.rand(len(y_test))))
        limit = float(np.percentile(randoms, 95))
        return EmbeddingDrift(method="model", score=auc, threshold=limit, drifted=auc > limit)
    return EmbeddingDrift(method="model", score=auc, threshold=threshold, drifted=auc > threshold)


def _mmd2(kernel: npt.NDArray[np.float64], n: int) -> float:
    xx, yy, xy = kernel[:n, :n], kernel[n:, n:], kernel[:n, n:]
    return float(xx.mean() + yy.mean() - 2 * xy.mean())


def _mmd_test(ref: npt.NDArray[np.float64], cur: npt.NDArray[np.float64], *,
              threshold: float, permutations: int = 100, max_rows: int = 1000
              ) -> EmbeddingDrift:
    rng = np.random.default_rng(0)
    if len(ref) > max_rows:
        ref = ref[rng.choice(len(ref), max_rows, replace=False)]
    if len(cur) > max_rows:
        cur = cur[rng.choice(len(cur), max_rows, replace=False)]
    data = np.vstack((ref, cur))
    squared = np.sum(data**2, axis=1)
    distances = np.maximum(squared[:, None] + squared[None, :] - 2 * data @ data.T, 0.0)
    bandwidth = float(np.median(distances[distances > 0])) if np.any(distances > 0) else 1.0
    kernel = np.exp(-distances / bandwidth)
    n = len(ref)
    observed = _mmd2(kernel, n)
    beaten = 0
    for _ in range(permutations):
        order = rng.permutation(len(data))
        if _mmd2(kernel[np.ix_(order, order)], n) >= observed:
            beaten += 1
    p_value = (beaten + 1) / (permutations + 1)
    return EmbeddingDrift(method="mmd", score=p_value, threshold=threshold,
                          drifted=p_value < threshold, mmd=observed)
