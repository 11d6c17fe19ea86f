"""Drift statistics on column profiles, written to give the numbers Evidently gives.

Each function takes a reference and a current `ColumnProfile` and returns the drift score
Evidently reports (a p-value for `ks`, `chisquare` and `z`; a distance otherwise). When both
sides hold every value the result is exactly Evidently's (same scipy calls on the same numbers);
when the reference is a quantile sketch the score is an approximation (see docs/drift.md).

>>> import numpy as np
>>> from shipyard.monitor.drift.profiles import profile_column
>>> ref = profile_column("x", np.zeros(10) + np.arange(10.0), exact_limit=None)
>>> round(wasserstein(ref, ref), 6)
0.0
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats
from scipy.spatial import distance

from shipyard.monitor.drift.profiles import ColumnProfile, FloatArray

__all__ = [
    "chisquare",
    "jensenshannon",
    "ks",
    "psi",
    "wasserstein",
    "ztest",
]

# The pooled bucket of categories a profile did not keep.
OTHER = "\x00other"
# Points on which sketched quantile functions are compared (midpoint rule).
GRID = 8192


def _exact(profile: ColumnProfile) -> bool:
    return profile.values is not None


def ks(ref: ColumnProfile, cur: ColumnProfile) -> float:
    """Two-sample Kolmogorov-Smirnov p-value (scipy's `ks_2samp`, as Evidently)."""
    if ref.values is not None and cur.values is not None:
        return float(stats.ks_2samp(ref.values, cur.values)[1])
    # Sketched side: the largest CDF gap over both sides' support, asymptotic p-value.
    points = np.union1d(_support(ref), _support(cur))
    gap = float(np.max(np.abs(ref.cdf(points) - cur.cdf(points))))
    n, m = ref.count, cur.count
    return float(stats.kstwo.sf(gap, round(n * m / (n + m))))


def _support(profile: ColumnProfile) -> FloatArray:
    if profile.values is not None:
        return profile.values
    if profile.quantiles is None or profile.min is None or profile.max is None:
        raise ValueError(f"column '{profile.name}' has no numeric summary")
    return np.concatenate(([profile.min], profile.quantiles, [profile.max]))


def wasserstein(ref: ColumnProfile, cur: ColumnProfile) -> float:
    """Wasserstein-1 distance divided by the reference's standard deviation (at least 0.001)."""
    norm = max(float(ref.std or 0.0), 0.001)
    if ref.values is not None and cur.values is not None:
        return float(stats.wasserstein_distance(ref.values, cur.values)) / norm
    # W1 is the integral of |Q_ref(u) - Q_cur(u)| over u in (0, 1): midpoint rule.
    probs = (np.arange(GRID) + 0.5) / GRID
    return float(np.mean(np.abs(ref.quantile_at(probs) - cur.quantile_at(probs)))) / norm


def _counts(
    ref: ColumnProfile, cur: ColumnProfile
) -> tuple[list[Any], dict[Any, int], dict[Any, int]]:
    """The union of categories and both sides' counts.

    When a profile kept only its most frequent categories, the categories both sides kept are
    compared and everything else is pooled into one bucket.
    """
    if ref.counts is None or cur.counts is None:
        raise ValueError(f"column '{ref.name}' has too many distinct values for a category test")
    if not ref.other and not cur.other:
        return list(set(ref.counts) | set(cur.counts)), ref.counts, cur.counts
    kept = set(ref.counts) & set(cur.counts) if cur.other else set(ref.counts)
    ref_counts = {k: ref.counts[k] for k in kept}
    cur_counts = {k: cur.counts.get(k, 0) for k in kept}
    ref_counts[OTHER] = ref.count - sum(ref_counts.values())
    cur_counts[OTHER] = cur.count - sum(cur_counts.values())
    return list(ref_counts), ref_counts, cur_counts


def chisquare(ref: ColumnProfile, cur: ColumnProfile) -> float:
    """Chi-square goodness-of-fit p-value of current counts against scaled reference counts."""
    keys, ref_counts, cur_counts = _counts(ref, cur)
    scale = cur.count / ref.count
    expected = [ref_counts.get(k, 0) * scale for k in keys]
    observed = [cur_counts.get(k, 0) for k in keys]
    return float(stats.chisquare(observed, expected)[1])


def ztest(ref: ColumnProfile, cur: ColumnProfile) -> float:
    """Two-proportion z-test p-value (binary columns), as Evidently's `z` test."""
    keys, ref_counts, cur_counts = _counts(ref, cur)
    if len(ref_counts) == 1 and len(cur_counts) == 1 and set(ref_counts) == set(cur_counts):
        return 1.0
    first = sorted(keys)[0]
    n1, n2 = ref.count, cur.count
    p1 = (n1 - ref_counts.get(first, 0)) / n1
    p2 = (n2 - cur_counts.get(first, 0)) / n2
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    spread = np.sqrt(pooled * (1 - pooled) * (1.0 / n1 + 1.0 / n2))
    if spread == 0:
        return float("nan")
    z = (p1 - p2) / spread
    return float(2 * (1 - stats.norm.cdf(abs(z))))


def _sturges_edges(ref: ColumnProfile, cur: ColumnProfile) -> FloatArray:
    lo = min(_support(ref)[0], _support(cur)[0])
    hi = max(_support(ref)[-1], _support(cur)[-1])
    # numpy's estimator looks only at the size and the range of the data.
    stand_in = np.full(ref.count + cur.count, lo)
    stand_in[-1] = hi
    return np.histogram_bin_edges(stand_in, bins="sturges")


def _histogram(profile: ColumnProfile, edges: FloatArray) -> FloatArray:
    if profile.values is not None:
        return np.histogram(profile.values, edges)[0] / profile.count
    shares = profile.cdf(edges)
    shares[0], shares[-1] = 0.0, 1.0
    return np.diff(shares)


def binned(ref: ColumnProfile, cur: ColumnProfile, *, fill_zeroes: bool) -> tuple[
        FloatArray, FloatArray]:
    """Shares per bin (numeric columns with > 20 reference values) or per category."""
    if ref.kind == "numeric" and ref.distinct > 20 and ref.is_numeric and cur.is_numeric:
        edges = _sturges_edges(ref, cur)
        ref_p, cur_p = _histogram(ref, edges), _histogram(cur, edges)
    else:
        keys, ref_counts, cur_counts = _counts(ref, cur)
        ref_p = np.array([ref_counts.get(k, 0) / ref.count for k in keys])
        cur_p = np.array([cur_counts.get(k, 0) / cur.count for k in keys])
    if fill_zeroes:
        for shares in (ref_p, cur_p):
            smallest = shares[shares != 0].min()
            shares[shares == 0] = smallest / 10**6 if smallest <= 0.0001 else 0.0001
    return ref_p, cur_p


def jensenshannon(ref: ColumnProfile, cur: ColumnProfile) -> float:
    """Jensen-Shannon distance (natural log) between binned shares."""
    ref_p, cur_p = binned(ref, cur, fill_zeroes=False)
    return float(distance.jensenshannon(ref_p, cur_p))


def psi(ref: ColumnProfile, cur: ColumnProfile) -> float:
    """Population Stability Index between binned shares (empty bins filled as Evidently)."""
    ref_p, cur_p = binned(ref, cur, fill_zeroes=True)
    return float(np.sum((ref_p - cur_p) * np.log(ref_p / cur_p)))


def uses_sketch(ref: ColumnProfile, cur: ColumnProfile, method: str) -> bool:
    """True when `method`'s score comes from a quantile sketch rather than from every value."""
    numeric = method in ("ks", "wasserstein") or (
        method in ("jensenshannon", "psi") and ref.kind == "numeric" and ref.distinct > 20)
    return bool(ref.other or cur.other) or (numeric and not (_exact(ref) and _exact(cur)))
