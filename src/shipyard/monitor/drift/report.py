"""Self-contained HTML for drift reports and history (plotly, its JavaScript inlined: no CDN).

Needs the `report` extra (`pip install 'shipyard[report]'`).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from shipyard.monitor.drift.detect import DriftReport

__all__ = ["history_html", "report_html", "reports_html"]

_STYLE = """body{font-family:system-ui,sans-serif;margin:2rem;color:#222}
table{border-collapse:collapse}td,th{padding:4px 10px;border-bottom:1px solid #ddd;
text-align:left}.drift{color:#b00020;font-weight:600}.ok{color:#1b7f3b}"""


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{_STYLE}</style><script>{get_plotlyjs()}</script></head>"
            f"<body><h1>{html.escape(title)}</h1>{body}</body></html>")


def _figure(fig: go.Figure) -> str:
    return str(fig.to_html(full_html=False, include_plotlyjs=False))


def report_html(report: DriftReport, *, title: str = "Drift report") -> str:
    """One report: verdict, a bar per column (score against threshold) and a table."""
    return _page(title, _section(report))


def reports_html(reports: Mapping[str, DriftReport], *, title: str = "Drift checks") -> str:
    """Several reports on one page, one section per check."""
    body = "".join(f"<h2>{html.escape(name)}</h2>{_section(report)}"
                   for name, report in reports.items())
    return _page(title, body)


def _section(report: DriftReport) -> str:
    tested = report.tested
    fig = go.Figure()
    fig.add_bar(x=[c.column for c in tested], y=[c.score for c in tested],
                marker_color=["#b00020" if c.drifted else "#1b7f3b" for c in tested],
                text=[c.method for c in tested], name="score")
    fig.add_scatter(x=[c.column for c in tested], y=[c.threshold for c in tested],
                    mode="markers", marker_symbol="line-ew-open", marker_size=18,
                    name="threshold")
    fig.update_layout(height=380, margin={"t": 30}, yaxis_title="score (p-value or distance)")
    rows = "".join(
        f"<tr><td>{html.escape(c.column)}</td><td>{c.kind}</td><td>{c.method}</td>"
        f"<td>{'' if c.score is None else f'{c.score:.4g}'}</td>"
        f"<td>{'' if c.threshold is None else c.threshold}</td>"
        f"<td class='{'drift' if c.drifted else 'ok'}'>{'drift' if c.drifted else 'ok'}</td>"
        f"<td>{c.reference_rows}</td><td>{c.current_rows}</td>"
        f"<td>{html.escape(c.note)}{' (sketch)' if c.approximate else ''}</td></tr>"
        for c in report.columns)
    verdict = (f"<p class='{'drift' if report.dataset_drift else 'ok'}'>"
               f"{len(report.drifted_columns)} of {len(tested)} columns drifted "
               f"(share {report.share:.2f}, dataset drift at ≥ {report.drift_share}).</p>")
    table = ("<table><tr><th>column</th><th>kind</th><th>test</th><th>score</th>"
             "<th>threshold</th><th>verdict</th><th>reference rows</th><th>current rows</th>"
             f"<th>note</th></tr>{rows}</table>")
    return verdict + _figure(fig) + table


def history_html(rows: Sequence[dict[str, Any]], *, title: str = "Drift history") -> str:
    """Share of drifted columns over time, one line per check."""
    fig = go.Figure()
    for name in sorted({r["check_name"] for r in rows}):
        points = sorted((r for r in rows if r["check_name"] == name), key=lambda r: r["at"])
        fig.add_scatter(x=[p["at"] for p in points], y=[p["share"] for p in points],
                        mode="lines+markers", name=name)
    fig.update_layout(height=380, margin={"t": 30}, yaxis_title="share of drifted columns",
                      yaxis_range=[0, 1])
    return _page(title, _figure(fig))
