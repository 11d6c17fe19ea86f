"""What `serve` and `demo` share: validate a config, migrate its store, the serving argv."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from shipyard.cli.common import fail, resolve_config, warn_inline_secrets
from shipyard.errors import ShipyardError

if TYPE_CHECKING:
    from shipyard.config import Config

__all__ = ["prepare", "server_argv"]


def prepare(file: Path, environ: dict[str, str] | None = None, *,
             strict: bool = False) -> Config:
    """Validate the config (and every function it names) and migrate the store."""
    from shipyard.config.loader import install_python_path
    from shipyard.gateway.runtime import Gateway
    from shipyard.store import create_store_engine, migrate

    _, cfg = resolve_config(file, environ, strict=strict)
    warn_inline_secrets(file, cfg)
    try:
        install_python_path(cfg)
        Gateway(cfg, migrate=False).engine.dispose()  # imports and schemas, as serving will
    except ShipyardError as exc:
        raise fail(exc) from None
    except Exception as exc:  # an import or a constructor in the user's code or an extra
        raise fail(f"{file}: the gateway cannot be built from this config "
                   f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"
                   "; fix the config or install what it needs.") from None
    try:
        if cfg.store.migrate:
            engine = create_store_engine(cfg.store.url)
            try:
                migrate(engine)
            finally:
                engine.dispose()
    except ShipyardError as exc:
        raise fail(exc) from None
    except Exception as exc:
        raise fail(f"{file}: the store at store.url cannot be migrated ({type(exc).__name__}: "
                   f"{str(exc).splitlines()[0][:200]}); check that the database is reachable."
                   ) from None
    return cfg


def server_argv(file: Path, host: str, port: int, workers: int) -> list[str]:
    """The command that serves `file` (shipyard.gateway.launch, imported when used)."""
    from shipyard.gateway.launch import server_argv as argv

    return argv(file, host, port, workers)
