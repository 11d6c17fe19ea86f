"""docs/integration.md, Connectors, as printed: the YAML and `scoring.py` are written to a
folder outside the repo, the shell commands run there against the real RabbitMQ and a SQLite
table, and the client example gets its answer from a running `shipyard connectors run`."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from brokers import NATS_URL, RABBITMQ_URL, _delete_queues, _reachable
from conftest import REPO
from doc_blocks import take
from shipyard.config import parse_config

DOC = (REPO / "docs" / "integration.md").read_text()
QUEUES = ["demo-orders", "demo-orders.replies", "demo-orders.dead"]
ENVIRON = {"AMQP_URL": RABBITMQ_URL, "NATS_URL": NATS_URL,
           "REVIEWS_DB_URL": "sqlite:///reviews.db"}


def block(tag: str) -> str:
    [found] = re.findall(rf"```{tag}\n(.*?)```", DOC, flags=re.DOTALL)
    return str(found)


# Registered with the docs coverage test: the blocks this module runs.
for _tag in ("python connectors", "bash connectors", "python connectors-client"):
    take("docs/integration.md", containing=block(_tag))


def _env() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, **ENVIRON, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"}


def test_the_yaml_is_a_valid_config() -> None:
    config = parse_config(block("yaml connectors"), environ=ENVIRON)
    assert sorted(config.connectors) == ["clicks", "drops", "events", "orders", "reviews"]
    assert config.connectors["orders"].dead_letter_queue == "demo-orders.dead"
    assert config.connectors["clicks"].dead_letter_topic == "clicks.dead"


def test_the_s3_block_is_a_valid_config() -> None:
    services = block("yaml connectors").split("connectors:")[0]
    config = parse_config(services + block("yaml connectors-s3"), environ={
        "S3_ACCESS_KEY_ID": "AKIAEXAMPLE", "S3_SECRET_ACCESS_KEY": "secret"})
    s3 = config.connectors["bucket-drops"].s3  # type: ignore[union-attr]
    assert s3 is not None and s3.done_prefix == "incoming/done/"


async def _publish(body: bytes) -> None:
    import aio_pika

    connection = await aio_pika.connect(RABBITMQ_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue("demo-orders", durable=True)
        await channel.default_exchange.publish(aio_pika.Message(body, correlation_id="doc-1"),
                                               routing_key="demo-orders")


async def _take(queue: str) -> list[bytes]:
    import aio_pika

    connection = await aio_pika.connect(RABBITMQ_URL)
    got = []
    async with connection:
        channel = await connection.channel()
        found = await channel.declare_queue(queue, passive=True)
        while (message := await found.get(no_ack=True, fail=False, timeout=5)) is not None:
            got.append(message.body)
    return got


@pytest.fixture
def demo_queues() -> Iterator[None]:
    _reachable(5672, "RabbitMQ")
    asyncio.run(_delete_queues(QUEUES))
    yield
    asyncio.run(_delete_queues(QUEUES))


def test_the_commands_and_the_client_run_as_printed(tmp_path: Path, demo_queues: None) -> None:
    (tmp_path / "shipyard.yaml").write_text(block("yaml connectors"))
    (tmp_path / "scoring.py").write_text(block("python connectors"))
    with sqlite3.connect(tmp_path / "reviews.db") as db:
        db.execute("CREATE TABLE reviews (id INTEGER PRIMARY KEY, text TEXT)")
        db.executemany("INSERT INTO reviews VALUES (?, ?)",
                       [(1, "great"), (2, "not so great"), (3, None)])
    asyncio.run(_publish(b'{"id": 1, "text": "a queued request"}'))

    ran = subprocess.run(["bash", "-ec", block("bash connectors")], capture_output=True,
                         text=True, cwd=tmp_path, env=_env(), timeout=300)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert "connector drops: 2 processed, 2 ok" in ran.stdout
    assert "connector reviews: 3 processed, 2 ok, 1 dead-lettered or failed" in ran.stdout
    assert "connector orders: 1 processed, 1 ok" in ran.stdout
    for name in ("clicks", "drops", "events", "orders", "reviews"):
        assert name in ran.stdout
    lines = (tmp_path / "inbox" / "done" / "first.csv.results.jsonl").read_bytes().splitlines()
    assert [orjson.loads(x)["output"] for x in lines] == [{"id": 1, "words": 2},
                                                          {"id": 2, "words": 3}]
    with sqlite3.connect(tmp_path / "reviews.db") as db:
        scored = db.execute(
            "SELECT id, status, output FROM review_scores ORDER BY id").fetchall()
    assert [(i, s) for i, s, _ in scored] == [(1, "ok"), (2, "ok"), (3, "failed")]
    [reply] = asyncio.run(_take("demo-orders.replies"))
    assert orjson.loads(reply)["output"] == {"id": 1, "words": 3}

    log = tmp_path / "orders.log"
    with log.open("wb") as handle:
        consumer = subprocess.Popen(["shipyard", "connectors", "run", "orders"], cwd=tmp_path,
                                    env=_env(), stdout=handle, stderr=subprocess.STDOUT)
    try:
        (tmp_path / "client.py").write_text(block("python connectors-client"))
        client = subprocess.run([sys.executable, "client.py"], capture_output=True, text=True,
                                cwd=tmp_path, env=_env(), timeout=60)
        assert client.returncode == 0, client.stderr + log.read_text()
        assert client.stdout.strip() == "order-7 {'id': 7, 'words': 4}"
    finally:
        consumer.send_signal(signal.SIGTERM)
        consumer.wait(60)
    assert consumer.returncode == 0, log.read_text()[-3000:]
