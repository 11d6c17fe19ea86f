"""SQL scoring on real PostgreSQL and MariaDB: a 100,000-row table scored through a hosted
service by `shipyard connectors run`, the process killed (SIGKILL) mid-run and resumed from
its checkpoint — every row scored once in the output table, under one run id."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa

from brokers import mariadb_url  # noqa: F401
from conftest import FIXTURES, REPO

ROWS = 100_000
SCHEMA = ('{type: object, required: [id, text], properties: {id: {type: integer}, '
          'text: {type: string}}}')


def _fill(url: str, table: str) -> None:
    engine = sa.create_engine(url)
    meta = sa.MetaData()
    reviews = sa.Table(table, meta, sa.Column("id", sa.BigInteger, primary_key=True,
                                              autoincrement=False),
                       sa.Column("text", sa.String(200), nullable=True))
    meta.create_all(engine)
    with engine.begin() as conn:
        for start in range(0, ROWS, 10_000):
            conn.execute(reviews.insert(), [
                {"id": i, "text": None if i % 1000 == 500 else f"review number {i}"}
                for i in range(start + 1, start + 10_001)])
    engine.dispose()


def _checkpoint(store: str) -> int:
    engine = sa.create_engine(store)
    try:
        with engine.connect() as conn:
            value = conn.execute(sa.text(
                "SELECT checkpoint FROM connector_runs WHERE connector = 'reviews'")).scalar()
    except sa.exc.OperationalError:  # the table is not there yet
        return 0
    finally:
        engine.dispose()
    return int(orjson.loads(value)["key"]) if value else 0


@pytest.mark.parametrize("database", ["postgres", "mariadb"])
def test_sql_scoring_of_a_large_table_resumes_after_a_kill(
        tmp_path: Path, request: pytest.FixtureRequest, database: str) -> None:
    url = request.getfixturevalue("postgres_url" if database == "postgres" else "mariadb_url")
    _fill(url, "reviews")
    store = f"sqlite:///{tmp_path}/store.db"
    cfg = tmp_path / "shipyard.yaml"
    cfg.write_text(f"""
python_path: ["{FIXTURES}"]
store: {{url: "{store}"}}
auth: {{disabled: true}}
services:
  score: {{function: "connector_services:score", input_schema: {SCHEMA}}}
connectors:
  reviews:
    kind: sql
    url: {{$env: REVIEWS_DB_URL}}
    table: reviews
    key: id
    columns: [id, text]
    output_table: review_scores
    batch_size: 2000
    concurrency: 64
    target: {{service: score}}
""")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "REVIEWS_DB_URL": url,
           "PYTHONPATH": os.pathsep.join([str(FIXTURES), str(REPO / "src")])}
    log = tmp_path / "run.log"
    command = [sys.executable, "-m", "shipyard", "connectors", "run", "reviews", "-c",
               str(cfg)]
    with log.open("ab") as handle:
        first = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env,
                                 cwd=REPO)
    deadline = time.monotonic() + 300
    while _checkpoint(store) < 20_000:
        assert first.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    killed_at = _checkpoint(store)
    assert killed_at < ROWS - 10_000, "the kill came too late to test resuming"

    # The killed run's heartbeat is fresh: --resume takes it over at once.
    done = subprocess.run([*command, "--resume"], capture_output=True, env=env, cwd=REPO,
                          timeout=600)
    assert done.returncode == 0, done.stdout.decode()[-2000:] + done.stderr.decode()[-3000:]
    assert b"100000 processed" in done.stdout

    engine = sa.create_engine(url)
    with engine.connect() as conn:
        total, runs, failed = conn.execute(sa.text(
            "SELECT COUNT(*), COUNT(DISTINCT run_id), "
            "SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) FROM review_scores")).one()
        sample = conn.execute(sa.text(
            "SELECT output, error, trace_id FROM review_scores WHERE id IN (1, 500) "
            "ORDER BY id")).all()
    engine.dispose()
    assert (total, runs, int(failed)) == (ROWS, 1, ROWS // 1000)
    assert orjson.loads(sample[0][0]) == {"id": 1, "words": 3} and sample[0][2]
    assert sample[1][0] is None and "text" in sample[1][1]

    store_engine = sa.create_engine(store)
    with store_engine.connect() as conn:
        row = conn.execute(sa.text("SELECT status, processed, failed, checkpoint FROM "
                                   "connector_runs WHERE connector = 'reviews'")).one()
        traced = conn.execute(sa.text(
            "SELECT COUNT(*) FROM traces WHERE route = 'connector'")).scalar()
    store_engine.dispose()
    assert row[0] == "succeeded" and row[1] == ROWS and row[2] == ROWS // 1000
    assert orjson.loads(row[3]) == {"key": ROWS}
    # Resumed, not restarted: only the batches after the checkpoint were scored again.
    # (the killed process scored at most one batch past its checkpoint)
    assert ROWS - killed_at <= traced <= ROWS + 2000


def test_scheduled_incremental_runs_of_a_query_on_sqlite(tmp_path: Path) -> None:
    """On a schedule, with `incremental`, each run scores only the rows added since the last
    finished run; `query` instead of `table`."""
    import asyncio

    from shipyard.config import parse_config
    from shipyard.config.loader import install_python_path
    from shipyard.connectors import Connectors, RunLog
    from shipyard.gateway.invoke import Invoker
    from shipyard.gateway.runtime import Gateway

    source = tmp_path / "source.db"
    engine = sa.create_engine(f"sqlite:///{source}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE reviews (id INTEGER PRIMARY KEY, text TEXT)"))
        conn.execute(sa.text("INSERT INTO reviews VALUES (:id, :text)"),
                     [{"id": i, "text": f"row {i}"} for i in range(1, 11)])
    config = parse_config(f"""
python_path: ["{FIXTURES}"]
store: {{url: "sqlite:///{tmp_path}/store.db"}}
auth: {{disabled: true}}
services:
  score: {{function: "connector_services:score", input_schema: {SCHEMA}}}
connectors:
  nightly:
    kind: sql
    url: "sqlite:///{source}"
    query: "SELECT id, text FROM reviews WHERE text IS NOT NULL"
    key: id
    output_table: scores
    batch_size: 4
    schedule: {{every_s: 1}}
    incremental: true
    target: {{service: score}}
""")
    install_python_path(config)

    async def scenario() -> None:
        gateway = Gateway(config)
        await gateway.start()
        stop = asyncio.Event()
        try:
            connectors = Connectors(gateway, Invoker(gateway))
            task = asyncio.create_task(connectors.run("nightly", stop=stop, scheduled=True))
            runs = RunLog(gateway.engine)
            while not [r for r in runs.list("nightly") if r.status == "succeeded"]:
                await asyncio.sleep(0.05)
            with engine.begin() as conn:
                conn.execute(sa.text("INSERT INTO reviews VALUES (:id, :text)"),
                             [{"id": i, "text": f"row {i}"} for i in range(11, 16)])
            while len([r for r in runs.list("nightly") if r.status == "succeeded"]) < 2:
                await asyncio.sleep(0.05)
            stop.set()
            await asyncio.wait_for(task, 30)
        finally:
            await gateway.stop()
        finished = [r for r in RunLog(gateway.engine).list("nightly")
                    if r.status == "succeeded"]
        assert [r.processed for r in reversed(finished)][:2] == [10, 5]
        assert finished[-1].checkpoint == {"key": 10}

    asyncio.run(scenario())
    with engine.connect() as conn:
        count, runs = conn.execute(sa.text(
            "SELECT COUNT(*), COUNT(DISTINCT run_id) FROM scores")).one()
    engine.dispose()
    assert (count, runs) == (15, 2)


def test_a_stopped_run_resumes_and_a_live_run_is_not_run_twice(tmp_path: Path) -> None:
    """A run stopped mid-way is `interrupted` and the next run continues it (same run id,
    from its checkpoint); while a run's heartbeat is fresh another run is refused (409)."""
    import asyncio

    from shipyard.config import parse_config
    from shipyard.config.loader import install_python_path
    from shipyard.connectors import Connectors, RunLog
    from shipyard.errors import Conflict
    from shipyard.gateway.invoke import Invoker
    from shipyard.gateway.runtime import Gateway

    source = tmp_path / "source.db"
    engine = sa.create_engine(f"sqlite:///{source}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE reviews (id INTEGER PRIMARY KEY, text TEXT)"))
        conn.execute(sa.text("INSERT INTO reviews VALUES (:id, :text)"),
                     [{"id": i, "text": f"row {i}"} for i in range(1, 101)])
    engine.dispose()
    config = parse_config(f"""
python_path: ["{FIXTURES}"]
store: {{url: "sqlite:///{tmp_path}/store.db"}}
auth: {{disabled: true}}
services:
  score: {{function: "connector_services:score", input_schema: {SCHEMA}}}
connectors:
  reviews: {{kind: sql, url: "sqlite:///{source}", table: reviews, key: id, batch_size: 10,
             columns: [id, text], output_table: scores, target: {{service: score}}}}
""")
    install_python_path(config)

    async def scenario() -> None:
        gateway = Gateway(config)
        await gateway.start()
        try:
            connectors = Connectors(gateway, Invoker(gateway))
            first = await connectors.run("reviews", max_messages=30)
            runs = RunLog(gateway.engine)
            [stopped] = runs.list("reviews")
            assert (stopped.status, stopped.processed) == ("interrupted", 30)
            assert stopped.checkpoint == {"key": 30} and first.stats.processed == 30

            # A live run (fresh heartbeat) of another process: not run twice.
            runs.update(stopped)
            with gateway.engine.begin() as conn:
                conn.execute(sa.text("UPDATE connector_runs SET status = 'running'"))
            with pytest.raises(Conflict) as caught:
                await connectors.run("reviews")
            assert stopped.id in caught.value.message and "--resume" in caught.value.message
            with gateway.engine.begin() as conn:
                conn.execute(sa.text("UPDATE connector_runs SET status = 'interrupted'"))

            second = await connectors.run("reviews")
            [done] = runs.list("reviews")
            assert done.id == stopped.id and done.status == "succeeded"
            assert done.processed == 100 and second.stats.processed == 100
        finally:
            await gateway.stop()

    asyncio.run(scenario())
