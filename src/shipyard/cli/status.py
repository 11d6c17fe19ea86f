"""`shipyard status`: the live state of a running gateway (circuits, admission, traces)."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from typing import Annotated, Any

import orjson
import typer
from rich.markup import escape
from rich.table import Table

from shipyard.cli.common import console, fail
from shipyard.config import env

__all__ = ["status"]


def fetch_status(url: str, api_key: str, *, timeout: float = 5.0) -> dict[str, Any]:
    """GET {url}/v1/admin/status with a bearer key."""
    request = urllib.request.Request(url.rstrip("/") + "/v1/admin/status",
                                     headers={"authorization": f"Bearer {api_key}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return dict(orjson.loads(response.read()))
    except urllib.error.HTTPError as exc:
        with exc:
            body = orjson.loads(exc.read() or b"{}")
        message = body.get("error", {}).get("message", exc.code)
        raise fail(f"The gateway at '{url}' answered {exc.code}: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise fail(f"--url is '{url}', which cannot be reached ({exc}); is 'shipyard serve' "
                   "running there?") from None


def status(
    url: Annotated[str, typer.Option(help="Base URL of the gateway.")] = "http://127.0.0.1:8000",
    api_key_env: Annotated[str, typer.Option(
        help="Environment variable holding an API key.")] = "SHIPYARD_API_KEY",
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON.")] = False,
) -> None:
    """Show circuits, load, admission queues and the trace writer of a running gateway.

    Example: shipyard status --url http://127.0.0.1:8000
    """
    api_key = env.get(api_key_env)
    if not api_key:
        raise fail(f"Environment variable {api_key_env} is not set; export it with an API key "
                   "of the gateway, or name another one with --api-key-env.")
    data = fetch_status(url, api_key)
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
        return
    table = Table(title="Deployments", show_edge=False)
    for column in ("model", "deployment", "circuit", "in flight", "window req/fail",
                   "reopens in", "fallbacks"):
        table.add_column(column)
    colours = {"closed": "green", "half_open": "yellow", "open": "red"}
    for alias, model in data["models"].items():
        for d in model["deployments"]:
            circuit = d["circuit"]
            table.add_row(alias, d["deployment"], f"[{colours.get(circuit, 'white')}]{circuit}[/]",
                          str(d["in_flight"]),
                          f"{d['window_requests']}/{d['window_failures']}",
                          f"{d['retry_after_s']:.1f}s" if circuit == "open" else "",
                          ", ".join(model["fallbacks"]))
    console.print(table)
    _ray_table(data.get("services") or {})
    traces = data.get("traces")
    if traces:
        console.print(
            f"traces: {traces['queued']} queued, {traces['written']} written, "
            f"{traces['dropped']} dropped, {traces['spooled']} spooled, "
            f"{traces['replayed']} replayed, {traces['spool_lost'] + traces['lost']} lost")
    if data.get("draining"):
        console.print("[yellow]draining: not taking new requests[/]")


def _ray_table(services: dict[str, Any]) -> None:
    """Services on Ray Serve: each version's state, replicas (running / the autoscaler's
    target) and the newest scaling or deployment event (`--json` has the applications and
    each replica's process)."""
    rows = [(name, s["ray"]) for name, s in sorted(services.items()) if s.get("ray")]
    if not rows:
        return
    table = Table(title="Services on Ray", show_edge=False)
    for column in ("service", "version", "state", "replicas", "scale", "last event"):
        table.add_column(column)
    for name, ray in rows:
        events = ray.get("events") or []
        last = (f"{events[-1]['event']} {events[-1].get('detail', '')}".strip()
                if events else "")
        for v in ray["versions"] or [{"version": "-", "app": "-", "status": "not deployed",
                                      "replicas": {}, "target_replicas": None,
                                      "retiring": False}]:
            running = v["replicas"].get("RUNNING", 0)
            target = v["target_replicas"]
            state = v["status"] + (" (retiring)" if v["retiring"] else "")
            table.add_row(*(escape(cell) for cell in (
                name, str(v["version"]), state,
                f"{running}/{target if target is not None else '?'}",
                str(ray.get("scale") or ""), last)))
    console.print(table)
