"""The `connectors:` section: each kind's validation names the key and the fix; schedules;
every setting in the settings table; a Kafka connector with no broker fails with an error that
names `bootstrap_servers` (there is no Kafka broker on this machine: a closed local port)."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime

import pytest

from shipyard.config import iter_settings, parse_config
from shipyard.config.connectors import Schedule
from shipyard.connectors.base import Dispatcher, Environment, Poison
from shipyard.connectors.kafka import KafkaConnector, KafkaUnreachable
from shipyard.connectors.runs import RunLog
from shipyard.connectors.schedule import cron_matches, next_run
from shipyard.errors import ConfigError
from shipyard.observe.metrics import Metrics
from shipyard.security.principal import Principal
from shipyard.store import create_store_engine

BASE = """
auth: {disabled: true}
providers: {sim: {kind: sim}}
models: {demo: {provider: sim, model: sim-chat}}
services: {score: {function: "json:dumps"}}
connectors:
"""


def config(block: str) -> object:
    return parse_config(BASE + block)


def error_of(block: str) -> str:
    with pytest.raises(ConfigError) as caught:
        config(block)
    return caught.value.message


def test_defaults_and_kinds() -> None:
    cfg = config("""
  q: {kind: rabbitmq, queue: requests, target: {service: score}}
  n: {kind: nats, stream: S, subject: s.req, target: {model: demo, prompt: "Say {text}"}}
  k: {kind: kafka, topic: t, reply_topic: t.out, target: {service: score}}
  d: {kind: sql, url: "sqlite:///x.db", table: t, key: id, output_table: o,
      target: {service: score}}
  f: {kind: files, path: /tmp/in, target: {service: score}}
""")
    connectors = cfg.connectors  # type: ignore[attr-defined]
    assert connectors["q"].dead_letter_queue == "requests.dead"
    assert connectors["q"].settle == "transaction"
    assert connectors["n"].dead_letter_subject == "s.req.dead"
    assert connectors["k"].dead_letter_topic == "t.dead"
    assert connectors["f"].done_dir == "/tmp/in/done"
    assert not any(c.autostart for c in connectors.values())


@pytest.mark.parametrize(("block", "expected"), [
    ("  x: {kind: rabbitmq, queue: q, target: {service: nope}}",
     "connectors.x.target.service is 'nope', which is not a service (known: score)"),
    ("  x: {kind: rabbitmq, queue: q, target: {model: nope}}",
     "connectors.x.target.model is 'nope', which is not a model (known: demo)"),
    ("  x: {kind: rabbitmq, queue: q, target: {service: score, model: demo}}",
     "set exactly one of 'service'"),
    ("  x: {kind: rabbitmq, queue: q}", "a connector needs a 'target'"),
    ("  x: {kind: rabbitmq, queue: q, target: {service: score, prompt: 'x'}}",
     "'prompt' applies to a model target"),
    ("  x: {kind: kafka, topic: t, reply_topic: r, bootstrap_servers: 'kafka',"
     " target: {service: score}}", "bootstrap server 'kafka' must be host:port"),
    ("  x: {kind: kafka, topic: t, reply_topic: r, security_protocol: SASL_SSL,"
     " target: {service: score}}", "needs sasl_mechanism, sasl_username and sasl_password"),
    ("  x: {kind: sql, url: 'sqlite://', key: id, output_table: o, target: {service: score}}",
     "set exactly one of 'table' or 'query'"),
    ("  x: {kind: sql, url: 'sqlite://', table: 't; drop', key: id, output_table: o,"
     " target: {service: score}}", "'t; drop' is not a plain SQL name"),
    ("  x: {kind: sql, url: 'sqlite://', table: t, key: id, output_table: o,"
     " schedule: {cron: '*/5 * *'}, target: {service: score}}", "must have five fields"),
    ("  x: {kind: sql, url: 'sqlite://', table: t, key: id, output_table: o,"
     " schedule: {}, target: {service: score}}", "exactly one of 'every_s' or 'cron'"),
    ("  x: {kind: ftp, target: {service: score}}", "connectors.x"),
    ("  x: {kind: rabbitmq, queue: q, prefetch: 0, target: {service: score}}",
     "connectors.x.rabbitmq.prefetch"),
])
def test_mistakes_name_the_key_and_the_fix(block: str, expected: str) -> None:
    assert expected in error_of(block)


def test_every_connector_setting_is_in_the_settings_table() -> None:
    paths = {s.path for s in iter_settings()}
    for path in ("connectors.NAME(kind=rabbitmq).queue", "connectors.NAME(kind=nats).stream",
                 "connectors.NAME(kind=kafka).bootstrap_servers",
                 "connectors.NAME(kind=sql).schedule.cron",
                 "connectors.NAME(kind=files).patterns",
                 "connectors.NAME(kind=sql).target.prompt"):
        assert path in paths
    assert all(s.help for s in iter_settings() if s.path.startswith("connectors."))


def test_schedules() -> None:
    at = datetime(2026, 1, 1, 10, 7, 30, tzinfo=UTC)  # a Thursday
    assert next_run(Schedule(cron="*/15 * * * *"), at, None) == at.replace(minute=15, second=0)
    assert next_run(Schedule(cron="0 3 * * 1-5"), at, None) == datetime(2026, 1, 2, 3, 0,
                                                                        tzinfo=UTC)
    assert next_run(Schedule(every_s=60), at, None) == at
    assert next_run(Schedule(every_s=60), at, at.replace(minute=7, second=0)) == at.replace(
        minute=8, second=0)
    assert cron_matches("0 0 * * 0", datetime(2026, 1, 4, tzinfo=UTC))  # a Sunday
    assert cron_matches("0 0 * * 7", datetime(2026, 1, 4, tzinfo=UTC))
    assert not cron_matches("0 0 * * 1", datetime(2026, 1, 4, tzinfo=UTC))


def test_a_prompt_names_the_field_a_message_lacks() -> None:
    cfg = config("  n: {kind: nats, stream: S, subject: s, target: {model: demo, "
                 "prompt: 'Summarise: {text}'}}")
    target = cfg.connectors["n"].target  # type: ignore[attr-defined]
    dispatcher = Dispatcher("n", target, None, Principal("default", None),  # type: ignore[arg-type]
                            Metrics())
    endpoint, body = dispatcher.request({"text": "a long story"})
    assert endpoint == "chat/completions"
    assert body == {"model": "demo", "messages": [{"role": "user",
                                                   "content": "Summarise: a long story"}]}
    with pytest.raises(Poison) as caught:
        dispatcher.request({"title": "x"})
    assert caught.value.reason == "invalid" and "'text'" in caught.value.message


def test_kafka_without_a_broker_fails_naming_bootstrap_servers(tmp_path: object) -> None:
    with socket.socket() as sock:  # a local port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = config(f"  k: {{kind: kafka, topic: t, reply_topic: r, bootstrap_servers: "
                 f"'127.0.0.1:{port}', connect_timeout_s: 2, target: {{service: score}}}}")
    engine = create_store_engine("sqlite://")
    connector = KafkaConnector("k", cfg.connectors["k"],  # type: ignore[attr-defined]
                               Environment(None, RunLog(engine), Metrics()))
    with pytest.raises(KafkaUnreachable) as caught:
        asyncio.run(connector.run(asyncio.Event()))
    assert f"bootstrap_servers '127.0.0.1:{port}'" in caught.value.message
    assert "connectors.k.bootstrap_servers" in caught.value.message
