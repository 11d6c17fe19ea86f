"""Create the store engine (SQLite in WAL mode, or PostgreSQL) and migrate it with Alembic."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from shipyard.errors import ConfigError

__all__ = [
    "create_store_engine",
    "current_revision",
    "downgrade",
    "head_revision",
    "migrate",
    "ping",
]

log = logging.getLogger("shipyard.store")
_MIGRATIONS = str(Path(__file__).parent / "migrations")


def create_store_engine(url: str, **kwargs: Any) -> Engine:
    """Return an engine for `url`; SQLite gets WAL, a busy timeout and its folder created.

    >>> engine = create_store_engine("sqlite:///.shipyard/shipyard.db")  # doctest: +SKIP
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(
            f"Config key 'store.url' is '{url}', which is not a SQLAlchemy URL; use "
            "sqlite:///path/to/shipyard.db or postgresql+psycopg://user@host:5432/db."
        ) from None
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:":
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    try:
        # Fail fast when the database is unreachable, so traces spool instead of waiting.
        connect_args = {"connect_timeout": 5, **kwargs.pop("connect_args", {})}
        return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5,
                             pool_timeout=5, connect_args=connect_args, **kwargs)
    except (ModuleNotFoundError, NoSuchModuleError):
        raise ConfigError(
            f"Config key 'store.url' uses the '{parsed.drivername}' driver, which is not "
            "installed; run: pip install 'shipyard[postgres]'"
        ) from None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


# Alembic is imported only where migrations run: it costs ~11 MiB resident, and the serving
# process (which `shipyard serve` starts after migrating) never needs it.


def _alembic_config() -> Any:
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", _MIGRATIONS)
    return config


def migrate(engine: Engine, revision: str = "head") -> None:
    """Upgrade the store schema to `revision` (the latest by default)."""
    from alembic import command

    config = _alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Downgrade the store schema to `revision` ("base" removes every Shipyard table)."""
    from alembic import command

    config = _alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def head_revision() -> str | None:
    """The newest migration shipped with this version of Shipyard."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The revision the store is at, or None for an empty database."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def ping(engine: Engine) -> bool:
    """True when the store answers a trivial query."""
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return True
    except Exception as exc:  # any driver error means "not reachable"
        log.warning("store ping failed: %s", type(exc).__name__)
        return False
