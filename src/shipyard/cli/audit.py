"""`shipyard audit list|verify`: read the audit log and check its hash chain."""

from __future__ import annotations

import sys
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import orjson
import typer
from rich.markup import escape
from rich.table import Table

from shipyard.cli.common import console, fail, open_store, parse_since
from shipyard.errors import ShipyardError

if TYPE_CHECKING:
    from shipyard.security.audit import AuditEntry

app = typer.Typer(help="Read and verify the tamper-evident audit log.", no_args_is_help=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c",
                      help="shipyard.yaml (default: $SHIPYARD_CONFIG or ./shipyard.yaml).")]
StoreOpt = Annotated[str | None, typer.Option("--store-url",
                     help="Use this store instead of the config's store.url.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _table(entries: list[AuditEntry], *, details: bool) -> Table:
    table = Table(show_edge=False, pad_edge=False)
    names = ["seq", "time", "tenant", "actor", "action", "target", "outcome"]
    for name in [*names, "details"] if details else names:
        table.add_column(name, no_wrap=name in ("seq", "time", "tenant", "action", "outcome"),
                         overflow="fold")
    for e in entries:
        style = {"ok": "green", "denied": "yellow"}.get(e.outcome, "red")
        cells = [str(e.seq), e.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
                 escape(e.tenant_id), escape(e.actor), escape(e.action), escape(e.target),
                 f"[{style}]{escape(e.outcome)}[/]"]
        if details:
            cells.append(escape(" ".join(
                f"{k}={v if isinstance(v, str) else orjson.dumps(v).decode()}"
                for k, v in (e.details or {}).items() if v is not None)))
        table.add_row(*cells)
    return table


@app.command("list")
def list_(
    config: ConfigOpt = None,
    store_url: StoreOpt = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's entries.")] = None,
    since: Annotated[str | None, typer.Option(help="Only since: 15m, 2h, 7d or ISO time.")] = None,
    action: Annotated[str | None, typer.Option(
        help="Only this action (key.revoke) or prefix (key.*).")] = None,
    limit: Annotated[int, typer.Option(help="How many entries, newest first.")] = 100,
    as_json: JsonOpt = False,
) -> None:
    """List audit entries, newest first."""
    from shipyard.security.audit import AuditLog

    log = AuditLog(open_store(config, store_url, migrate=True))
    try:
        entries = log.list(tenant_id=tenant, since=parse_since(since), action=action,
                           limit=limit)
    except ShipyardError as exc:
        raise fail(exc) from None
    finally:
        log.engine.dispose()
    if as_json:
        for entry in entries:
            sys.stdout.buffer.write(orjson.dumps(entry.to_dict()) + b"\n")
        return
    if not entries:
        console.print("No audit entries match.")
        return
    # Details need room; on a narrow terminal they are left to --json.
    console.print(_table(entries, details=console.width >= 120))


@app.command()
def verify(
    config: ConfigOpt = None,
    store_url: StoreOpt = None,
    anchor: Annotated[str | None, typer.Option(
        help="SEQ:HASH printed by an earlier verify and kept outside the database; catches "
        "a rewritten chain or a cut-back log.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check the hash chain: exit 0 when intact, 1 listing each problem when not."""
    from shipyard.security.audit import AuditAnchor, AuditLog

    try:
        expected = None if anchor is None else AuditAnchor.parse(anchor)
    except ShipyardError as exc:
        raise fail(exc) from None
    log = AuditLog(open_store(config, store_url, migrate=True))
    try:
        report = log.verify(anchor=expected)
    finally:
        log.engine.dispose()
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(report.to_dict()) + b"\n")
    elif report.ok:
        head = "none (empty log)" if report.head is None else str(report.head)
        console.print(f"[green]✓[/] Audit log intact: {report.entries} entries; head {head}.",
                      highlight=False, soft_wrap=True)
        if report.head is not None:
            console.print("Keep the head outside the database and check it later with "
                          f"--anchor {report.head}.", highlight=False, soft_wrap=True)
    else:
        console.print(f"[bold red]✗[/] Audit log NOT intact: {len(report.problems)} problem(s) "
                      f"in {report.entries} entries.", highlight=False)
        for problem in report.problems:
            label = escape(f"[{problem.kind}]")
            console.print(f"  - {label} {escape(problem.message)}", highlight=False,
                          soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)
