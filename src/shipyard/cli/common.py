"""Helpers shared by CLI commands: finding the config, printing errors the same way."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from shipyard.config import Config, env, load_config
from shipyard.errors import ShipyardError

__all__ = ["console", "err_console", "fail", "resolve_config"]

console = Console()
err_console = Console(stderr=True)


def fail(exc: ShipyardError | str, code: int = 1) -> typer.Exit:
    message = exc.message if isinstance(exc, ShipyardError) else exc
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def config_path(path: Path | None) -> Path:
    if path is not None:
        return path
    from_env = env.config_path_from_env()
    return Path(from_env) if from_env else Path("shipyard.yaml")


def resolve_config(
    path: Path | None, environ: dict[str, str] | None = None, *, secrets: bool = True
) -> tuple[Path, Config]:
    file = config_path(path)
    try:
        return file, load_config(file, environ=environ, secrets=secrets)
    except ShipyardError as exc:
        raise fail(exc) from None
