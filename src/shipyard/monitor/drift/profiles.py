"""Reference profiles: compact per-column summaries that drift tests run on without raw data.

A profile keeps, per column, what Evidently's default tests need:

- every value (sorted) while the column has at most `exact_limit` rows (1,000 by default, the
  size up to which Evidently picks the exact Kolmogorov-Smirnov test), so KS stays exact;
- beyond that a quantile sketch: the empirical quantile function at `sketch_size` evenly spaced
  probabilities (midpoints), plus exact count, mean, standard deviation, min and max — enough for
  the normalised Wasserstein distance (an integral over the quantile function) and for binned
  tests (Jensen-Shannon, PSI) through the sketch's CDF;
- exact value counts while the column has at most `distinct_limit` distinct values, which makes
  chi-square, z-test and Jensen-Shannon on categories exact; beyond that the most frequent
  `distinct_limit` categories and one count for all the others.

>>> import numpy as np
>>> p = profile_column("x", np.arange(5000, dtype=float))
>>> p.kind, p.count, p.values is None, p.quantiles is not None and len(p.quantiles)
('numeric', 5000, True, 2048)
>>> ColumnProfile.from_dict(p.to_dict()).mean
2499.5
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "DISTINCT_LIMIT",
    "EXACT_LIMIT",
    "SKETCH_SIZE",
    "ColumnKind",
    "ColumnProfile",
    "DatasetProfile",
    "as_array",
    "infer_kind",
    "profile_column",
    "profile_columns",
]

ColumnKind = Literal["numeric", "categorical", "text", "unknown"]
FloatArray = npt.NDArray[np.float64]

EXACT_LIMIT = 1000
SKETCH_SIZE = 2048
DISTINCT_LIMIT = 1000
# Evidently treats integer columns with at most this many distinct values as categorical.
INTEGER_CARDINALITY_LIMIT = 10


def as_array(values: Sequence[Any] | npt.NDArray[Any]) -> npt.NDArray[Any]:
    """A numpy array with the dtype pandas would infer (ints with gaps become floats).

    >>> as_array([1, None, 3]).dtype.name, as_array(["a", None]).dtype.name
    ('float64', 'object')
    """
    if isinstance(values, np.ndarray):
        return values
    items = list(values)
    present = [v for v in items if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return np.array(items, dtype=bool if len(present) == len(items) else object)
    if present and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        if len(present) == len(items) and all(isinstance(v, int) for v in present):
            return np.array(items, dtype=np.int64)
        return np.array([np.nan if v is None else v for v in items], dtype=np.float64)
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def infer_kind(array: npt.NDArray[Any]) -> ColumnKind:
    """Evidently's column-type inference (`evidently.core.datasets.infer_column_type`).

    float → numeric; int → categorical with ≤ 10 distinct values, else numeric; bool →
    categorical; strings → text when more than half the non-null values are distinct, else
    categorical.

    >>> import numpy as np
    >>> infer_kind(np.array([1, 2, 3])), infer_kind(np.arange(50)), infer_kind(np.array([0.5]))
    ('categorical', 'numeric', 'numeric')
    """
    kind = array.dtype.kind
    if kind == "f":
        return "numeric"
    if kind in "iu":
        distinct = len(np.unique(array))
        return "categorical" if distinct <= INTEGER_CARDINALITY_LIMIT else "numeric"
    if kind == "b":
        return "categorical"
    if kind in "USO":
        items = array.tolist()
        counter, missing = _counter(items)
        return _object_kind(items, counter, len(items) - missing)
    return "unknown"


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and value != value)


def _counter(items: list[Any]) -> tuple[Counter[Any], int]:
    """Counts of the present values, and how many were missing (None or NaN)."""
    counter = Counter(items)
    missing = 0
    for key in [k for k in counter if not _present(k)]:
        missing += counter.pop(key)
    return counter, missing


def _object_kind(items: list[Any], counter: Counter[Any], count: int) -> ColumnKind:
    # Evidently looks at the first and the last present value, and at the share of distinct ones.
    if count == 0:
        return "unknown"
    first = next(v for v in items if _present(v))
    last = next(v for v in reversed(items) if _present(v))
    if isinstance(first, str) and isinstance(last, str):
        return "text" if len(counter) > count * 0.5 else "categorical"
    return "categorical" if isinstance(first, bool) else "unknown"


def _encode(array: FloatArray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f8").tobytes()).decode()


def _decode(text: str) -> FloatArray:
    return np.frombuffer(base64.b64decode(text), dtype="<f8").copy()


@dataclass(kw_only=True)
class ColumnProfile:
    """What drift tests need to know about one column (see the module docstring)."""

    name: str
    kind: ColumnKind
    dtype: str
    count: int
    missing: int = 0
    # Exact value counts. Numbers: None beyond `distinct_limit` values. Categories: the
    # `distinct_limit` most frequent, the rows of all others in `other`.
    counts: dict[Any, int] | None = None
    other: int = 0
    distinct: int = 0
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    values: FloatArray | None = None  # all values, sorted, for small columns
    quantiles: FloatArray | None = None  # quantile function at (i + 0.5) / sketch_size
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_numeric(self) -> bool:
        return self.mean is not None

    def _low(self) -> float:
        return float(self.min if self.min is not None else np.nan)

    def _high(self) -> float:
        return float(self.max if self.max is not None else np.nan)

    def quantile_at(self, probs: FloatArray) -> FloatArray:
        """The empirical quantile function (exact for small columns, sketched otherwise)."""
        if self.values is not None:
            index = np.minimum((probs * len(self.values)).astype(np.int64), len(self.values) - 1)
            return self.values[index]
        if self.quantiles is None:
            raise ValueError(f"column '{self.name}' has no numeric summary")
        size = len(self.quantiles)
        grid = (np.arange(size) + 0.5) / size
        xs = np.concatenate(([0.0], grid, [1.0]))
        ys = np.concatenate(([self._low()], self.quantiles, [self._high()]))
        return np.asarray(np.interp(probs, xs, ys), dtype=np.float64)

    def cdf(self, points: FloatArray) -> FloatArray:
        """Share of values ≤ each point (exact for small columns, sketched otherwise)."""
        if self.values is not None:
            return np.searchsorted(self.values, points, side="right") / len(self.values)
        if self.quantiles is None:
            raise ValueError(f"column '{self.name}' has no numeric summary")
        size = len(self.quantiles)
        grid = (np.arange(size) + 0.5) / size
        xs = np.concatenate(([self._low()], self.quantiles, [self._high()]))
        ys = np.concatenate(([0.0], grid, [1.0]))
        result = np.interp(points, xs, ys, left=0.0, right=1.0)
        return np.asarray(result, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; arrays are base64 little-endian float64."""
        data: dict[str, Any] = {
            "name": self.name, "kind": self.kind, "dtype": self.dtype, "count": self.count,
            "missing": self.missing, "distinct": self.distinct,
        }
        if self.counts is not None:
            data["counts"] = [[k, v] for k, v in self.counts.items()]
        if self.other:
            data["other"] = self.other
        for key in ("mean", "std", "min", "max"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        if self.values is not None:
            data["values"] = _encode(self.values)
        if self.quantiles is not None:
            data["quantiles"] = _encode(self.quantiles)
        if self.extra:
            data["extra"] = self.extra
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ColumnProfile:
        counts = data.get("counts")
        return cls(
            name=data["name"], kind=data["kind"], dtype=data["dtype"], count=data["count"],
            missing=data.get("missing", 0), distinct=data.get("distinct", 0),
            other=data.get("other", 0),
            counts={k: int(v) for k, v in counts} if counts is not None else None,
            mean=data.get("mean"), std=data.get("std"), min=data.get("min"),
            max=data.get("max"),
            values=_decode(data["values"]) if "values" in data else None,
            quantiles=_decode(data["quantiles"]) if "quantiles" in data else None,
            extra=dict(data.get("extra", {})),
        )


@dataclass(kw_only=True)
class DatasetProfile:
    """Profiles of several columns (one reference window)."""

    columns: dict[str, ColumnProfile]
    rows: int

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "columns": [c.to_dict() for c in self.columns.values()]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetProfile:
        columns = [ColumnProfile.from_dict(c) for c in data["columns"]]
        return cls(rows=int(data["rows"]), columns={c.name: c for c in columns})


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _count_values(counter: Counter[Any], limit: int) -> tuple[dict[Any, int], int]:
    """(counts of the `limit` most frequent values, rows of all the others)."""
    kept = counter.most_common(limit) if len(counter) > limit else counter.items()
    counts = {_plain(k): int(v) for k, v in kept}
    return counts, counter.total() - sum(counts.values())


def profile_column(
    name: str,
    values: Sequence[Any] | npt.NDArray[Any],
    *,
    kind: ColumnKind | None = None,
    exact_limit: int | None = EXACT_LIMIT,
    sketch_size: int = SKETCH_SIZE,
    distinct_limit: int = DISTINCT_LIMIT,
) -> ColumnProfile:
    """Profile one column. `exact_limit=None` keeps every value (used for current windows).

    Missing values (None, NaN, ±inf) are counted and left out, as Evidently drops them before
    testing.
    """
    array = as_array(values)
    if array.dtype.kind in "fiub":
        numbers = array.astype(np.float64, copy=False)
        finite = numbers[np.isfinite(numbers)]
        ordered = np.sort(finite)
        # Distinct values of a sorted array: 1 + places where consecutive values differ.
        changes = ordered[1:] != ordered[:-1]
        distinct = int(np.count_nonzero(changes)) + 1 if ordered.size else 0
        resolved: ColumnKind = kind or (
            "numeric" if array.dtype.kind == "f"
            else "categorical" if array.dtype.kind == "b" or distinct <= INTEGER_CARDINALITY_LIMIT
            else "numeric")
        profile = ColumnProfile(name=name, kind=resolved, dtype=array.dtype.name,
                                count=int(finite.size), missing=int(array.size - finite.size),
                                distinct=distinct)
        if finite.size == 0:
            return profile
        profile.mean = float(ordered.mean())
        profile.std = float(ordered.std())
        profile.min = float(ordered[0])
        profile.max = float(ordered[-1])
        if exact_limit is None or ordered.size <= exact_limit:
            profile.values = ordered
        else:
            probs = (np.arange(sketch_size) + 0.5) / sketch_size
            profile.quantiles = ordered[(probs * ordered.size).astype(np.int64)]
        # Numbers need exact counts only when few (test selection, binning); categories always.
        limit = distinct_limit if resolved == "categorical" else min(distinct_limit, DISTINCT_LIMIT)
        if profile.distinct <= limit:
            starts = np.concatenate(([0], np.flatnonzero(changes) + 1))
            sizes = np.diff(np.concatenate((starts, [ordered.size])))
            as_int = array.dtype.kind in "iub"
            keys = ordered[starts]
            profile.counts = {
                (bool(k) if array.dtype.kind == "b" else int(k) if as_int else float(k)): int(s)
                for k, s in zip(keys.tolist(), sizes.tolist(), strict=True)
            }
        return profile
    items = array.tolist()
    counter, missing = _counter(items)
    count = len(items) - missing
    counts, other = _count_values(counter, distinct_limit)
    return ColumnProfile(name=name, kind=kind or _object_kind(items, counter, count),
                         dtype=array.dtype.name, count=count, missing=missing, counts=counts,
                         distinct=len(counter), other=other)


def profile_columns(
    data: Mapping[str, Sequence[Any] | npt.NDArray[Any]],
    *,
    kinds: Mapping[str, ColumnKind] | None = None,
    exact_limit: int | None = EXACT_LIMIT,
    sketch_size: int = SKETCH_SIZE,
    distinct_limit: int = DISTINCT_LIMIT,
) -> DatasetProfile:
    """Profile every column of `data` (a mapping of column name to values).

    >>> profile_columns({"a": [1.0, 2.0], "b": ["x", "y"]}).columns["b"].counts
    {'x': 1, 'y': 1}
    """
    kinds = kinds or {}
    rows = max((len(v) for v in data.values()), default=0)
    columns = {
        name: profile_column(name, values, kind=kinds.get(name), exact_limit=exact_limit,
                             sketch_size=sketch_size, distinct_limit=distinct_limit)
        for name, values in data.items()
    }
    return DatasetProfile(columns=columns, rows=rows)
