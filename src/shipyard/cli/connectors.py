"""`shipyard connectors`: list the configured connectors, show their runs, run one."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.markup import escape
from rich.table import Table

from shipyard.cli.common import console, fail, open_store, resolve_config
from shipyard.errors import ShipyardError

__all__ = ["app"]

app = typer.Typer(help="Queue consumers, SQL scoring and file drops (docs/integration.md).",
                  no_args_is_help=True)

ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", help="shipyard.yaml (default: $SHIPYARD_CONFIG or ./shipyard.yaml).")]


@app.command("list")
def list_(config: ConfigOpt = None) -> None:
    """The configured connectors: kind, target, autostart, and their last run."""
    from shipyard.connectors import RunLog, describe_target

    _, cfg = resolve_config(config, secrets=False)
    engine = open_store(config, None, migrate=True)
    try:
        latest = RunLog(engine).latest()
    finally:
        engine.dispose()
    if not cfg.connectors:
        console.print("No connectors are configured (add them under 'connectors:').")
        return
    table = Table("connector", "kind", "target", "autostart", "last run", "status",
                  "processed", "failed")
    for name, connector in sorted(cfg.connectors.items()):
        run = latest.get(name)
        table.add_row(escape(name), connector.kind, escape(describe_target(connector)),
                      "yes" if connector.autostart else "no",
                      f"{run.started_at:%Y-%m-%d %H:%M:%S}" if run else "-",
                      run.status if run else "-", str(run.processed) if run else "-",
                      str(run.failed) if run else "-")
    console.print(table)


@app.command()
def status(
    name: Annotated[str | None, typer.Argument(help="Only this connector's runs.")] = None,
    limit: Annotated[int, typer.Option(help="Most runs shown.")] = 20,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Recent connector runs, newest first: status, counts, checkpoint, error."""
    from shipyard.connectors import RunLog

    engine = open_store(config, None, migrate=True)
    try:
        runs = RunLog(engine).list(name, limit=limit)
    finally:
        engine.dispose()
    if json_:
        for run in runs:
            typer.echo(orjson.dumps(run.to_dict()).decode())
        return
    if not runs:
        console.print("No connector runs yet.")
        return
    table = Table("run", "connector", "kind", "started", "status", "processed", "ok",
                  "failed", "retried", "checkpoint / error")
    for run in runs:
        detail = run.error or (orjson.dumps(run.checkpoint).decode() if run.checkpoint
                               else run.detail.get("file", ""))
        table.add_row(run.id, escape(run.connector), run.kind,
                      f"{run.started_at:%Y-%m-%d %H:%M:%S}", run.status, str(run.processed),
                      str(run.succeeded), str(run.failed), str(run.retried),
                      escape(str(detail)[:80]))
    console.print(table)


@app.command()
def run(
    name: Annotated[str, typer.Argument(help="The connector (a name under 'connectors:').")],
    idle_exit: Annotated[float | None, typer.Option(
        help="Stop after this many seconds without a message or file.")] = None,
    max_messages: Annotated[int | None, typer.Option(
        help="Stop after this many messages (rows, for SQL) are settled.")] = None,
    schedule: Annotated[bool, typer.Option(
        help="SQL: keep running on the connector's schedule instead of one pass.")] = False,
    resume: Annotated[bool | None, typer.Option(
        "--resume/--fresh", help="SQL: --resume continues the unfinished run from its "
        "checkpoint even if its process may still live; --fresh starts a new run. Default: "
        "resume a run whose process stopped.")] = None,
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "warning",
    config: ConfigOpt = None,
) -> None:
    """Run one connector in the foreground until Ctrl-C or SIGTERM (work in flight is
    finished and settled first). Example: shipyard connectors run orders --idle-exit 10"""
    from shipyard.config.loader import install_python_path

    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _, cfg = resolve_config(config)
    install_python_path(cfg)
    if name not in cfg.connectors:
        known = ", ".join(sorted(cfg.connectors)) or "none are configured"
        raise fail(f"There is no connector '{name}' (known: {known}); add it under "
                   "'connectors' in shipyard.yaml or fix the name.")
    try:
        summary = asyncio.run(_run(cfg, name, idle_exit=idle_exit, max_messages=max_messages,
                                   schedule=schedule, resume=resume))
    except ShipyardError as exc:
        raise fail(exc) from None
    console.print(f"connector {escape(name)}: {summary['processed']} processed, "
                  f"{summary['succeeded']} ok, {summary['failed']} dead-lettered or failed, "
                  f"{summary['retried']} retries" + (f" (run {summary['run']})"
                                                     if summary.get("run") else ""),
                  highlight=False)


async def _run(cfg: Any, name: str, *, idle_exit: float | None, max_messages: int | None,
               schedule: bool, resume: bool | None) -> dict[str, Any]:
    from shipyard.connectors import Connectors
    from shipyard.gateway.invoke import Invoker
    from shipyard.gateway.runtime import Gateway

    gateway = Gateway(cfg)
    await gateway.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        connectors = Connectors(gateway, Invoker(gateway))
        connector = await connectors.build(name, idle_exit_s=idle_exit,
                                           max_messages=max_messages, scheduled=schedule)
        if resume is not None and hasattr(connector, "resume"):
            connector.resume = resume
        await connectors.run_built(connector, stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await gateway.stop()
    summary = connector.stats.to_dict()
    last = getattr(connector, "last_run", None)
    summary["run"] = last.id if last is not None else None
    return summary
