"""`shipyard jobs list|show|cancel|retry`: durable jobs from a terminal, straight on the store
(the same calls the `/v1/jobs` routes make). A running gateway picks a retried job up within
`work.poll_interval_s`."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.markup import escape
from rich.table import Table

from shipyard.cli.common import console, fail, open_store, resolve_config
from shipyard.cli.keys import actor
from shipyard.cli.webhooks import STATUSES  # shipyard.work.STATUSES, without the store
from shipyard.errors import ShipyardError

if TYPE_CHECKING:
    from shipyard.jobs import Jobs

app = typer.Typer(help="Durable jobs: list them, show one with its result or error, cancel, "
                       "retry a dead one.", no_args_is_help=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c",
                      help="shipyard.yaml (default: $SHIPYARD_CONFIG or ./shipyard.yaml).")]
StoreOpt = Annotated[str | None, typer.Option("--store-url",
                     help="Use this store instead of the config's store.url.")]
TenantOpt = Annotated[str | None, typer.Option(
    "--tenant", help="Only this tenant's jobs (default: every tenant).")]


def _jobs(config: Path | None, store_url: str | None) -> Jobs:
    from shipyard.config.jobs import JobsConfig
    from shipyard.jobs import Jobs
    from shipyard.work import WorkQueue

    settings = JobsConfig()
    if store_url is None:
        _, cfg = resolve_config(config, secrets=False)
        settings = cfg.jobs
    return Jobs(WorkQueue(open_store(config, store_url, migrate=True)), settings)


def _print(data: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")


def _when(ts: int | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


@app.command("list")
def list_(
    config: ConfigOpt = None,
    store_url: StoreOpt = None,
    tenant: TenantOpt = None,
    status: Annotated[str | None, typer.Option(
        help=f"Only this status: {', '.join(STATUSES)} (dead = the dead letter).")] = None,
    target: Annotated[str | None, typer.Option(
        help="Only jobs of this model alias or service.")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """List jobs, newest first, with their status, attempts and last error."""
    jobs = _jobs(config, store_url)
    try:
        rows, _ = jobs.list(tenant_id=tenant, status=status, target=target, limit=limit)
    except ShipyardError as exc:
        raise fail(exc) from None
    if as_json:
        for job in rows:
            sys.stdout.buffer.write(orjson.dumps(job.public()) + b"\n")
        return
    if not rows:
        console.print("No jobs match.")
        return
    table = Table(show_edge=False, pad_edge=False)
    for name in ("created", "id", "tenant", "target", "status", "tries", "error"):
        table.add_column(name, no_wrap=name != "error")
    for job in rows:
        view = job.public()
        style = {"succeeded": "green", "dead": "red", "queued": "yellow",
                 "running": "cyan"}.get(job.status, "dim")
        table.add_row(_when(view["created_at"]), job.id, escape(job.item.tenant_id),
                      escape(job.target), f"[{style}]{job.status}[/]",
                      f"{view['attempts']}/{view['max_attempts']}",
                      escape((view["error"] or {}).get("message") or ""))
    console.print(table)


@app.command()
def show(
    job_id: Annotated[str, typer.Argument(help="A job id (job_…).")],
    config: ConfigOpt = None,
    store_url: StoreOpt = None,
) -> None:
    """Show one job (its result or last error) with its attempt log, as JSON."""
    jobs = _jobs(config, store_url)
    try:
        job = jobs.get(job_id, tenant_id=None)
    except ShipyardError as exc:
        raise fail(exc) from None
    _print({**job.public(), "attempt_log": [a.public() for a in jobs.queue.attempts(job_id)]})


def _act(action: str, job_ids: list[str], config: Path | None, store_url: str | None) -> None:
    from shipyard.security.audit import AuditLog

    jobs = _jobs(config, store_url)
    for job_id in job_ids:
        try:
            job = (jobs.cancel if action == "cancel" else jobs.retry)(job_id, tenant_id=None)
        except ShipyardError as exc:
            raise fail(exc) from None
        try:
            AuditLog(jobs.queue.engine).append(
                tenant_id=job.item.tenant_id, actor=actor(), action=f"job.{action}",
                target=job_id, details={"target": job.target})
        except Exception as exc:  # the action happened; say the audit failed
            console.print(f"[yellow]warning:[/] the audit log could not record this ({exc}).")
        console.print(f"{'Cancelled' if action == 'cancel' else 'Queued'} {job_id} "
                      f"({escape(job.target)}): now {job.status}.", highlight=False)


@app.command()
def cancel(
    job_ids: Annotated[list[str], typer.Argument(help="Job ids (job_…).")],
    config: ConfigOpt = None,
    store_url: StoreOpt = None,
) -> None:
    """Cancel queued or running jobs (a running one stops within a third of its lease)."""
    _act("cancel", job_ids, config, store_url)


@app.command()
def retry(
    job_ids: Annotated[list[str], typer.Argument(help="Job ids (job_…).")],
    config: ConfigOpt = None,
    store_url: StoreOpt = None,
) -> None:
    """Run dead, cancelled or succeeded jobs again with a fresh set of attempts."""
    _act("retry", job_ids, config, store_url)
