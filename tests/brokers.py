"""Fixtures for the connector tests: RabbitMQ, NATS JetStream and MariaDB on 127.0.0.1 (real
services, never mocks). Each test gets names of its own and removes what it made; a service
that is unreachable skips the test, or fails it under SHIPYARD_REQUIRE_SERVICES=1."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import Iterator

import pytest

from conftest import REQUIRE_SERVICES

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"
NATS_URL = "nats://127.0.0.1:4222"
MARIADB_ADMIN = {"host": "127.0.0.1", "port": 3306, "user": "root", "database": "test"}


def _reachable(port: int, what: str) -> None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3):
            return
    except OSError as exc:
        reason = f"{what} on 127.0.0.1:{port} is unreachable ({exc})"
        if REQUIRE_SERVICES:
            pytest.fail(reason + " and SHIPYARD_REQUIRE_SERVICES=1")
        pytest.skip(reason)


async def _delete_queues(names: list[str]) -> None:
    import aio_pika

    connection = await aio_pika.connect(RABBITMQ_URL)
    async with connection:
        for name in names:
            channel = await connection.channel()
            with contextlib.suppress(Exception):  # a queue the test never made
                await channel.queue_delete(name)


@pytest.fixture
def rabbitmq() -> Iterator[str]:
    """A queue name of this test's own on RabbitMQ; it and NAME.replies, NAME.dead are
    deleted afterwards."""
    _reachable(5672, "RabbitMQ")
    name = f"shipyard-test-{uuid.uuid4().hex[:10]}"
    yield name
    asyncio.run(_delete_queues([name, f"{name}.replies", f"{name}.dead"]))


async def _delete_stream(name: str) -> None:
    import nats

    nc = await nats.connect(NATS_URL)
    try:
        await nc.jetstream().delete_stream(name)
    except Exception:  # a stream the test never made
        pass
    finally:
        await nc.close()


@pytest.fixture
def nats_prefix() -> Iterator[str]:
    """A stream name and subject prefix of this test's own on NATS JetStream."""
    _reachable(4222, "NATS")
    name = f"shipyard_test_{uuid.uuid4().hex[:10]}"
    yield name
    asyncio.run(_delete_stream(name))


@pytest.fixture
def mariadb_url() -> Iterator[str]:
    """A fresh MariaDB database for this test, dropped afterwards."""
    _reachable(3306, "MariaDB")
    import pymysql

    name = f"shipyard_test_{uuid.uuid4().hex[:12]}"
    conn = pymysql.connect(**MARIADB_ADMIN, autocommit=True)
    try:
        with conn.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{name}`")
    finally:
        conn.close()
    try:
        yield f"mysql+pymysql://root@127.0.0.1:3306/{name}"
    finally:
        conn = pymysql.connect(**MARIADB_ADMIN, autocommit=True)
        try:
            with conn.cursor() as cursor:
                cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            conn.close()
