"""`shipyard webhooks list|show|redeliver|flush|secret`: the webhook delivery log and the
dead letter from a terminal, straight on the store (the same calls the admin API makes)."""

from __future__ import annotations

import sys
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.markup import escape
from rich.table import Table

from shipyard.cli.common import console, fail, open_store, resolve_config
from shipyard.cli.keys import actor
from shipyard.errors import ShipyardError

if TYPE_CHECKING:
    from shipyard.webhooks.delivery import WebhookOutbox

app = typer.Typer(help="Webhook deliveries: the delivery log, the dead letter, redelivery and "
                       "signing secrets.", no_args_is_help=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c",
                      help="shipyard.yaml (default: $SHIPYARD_CONFIG or ./shipyard.yaml).")]
StoreOpt = Annotated[str | None, typer.Option("--store-url",
                     help="Use this store instead of the config's store.url.")]
# shipyard.work.STATUSES, written out so --help does not load the store (a test pins it).
STATUSES = ("queued", "running", "succeeded", "dead", "cancelled")
TenantOpt = Annotated[str | None, typer.Option(
    "--tenant", help="Only this tenant's deliveries (default: every tenant).")]


def _outbox(config: Path | None, store_url: str | None) -> WebhookOutbox:
    from shipyard.webhooks.delivery import WebhookOutbox
    from shipyard.work import WorkQueue

    return WebhookOutbox(WorkQueue(open_store(config, store_url, migrate=True)))


def _print(data: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")


@app.command("list")
def list_(
    config: ConfigOpt = None,
    store_url: StoreOpt = None,
    tenant: TenantOpt = None,
    status: Annotated[str | None, typer.Option(
        help=f"Only this status: {', '.join(STATUSES)} (dead = the dead letter).")] = None,
    endpoint: Annotated[str | None, typer.Option(
        help="Only this endpoint, e.g. alerts.channels.oncall.")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """List webhook deliveries, newest first, with their last response."""
    outbox = _outbox(config, store_url)
    try:
        rows = outbox.deliveries(tenant_id=tenant, status=status, endpoint=endpoint,
                                 limit=limit)
    except ShipyardError as exc:
        raise fail(exc) from None
    if as_json:
        for d in rows:
            sys.stdout.buffer.write(orjson.dumps(d.public()) + b"\n")
        return
    if not rows:
        console.print("No webhook deliveries match.")
        return
    table = Table(show_edge=False, pad_edge=False)
    for name in ("created", "id", "endpoint", "event", "status", "tries", "last", "error"):
        table.add_column(name, no_wrap=name != "error")
    for d in rows:
        style = {"succeeded": "green", "dead": "red", "queued": "yellow",
                 "running": "cyan"}.get(d.status, "dim")
        last = "-" if d.last_status_code is None else (
            f"{d.last_status_code} in {d.last_latency_ms or 0:.0f} ms")
        table.add_row(d.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"), d.id,
                      escape(d.endpoint), escape(d.event_type), f"[{style}]{d.status}[/]",
                      f"{d.attempts}/{d.max_attempts}", last, escape(d.last_error or ""))
    console.print(table)


@app.command()
def show(
    delivery_id: Annotated[str, typer.Argument(help="A delivery id (msg_…).")],
    config: ConfigOpt = None,
    store_url: StoreOpt = None,
) -> None:
    """Show one delivery with its body and attempt log, as JSON."""
    outbox = _outbox(config, store_url)
    try:
        delivery, attempts = outbox.delivery(delivery_id, tenant_id=None)
    except ShipyardError as exc:
        raise fail(exc) from None
    _print({**delivery.public(), "attempt_log": [a.public() for a in attempts]})


@app.command()
def redeliver(
    delivery_ids: Annotated[list[str], typer.Argument(help="Delivery ids (msg_…).")],
    config: ConfigOpt = None,
    store_url: StoreOpt = None,
) -> None:
    """Queue finished deliveries again (same webhook-id, fresh attempts).

    A running gateway sends them within `work.poll_interval_s`; without one, run
    `shipyard webhooks flush`.
    """
    from shipyard.security.audit import AuditLog

    outbox = _outbox(config, store_url)
    for delivery_id in delivery_ids:
        try:
            item = outbox.redeliver(delivery_id, tenant_id=None)
        except ShipyardError as exc:
            raise fail(exc) from None
        try:
            AuditLog(outbox.queue.engine).append(
                tenant_id=item.tenant_id, actor=actor(), action="webhook.redeliver",
                target=delivery_id, details={"endpoint": item.ref})
        except Exception as exc:  # the redelivery is queued; say the audit failed
            console.print(f"[yellow]warning:[/] the audit log could not record this ({exc}).")
        console.print(f"Queued {delivery_id} for redelivery to {escape(item.ref or '?')}.",
                      highlight=False)


@app.command()
def flush(
    config: ConfigOpt = None,
    timeout: Annotated[float, typer.Option(help="Stop after this many seconds.")] = 60.0,
) -> None:
    """Deliver every due webhook now from this process, then exit.

    Uses the config's endpoints; for a store no gateway delivers from, or after `redeliver`.
    Exits 1 when a delivery was dead-lettered.
    """
    import asyncio

    from shipyard.store import create_store_engine
    from shipyard.store import migrate as run_migrations
    from shipyard.webhooks.delivery import WebhookOutbox
    from shipyard.work import Worker, WorkQueue

    _, cfg = resolve_config(config)
    engine = create_store_engine(cfg.store.url)
    run_migrations(engine)
    queue = WorkQueue(engine)
    outbox = WebhookOutbox.from_config(cfg, queue)
    before = queue.counts(kind="webhook")

    async def run() -> int:
        worker = Worker(queue, lease_s=cfg.work.lease_s, poll_interval_s=0.05)
        outbox.attach(worker)
        try:
            return await worker.run_until_idle(timeout_s=timeout)
        finally:
            await outbox.close()

    attempts = asyncio.run(run())
    after = queue.counts(kind="webhook")
    delivered = after["succeeded"] - before["succeeded"]
    dead = after["dead"] - before["dead"]
    console.print(f"{attempts} attempts: {delivered} delivered, {dead} dead-lettered, "
                  f"{after['queued']} waiting to retry.", highlight=False)
    if dead:
        raise typer.Exit(1)


@app.command()
def secret(
    nbytes: Annotated[int, typer.Option("--bytes", help="Key length, 24 to 64 bytes.")] = 32,
) -> None:
    """Print a new signing secret (whsec_ + base64).

    Put it in the sender's config as {$env: NAME} and give it to the receiver.
    """
    from shipyard.webhooks import generate_secret

    try:
        print(generate_secret(nbytes))
    except ValueError as exc:
        raise fail(f"--bytes is {nbytes}; {exc}.") from None
