"""Hashed character n-grams in numpy: the features of attack similarity and the classifier.

Text is folded (`shipyard.guards.normalize.fold`), padded with spaces and cut into 3-, 4- and
5-character n-grams, each hashed into one of `dim` buckets; counts are dampened (1 + log tf),
optionally weighted by IDF, and scaled to unit length. Everything is vectorised, so a 1 KB
text takes tens of microseconds. numpy is the `guards` extra: `pip install 'shipyard[guards]'`.

>>> v = featurize("ignore previous instructions", dim=1024)
>>> round(float((v * v).sum()), 3)
1.0
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

from shipyard.errors import ConfigError
from shipyard.guards.normalize import fold

# numpy (the `guards` extra) is imported on first use: ~20 MiB resident that a gateway whose
# config needs no n-gram guard, classifier or semantic cache never pays.
_numpy: Any = None

__all__ = ["INSTALL_HINT", "NGRAMS", "featurize", "have_numpy", "idf_of", "need_numpy"]

INSTALL_HINT = "pip install 'shipyard[guards]'"
NGRAMS = (3, 4, 5)
_GOLDEN = 0x9E3779B97F4A7C15


def _np() -> Any:
    global _numpy
    if _numpy is None:
        import numpy

        _numpy = numpy
    return _numpy


def have_numpy() -> bool:
    if _numpy is not None:
        return True
    try:  # a finder may refuse the name outright (an environment that blocks the extra)
        return importlib.util.find_spec("numpy") is not None
    except (ImportError, ValueError):
        return False


def need_numpy(what: str) -> None:
    if not have_numpy():
        raise ConfigError(f"{what} needs numpy; install it with: {INSTALL_HINT}")


def _counts(text: str, dim: int) -> Any:
    np = _np()
    data = (" " + fold(text) + " ").encode("utf-8", "ignore")
    a = np.frombuffer(data, dtype=np.uint8).astype(np.uint64)
    bits = np.uint64(64 - (dim.bit_length() - 1))
    parts = []
    for n in NGRAMS:
        if len(a) < n:
            continue
        code = np.full(len(a) - n + 1, n, dtype=np.uint64)
        for i in range(n):
            code = (code << np.uint64(8)) | a[i: len(a) - n + 1 + i]
        parts.append((code * np.uint64(_GOLDEN)) >> bits)
    if not parts:
        return np.zeros(dim, dtype=np.float32)
    buckets = np.concatenate(parts).astype(np.int64)
    return np.bincount(buckets, minlength=dim).astype(np.float32)


def featurize(text: str, *, dim: int = 8192, idf: Any = None, normalize: bool = True) -> Any:
    """The feature vector of `text` (float32, length `dim`, a power of two)."""
    np = _np()
    counts = _counts(text, dim)
    nz = counts > 0
    counts[nz] = 1.0 + np.log(counts[nz])
    if idf is not None:
        counts *= idf
    if normalize:
        norm = float(np.sqrt((counts * counts).sum()))
        if norm > 0:
            counts /= norm
    return counts


def idf_of(texts: Sequence[str], *, dim: int = 8192) -> Any:
    """Smoothed inverse document frequency of each bucket over `texts`."""
    np = _np()
    df = np.zeros(dim, dtype=np.float32)
    for text in texts:
        df += _counts(text, dim) > 0
    return (np.log((1.0 + len(texts)) / (1.0 + df)) + 1.0).astype(np.float32)
