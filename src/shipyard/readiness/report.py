"""Load test reports: JSON for machines, a self-contained HTML page with plots for people.

The HTML report embeds plotly.js inline (no CDN), so it opens offline and can be attached to a
ticket. plotly is the optional `report` extra: `pip install 'shipyard[report]'`.

>>> write_json(result, Path("loadtest.json"))  # doctest: +SKIP
>>> write_html(result, Path("loadtest.html"))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import html
import math
from pathlib import Path
from typing import Any

import orjson

from shipyard._version import __version__
from shipyard.errors import ConfigError
from shipyard.readiness.loadtest import LoadResult, SearchResult

__all__ = ["INSTALL_HINT", "ensure_html_support", "render_html", "to_dict", "write_html",
           "write_json"]

INSTALL_HINT = "pip install 'shipyard[report]'"
_COLORS = ["#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#1f77b4"]


def _run_dict(result: LoadResult) -> dict[str, Any]:
    data = dataclasses.asdict(result)
    data.update(error_count=result.error_count, error_rate=result.error_rate)
    return data


def to_dict(result: LoadResult | SearchResult) -> dict[str, Any]:
    """The report as plain JSON-able data (NaN, for "no measurement", becomes null in JSON)."""
    if isinstance(result, LoadResult):
        return {"kind": "run", "shipyard_version": __version__, **_run_dict(result)}
    return {
        "kind": "search", "shipyard_version": __version__,
        "slo": dataclasses.asdict(result.slo), "low": result.low, "high": result.high,
        "step_duration_s": result.step_duration_s, "max_rate": result.max_rate,
        "limited_by": result.limited_by,
        "probes": [{"rate": p.rate, "passed": p.passed, "reasons": p.reasons,
                    "result": _run_dict(p.result)} for p in result.probes],
    }


def write_json(result: LoadResult | SearchResult, path: Path) -> None:
    """Write `to_dict(result)` as indented JSON."""
    path.write_bytes(orjson.dumps(to_dict(result), option=orjson.OPT_INDENT_2) + b"\n")


def _plotly() -> Any:
    # plotly is an optional extra (its bundled JavaScript is several MB): the core install stays
    # small, so it is imported only when an HTML report is asked for.
    try:
        import plotly.graph_objects as go
    except ImportError:
        raise ConfigError(f"The HTML report (--html) needs plotly, which is not installed; "
                          f"install it with: {INSTALL_HINT}") from None
    return go


def ensure_html_support() -> None:
    """Raise `ConfigError` with the install line when plotly is missing (check before a run)."""
    _plotly()


# -- formatting -------------------------------------------------------------------------------
def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.1f} ms"


def _table(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                   for k, v in rows)
    return f"<table>{body}</table>"


def _summary(result: LoadResult) -> str:
    lat = result.latency
    rows = [
        ("target", f"POST {result.endpoint} ({result.target})"),
        ("profile", f"{result.profile}, {result.arrivals} arrivals, "
                    f"{result.duration_s:g} s{' (streaming)' if result.stream else ''}"),
        ("started", result.started_at),
        ("requests", f"{result.scheduled:,} scheduled, {result.sent:,} sent, "
                     f"{result.ok:,} ok, {result.error_count:,} errors "
                     f"({result.error_rate:.2%})"
                     + (f", {result.unfinished:,} unfinished (not waited for: the p99 "
                        "objective was already missed)" if result.unfinished else "")),
        ("rate", f"offered {result.offered_rate:,.1f}/s, achieved {result.throughput:,.1f}/s "
                 f"(ok {result.goodput:,.1f}/s) over {result.elapsed_s:.1f} s"),
        ("latency", f"p50 {_ms(lat.p50_ms)} · p90 {_ms(lat.p90_ms)} · p95 {_ms(lat.p95_ms)} · "
                    f"p99 {_ms(lat.p99_ms)} · max {_ms(lat.max_ms)}"),
    ]
    if result.ttft is not None:
        rows.append(("time to first token", f"p50 {_ms(result.ttft.p50_ms)} · "
                     f"p99 {_ms(result.ttft.p99_ms)}"))
    rows.append(("client send lag", f"p99 {_ms(result.send_lag.p99_ms)} · max "
                 f"{_ms(result.send_lag.max_ms)}" + (
                     " — the load generator was saturated too" if result.client_limited
                     else " (low: the client kept to the schedule)")))
    errors = ", ".join(f"{k}: {v:,}" for k, v in result.errors.items()) or "none"
    rows.append(("errors by kind", errors))
    return _table(rows)


def _run_figures(go: Any, result: LoadResult) -> list[Any]:
    seconds = [b.second for b in result.buckets]
    latency = go.Figure()
    for name, values in (("p50", [b.p50_ms for b in result.buckets]),
                         ("p90", [b.p90_ms for b in result.buckets]),
                         ("p99", [b.p99_ms for b in result.buckets])):
        latency.add_trace(go.Scatter(x=seconds, y=[None if math.isnan(v) else v for v in values],
                                     mode="lines+markers", name=name))
    latency.update_layout(title="Latency by scheduled second (ms, from scheduled send time)",
                          xaxis_title="second", yaxis_title="ms")
    rate = go.Figure()
    rate.add_trace(go.Scatter(x=seconds, y=[b.offered_rate for b in result.buckets],
                              mode="lines", name="offered rate", line={"dash": "dash"}))
    rate.add_trace(go.Scatter(x=seconds, y=[b.completed for b in result.buckets],
                              mode="lines+markers", name="answers completed"))
    rate.add_trace(go.Scatter(x=seconds, y=[b.ok for b in result.buckets],
                              mode="lines+markers", name="ok (by scheduled second)"))
    rate.update_layout(title="Throughput: offered vs achieved (requests per second)",
                       xaxis_title="second", yaxis_title="requests/s")
    errors = go.Figure()
    kinds = sorted({k for b in result.buckets for k in b.error_kinds})
    for i, kind in enumerate(kinds):
        errors.add_trace(go.Bar(x=seconds, y=[b.error_kinds.get(kind, 0) for b in result.buckets],
                                name=kind, marker_color=_COLORS[i % len(_COLORS)]))
    errors.update_layout(barmode="stack", xaxis_title="second", yaxis_title="errors",
                         title="Errors by kind per scheduled second" if kinds else
                         "Errors by kind per scheduled second (none)")
    return [latency, rate, errors]


def _search_figures(go: Any, result: SearchResult) -> list[Any]:
    probes = sorted(result.probes, key=lambda p: p.rate)
    colors = ["#2ca02c" if p.passed else "#d62728" for p in probes]
    text = ["pass" if p.passed else "fail: " + "; ".join(p.reasons) for p in probes]
    p99 = go.Figure()
    p99.add_trace(go.Scatter(
        x=[p.rate for p in probes],
        y=[None if math.isnan(p.result.latency.p99_ms) else p.result.latency.p99_ms
           for p in probes],
        mode="lines+markers", name="p99", marker={"color": colors, "size": 10}, text=text))
    p99.add_hline(y=result.slo.p99_ms, line_dash="dash", line_color="#d62728",
                  annotation_text=f"SLO p99 < {result.slo.p99_ms:g} ms")
    if result.max_rate is not None:
        p99.add_vline(x=result.max_rate, line_dash="dot", line_color="#2ca02c",
                      annotation_text=f"max rate {result.max_rate:g}/s")
    p99.update_layout(title="Offered rate vs p99 latency", xaxis_title="offered requests/s",
                      yaxis_title="p99 ms")
    err = go.Figure()
    err.add_trace(go.Scatter(x=[p.rate for p in probes],
                             y=[p.result.error_rate * 100 for p in probes],
                             mode="lines+markers", name="error rate",
                             marker={"color": colors, "size": 10}, text=text))
    err.add_hline(y=result.slo.error_rate * 100, line_dash="dash", line_color="#d62728",
                  annotation_text=f"SLO errors < {result.slo.error_rate:.2%}")
    err.update_layout(title="Offered rate vs error rate", xaxis_title="offered requests/s",
                      yaxis_title="errors %")
    return [p99, err]


def _search_summary(result: SearchResult) -> str:
    found = ("none: even the lowest rate missed the SLO" if result.max_rate is None
             else f"{result.max_rate:g} requests/s")
    limited = {"slo": "the SLO (a higher rate missed it)",
               "high": "the upper bound (raise --high to search further)",
               "low": "the lower bound (lower --low)"}[result.limited_by]
    rows = [("max sustainable rate", found), ("limited by", limited),
            ("SLO", f"p99 < {result.slo.p99_ms:g} ms and errors < {result.slo.error_rate:.2%}"),
            ("search", f"{len(result.probes)} probes of {result.step_duration_s:g} s "
                       f"between {result.low:g} and {result.high:g}/s")]
    head = ("<tr><th>#</th><th>rate/s</th><th>verdict</th><th>achieved/s</th><th>p50</th>"
            "<th>p99</th><th>errors</th><th>send lag p99</th></tr>")
    lines = "".join(
        f"<tr><td>{i}</td><td>{p.rate:g}</td>"
        f"<td class='{'pass' if p.passed else 'fail'}'>"
        f"{'pass' if p.passed else html.escape('fail: ' + '; '.join(p.reasons))}</td>"
        f"<td>{p.result.throughput:,.1f}</td><td>{_ms(p.result.latency.p50_ms)}</td>"
        f"<td>{_ms(p.result.latency.p99_ms)}</td><td>{p.result.error_rate:.2%}</td>"
        f"<td class='{'fail' if p.result.client_limited else ''}'>"
        f"{_ms(p.result.send_lag.p99_ms)}</td></tr>"
        for i, p in enumerate(result.probes, 1))
    return _table(rows) + f"<h2>Probes, in order</h2><table class='grid'>{head}{lines}</table>"


_STYLE = """body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1rem 0}th,td{padding:.3rem .8rem;text-align:left;
border-bottom:1px solid #ddd;vertical-align:top}th{color:#555;font-weight:600}
.pass{color:#2ca02c}.fail{color:#d62728}.note{color:#666;font-size:.9rem}"""

_NOTE = ("Latency is measured from each request's <em>scheduled</em> send time (open loop), so "
         "queueing in the target or in the client is included: coordinated omission cannot hide "
         "it. Requests not sent because the client's in-flight cap was reached are counted as "
         "<code>client_overload</code> errors.")


def render_html(result: LoadResult | SearchResult) -> str:
    """The report as one self-contained HTML page (plotly.js inline, nothing fetched)."""
    go = _plotly()
    if isinstance(result, SearchResult):
        title = "Shipyard load test: maximum sustainable rate"
        sections = _search_summary(result)
        figures = _search_figures(go, result)
        best = result.best
        if best is not None:
            sections_after = (f"<h2>Best passing probe: {best.rate:g}/s</h2>"
                              + _summary(best.result))
            figures_after = _run_figures(go, best.result)
        else:
            sections_after, figures_after = "", []
    else:
        title = "Shipyard load test"
        sections = _summary(result)
        figures = _run_figures(go, result)
        sections_after, figures_after = "", []
    plots = []
    for i, fig in enumerate(figures + figures_after):
        fig.update_layout(template="plotly_white", height=380, margin={"t": 50, "b": 40})
        # The first figure carries plotly.js inline; the others reuse it.
        plots.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0),
                                 config={"displaylogo": False}))
    split = len(figures)
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{title}</h1>{sections}"
        f"<p class='note'>{_NOTE}</p>{''.join(plots[:split])}{sections_after}"
        f"{''.join(plots[split:])}<p class='note'>shipyard {__version__}</p></body></html>\n")


def write_html(result: LoadResult | SearchResult, path: Path) -> None:
    """Write `render_html(result)` to `path`."""
    path.write_text(render_html(result), encoding="utf-8")
