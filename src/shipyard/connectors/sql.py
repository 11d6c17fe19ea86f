"""SQL scoring: read a table or query in batches (keyset order on `key`), run each row
through the target, and upsert the results into `output_table` — one transaction per batch —
with the run id. After each batch the run's checkpoint (the last key) is saved in the store,
so an interrupted run resumes after it; a batch written but not checkpointed is scored again
and upserted over itself (same keys, same run id).

Works on PostgreSQL (psycopg), MySQL/MariaDB (pymysql) and SQLite through SQLAlchemy; the
output table is created when missing:

    KEY (primary key) | run_id | status (ok, failed) | output (JSON) | error | trace_id |
    scored_at
"""

from __future__ import annotations

import asyncio
import base64
import logging
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    text,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from shipyard.config.connectors import SQLConnectorConfig
from shipyard.connectors.base import Connector, Environment, Outcome
from shipyard.connectors.runs import Run
from shipyard.connectors.schedule import next_run
from shipyard.errors import ConfigError, Conflict

__all__ = ["SQLConnector"]

log = logging.getLogger("shipyard.connectors")

_HEARTBEAT_S = 5.0


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, (dict, list)):
        return value
    return str(value)


class SQLConnector(Connector):
    kind = "sql"
    config: SQLConnectorConfig

    def __init__(self, name: str, config: SQLConnectorConfig, env: Environment) -> None:
        super().__init__(name, config, env)
        self.resume: bool | None = None  # None: resume a run whose process died; True: force
        self.last_run: Run | None = None

    def _engine(self) -> Engine:
        url = self.config.url.get_secret_value()
        try:
            return create_engine(url, pool_pre_ping=True, pool_size=2)
        except (ImportError, SQLAlchemyError, ValueError) as exc:
            driver = ("pip install 'shipyard[mysql]'" if "mysql" in url
                      else "pip install 'shipyard[postgres]'" if "postgres" in url
                      else "the database's SQLAlchemy driver")
            raise ConfigError(f"connectors.{self.name}.url cannot be used ({type(exc).__name__}: "
                              f"{exc}); check the URL, and install {driver}.") from None

    async def run(self, stop: asyncio.Event) -> None:
        schedule = self.config.schedule
        if not (self.env.scheduled and schedule is not None):
            await self.score(stop)
            return
        last_start: datetime | None = None
        while not stop.is_set():
            now = datetime.now(UTC)
            due = next_run(schedule, now, last_start)
            self.set_state("idle")
            if due > now:
                try:
                    await asyncio.wait_for(stop.wait(), (due - now).total_seconds())
                    return
                except TimeoutError:
                    pass
            last_start = datetime.now(UTC)
            try:
                await self.score(stop)
            except ConfigError:
                raise
            except Conflict as exc:  # another process runs it (serve with several workers)
                log.info("connector %s: %s", self.name, exc.message)
            except Exception as exc:  # a scheduled run that failed is retried next time
                log.warning("connector %s: run failed (%s: %s)", self.name,
                            type(exc).__name__, exc)

    async def score(self, stop: asyncio.Event) -> Run:
        """One pass over the source (resumed from an unfinished run's checkpoint)."""
        cfg = self.config
        runs = self.env.runs
        stale_s = 3 * _HEARTBEAT_S
        if self.resume is None:  # one run at a time: a live run is left to its process
            live = await asyncio.to_thread(runs.unfinished, self.name)
            age = (datetime.now(UTC) - live.heartbeat_at).total_seconds() if live else 0.0
            if live is not None and live.status == "running" and age <= stale_s:
                raise Conflict(
                    f"Connector '{self.name}' has a run in progress ({live.id} on {live.host}, "
                    f"last heartbeat {age:.0f} s ago); wait for it, or take it over with "
                    "--resume (when its process is gone) or start another with --fresh.")
        run = await asyncio.to_thread(
            runs.start, self.name, "sql", resume=self.resume is not False,
            stale_after_s=0.0 if self.resume else stale_s)
        self.last_run = run
        if not run.resumed and cfg.incremental:
            previous = await asyncio.to_thread(self._previous_checkpoint, run.id)
            if previous is not None:
                run.checkpoint = previous
        engine = self._engine()
        beat = asyncio.create_task(self._heartbeat(run))
        status, error = "succeeded", None
        self.stats.processed, self.stats.succeeded = run.processed, run.succeeded
        self.stats.failed, self.stats.retried = run.failed, run.retried
        try:
            self.set_state("running")
            last = run.checkpoint.get("key") if isinstance(run.checkpoint, dict) else None
            output: Table | None = None
            while True:
                if stop.is_set() or self.enough():
                    status = "interrupted"
                    break
                rows = await asyncio.to_thread(self._read, engine, last)
                if not rows:
                    break
                if output is None:
                    output = await asyncio.to_thread(self._output_table, engine, rows[0])
                outcomes = await self._score_rows(rows)
                if any(o.unsettled for o in outcomes):  # stopping: this batch is redone
                    status = "interrupted"
                    break
                await asyncio.to_thread(self._write, engine, output, run, rows, outcomes)
                last = rows[-1][cfg.key]
                for outcome in outcomes:
                    self.counted(outcome)
                stats = self.stats
                await asyncio.to_thread(runs.update, run, checkpoint={"key": last},
                                        processed=stats.processed, succeeded=stats.succeeded,
                                        failed=stats.failed, retried=stats.retried)
        except asyncio.CancelledError:
            status = "interrupted"
            raise
        except ConfigError:
            status, error = "failed", "configuration"
            raise
        except Exception as exc:
            status, error = "failed", f"{type(exc).__name__}: {exc}"
            self.set_state("failed", error)
            raise
        finally:
            beat.cancel()
            await asyncio.shield(asyncio.to_thread(runs.finish, run, status, error))
            self.env.metrics.connector_runs.labels(self.name, status).inc()
            engine.dispose()
            log.info("connector %s: run %s %s (%d rows, %d failed)", self.name, run.id,
                     status, self.stats.processed, self.stats.failed)
        self.set_state("stopped")
        return run

    def _previous_checkpoint(self, current: str) -> Any:
        for run in self.env.runs.list(self.name, limit=20):
            if run.id != current and run.status == "succeeded" and run.checkpoint:
                return run.checkpoint
        return None

    async def _heartbeat(self, run: Run) -> None:
        while True:
            await asyncio.sleep(_HEARTBEAT_S)
            try:
                await asyncio.to_thread(self.env.runs.update, run)
            except Exception:
                log.warning("connector %s: heartbeat failed", self.name, exc_info=True)

    def _quote(self, engine: Engine, name: str) -> str:
        prepare = engine.dialect.identifier_preparer
        return ".".join(prepare.quote(part) for part in name.split("."))

    def _read(self, engine: Engine, last: Any) -> list[dict[str, Any]]:
        cfg = self.config
        key = self._quote(engine, cfg.key)
        source = (self._quote(engine, cfg.table) if cfg.table is not None
                  else f"({cfg.query}) shipyard_source")
        where = f" WHERE {key} > :last" if last is not None else ""
        statement = text(f"SELECT * FROM {source}{where} ORDER BY {key} "
                         f"LIMIT {int(cfg.batch_size)}")
        with engine.connect() as conn:
            result = conn.execute(statement, {"last": last} if last is not None else {})
            rows = [dict(row._mapping) for row in result]
        if rows and cfg.key not in rows[0]:
            raise ConfigError(f"connectors.{self.name}.key is '{cfg.key}', which is not a column "
                              f"of the source (columns: {', '.join(rows[0])}); fix the name.")
        return rows

    def _input(self, row: dict[str, Any]) -> dict[str, Any]:
        cfg = self.config
        if cfg.columns is not None:
            missing = [c for c in cfg.columns if c not in row]
            if missing:
                raise ConfigError(f"connectors.{self.name}.columns names {', '.join(missing)}, "
                                  f"not columns of the source ({', '.join(row)}).")
            return {c: _jsonable(row[c]) for c in cfg.columns}
        return {c: _jsonable(v) for c, v in row.items() if c != cfg.key}

    async def _score_rows(self, rows: list[dict[str, Any]]) -> list[Outcome]:
        slots = asyncio.Semaphore(self.config.concurrency)
        dispatcher = self.dispatcher

        async def one(row: dict[str, Any]) -> Outcome:
            async with slots:
                self.begin()
                try:
                    return await dispatcher.call(self._input(row))
                finally:
                    self.end()

        return list(await asyncio.gather(*(one(row) for row in rows)))

    def _output_table(self, engine: Engine, sample: dict[str, Any]) -> Table:
        cfg = self.config
        value = sample[cfg.key]
        key_type: Any = BigInteger() if isinstance(value, int) else String(255)
        schema, _, name = cfg.output_table.rpartition(".")
        table = Table(name, MetaData(), Column(cfg.key, key_type, primary_key=True,
                                               autoincrement=False),
                      Column("run_id", String(40), nullable=False),
                      Column("status", String(16), nullable=False),
                      Column("output", Text, nullable=True),
                      Column("error", Text, nullable=True),
                      Column("trace_id", String(32), nullable=True),
                      Column("scored_at", DateTime(timezone=True), nullable=False),
                      schema=schema or None)
        table.create(engine, checkfirst=True)
        return table

    def _write(self, engine: Engine, table: Table, run: Run, rows: list[dict[str, Any]],
               outcomes: list[Outcome]) -> None:
        cfg = self.config
        now = datetime.now(UTC)
        values = [{cfg.key: row[cfg.key], "run_id": run.id,
                   "status": "ok" if o.ok else "failed",
                   "output": orjson.dumps(o.output, default=str).decode() if o.ok else None,
                   "error": None if o.ok else f"{o.reason}: {o.error}"[:2000],
                   "trace_id": o.trace_id or None, "scored_at": now}
                  for row, o in zip(rows, outcomes, strict=True)]
        updated = ["run_id", "status", "output", "error", "trace_id", "scored_at"]
        dialect = engine.dialect.name
        with engine.begin() as conn:
            if dialect in ("postgresql", "sqlite"):
                stmt: Any = (postgresql.insert(table) if dialect == "postgresql"
                             else sqlite.insert(table))
                stmt = stmt.on_conflict_do_update(
                    index_elements=[cfg.key], set_={c: stmt.excluded[c] for c in updated})
                conn.execute(stmt, values)
            elif dialect in ("mysql", "mariadb"):
                stmt = mysql.insert(table)
                stmt = stmt.on_duplicate_key_update({c: stmt.inserted[c] for c in updated})
                conn.execute(stmt, values)
            else:  # any other database: replace the batch's rows
                keys = [v[cfg.key] for v in values]
                conn.execute(table.delete().where(table.c[cfg.key].in_(keys)))
                conn.execute(table.insert(), values)
