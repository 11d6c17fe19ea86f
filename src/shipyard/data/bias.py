"""Bias and representation report: rows, label distribution and missingness per group.

Counts accumulate batch by batch (Arrow group-bys), so the report costs one pass over the output.

>>> import pyarrow as pa
>>> acc = BiasAccumulator(BiasSpec(attributes=["g"], label="y", min_share=0.3))
>>> acc.add(pa.record_batch({"g": ["a", "a", "a", "b"], "y": [1, 0, 1, 1]}))
>>> report = acc.report()
>>> report["attributes"]["g"]["groups"]["b"]["share"], len(report["warnings"])
(0.25, 1)
"""

from __future__ import annotations

import html
from collections import defaultdict
from typing import Any

import orjson
import pyarrow as pa

from shipyard.data.config import BiasSpec

__all__ = ["BiasAccumulator", "render_bias_html"]

MISSING = "(missing)"


def _key(value: Any) -> str:
    return MISSING if value is None else str(value)


def _shares(share: float, limit: float) -> tuple[str, str]:
    """Both as percentages with as many decimals as it takes to tell them apart: 4.98% is
    below 5.0%, and must not read "5.0% ... below the 5.0% threshold"."""
    for decimals in range(1, 5):
        shown, bound = f"{share:.{decimals}%}", f"{limit:.{decimals}%}"
        if shown != bound:
            return shown, f"{limit:.1%}" if decimals == 1 else bound
    return f"{share:.4%}", f"{limit:.4%}"


class BiasAccumulator:
    """Feed it output batches; `report()` returns the JSON-able bias report."""

    def __init__(self, spec: BiasSpec) -> None:
        self.spec = spec
        self.rows = 0
        self.counts: dict[str, dict[str, int]] = {a: defaultdict(int) for a in spec.attributes}
        self.labels: dict[str, dict[str, dict[str, int]]] = {
            a: defaultdict(lambda: defaultdict(int)) for a in spec.attributes}
        self.nulls: dict[str, dict[str, dict[str, int]]] = {
            a: defaultdict(lambda: defaultdict(int)) for a in spec.attributes}
        self.columns: list[str] = []

    def add(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        self.rows += batch.num_rows
        if not self.columns:
            self.columns = list(batch.schema.names)
        table = pa.Table.from_batches([batch])
        for attr in self.spec.attributes:
            if attr not in table.column_names:
                continue
            groups = table.group_by(attr, use_threads=False).aggregate([([], "count_all")])
            for value, n in zip(groups[attr].to_pylist(), groups["count_all"].to_pylist(),
                                strict=True):
                self.counts[attr][_key(value)] += n
            label = self.spec.label
            if label and label in table.column_names and label != attr:
                pairs = table.group_by([attr, label], use_threads=False).aggregate(
                    [([], "count_all")])
                for g, y, n in zip(pairs[attr].to_pylist(), pairs[label].to_pylist(),
                                   pairs["count_all"].to_pylist(), strict=True):
                    self.labels[attr][_key(g)][_key(y)] += n
            others = [c for c in table.column_names if c != attr]
            if others:
                nulls = table.group_by(attr, use_threads=False).aggregate(
                    [(c, "count", pa.compute.CountOptions(mode="only_null")) for c in others])
                keys = nulls[attr].to_pylist()
                for c in others:
                    for g, n in zip(keys, nulls[f"{c}_count"].to_pylist(), strict=True):
                        self.nulls[attr][_key(g)][c] += n

    def report(self) -> dict[str, Any]:
        spec = self.spec
        warnings: list[str] = []
        attributes: dict[str, Any] = {}
        for attr in spec.attributes:
            counts = dict(self.counts[attr])
            if not counts:
                warnings.append(f"attribute '{attr}' is not an output column or has no rows")
                continue
            total = sum(counts.values())
            groups: dict[str, Any] = {}
            ordered = sorted(counts.items(), key=lambda kv: -kv[1])[: spec.max_groups]
            for g, n in ordered:
                labels = dict(self.labels[attr].get(g, {}))
                group_rows = max(n, 1)
                groups[g] = {
                    "rows": n,
                    "share": round(n / total, 4),
                    "labels": {k: round(v / group_rows, 4) for k, v in sorted(labels.items())},
                    "missing": {c: round(v / group_rows, 4)
                                for c, v in sorted(self.nulls[attr].get(g, {}).items()) if v},
                }
                if n / total < spec.min_share:
                    share, limit = _shares(n / total, spec.min_share)
                    warnings.append(f"group {attr}={g} holds {share} of rows ({n:,} of "
                                    f"{total:,}), below the {limit} threshold "
                                    "(under-represented)")
            present = [n for g, n in counts.items() if g != MISSING]
            ratio = (max(present) / min(present)) if present else None
            if ratio is not None and ratio > spec.max_ratio:
                warnings.append(f"attribute '{attr}': the largest group is {ratio:.1f}x the "
                                f"smallest (limit {spec.max_ratio:g}x)")
            label_gap = None
            if spec.label:
                positive = _positive_rates(groups)
                if positive:
                    values = list(positive.values())
                    label_gap = {"positive_label": _positive_label(groups),
                                 "rate_by_group": positive,
                                 "min_max_ratio": round(min(values) / max(values), 4)
                                 if max(values) > 0 else None}
            attributes[attr] = {"groups": groups, "group_count": len(counts),
                                "imbalance_ratio": None if ratio is None else round(ratio, 3),
                                "label_parity": label_gap}
        return {"rows": self.rows, "label": spec.label, "min_share": spec.min_share,
                "max_ratio": spec.max_ratio, "attributes": attributes, "warnings": warnings}


def _positive_label(groups: dict[str, Any]) -> str | None:
    labels = {k for info in groups.values() for k in info["labels"]}
    for candidate in ("1", "True", "true", "yes", "positive"):
        if candidate in labels:
            return candidate
    return None


def _positive_rates(groups: dict[str, Any]) -> dict[str, float]:
    positive = _positive_label(groups)
    if positive is None:
        return {}
    return {g: info["labels"].get(positive, 0.0) for g, info in groups.items() if g != MISSING}


def render_bias_html(report: dict[str, Any], *, title: str) -> str:
    """A self-contained HTML page (plotly's JavaScript is embedded, nothing is fetched)."""
    try:
        import plotly.graph_objects as go
        from plotly.offline import get_plotlyjs
    except ModuleNotFoundError:
        raise ModuleNotFoundError("The bias report's HTML needs plotly; run: "
                                  "pip install 'shipyard[report]'") from None
    parts: list[str] = []
    for attr, info in report["attributes"].items():
        groups = info["groups"]
        names = list(groups)
        fig = go.Figure(go.Bar(x=names, y=[groups[g]["rows"] for g in names], name="rows"))
        fig.update_layout(title=f"Rows per {attr}", height=320, margin={"t": 40, "b": 40})
        parts.append(f"<h2>{html.escape(attr)}</h2>")
        parts.append(fig.to_html(full_html=False, include_plotlyjs=False))
        labels = sorted({k for g in names for k in groups[g]["labels"]})
        if labels:
            stacked = go.Figure([go.Bar(x=names, y=[groups[g]["labels"].get(k, 0) for g in names],
                                        name=f"{report['label']}={k}") for k in labels])
            stacked.update_layout(barmode="stack", height=320, margin={"t": 40, "b": 40},
                                  title=f"{report['label']} distribution per {attr}")
            parts.append(stacked.to_html(full_html=False, include_plotlyjs=False))
        cols = sorted({c for g in names for c in groups[g]["missing"]})
        if cols:
            heat = go.Figure(go.Heatmap(z=[[groups[g]["missing"].get(c, 0) for c in cols]
                                           for g in names], x=cols, y=names, zmin=0, zmax=1,
                                        colorscale="Reds"))
            heat.update_layout(title=f"Missing share per column and {attr}", height=320,
                               margin={"t": 40, "b": 40})
            parts.append(heat.to_html(full_html=False, include_plotlyjs=False))
    warnings = "".join(f"<li>{html.escape(w)}</li>" for w in report["warnings"]) or \
        "<li>none</li>"
    data = html.escape(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><script>{get_plotlyjs()}</script></head><body style='font-family:sans-serif'>"
            f"<h1>{html.escape(title)}</h1><p>{report['rows']} rows.</p><h2>Warnings</h2>"
            f"<ul>{warnings}</ul>{''.join(parts)}<h2>JSON</h2><pre>{data}</pre></body></html>")
