"""Queue connectors on the real brokers of this machine: 10,000 messages (1% poison) through a
hosted service with `shipyard connectors run`, the consumer killed (SIGKILL) mid-run and
started again — every result published once, every poison message in the dead letter with
its reason, nothing lost, nothing duplicated."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from brokers import NATS_URL, RABBITMQ_URL, nats_prefix, rabbitmq  # noqa: F401
from conftest import FIXTURES, REPO

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TOTAL = 10_000
SCHEMA = ('{type: object, required: [id, text], properties: {id: {type: integer}, '
          'text: {type: string}}}')


def messages() -> tuple[list[bytes], set[int], dict[int, str]]:
    """TOTAL bodies: every 100th is poison (odd hundreds: bad JSON; even: no `text`)."""
    bodies, ok, poison = [], set(), {}
    for i in range(TOTAL):
        if i % 100 == 99:
            if (i // 100) % 2:
                bodies.append(b'{"id": %d, "text": ' % i)  # cut off: not JSON
                poison[i] = "bad_json"
            else:
                bodies.append(orjson.dumps({"id": i}))  # fails the input schema
                poison[i] = "rejected"
        else:
            bodies.append(orjson.dumps({"id": i, "text": f"message number {i}"}))
            ok.add(i)
    return bodies, ok, poison


def config(tmp_path: Path, connector: str) -> Path:
    path = tmp_path / "shipyard.yaml"
    path.write_text(f"""
python_path: ["{FIXTURES}"]
store: {{url: "sqlite:///{tmp_path}/store.db"}}
auth: {{disabled: true}}
services:
  score: {{function: "connector_services:score", input_schema: {SCHEMA}}}
connectors:
{connector}
""")
    return path


def spawn(cfg: Path, name: str, log: Path, *flags: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(FIXTURES), str(REPO / "src")])}
    with log.open("ab") as handle:
        return subprocess.Popen([sys.executable, "-m", "shipyard", "connectors", "run", name,
                                 "-c", str(cfg), "--log-level", "info", *flags],
                                stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=REPO)


def kill_when(proc: subprocess.Popen[bytes], done: Any, log: Path, at_least: int) -> int:
    """SIGKILL the consumer once `done()` reports at least `at_least` results."""
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            count = done()
            if count >= at_least:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                return count
            if proc.poll() is not None:
                raise AssertionError(f"the consumer exited early:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"no progress in time:\n{log.read_text()[-3000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def finish(cfg: Path, name: str, log: Path) -> None:
    second = spawn(cfg, name, log, "--idle-exit", "8")
    try:
        second.wait(300)
    finally:
        if second.poll() is None:
            second.kill()
    assert second.returncode == 0, log.read_text()[-3000:]


# -- RabbitMQ ---------------------------------------------------------------------------


async def _rabbit_publish(queue: str, bodies: list[bytes]) -> None:
    import aio_pika

    connection = await aio_pika.connect(RABBITMQ_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(queue, durable=True)
        for start in range(0, len(bodies), 500):
            await asyncio.gather(*(channel.default_exchange.publish(aio_pika.Message(
                body, message_id=str(i), correlation_id=f"c{i}",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=queue)
                for i, body in enumerate(bodies[start:start + 500], start)))


async def _rabbit_count(queue: str) -> int:
    import aio_pika

    connection = await aio_pika.connect(RABBITMQ_URL)
    async with connection:
        channel = await connection.channel()
        try:
            found = await channel.declare_queue(queue, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:  # not declared yet
            return 0
        return int(found.declaration_result.message_count or 0)


async def _rabbit_drain(queue: str) -> list[Any]:
    import aio_pika

    connection = await aio_pika.connect(RABBITMQ_URL)
    got: list[Any] = []
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=1000)
        found = await channel.declare_queue(queue, passive=True)
        while True:
            message = await found.get(no_ack=True, fail=False, timeout=5)
            if message is None:
                return got
            got.append(message)


def test_rabbitmq_ten_thousand_messages_survive_a_killed_consumer(
        tmp_path: Path, rabbitmq: str) -> None:  # noqa: F811
    queue = rabbitmq
    cfg = config(tmp_path, f"""  orders:
    kind: rabbitmq
    queue: {queue}
    reply_queue: {queue}.replies
    target: {{service: score}}
    prefetch: 200
    concurrency: 32
    commit_every: 100""")
    bodies, ok, poison = messages()
    asyncio.run(_rabbit_publish(queue, bodies))
    log = tmp_path / "consumer.log"
    first = spawn(cfg, "orders", log)
    killed_at = kill_when(first, lambda: asyncio.run(_rabbit_count(f"{queue}.replies")), log,
                          2_500)
    assert killed_at < TOTAL - 1000, "the kill came too late to test a restart"
    finish(cfg, "orders", log)

    replies = asyncio.run(_rabbit_drain(f"{queue}.replies"))
    ids = [orjson.loads(m.body)["output"]["id"] for m in replies]
    assert len(ids) == len(set(ids)), "a result was published twice"
    assert set(ids) == ok
    for message in replies[:50]:
        body = orjson.loads(message.body)
        assert message.correlation_id == f"c{body['output']['id']}"
        assert body["object"] == "service.result"
        assert message.headers["x-shipyard-trace-id"]
    dead = asyncio.run(_rabbit_drain(f"{queue}.dead"))
    reasons = {int(m.message_id): m.headers["x-shipyard-reason"] for m in dead}
    assert len(dead) == len(poison) and reasons == poison
    one = next(m for m in dead if m.headers["x-shipyard-reason"] == "rejected")
    assert "text" in one.headers["x-shipyard-error"]
    assert asyncio.run(_rabbit_count(queue)) == 0

    status = subprocess.run([sys.executable, "-m", "shipyard", "connectors", "status",
                             "orders", "--json", "-c", str(cfg)], capture_output=True,
                            env={**os.environ, "PYTHONPATH": str(REPO / "src")}, cwd=REPO,
                            check=True)
    runs = [orjson.loads(line) for line in status.stdout.splitlines()]
    assert runs[0]["status"] == "succeeded" and runs[0]["processed"] > 0
    assert runs[1]["status"] == "running"  # the killed consumer's run: it never ended


# -- NATS JetStream -----------------------------------------------------------------------


async def _nats_publish(stream: str, bodies: list[bytes]) -> None:
    import nats

    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    await js.add_stream(name=stream, subjects=[f"{stream}.req", f"{stream}.res",
                                               f"{stream}.req.dead"])
    for start in range(0, len(bodies), 500):
        await asyncio.gather(*(js.publish(f"{stream}.req", body, headers={
            "Nats-Msg-Id": f"m{i}", "Correlation-Id": f"c{i}"})
            for i, body in enumerate(bodies[start:start + 500], start)))
    await nc.close()


async def _nats_count(stream: str, subject: str) -> int:
    import nats

    nc = await nats.connect(NATS_URL)
    try:
        info = await nc.jetstream().stream_info(stream, subjects_filter=subject)
        return int((info.state.subjects or {}).get(subject, 0))
    finally:
        await nc.close()


async def _nats_drain(stream: str, subject: str) -> list[Any]:
    import nats

    nc = await nats.connect(NATS_URL)
    got: list[Any] = []
    try:
        sub = await nc.jetstream().pull_subscribe(subject, stream=stream)
        while True:
            try:
                batch = await sub.fetch(1000, timeout=2)
            except (nats.errors.TimeoutError, TimeoutError):
                return got
            for message in batch:
                await message.ack()
            got.extend(batch)
    finally:
        await nc.close()


def test_nats_ten_thousand_messages_survive_a_killed_consumer(
        tmp_path: Path, nats_prefix: str) -> None:  # noqa: F811
    stream = nats_prefix
    cfg = config(tmp_path, f"""  events:
    kind: nats
    stream: {stream}
    subject: {stream}.req
    reply_subject: {stream}.res
    target: {{service: score}}
    prefetch: 200
    concurrency: 32
    ack_wait_s: 3""")
    bodies, ok, poison = messages()
    asyncio.run(_nats_publish(stream, bodies))
    log = tmp_path / "consumer.log"
    first = spawn(cfg, "events", log)
    killed_at = kill_when(first, lambda: asyncio.run(_nats_count(stream, f"{stream}.res")),
                          log, 2_500)
    assert killed_at < TOTAL - 1000, "the kill came too late to test a restart"
    finish(cfg, "events", log)

    replies = asyncio.run(_nats_drain(stream, f"{stream}.res"))
    ids = [orjson.loads(m.data)["output"]["id"] for m in replies]
    assert len(ids) == len(set(ids)), "a result was stored twice"
    assert set(ids) == ok
    for message in replies[:50]:
        assert message.headers["Correlation-Id"] == f"c{orjson.loads(message.data)['output']['id']}"
    dead = asyncio.run(_nats_drain(stream, f"{stream}.req.dead"))
    reasons = {int(m.headers["Correlation-Id"][1:]): m.headers["Shipyard-Reason"] for m in dead}
    assert len(dead) == len(poison) and reasons == poison


# -- Smaller scenarios, in process ------------------------------------------------------------


def _runtime(tmp_path: Path, connectors: str) -> Any:
    from shipyard.config import parse_config
    from shipyard.config.loader import install_python_path

    config = parse_config(f"""
python_path: ["{FIXTURES}"]
store: {{url: "sqlite:///{tmp_path}/store.db"}}
traces: {{flush_interval_s: 0.05}}
auth: {{disabled: true}}
providers: {{sim: {{kind: sim}}}}
models: {{demo: {{provider: sim, model: sim-chat}}}}
services:
  flaky: {{function: "connector_services:flaky", input_schema: {SCHEMA}}}
connectors:
{connectors}
""")
    install_python_path(config)
    return config


async def _run_connector(config: Any, name: str, n: int) -> Any:
    from shipyard.connectors import Connectors
    from shipyard.gateway.invoke import Invoker
    from shipyard.gateway.runtime import Gateway

    gateway = Gateway(config)
    await gateway.start()
    try:
        return await asyncio.wait_for(
            Connectors(gateway, Invoker(gateway)).run(name, max_messages=n), 120)
    finally:
        await gateway.stop()


def test_rabbitmq_confirm_mode_honours_reply_to_and_retries_passing_failures(
        tmp_path: Path, rabbitmq: str) -> None:  # noqa: F811
    import aio_pika

    queue = rabbitmq
    config = _runtime(tmp_path, f"""  rpc:
    kind: rabbitmq
    queue: {queue}
    settle: confirm
    retry_backoff_s: 0
    target: {{service: flaky}}""")

    async def scenario() -> tuple[list[Any], list[Any], Any]:
        connection = await aio_pika.connect(RABBITMQ_URL)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            await channel.declare_queue(queue, durable=True)
            inbox = await channel.declare_queue(f"{queue}.replies", durable=True)
            for i in range(30):  # ids divisible by 7 fail once, then succeed
                await channel.default_exchange.publish(aio_pika.Message(
                    orjson.dumps({"id": i, "text": "x y"}), correlation_id=f"c{i}",
                    reply_to=inbox.name), routing_key=queue)
            await channel.default_exchange.publish(  # no reply_to, no reply_queue
                aio_pika.Message(b'{"id": 99, "text": "x"}', message_id="lost"),
                routing_key=queue)
            connector = await _run_connector(config, "rpc", 31)
            replies = await _rabbit_drain(inbox.name)
            dead = await _rabbit_drain(f"{queue}.dead")
            return replies, dead, connector

    replies, dead, connector = asyncio.run(scenario())
    assert sorted(m.correlation_id for m in replies) == sorted(f"c{i}" for i in range(30))
    assert (connector.stats.succeeded, connector.stats.failed) == (30, 1)
    assert connector.stats.retried == len([i for i in range(30) if i % 7 == 0])
    [lost] = dead
    assert lost.headers["x-shipyard-reason"] == "no_reply_to"
    assert "reply_queue" in lost.headers["x-shipyard-error"]


def test_nats_messages_through_a_model_alias_with_a_prompt(
        tmp_path: Path, nats_prefix: str) -> None:  # noqa: F811
    import nats

    stream = nats_prefix
    config = _runtime(tmp_path, f"""  summarise:
    kind: nats
    stream: {stream}
    subject: {stream}.req
    reply_subject: {stream}.res
    target: {{model: demo, prompt: "Summarise: {{text}}"}}""")

    async def scenario() -> tuple[list[Any], list[Any]]:
        nc = await nats.connect(NATS_URL)
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[f"{stream}.req", f"{stream}.res",
                                                   f"{stream}.req.dead"])
        for i in range(20):
            await js.publish(f"{stream}.req", orjson.dumps({"text": f"story {i}"}),
                             headers={"Correlation-Id": f"s{i}"})
        await js.publish(f"{stream}.req", b'{"title": "no text"}',
                         headers={"Correlation-Id": "bad"})
        await nc.close()
        await _run_connector(config, "summarise", 21)
        return (await _nats_drain(stream, f"{stream}.res"),
                await _nats_drain(stream, f"{stream}.req.dead"))

    replies, dead = asyncio.run(scenario())
    assert len(replies) == 20
    answer = orjson.loads(replies[0].data)
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"]
    [bad] = dead
    assert bad.headers["Shipyard-Reason"] == "invalid"
    assert "'text'" in bad.headers["Shipyard-Error"]
