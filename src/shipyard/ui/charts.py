"""Plotly figures as plain dicts (data + layout), drawn in the browser by the bundled plotly.js.

Figures are built by hand rather than with `plotly.graph_objects`: a page needs a handful of
simple traces, and skipping the validation layer keeps server time per page in microseconds.

>>> fig = line_chart("Requests", ["2026-11-27T10:00:00Z"], {"requests": [3]})
>>> fig["data"][0]["y"]
[3]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

__all__ = ["bar_chart", "figure_json", "line_chart", "waterfall_chart"]

Figure = dict[str, Any]
_FONT = {"family": "system-ui, sans-serif", "size": 12}


def _layout(title: str, y_title: str = "", **extra: Any) -> dict[str, Any]:
    return {"title": {"text": title, "font": {"size": 14}}, "font": _FONT, "height": 260,
            "margin": {"l": 50, "r": 20, "t": 40, "b": 40}, "showlegend": True,
            "legend": {"orientation": "h", "y": -0.2},
            "yaxis": {"title": {"text": y_title}, "rangemode": "tozero"}, **extra}


def line_chart(title: str, x: Sequence[Any], series: Mapping[str, Sequence[Any]], *,
               y_title: str = "", kind: str = "lines") -> Figure:
    """One line per entry of `series`, sharing `x` (None values leave gaps)."""
    data = [{"type": "scatter", "mode": kind, "name": name, "x": list(x), "y": list(values)}
            for name, values in series.items()]
    return {"data": data, "layout": _layout(title, y_title)}


def bar_chart(title: str, x: Sequence[Any], series: Mapping[str, Sequence[Any]], *,
              y_title: str = "", stacked: bool = True) -> Figure:
    data = [{"type": "bar", "name": name, "x": list(x), "y": list(values)}
            for name, values in series.items()]
    return {"data": data, "layout": _layout(title, y_title,
                                            barmode="stack" if stacked else "group")}


def waterfall_chart(spans: Sequence[Any]) -> Figure:
    """Horizontal bars from each span's start to its end (ms), first span on top."""
    names = [f"{'  ' * s.depth}{s.name}" for s in spans]
    colors = ["#d9534f" if s.status == "error" else "#4a7bd0" for s in spans]
    data = [{"type": "bar", "orientation": "h", "y": names, "x": [s.duration_ms for s in spans],
             "base": [s.start_ms for s in spans], "marker": {"color": colors},
             "hovertext": [s.detail for s in spans], "name": "spans"}]
    layout = _layout("Waterfall (ms)", "", height=max(160, 40 + 32 * len(spans)),
                     showlegend=False)
    layout["yaxis"] = {"autorange": "reversed", "automargin": True}
    layout["xaxis"] = {"title": {"text": "ms since the request started"}, "rangemode": "tozero"}
    return {"data": data, "layout": layout}


def figure_json(figure: Figure) -> str:
    """JSON safe to embed in a `<script type="application/json">` element."""
    return orjson.dumps(figure, option=orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z).decode() \
        .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
