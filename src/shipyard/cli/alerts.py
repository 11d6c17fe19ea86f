"""`shipyard alerts list|test`: read alerts and their history; test channels and rules."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.markup import escape
from rich.table import Table

from shipyard.cli.common import console, fail, open_store, parse_since, resolve_config

app = typer.Typer(help="Alerts and SLOs: list current and past alerts, test channels and rules.",
                  no_args_is_help=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c",
                      help="shipyard.yaml (default: $SHIPYARD_CONFIG or ./shipyard.yaml).")]
StoreOpt = Annotated[str | None, typer.Option("--store-url",
                     help="Use this store instead of the config's store.url.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _time(value: Any) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else ""


@app.command("list")
def list_(
    config: ConfigOpt = None,
    store_url: StoreOpt = None,
    state: Annotated[str | None, typer.Option(
        help="Only alerts in this state: open (pending or firing), pending, firing, "
        "resolved.")] = None,
    since: Annotated[str | None, typer.Option(
        help="Only alerts started since: 15m, 2h, 7d or an ISO time.")] = None,
    history_: Annotated[bool, typer.Option("--history", help="Also print each alert's "
                                           "events (pending, firing, notified, resolved).")
                        ] = False,
    limit: Annotated[int, typer.Option(help="How many alerts, newest first.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List current (pending, firing) and past (resolved) alerts, newest first."""
    from shipyard.monitor import history

    if state not in (None, "open", "pending", "firing", "resolved"):
        raise fail(f"--state is '{state}'; use open, pending, firing or resolved.")
    engine = open_store(config, store_url, migrate=True)
    try:
        rows = history.list_alerts(engine, state=state, since=parse_since(since), limit=limit)
        events = history.alert_events_of(engine, [r["id"] for r in rows])
    finally:
        engine.dispose()
    if as_json:
        for row in rows:
            sys.stdout.buffer.write(orjson.dumps({**row, "events": events[row["id"]]}) + b"\n")
        return
    if not rows:
        console.print("No alerts match.")
        return
    table = Table(show_edge=False, pad_edge=False)
    for name in ("state", "severity", "alert", "value", "started", "fired", "resolved", "id"):
        table.add_column(name, no_wrap=True)
    for r in rows:
        style = {"firing": "bold red", "pending": "yellow"}.get(r["state"], "green")
        value = "" if r["value"] is None else f"{r['value']:.4g}"
        table.add_row(f"[{style}]{r['state']}[/]", r["severity"], escape(r["key"]), value,
                      _time(r["started_at"]), _time(r["fired_at"]), _time(r["resolved_at"]),
                      r["id"])
    console.print(table)
    if history_:
        for r in rows:
            console.print(f"\n[bold]{escape(r['key'])}[/] {r['id']}  {escape(r['url'])}",
                          highlight=False, soft_wrap=True)
            if r["runbook"]:
                console.print(f"  runbook: {escape(r['runbook'])}", highlight=False,
                              soft_wrap=True)
            for e in events[r["id"]]:
                details = " ".join(f"{k}={v}" for k, v in (e["details"] or {}).items())
                console.print(f"  {_time(e['at'])}  {e['event']:<16} {escape(details)}",
                              highlight=False)


@app.command()
def test(
    config: ConfigOpt = None,
    evaluate: Annotated[bool, typer.Option(
        "--evaluate", help="Instead of notifying: evaluate every rule and SLO once against "
        "the store and print what would fire (nothing is stored or sent).")] = False,
    channel: Annotated[list[str] | None, typer.Option(
        help="Only this channel (repeatable).")] = None,
) -> None:
    """Send a test notification through each configured channel (exit 1 if one fails)."""
    import asyncio

    from shipyard.monitor.alerts import AlertEvaluator
    from shipyard.store import create_store_engine

    _, cfg = resolve_config(config, secrets=not evaluate)  # evaluating sends nothing
    if evaluate:
        _evaluate(cfg)
        return
    if not cfg.alerts.channels:
        raise fail("No channels are configured; add one under alerts.channels (see "
                   "docs/alerts.md).")
    engine = create_store_engine(cfg.store.url)
    try:
        evaluator = AlertEvaluator(cfg, engine)
        if channel:
            unknown = sorted(set(channel) - set(evaluator.channels))
            if unknown:
                raise fail(f"--channel names {', '.join(unknown)}, which is not a channel "
                           f"(known: {', '.join(evaluator.channels)}).")
            evaluator.channels = {n: c for n, c in evaluator.channels.items() if n in channel}
        results = asyncio.run(evaluator.send_test())
    finally:
        engine.dispose()
    for name, ok in results.items():
        mark = "[green]✓ delivered[/]" if ok else "[bold red]✗ failed[/] (see the log above)"
        console.print(f"{escape(name)}: {mark}", highlight=False)
    if not all(results.values()):
        raise typer.Exit(1)


def _evaluate(cfg: Any) -> None:
    from shipyard.monitor.alerts import definitions, observe
    from shipyard.store import create_store_engine, migrate

    defs = definitions(cfg)
    if not defs:
        raise fail("No alert rules or SLOs are configured; add them under alerts.rules or "
                   "slos (see docs/alerts.md).")
    engine = create_store_engine(cfg.store.url)
    try:
        migrate(engine)
        observations = observe(engine, defs, datetime.now(UTC),
                               time_scale=cfg.alerts.time_scale)
    finally:
        engine.dispose()
    table = Table(show_edge=False, pad_edge=False)
    for name in ("alert", "severity", "would fire", "value", "detail"):
        table.add_column(name, overflow="fold")
    for obs in observations:
        d = obs.definition
        verdict = {True: "[bold red]yes[/]", False: "no", None: "[yellow]error[/]"}
        table.add_row(escape(d.key), d.severity, verdict[obs.active],
                      "" if obs.value is None else f"{obs.value:.4g}", escape(obs.detail))
    console.print(table)
    firing = sum(o.active is True for o in observations)
    console.print(f"{firing} of {len(observations)} would fire now"
                  + (" (after their for_duration)." if firing else "."), highlight=False)
