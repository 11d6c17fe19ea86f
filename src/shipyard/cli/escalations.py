"""`shipyard escalations list|show|claim|answer|resolve|export`: work the review queue from a
terminal, straight on the store (the same queries the admin API runs)."""

from __future__ import annotations

import sys
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.table import Table

from shipyard.cli.common import console, fail, open_store, parse_since
from shipyard.cli.keys import actor
from shipyard.errors import ShipyardError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from shipyard.escalation import Ticket

app = typer.Typer(help="Work the escalation review queue: tickets handed to a person.",
                  no_args_is_help=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c",
                      help="shipyard.yaml (default: $SHIPYARD_CONFIG or ./shipyard.yaml).")]
StoreOpt = Annotated[str | None, typer.Option("--store-url",
                     help="Use this store instead of the config's store.url.")]
TenantOpt = Annotated[str | None, typer.Option(
    "--tenant", help="Only this tenant's tickets (default: every tenant).")]
# shipyard.escalation.STATUSES, written out so --help does not load the store (a test pins it).
STATUSES = ("open", "claimed", "answered", "resolved")
ReviewerOpt = Annotated[str | None, typer.Option(
    "--reviewer", help="Who acts (default: cli:USER@HOST).")]


def _print(data: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_UTC_Z)
                            + b"\n")


def _store(config: Path | None, store_url: str | None) -> Engine:
    return open_store(config, store_url, migrate=True)


def _run(engine: Engine, action: str, ticket_id: str, work: Any) -> Ticket:
    """Run a queue action; print its error the CLI way; audit it."""
    from shipyard.security.audit import AuditLog

    try:
        ticket: Ticket = work()
    except ShipyardError as exc:
        raise fail(exc) from None
    try:
        AuditLog(engine).append(tenant_id=ticket.tenant_id, actor=actor(),
                                action=f"escalation.{action}", target=ticket_id,
                                details={"service": ticket.service})
    except Exception as exc:  # the action is done; say the audit failed, do not hide it
        console.print(f"[yellow]warning:[/] the audit log could not record this ({exc}).")
    return ticket


@app.command("list")
def list_(
    config: ConfigOpt = None,
    store_url: StoreOpt = None,
    tenant: TenantOpt = None,
    status: Annotated[str | None, typer.Option(
        help=f"Only this status: {', '.join(STATUSES)}.")] = None,
    service: Annotated[str | None, typer.Option(help="Only this model alias or service.")] = None,
    overdue: Annotated[bool, typer.Option("--overdue", help="Only tickets past their SLA.")] = (
        False),
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """List escalation tickets, newest first."""
    from shipyard.escalation import store as tickets

    engine = _store(config, store_url)
    try:
        rows = tickets.list_tickets(engine, tenant_id=tenant, status=status, service=service,
                                    overdue=True if overdue else None, limit=limit)
    except ShipyardError as exc:
        raise fail(exc) from None
    if as_json:
        for t in rows:
            sys.stdout.buffer.write(orjson.dumps(t.public(conversation=False),
                                                 option=orjson.OPT_UTC_Z) + b"\n")
        return
    if not rows:
        console.print("No escalations match.")
        return
    table = Table(show_edge=False, pad_edge=False)
    for name in ("created", "id", "tenant", "service", "trigger", "status", "due", "claimed by"):
        table.add_column(name, no_wrap=True)
    for t in rows:
        style = {"open": "yellow", "claimed": "cyan", "answered": "green"}.get(t.status, "dim")
        due = "[red]overdue[/]" if t.overdue() else t.due_at.astimezone(UTC).strftime("%H:%M")
        table.add_row(t.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"), t.id,
                      t.tenant_id, t.service, t.trigger, f"[{style}]{t.status}[/]", due,
                      t.claimed_by or "-")
    console.print(table)


@app.command()
def show(
    escalation_id: Annotated[str, typer.Argument(help="A ticket id (esc_…).")],
    config: ConfigOpt = None,
    store_url: StoreOpt = None,
) -> None:
    """Show one ticket with its (cleaned) conversation, as JSON."""
    from shipyard.escalation import store as tickets

    engine = _store(config, store_url)
    try:
        ticket = tickets.get_ticket(engine, escalation_id, tenant_id=None)
    except ShipyardError as exc:
        raise fail(exc) from None
    _print(ticket.public())


@app.command()
def claim(
    escalation_id: Annotated[str, typer.Argument(help="A ticket id (esc_…).")],
    config: ConfigOpt = None,
    store_url: StoreOpt = None,
    reviewer: ReviewerOpt = None,
    force: Annotated[bool, typer.Option("--force",
                     help="Take over a ticket another reviewer claimed.")] = False,
) -> None:
    """Claim a ticket: you are now the reviewer who answers it."""
    from shipyard.escalation import store as tickets

    engine = _store(config, store_url)
    ticket = _run(engine, "claim", escalation_id, lambda: tickets.claim_ticket(
        engine, escalation_id, tenant_id=None, reviewer=reviewer or actor(), force=force))
    console.print(f"Claimed {ticket.id} as {ticket.claimed_by}.", highlight=False)


@app.command()
def answer(
    escalation_id: Annotated[str, typer.Argument(help="A ticket id (esc_…).")],
    text: Annotated[str, typer.Argument(help="The answer the user gets.")],
    config: ConfigOpt = None,
    store_url: StoreOpt = None,
    reviewer: ReviewerOpt = None,
    label: Annotated[str, typer.Option(
        help="Feedback label stored with the answer, e.g. model_was_wrong.")] = (
        "reviewer_answer"),
) -> None:
    """Answer a ticket; the answer is delivered to the conversation and kept as feedback."""
    from shipyard.escalation import store as tickets

    if not text.strip():
        raise fail("The answer is empty; pass the text the user should get, e.g. "
                   "shipyard escalations answer esc_… 'Your refund was sent today.'")
    engine = _store(config, store_url)
    ticket = _run(engine, "answer", escalation_id, lambda: tickets.answer_ticket(
        engine, escalation_id, tenant_id=None, reviewer=reviewer or actor(),
        answer=text.strip(), label=label))
    console.print(f"Answered {ticket.id}; it is delivered on the conversation's next request "
                  "or when the client polls it.", highlight=False)


@app.command()
def resolve(
    escalation_id: Annotated[str, typer.Argument(help="A ticket id (esc_…).")],
    config: ConfigOpt = None,
    store_url: StoreOpt = None,
    reviewer: ReviewerOpt = None,
    note: Annotated[str | None, typer.Option("--note", help="How it was resolved.")] = None,
) -> None:
    """Resolve (close) a ticket."""
    from shipyard.escalation import store as tickets

    engine = _store(config, store_url)
    ticket = _run(engine, "resolve", escalation_id, lambda: tickets.resolve_ticket(
        engine, escalation_id, tenant_id=None, reviewer=reviewer or actor(), resolution=note))
    console.print(f"Resolved {ticket.id}.", highlight=False)


@app.command()
def export(
    config: ConfigOpt = None,
    store_url: StoreOpt = None,
    fmt: Annotated[str, typer.Option("--format", help="Output format (jsonl).")] = "jsonl",
    output: Annotated[Path | None, typer.Option("--output", "-o",
                      help="Write to this file instead of stdout.")] = None,
    tenant: TenantOpt = None,
    since: Annotated[str | None, typer.Option(help="Only since: 15m, 2h, 7d or ISO time.")] = None,
) -> None:
    """Export reviewers' answers as labelled feedback, oldest first, one JSON object per line
    (conversation, answer, label, reviewer) for evaluation and retraining."""
    from shipyard.escalation import store as tickets
    from shipyard.security.audit import AuditLog
    from shipyard.security.roles import PLATFORM_TENANT

    if fmt != "jsonl":
        raise fail(f"--format is '{fmt}'; the supported format is jsonl.")
    engine = _store(config, store_url)
    count = 0
    with (output.open("wb") if output else open(sys.stdout.fileno(), "wb",
                                                  closefd=False)) as out:
        for row in tickets.iter_feedback(engine, tenant_id=tenant, since=parse_since(since)):
            out.write(orjson.dumps(row, option=orjson.OPT_UTC_Z) + b"\n")
            count += 1
    try:
        AuditLog(engine).append(
            tenant_id=tenant or PLATFORM_TENANT, actor=actor(), action="escalations.export",
            target=str(output.resolve()) if output else "stdout",
            details={"rows": count, "tenant": tenant, "since": since})
    except Exception as exc:
        raise fail(f"Exported {count} feedback rows, but the export could not be recorded in "
                   f"the audit log ({type(exc).__name__}); record it by hand.") from None
    if output:
        console.print(f"Exported {count} feedback rows to {output}.")
