"""Data drift: compare a reference window with a current window, column by column.

The test for each column follows Evidently's defaults (`_get_default_stattest` in
`evidently/legacy/calculations/stattests/registry.py`), so verdicts are comparable:

| kind | reference rows (non-null) | distinct (both windows) | test | drift when |
|---|---|---|---|---|
| numeric | ≤ 1000 | ≤ 2 / 3 to 5 / > 5 | z-test / chi-square / KS | p < 0.05 (KS: p ≤ 0.05) |
| numeric | > 1000 | ≤ 5 / > 5 | Jensen-Shannon / normalised Wasserstein | distance ≥ 0.1 |
| categorical | ≤ 1000 | ≤ 2 / > 2 | z-test / chi-square | p < 0.05 |
| categorical | > 1000 | any | Jensen-Shannon | distance ≥ 0.1 |

Column kinds are inferred on the current window as Evidently does (see `infer_kind`); text
columns are reported as skipped. `method=` picks a test (for example `"psi"`) and `threshold=`
overrides the default threshold, per column or for all.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> report = detect_drift({"x": rng.normal(0, 1, 500)}, {"x": rng.normal(1, 1, 500)})
>>> report.columns[0].method, report.columns[0].drifted
('ks', True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from shipyard.errors import InvalidRequest
from shipyard.monitor.drift import stattests
from shipyard.monitor.drift.profiles import (
    EXACT_LIMIT,
    ColumnKind,
    ColumnProfile,
    DatasetProfile,
    profile_column,
)

__all__ = [
    "METHODS",
    "ColumnDrift",
    "DriftReport",
    "Method",
    "detect_drift",
    "select_method",
]

Method = Literal["ks", "wasserstein", "chisquare", "z", "jensenshannon", "psi"]
# Raw windows keep every category, so category tests stay exact.
RAW_DISTINCT_LIMIT = 10**9
Data = Mapping[str, Sequence[Any] | npt.NDArray[Any]]


@dataclass(frozen=True)
class _Spec:
    func: Callable[[ColumnProfile, ColumnProfile], float]
    threshold: float
    is_pvalue: bool
    numeric_only: bool = False


METHODS: dict[str, _Spec] = {
    "ks": _Spec(stattests.ks, 0.05, True, numeric_only=True),
    "wasserstein": _Spec(stattests.wasserstein, 0.1, False, numeric_only=True),
    "chisquare": _Spec(stattests.chisquare, 0.05, True),
    "z": _Spec(stattests.ztest, 0.05, True),
    "jensenshannon": _Spec(stattests.jensenshannon, 0.1, False),
    "psi": _Spec(stattests.psi, 0.1, False),
}


def select_method(kind: ColumnKind, reference_rows: int, distinct: int) -> Method:
    """Evidently's default test for a column.

    `reference_rows` counts non-missing reference values; `distinct` counts distinct values
    over both windows.

    >>> select_method("numeric", 5000, 300), select_method("categorical", 200, 2)
    ('wasserstein', 'z')
    """
    small = reference_rows <= EXACT_LIMIT
    if kind == "numeric":
        if small:
            if distinct <= 5:
                return "chisquare" if distinct > 2 else "z"
            return "ks"
        return "jensenshannon" if distinct <= 5 else "wasserstein"
    if kind == "categorical":
        if small:
            return "chisquare" if distinct > 2 else "z"
        return "jensenshannon"
    raise InvalidRequest(f"Column kind '{kind}' has no drift test; use numeric or categorical.")


@dataclass(frozen=True, kw_only=True)
class ColumnDrift:
    """The verdict for one column. `score` is a p-value (ks, chisquare, z) or a distance."""

    column: str
    kind: ColumnKind
    method: str
    score: float | None
    threshold: float | None
    drifted: bool
    reference_rows: int
    current_rows: int
    approximate: bool = False
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.score is not None and not math.isfinite(self.score):
            data["score"] = None
        return data


@dataclass(frozen=True, kw_only=True)
class DriftReport:
    """Column verdicts plus the dataset verdict (share of drifted columns ≥ `drift_share`)."""

    columns: list[ColumnDrift]
    drift_share: float = 0.5
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def tested(self) -> list[ColumnDrift]:
        return [c for c in self.columns if c.method != "skipped"]

    @property
    def drifted_columns(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]

    @property
    def share(self) -> float:
        tested = self.tested
        return len(self.drifted_columns) / len(tested) if tested else 0.0

    @property
    def dataset_drift(self) -> bool:
        return bool(self.tested) and self.share >= self.drift_share

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset_drift": self.dataset_drift,
            "share": self.share,
            "drift_share": self.drift_share,
            "drifted_columns": self.drifted_columns,
            "columns": [c.to_dict() for c in self.columns],
            "meta": self.meta,
        }


def _distinct(ref: ColumnProfile, cur: ColumnProfile) -> int:
    if ref.counts is None or cur.counts is None:
        return max(ref.distinct, cur.distinct)
    return len(set(ref.counts) | set(cur.counts))


def _skipped(name: str, kind: ColumnKind, ref: ColumnProfile | None, cur: ColumnProfile | None,
             note: str) -> ColumnDrift:
    return ColumnDrift(column=name, kind=kind, method="skipped", score=None, threshold=None,
                       drifted=False, reference_rows=ref.count if ref else 0,
                       current_rows=cur.count if cur else 0, note=note)


def compare_columns(
    ref: ColumnProfile,
    cur: ColumnProfile,
    *,
    kind: ColumnKind,
    method: str | None = None,
    threshold: float | None = None,
) -> ColumnDrift:
    """Run one column's test on two profiles."""
    name = ref.name
    if kind not in ("numeric", "categorical"):
        return _skipped(name, kind, ref, cur, f"{kind} column: no distribution test")
    if ref.count == 0 or cur.count == 0:
        side = "reference" if ref.count == 0 else "current"
        return _skipped(name, kind, ref, cur, f"the {side} window has no values")
    chosen = method or select_method(kind, ref.count, _distinct(ref, cur))
    spec = METHODS.get(chosen)
    if spec is None:
        raise InvalidRequest(f"Drift method '{chosen}' for column '{name}' is unknown; use one "
                             f"of {', '.join(METHODS)}.")
    if spec.numeric_only and not (ref.is_numeric and cur.is_numeric):
        raise InvalidRequest(f"Drift method '{chosen}' for column '{name}' needs numbers; pick "
                             "chisquare, z, jensenshannon or psi for categories.")
    try:
        # A category missing from the reference divides by zero: p = 0, as in Evidently.
        with np.errstate(divide="ignore", invalid="ignore"):
            score = spec.func(ref, cur)
    except ValueError as exc:
        return _skipped(name, kind, ref, cur, str(exc))
    limit = spec.threshold if threshold is None else threshold
    if spec.is_pvalue:
        drifted = score <= limit if chosen == "ks" else score < limit
    else:
        drifted = score >= limit
    return ColumnDrift(column=name, kind=kind, method=chosen, score=score, threshold=limit,
                       drifted=bool(drifted), reference_rows=ref.count, current_rows=cur.count,
                       approximate=stattests.uses_sketch(ref, cur, chosen))


def _pick(option: str | float | Mapping[str, Any] | None, column: str) -> Any:
    if isinstance(option, Mapping):
        return option.get(column)
    return option


def detect_drift(
    reference: DatasetProfile | Data,
    current: DatasetProfile | Data,
    *,
    columns: Sequence[str] | None = None,
    kinds: Mapping[str, ColumnKind] | None = None,
    method: str | Mapping[str, str] | None = None,
    threshold: float | Mapping[str, float] | None = None,
    drift_share: float = 0.5,
) -> DriftReport:
    """Compare `current` with `reference` column by column.

    Either side is raw data (a mapping of column name to a sequence or numpy array) or a
    `DatasetProfile` (for example a stored reference profile). Raw data keeps every value, so
    raw-versus-raw results equal Evidently's; a stored profile of more than 1,000 rows holds a
    quantile sketch, and scores computed from it are marked `approximate`.
    """
    kinds = kinds or {}
    ref_raw = None if isinstance(reference, DatasetProfile) else reference
    cur_raw = None if isinstance(current, DatasetProfile) else current
    if columns is not None:
        names = list(columns)
    elif isinstance(current, DatasetProfile):
        names = list(current.columns)
    else:
        names = list(current)
    results: list[ColumnDrift] = []
    for name in names:
        # Kinds come from the current window, as in Evidently (unless given).
        if cur_raw is not None and name in cur_raw:
            cur_profile = profile_column(name, cur_raw[name], kind=kinds.get(name),
                                         exact_limit=None, distinct_limit=RAW_DISTINCT_LIMIT)
        elif isinstance(current, DatasetProfile) and name in current.columns:
            cur_profile = current.columns[name]
        else:
            raise InvalidRequest(f"Column '{name}' is not in the current data; drop it from "
                                 "`columns` or add it to the data.")
        kind: ColumnKind = kinds.get(name, cur_profile.kind)
        ref_profile = _side(reference, ref_raw, name, kind, "reference")
        results.append(compare_columns(ref_profile, cur_profile, kind=kind,
                                       method=_pick(method, name),
                                       threshold=_pick(threshold, name)))
    return DriftReport(columns=results, drift_share=drift_share)


def _side(data: DatasetProfile | Data, raw: Data | None, name: str, kind: ColumnKind,
          label: str) -> ColumnProfile:
    if raw is not None:
        if name not in raw:
            raise InvalidRequest(f"Column '{name}' is not in the {label} data; drop it from "
                                 "`columns` or add it to the data.")
        return profile_column(name, raw[name], kind=kind, exact_limit=None,
                              distinct_limit=RAW_DISTINCT_LIMIT)
    if not isinstance(data, DatasetProfile) or name not in data.columns:
        raise InvalidRequest(f"Column '{name}' is not in the {label} profile; rebuild the "
                             "profile with this column ('shipyard drift profile').")
    return data.columns[name]
