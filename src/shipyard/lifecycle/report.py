"""The eval report as one self-contained HTML page: plotly.js inlined from the installed
package (no CDN), a metric table candidate vs stable, and plots (metrics side by side, ROC
curves, the reliability diagram, latency). Needs the `report` extra."""

from __future__ import annotations

import html
from typing import Any

from shipyard.errors import InvalidRequest

__all__ = ["report_html"]

_STYLE = """body{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:1100px}
table{border-collapse:collapse}td,th{padding:4px 10px;border-bottom:1px solid #ddd;
text-align:left}.fail{color:#b00020;font-weight:600}.pass{color:#1b7f3b;font-weight:600}
.plot{margin:1rem 0}"""

_SCALAR = ("accuracy", "precision", "recall", "f1", "roc_auc", "brier", "ece", "exact",
           "contains", "regex", "json_schema", "similarity", "agree", "judge", "error_rate")


def _plotly() -> Any:
    try:
        import plotly.graph_objects as go
        from plotly.offline import get_plotlyjs
    except ImportError as exc:
        raise InvalidRequest(f"The HTML report needs plotly ({exc}); install it with "
                             "pip install 'shipyard[report]'.") from None
    return go, get_plotlyjs


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else html.escape(str(value))


def report_html(result: dict[str, Any]) -> str:
    """The page for one `shipyard eval` result (the dict `run_eval` returns)."""
    go, plotlyjs = _plotly()
    candidate: dict[str, Any] = result["candidate"]
    baseline: dict[str, Any] | None = result.get("baseline")
    names = [result.get("candidate_label", "candidate")]
    if baseline is not None:
        names.append(result.get("baseline_label", "stable"))
    metrics = [m for m in _SCALAR if isinstance(candidate.get(m), int | float)]
    rows = "".join(
        f"<tr><td>{m}</td><td>{_fmt(candidate.get(m))}</td>"
        + (f"<td>{_fmt(baseline.get(m))}</td>" if baseline is not None else "") + "</tr>"
        for m in [*metrics, "rows", "rows_per_s", "latency_p50_ms", "latency_p95_ms"]
        if candidate.get(m) is not None)
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    figures = []
    bars = go.Figure()
    bars.add_bar(name=names[0], x=metrics, y=[candidate[m] for m in metrics])
    if baseline is not None:
        bars.add_bar(name=names[1], x=metrics, y=[baseline.get(m) for m in metrics])
    bars.update_layout(title="Metrics", barmode="group", height=360, yaxis_range=[0, 1.05])
    figures.append(bars)
    if "roc_curve" in candidate:
        roc = go.Figure()
        for name, res in zip(names, [candidate, baseline], strict=False):
            if res and "roc_curve" in res:
                roc.add_scatter(x=res["roc_curve"]["fpr"], y=res["roc_curve"]["tpr"],
                                mode="lines", name=f"{name} (AUC {res.get('roc_auc', 0):.3f})")
        roc.add_scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance",
                        line={"dash": "dot", "color": "#999"})
        roc.update_layout(title="ROC curve", height=380, xaxis_title="false positive rate",
                          yaxis_title="true positive rate")
        figures.append(roc)
    if "calibration" in candidate:
        cal = go.Figure()
        for name, res in zip(names, [candidate, baseline], strict=False):
            if res and "calibration" in res:
                cal.add_scatter(x=res["calibration"]["predicted"],
                                y=res["calibration"]["observed"], mode="lines+markers",
                                name=f"{name} (ECE {res.get('ece', 0):.3f})")
        cal.add_scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect",
                        line={"dash": "dot", "color": "#999"})
        cal.update_layout(title="Calibration (reliability)", height=380,
                          xaxis_title="mean predicted probability",
                          yaxis_title="observed frequency")
        figures.append(cal)
    if candidate.get("latencies_ms"):
        lat = go.Figure()
        for name, res in zip(names, [candidate, baseline], strict=False):
            if res and res.get("latencies_ms"):
                lat.add_histogram(x=res["latencies_ms"], name=name, opacity=0.6)
        lat.update_layout(title="Latency per row (ms)", barmode="overlay", height=340)
        figures.append(lat)
    plots = "".join(f"<div class='plot'>{f.to_html(full_html=False, include_plotlyjs=False)}"
                    "</div>" for f in figures)
    gates = result.get("gates") or []
    failures = result.get("failures") or []
    verdict = ""
    if gates:
        ok = not failures
        verdict = (f"<p class='{'pass' if ok else 'fail'}'>Gates {'passed' if ok else 'FAILED'}"
                   f": {html.escape(', '.join(gates))}</p>"
                   + "".join(f"<p class='fail'>{html.escape(f)}</p>" for f in failures))
    title = f"Eval of {result.get('target', '')}: {names[0]}" + (
        f" vs {names[1]}" if baseline is not None else "")
    body = (f"<h1>{html.escape(title)}</h1><p>Dataset: {html.escape(str(result['dataset']))}"
            f" ({result['rows']} rows)</p>{verdict}<table><tr><th>metric</th>{head}</tr>"
            f"{rows}</table>{plots}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{_STYLE}</style><script>{plotlyjs()}</script></head>"
            f"<body>{body}</body></html>")
