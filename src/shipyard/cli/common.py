"""Helpers shared by CLI commands: finding the config, printing errors the same way.

CLI modules import their domains (store, gateway, config schema, ...) inside the command
functions, so `shipyard --help` and `shipyard version` load only typer, rich and the CLI
(tests/unit/test_cli_startup.py).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape

from shipyard.config import env
from shipyard.errors import ShipyardError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from shipyard.config import Config

__all__ = [
    "console",
    "err_console",
    "fail",
    "open_store",
    "parse_since",
    "resolve_config",
    "store_error",
]

console = Console()
err_console = Console(stderr=True)


def fail(exc: ShipyardError | str, code: int = 1) -> typer.Exit:
    message = exc.message if isinstance(exc, ShipyardError) else exc
    # Escaped: "[local]" in "pip install 'shipyard[local]'" is not a rich style tag.
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False,
                      soft_wrap=True)
    return typer.Exit(code)


def config_path(path: Path | None) -> Path:
    if path is not None:
        return path
    from_env = env.config_path_from_env()
    return Path(from_env) if from_env else Path("shipyard.yaml")


def resolve_config(
    path: Path | None, environ: dict[str, str] | None = None, *, secrets: bool = True,
    strict: bool = False,
) -> tuple[Path, Config]:
    """The config file and its settings; `strict` refuses secrets written inline."""
    from shipyard.config import load_config

    file = config_path(path)
    try:
        return file, load_config(file, environ=environ, secrets=secrets, strict=strict)
    except ShipyardError as exc:
        raise fail(exc) from None


def warn_inline_secrets(file: Path, config: Config) -> None:
    """Say which secrets are written inline in the file (--strict makes this an error)."""
    from shipyard.config.loader import inline_secrets

    for key in inline_secrets(config):
        err_console.print(
            f"[yellow]warning[/] {escape(str(file))}: key '{key}' holds a secret written "
            "inline; reference it as {$env: NAME} or {$file: path} so it stays out of the "
            "file (--strict refuses this).", highlight=False)


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(value: str | None) -> datetime | None:
    if value is None:
        return None
    match = _DURATION.match(value.strip())
    if match:
        return datetime.now(UTC) - timedelta(seconds=float(match[1]) * _UNITS[match[2]])
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise fail(f"--since is '{value}'; use a duration like 15m, 2h, 7d or an ISO time "
                   "like 2026-11-27T10:00:00.") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def open_store(config: Path | None, store_url: str | None, *, migrate: bool = False) -> Engine:
    """The store named by --store-url, or by the config's store.url (secrets not needed).

    A store that cannot be opened, or that was never set up, ends the command with a sentence
    naming the URL (password hidden) and the fix, never a traceback."""
    from sqlalchemy import inspect
    from sqlalchemy.exc import SQLAlchemyError

    from shipyard.store import create_store_engine
    from shipyard.store import migrate as run_migrations

    if store_url:
        where, url = "--store-url", store_url
    else:
        file, cfg = resolve_config(config, secrets=False)
        where, url = f"store.url in {file}", cfg.store.url
    shown = _hide_password(url)
    try:
        engine = create_store_engine(url)
    except ShipyardError as exc:
        raise fail(exc) from None
    except OSError as exc:  # SQLite: its folder cannot be created
        raise fail(f"The store at {shown} ({where}) cannot be opened: {exc.strerror or exc} "
                   f"({exc.filename or url}). Check the path in the URL.") from None
    try:
        if migrate:
            run_migrations(engine)
        else:
            with engine.connect() as connection:
                ready = inspect(connection).has_table("alembic_version")
            if not ready:
                engine.dispose()
                raise fail(f"The store at {shown} ({where}) has no Shipyard tables yet; start "
                           "'shipyard serve' with this config once (it creates them), or run "
                           "'shipyard init'.")
    except SQLAlchemyError as exc:
        engine.dispose()
        raise fail(f"The store at {shown} ({where}) cannot be opened: {store_error(exc)}. "
                   "Check the URL and that the database is running and reachable.") from None
    return engine


def store_error(exc: BaseException) -> str:
    """The first line of a database error, without SQLAlchemy's boilerplate."""
    original = getattr(exc, "orig", None) or exc
    text = str(original).strip().splitlines()[0] if str(original).strip() else ""
    return f"{type(original).__name__}: {text[:200]}" if text else type(original).__name__


def _hide_password(url: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url
