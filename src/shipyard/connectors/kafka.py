"""Kafka (aiokafka): consume a topic in a consumer group, produce each result to
`reply_topic` (acks=all, idempotent producer) with the request's key and a `correlation-id`
header, dead-letter poison records to `dead_letter_topic` with the reason in their headers,
and commit the group's offsets only after every result before them was written.

Delivery is at least once: a consumer that dies after producing and before committing
produces those results again when the records are redelivered (each carries the request's
topic, partition and offset in its headers, so a consumer of the results can drop repeats).

Brokers are reached at start within `connect_timeout_s`; when none answers, the run fails
with an error naming `bootstrap_servers`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from shipyard.config.connectors import KafkaConnectorConfig
from shipyard.connectors.base import Connector, Environment, Outcome, Poison, decode
from shipyard.errors import ConfigError

__all__ = ["KafkaConnector", "KafkaUnreachable"]

log = logging.getLogger("shipyard.connectors")


class KafkaUnreachable(ConfigError):
    """No Kafka broker answered at start."""


def _aiokafka() -> Any:
    try:
        import aiokafka
    except ImportError as exc:
        raise ConfigError(f"Kafka connectors need aiokafka ({exc}); install it with "
                          "pip install 'shipyard[kafka]'.") from None
    return aiokafka


class KafkaConnector(Connector):
    kind = "kafka"
    config: KafkaConnectorConfig

    def __init__(self, name: str, config: KafkaConnectorConfig, env: Environment) -> None:
        super().__init__(name, config, env)
        self.kafka = _aiokafka()
        self.group = config.group_id or name

    def _security(self) -> dict[str, Any]:
        cfg = self.config
        options: dict[str, Any] = {"security_protocol": cfg.security_protocol}
        if cfg.sasl_mechanism:
            options.update(sasl_mechanism=cfg.sasl_mechanism,
                           sasl_plain_username=cfg.sasl_username,
                           sasl_plain_password=cfg.sasl_password.get_secret_value()
                           if cfg.sasl_password else None)
        return options

    async def _start(self, client: Any) -> None:
        cfg = self.config
        try:
            await asyncio.wait_for(client.start(), cfg.connect_timeout_s)
        except (TimeoutError, OSError, self.kafka.errors.KafkaError) as exc:
            try:
                await client.stop()
            except Exception:  # nothing to close on a client that never connected
                log.debug("closing an unconnected Kafka client failed", exc_info=True)
            raise KafkaUnreachable(
                f"connectors.{self.name}: no Kafka broker answered at bootstrap_servers "
                f"'{cfg.bootstrap_servers}' within {cfg.connect_timeout_s:g} s "
                f"({type(exc).__name__}: {exc or 'timed out'}); start the brokers or fix "
                f"connectors.{self.name}.bootstrap_servers.") from None

    async def run(self, stop: asyncio.Event) -> None:
        cfg = self.config
        kafka = self.kafka
        security = self._security()
        producer = kafka.AIOKafkaProducer(bootstrap_servers=cfg.bootstrap_servers, acks="all",
                                          enable_idempotence=True,
                                          client_id=f"shipyard-{self.name}", **security)
        await self._start(producer)
        consumer = kafka.AIOKafkaConsumer(
            cfg.topic, bootstrap_servers=cfg.bootstrap_servers, group_id=self.group,
            enable_auto_commit=False, auto_offset_reset="earliest",
            max_poll_records=cfg.prefetch, client_id=f"shipyard-{self.name}", **security)
        try:
            await self._start(consumer)
        except KafkaUnreachable:
            await producer.stop()
            raise
        self.set_state("running")
        last_activity = time.monotonic()
        try:
            while not stop.is_set() and not self.enough():
                batches = await consumer.getmany(timeout_ms=500, max_records=cfg.prefetch)
                if not batches:
                    idle = self.env.idle_exit_s
                    if idle is not None and time.monotonic() - last_activity > idle:
                        break
                    continue
                last_activity = time.monotonic()
                for partition, records in batches.items():
                    settled = await self._partition(producer, records)
                    if settled:
                        await consumer.commit({partition: settled[-1].offset + 1})
                    if len(settled) < len(records):  # stopping: the rest is consumed again
                        consumer.seek(partition, records[len(settled)].offset)
                        stop.set()
                        break
            self.set_state("stopped")
        finally:
            self._up.set(0)
            await consumer.stop()
            await producer.stop()

    async def _partition(self, producer: Any, records: list[Any]) -> list[Any]:
        """Answer a partition's records concurrently and write their results; the records
        settled, in order (the caller commits the offset after the last): all, or those
        before the first one left for redelivery because the process stops."""
        slots = asyncio.Semaphore(self.config.concurrency)

        async def one(record: Any) -> tuple[Any, Outcome]:
            async with slots:
                self.begin()
                try:
                    headers = {k: v.decode("utf-8", "replace") for k, v in record.headers or ()}
                    try:
                        payload = decode(record.value or b"")
                    except Poison as poison:
                        return record, Outcome(False, poison.status, {}, reason=poison.reason,
                                               error=poison.message)
                    return record, await self.dispatcher.call(
                        payload, traceparent=headers.get("traceparent"))
                finally:
                    self.end()

        answered = list(await asyncio.gather(*(one(r) for r in records)))
        cut = next((i for i, (_, o) in enumerate(answered) if o.unsettled), len(answered))
        answered = answered[:cut]
        sends = [await self._send(producer, record, outcome) for record, outcome in answered]
        await asyncio.gather(*sends)
        for _, outcome in answered:
            self.counted(outcome)
        return [record for record, _ in answered]

    async def _send(self, producer: Any, record: Any, outcome: Outcome) -> Any:
        cfg = self.config
        source = [("x-shipyard-source", f"{record.topic}/{record.partition}/{record.offset}"
                   .encode()), ("x-shipyard-connector", self.name.encode())]
        correlation = dict(record.headers or ()).get("correlation-id")
        if correlation is not None:
            source.append(("correlation-id", correlation))
        if outcome.ok:
            return await producer.send(cfg.reply_topic, outcome.result(), key=record.key,
                                       headers=[*source, ("x-shipyard-trace-id",
                                                          outcome.trace_id.encode())])
        return await producer.send(cfg.dead_letter_topic, record.value, key=record.key,
                                   headers=[*source,
                                            ("x-shipyard-reason", outcome.reason.encode()),
                                            ("x-shipyard-error", outcome.error[:1000].encode()),
                                            ("x-shipyard-status", str(outcome.status).encode())])
