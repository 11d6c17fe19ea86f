"""`shipyard traces list|show|tail|export|purge|rollup`: read traces from the store, purge old
ones, rebuild rollups."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.table import Table

from shipyard.cli.common import console, fail, open_store, parse_since, resolve_config
from shipyard.cli.keys import actor
from shipyard.errors import ShipyardError
from shipyard.security.roles import PLATFORM_TENANT

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from shipyard.store import TraceFilter

app = typer.Typer(help="Read request traces from the store.", no_args_is_help=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c",
                      help="shipyard.yaml (default: $SHIPYARD_CONFIG or ./shipyard.yaml).")]
StoreOpt = Annotated[str | None, typer.Option("--store-url",
                     help="Read this store instead of the config's store.url.")]
def _jsonable(row: dict[str, Any]) -> bytes:
    return orjson.dumps(row, option=orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z)


def _filters(service: str | None, model: str | None, status: int | None, errors: bool,
             since: str | None, text: str | None) -> TraceFilter:
    from shipyard.store import TraceFilter

    return TraceFilter(service=service, model=model, status=status, errors_only=errors,
                       since=parse_since(since), text=text)


def _table(rows: list[dict[str, Any]]) -> Table:
    table = Table(show_edge=False, pad_edge=False)
    for name in ("time", "trace id", "route", "service", "status", "total ms", "upstream ms",
                 "tokens", "error"):
        table.add_column(name, no_wrap=name != "error")
    for r in rows:
        status = str(r["status"])
        style = "red" if r["status"] >= 500 else "yellow" if r["status"] >= 400 else "green"
        tokens = "" if r["total_tokens"] is None else (
            f"{r['total_tokens']}{'~' if r['tokens_estimated'] else ''}")
        table.add_row(
            r["started_at"].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"), r["id"][:12],
            r["route"], r["service"] or "-", f"[{style}]{status}[/]", f"{r['total_ms']:.1f}",
            "" if r["upstream_ms"] is None else f"{r['upstream_ms']:.1f}", tokens,
            (r["error_type"] or "") if r["status"] >= 400 else "")
    return table


@app.command("list")
def list_(
    config: ConfigOpt = None,
    store_url: StoreOpt = None,
    limit: Annotated[int, typer.Option(help="How many traces, newest first.")] = 20,
    service: Annotated[str | None, typer.Option(help="Only this service or model alias.")] = None,
    model: Annotated[str | None, typer.Option(help="Only this model alias.")] = None,
    status: Annotated[int | None, typer.Option(help="Only this HTTP status.")] = None,
    errors: Annotated[bool, typer.Option("--errors", help="Only failed requests.")] = False,
    since: Annotated[str | None, typer.Option(help="Only since: 15m, 2h, 7d or ISO time.")] = None,
    text: Annotated[str | None, typer.Option(help="Only traces containing this text.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """List recent traces (newest first). Tokens marked ~ are estimates."""
    from shipyard.store import iter_traces

    engine = open_store(config, store_url)
    rows = list(iter_traces(engine, _filters(service, model, status, errors, since, text),
                            limit=limit))
    if as_json:
        for row in rows:
            sys.stdout.buffer.write(_jsonable(row) + b"\n")
        return
    if not rows:
        console.print("No traces match.")
        return
    console.print(_table(rows))


@app.command()
def show(
    trace_id: Annotated[str, typer.Argument(help="A trace id or a request id.")],
    config: ConfigOpt = None,
    store_url: StoreOpt = None,
    with_spans: Annotated[bool, typer.Option(
        "--spans", help="Print the span waterfall (stages, upstream attempts) instead.")] = False,
) -> None:
    """Show one trace in full (JSON), or with --spans its span waterfall."""
    from shipyard.store import get_spans, get_trace, iter_traces

    engine = open_store(config, store_url)
    row = get_trace(engine, trace_id)
    if row is None:
        # Short ids as printed by `traces list` work too.
        for candidate in iter_traces(engine, limit=5000):
            if candidate["id"].startswith(trace_id):
                row = candidate
                break
    if row is None:
        raise fail(f"No trace has id or request id '{trace_id}'; list them with "
                   "'shipyard traces list'.")
    if with_spans:
        console.print(_waterfall(get_spans(engine, row["id"])))
        return
    sys.stdout.buffer.write(orjson.dumps(row, option=orjson.OPT_INDENT_2 | orjson.OPT_UTC_Z)
                            + b"\n")


def _waterfall(spans: list[dict[str, Any]]) -> Table:
    """Spans as an indented tree with their offsets, durations and errors."""
    children: dict[str | None, list[dict[str, Any]]] = {}
    ids = {s["span_id"] for s in spans}
    for s in spans:
        parent = s["parent_id"] if s["parent_id"] in ids else None
        children.setdefault(parent, []).append(s)
    table = Table(show_edge=False, pad_edge=False)
    for name in ("span", "start ms", "duration ms", "error", "attributes"):
        table.add_column(name, no_wrap=name != "attributes")

    def add(parent: str | None, depth: int) -> None:
        for s in sorted(children.get(parent, []), key=lambda x: x["start_ms"]):
            attributes = " ".join(f"{k.removeprefix('shipyard.')}={v}"
                                  for k, v in s["attributes"].items())
            table.add_row("  " * depth + s["name"], f"{s['start_ms']:.2f}",
                          f"{s['duration_ms']:.2f}", s["error"] or "", attributes)
            add(s["span_id"], depth + 1)

    add(None, 0)
    return table


@app.command()
def tail(
    config: ConfigOpt = None,
    store_url: StoreOpt = None,
    interval: Annotated[float, typer.Option(help="Seconds between polls.")] = 1.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """Follow new traces as they are written (Ctrl-C to stop)."""
    from shipyard.store import iter_traces

    engine = open_store(config, store_url)
    last = datetime.now(UTC) - timedelta(seconds=2)
    seen: set[str] = set()
    try:
        while True:
            rows = list(iter_traces(engine, None, limit=1000, newest_first=False,
                                    after=last - timedelta(seconds=5)))
            fresh = [r for r in rows if r["id"] not in seen]
            for row in fresh:
                seen.add(row["id"])
                if as_json:
                    sys.stdout.buffer.write(_jsonable(row) + b"\n")
                    sys.stdout.flush()
            if fresh:
                last = max(r["started_at"] for r in fresh)
                if not as_json:
                    console.print(_table(fresh))
            if len(seen) > 100_000:
                seen = {r["id"] for r in fresh}
            time.sleep(interval)
    except KeyboardInterrupt:
        return


@app.command()
def export(
    config: ConfigOpt = None,
    store_url: StoreOpt = None,
    fmt: Annotated[str, typer.Option("--format", help="Output format (jsonl).")] = "jsonl",
    output: Annotated[Path | None, typer.Option("--output", "-o",
                      help="Write to this file instead of stdout.")] = None,
    service: Annotated[str | None, typer.Option(help="Only this service or model alias.")] = None,
    since: Annotated[str | None, typer.Option(help="Only since: 15m, 2h, 7d or ISO time.")] = None,
    errors: Annotated[bool, typer.Option("--errors", help="Only failed requests.")] = False,
) -> None:
    """Export traces, oldest first, one JSON object per line."""
    from shipyard.store import iter_traces

    if fmt != "jsonl":
        raise fail(f"--format is '{fmt}'; the supported format is jsonl.")
    engine = open_store(config, store_url, migrate=True)  # migrated: the export is audited
    filters = _filters(service, None, None, errors, since, None)
    rows = iter_traces(engine, filters, limit=None, newest_first=False)
    count = 0
    details = {"format": fmt, "service": service, "errors": errors,
               "since": None if filters.since is None else filters.since.isoformat()}
    target = str(output.resolve()) if output else "stdout"
    try:
        with (output.open("wb") if output else open(sys.stdout.fileno(), "wb",
                                                      closefd=False)) as out:
            for row in rows:
                out.write(_jsonable(row) + b"\n")
                count += 1
    except BaseException:
        _audit_export(engine, target, {**details, "rows": count}, "error")
        raise
    problem = _audit_export(engine, target, {**details, "rows": count}, "ok")
    if problem:
        raise fail(f"Exported {count} traces to {target}, but the export could not be recorded "
                   f"in the audit log ({problem}); check the store and record it by hand.")
    if output:
        console.print(f"Exported {count} traces to {output}.")


@app.command("purge")
def purge_(
    config: ConfigOpt = None,
    store_url: StoreOpt = None,
    days: Annotated[float | None, typer.Option(
        help="Delete traces older than this many days (replaces traces.retention.days; "
        "per-tenant overrides still apply).")] = None,
    payload_days: Annotated[float | None, typer.Option(
        help="Clear request and response bodies older than this many days (replaces "
        "traces.retention.payload_days).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run",
                       help="Count what would go; change nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Apply the retention policy now: clear old payloads, delete old traces and their spans.

    Uses `traces.retention` from the config (the gateway also runs it in the background every
    `interval_s`). Works in small batches, so a running gateway keeps writing meanwhile.
    """
    from shipyard.config.traces import RetentionConfig
    from shipyard.store import purge

    policy = RetentionConfig()
    if store_url is None or config is not None:
        _, cfg = resolve_config(config, secrets=False)
        policy = cfg.traces.retention
    changes = {k: v for k, v in (("days", days), ("payload_days", payload_days))
               if v is not None}
    for name, value in changes.items():
        if value <= 0:
            raise fail(f"--{name.replace('_', '-')} is {value:g}; it must be a positive "
                       "number of days.")
    if changes:
        policy = policy.model_copy(update=changes)
    if policy.days is None and policy.payload_days is None and not policy.tenants:
        raise fail("No retention is configured; set traces.retention.days or "
                   "traces.retention.payload_days in shipyard.yaml, or pass --days or "
                   "--payload-days.")
    engine = open_store(config, store_url, migrate=not dry_run)
    result = purge(engine, policy, dry_run=dry_run)
    if not dry_run:
        problem = _audit(engine, "traces.purge", "store", {
            "traces": result.traces, "spans": result.spans, "payloads": result.payloads,
            "days": policy.days, "payload_days": policy.payload_days}, "ok")
        if problem:
            raise fail(f"The purge ran, but it could not be recorded in the audit log "
                       f"({problem}).")
    if as_json:
        sys.stdout.buffer.write(orjson.dumps({
            "dry_run": dry_run, "traces": result.traces, "spans": result.spans,
            "payloads": result.payloads, "scopes": result.scopes}) + b"\n")
        return
    table = Table(show_edge=False, pad_edge=False)
    for name in ("scope", "days", "payload days", "traces", "span records", "payloads"):
        table.add_column(name)
    for scope in result.scopes:
        table.add_row(scope["scope"], _days(scope["days"]), _days(scope["payload_days"]),
                      str(scope["traces"]), str(scope["spans"]), str(scope["payloads"]))
    console.print(table)
    verb = "Would delete" if dry_run else "Deleted"
    console.print(f"{verb} {result.traces} traces ({result.spans} span records) and "
                  f"{'would clear' if dry_run else 'cleared'} {result.payloads} payloads.")


def _days(value: float | None) -> str:
    return "keep" if value is None else f"{value:g}"


def _audit_export(engine: Engine, target: str, details: dict[str, Any],
                  outcome: str) -> str | None:
    """Record the export (a data export is a control-plane action); the reason when it fails."""
    return _audit(engine, "traces.export", target, details, outcome)


def _audit(engine: Engine, action: str, target: str, details: dict[str, Any],
           outcome: str) -> str | None:
    """Record a control-plane action on traces; the reason when that fails."""
    from shipyard.security.audit import AuditLog

    try:
        AuditLog(engine).append(tenant_id=PLATFORM_TENANT, actor=actor(), action=action,
                                target=target, outcome=outcome, details=details)
    except ShipyardError as exc:
        return exc.message
    except Exception as exc:  # the store's own error: report it, do not hide the export
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return None


@app.command()
def rollup(
    config: ConfigOpt = None,
    store_url: StoreOpt = None,
    since: Annotated[str | None, typer.Option(
        help="Only minutes since: 15m, 2h, 7d or ISO time (default: all traces).")] = None,
) -> None:
    """Rebuild the per-minute rollups the dashboard reads, from the stored traces.

    The trace writer keeps rollups current; run this once after upgrading a store that held
    traces before rollups existed, or after restoring traces from a backup.
    """
    from shipyard.store.rollups import rebuild

    engine = open_store(config, store_url, migrate=True)
    read = rebuild(engine, since=parse_since(since))
    console.print(f"Rolled up {read} traces.")
