"""The readiness report: JSON for machines, one self-contained HTML page for people (plotly.js
inline, nothing fetched: it opens offline and can be attached to a ticket).

>>> write_json(report, Path("readiness.json"))  # doctest: +SKIP
>>> write_html(report, Path("readiness.html"))  # doctest: +SKIP
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import orjson

from shipyard._version import __version__
from shipyard.readiness.check.findings import SECTIONS
from shipyard.readiness.report import _plotly

__all__ = ["render_html", "write_html", "write_json"]

_COLOR = {"pass": "#2ca02c", "warn": "#ff7f0e", "fail": "#d62728", "skip": "#999999"}
_STYLE = """body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1150px;color:#222}
table{border-collapse:collapse;margin:.8rem 0;width:100%}th,td{padding:.35rem .7rem;
text-align:left;border-bottom:1px solid #ddd;vertical-align:top}th{color:#555;font-weight:600}
.badge{display:inline-block;padding:.1rem .5rem;border-radius:.8rem;color:#fff;font-size:.85rem;
font-weight:600}.score{font-size:2.6rem;font-weight:700}.note{color:#666;font-size:.9rem}
details summary{cursor:pointer;color:#555}pre{white-space:pre-wrap;font-size:.8rem;
background:#f6f6f6;padding:.5rem}section.challenge{border-top:2px solid #eee;margin-top:1.5rem}
.fix{color:#444}.grid{display:grid;grid-template-columns:1fr 1fr;gap:1rem}"""


def write_json(data: dict[str, Any], path: Path) -> None:
    """Write the report (`CheckReport.to_dict()`) as indented JSON."""
    path.write_bytes(orjson.dumps(_finite(data), option=orjson.OPT_INDENT_2) + b"\n")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _badge(status: str) -> str:
    return (f"<span class='badge {status}' style='background:{_COLOR.get(status, '#999')}'>"
            f"{html.escape(status)}</span>")


def _score(value: Any) -> str:
    return "-" if value is None else f"{value:g}"


def _figures(go: Any, data: dict[str, Any]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    sections = data["sections"]
    scores = go.Figure(go.Bar(
        x=[s["title"] for s in sections], y=[s["score"] or 0 for s in sections],
        marker_color=[_COLOR[s["status"]] for s in sections],
        text=[_score(s["score"]) for s in sections], textposition="outside"))
    if data.get("score") is not None:
        scores.add_hline(y=data["score"], line_dash="dash",
                         annotation_text=f"overall {data['score']:g}")
    scores.update_layout(title="Score per challenge (0-100)", yaxis_range=[0, 110])
    out.append(("plot-scores", scores))
    plots = data.get("plots") or {}
    load = plots.get("loadtest") or []
    if load:
        probes = sorted(load, key=lambda p: p["rate"])
        fig = go.Figure(go.Scatter(
            x=[p["rate"] for p in probes],
            y=[p["p99_ms"] if p["p99_ms"] is not None and math.isfinite(p["p99_ms"]) else None
               for p in probes],
            mode="lines+markers", name="p99",
            marker={"size": 10, "color": [_COLOR["pass" if p["passed"] else "fail"]
                                          for p in probes]}))
        slo = plots.get("slo") or {}
        if slo.get("p99_ms"):
            fig.add_hline(y=slo["p99_ms"], line_dash="dash", line_color=_COLOR["fail"],
                          annotation_text=f"SLO p99 {slo['p99_ms']:g} ms")
        fig.update_layout(title="Load: offered rate vs p99 latency (green: met the SLO)",
                          xaxis_title="requests/s", yaxis_title="p99 ms")
        out.append(("plot-loadtest", fig))
    chaos = plots.get("chaos") or []
    if chaos:
        fig = go.Figure()
        for phase, color in (("baseline", "#1f77b4"), ("fault", _COLOR["fail"]),
                             ("recovery", _COLOR["pass"])):
            fig.add_bar(name=phase, x=[c["name"] for c in chaos],
                        y=[c[phase] for c in chaos], marker_color=color)
        fig.update_layout(title="Chaos: success rate before, during and after each fault",
                          barmode="group", yaxis_tickformat=".0%", yaxis_range=[0, 1.05])
        out.append(("plot-chaos", fig))
    red = plots.get("redteam") or {}
    if red:
        fig = go.Figure()
        fig.add_bar(name="attacks stopped by a guard", x=list(red["attacks"]),
                    y=list(red["attacks"].values()), marker_color=_COLOR["pass"])
        fig.add_bar(name="benign wrongly blocked", x=[f"benign: {k}" for k in red["benign"]],
                    y=list(red["benign"].values()), marker_color=_COLOR["fail"])
        fig.update_layout(title="Red team: detection per attack category, false positives "
                          "per benign kind", yaxis_tickformat=".0%", yaxis_range=[0, 1.05],
                          margin={"b": 130})
        out.append(("plot-redteam", fig))
    return out


def _evidence(finding: dict[str, Any]) -> str:
    parts = []
    if finding.get("link"):
        link = html.escape(finding["link"])
        parts.append(f"<a href='{link}'>{link}</a>")
    if finding.get("evidence"):
        text = orjson.dumps(finding["evidence"], option=orjson.OPT_INDENT_2).decode()
        parts.append(f"<details><summary>evidence</summary><pre>{html.escape(text)}</pre>"
                     "</details>")
    return " ".join(parts)


def _section(section: dict[str, Any], about: str) -> str:
    rows = "".join(
        f"<tr class='finding {f['status']}' data-id='{html.escape(f['id'])}'>"
        f"<td>{_badge(f['status'])}</td><td>{html.escape(f['summary'])}</td>"
        f"<td class='fix'>{html.escape(f['fix'])}</td><td>{_evidence(f)}</td></tr>"
        for f in section["findings"])
    counts = ", ".join(f"{n} {s}" for s, n in section["counts"].items() if n)
    reports = " · ".join(f"<a href='{html.escape(v)}'>{html.escape(k)}</a>"
                         for k, v in section["reports"].items())
    return (f"<section class='challenge' id='section-{section['key']}'>"
            f"<h2>{html.escape(section['title'])}: <span class='section-score'>"
            f"{_score(section['score'])}</span> {_badge(section['status'])}</h2>"
            f"<p class='note'>{html.escape(about)} — {counts or 'nothing measured'}; "
            f"{section['seconds']:g} s{'; sub-reports: ' + reports if reports else ''}</p>"
            "<table><tr><th></th><th>finding</th><th>fix</th><th>evidence</th></tr>"
            f"{rows}</table></section>")


def _runbooks(items: list[dict[str, Any]]) -> str:
    if not items:
        return ("<h2>Runbooks</h2><p class='note'>No alert rules or SLOs are configured, so "
                "there is no runbook to generate.</p>")
    blocks = []
    for r in items:
        steps = "".join(f"<li>{html.escape(s)}</li>" for s in r["steps"])
        own = (f"<p>Team's runbook: {html.escape(r['own'])}</p>" if r.get("own") else "")
        blocks.append(
            f"<div class='runbook' id='runbook-{html.escape(r['name'])}'>"
            f"<h3>{html.escape(r['name'])} <span class='note'>({html.escape(r['kind'])}, "
            f"{html.escape(str(r['severity']))})</span></h3><p><b>What it means:</b> "
            f"{html.escape(r['meaning'])}</p>{own}<ol>{steps}</ol></div>")
    return "<h2>Runbooks</h2>" + "".join(blocks)


def render_html(data: dict[str, Any]) -> str:
    """The report (`CheckReport.to_dict()`) as one self-contained HTML page."""
    go = _plotly()
    about = {key: text for key, _, text in SECTIONS}
    plots = []
    for i, (div, fig) in enumerate(_figures(go, data)):
        fig.update_layout(template="plotly_white", height=360, margin={"t": 50})
        plots.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0), div_id=div,
                                 config={"displaylogo": False}))
    gate = data["gate"]
    gate_html = ("<p class='note'>No gate given (--gate).</p>" if not gate["given"] else
                 f"<p id='gate'>Gate {_badge('pass' if gate['passed'] else 'fail')} "
                 + html.escape("; ".join(gate["violations"]) or "every threshold met") + "</p>")
    summary = "".join(
        f"<tr><td><a href='#section-{s['key']}'>{html.escape(s['title'])}</a></td>"
        f"<td>{_score(s['score'])}</td><td>{_badge(s['status'])}</td>"
        f"<td>{s['counts']['pass']} pass, {s['counts']['warn']} warn, "
        f"{s['counts']['fail']} fail, {s['counts']['skip']} skipped</td></tr>"
        for s in data["sections"])
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in data.get("notes") or [])
    title = f"Shipyard readiness: {html.escape(data['target'])}"
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{title}</h1>"
        f"<p><span class='score' id='overall-score'>{_score(data['score'])}</span> / 100 "
        f"{_badge(data['status'])}</p>"
        f"<p class='note'>{html.escape(data['url'])} · config {html.escape(data['config'])} · "
        f"{html.escape(data['mode'])} run started {html.escape(data['started_at'])}, "
        f"{data['seconds']:g} s</p>{gate_html}"
        "<table><tr><th>challenge</th><th>score</th><th>status</th><th>findings</th></tr>"
        f"{summary}</table>{''.join(plots)}"
        + "".join(_section(s, about.get(s["key"], "")) for s in data["sections"])
        + _runbooks(data.get("runbooks") or [])
        + (f"<h2>Notes</h2><ul>{notes}</ul>" if notes else "")
        + "<p class='note'>Scores: the weighted share of a challenge's decided findings that "
        "passed (a warning counts half); skipped findings count for nothing. Overall: the mean "
        f"of the challenges. shipyard {__version__}</p></body></html>\n")


def write_html(data: dict[str, Any], path: Path) -> None:
    """Write `render_html(data)` to `path`."""
    path.write_text(render_html(data), encoding="utf-8")
