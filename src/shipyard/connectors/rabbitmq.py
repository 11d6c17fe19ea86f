"""RabbitMQ (AMQP 0-9-1, through aio-pika): consume a queue, answer each message through the
target, publish the answer to the message's `reply_to` (or the configured `reply_queue`) with
its `correlation_id`, and dead-letter poison messages with the reason in their headers.

Settling (`settle:`):
- `transaction` (default): one settler commits results, dead letters and the requests' acks
  together in AMQP transactions of up to `commit_every` messages. A consumer that dies before
  a commit leaves its requests unacknowledged (redelivered) and its results unpublished, so
  nothing is lost and nothing is published twice.
- `confirm`: each result waits for its publisher confirm (it is on disk), then the request
  is acked; a crash between the two publishes that result again on redelivery.

Backpressure: the broker sends at most `prefetch` unacknowledged messages; at most
`concurrency` calls run at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from shipyard.config.connectors import RabbitMQConnectorConfig
from shipyard.connectors.base import (
    Connector,
    Environment,
    Outcome,
    Poison,
    decode,
    sleep_unless,
)
from shipyard.errors import ConfigError

__all__ = ["RabbitMQConnector"]

log = logging.getLogger("shipyard.connectors")


def _aio_pika() -> Any:
    try:
        import aio_pika
    except ImportError as exc:
        raise ConfigError(f"RabbitMQ connectors need aio-pika ({exc}); install it with "
                          "pip install 'shipyard[queues]'.") from None
    return aio_pika


class RabbitMQConnector(Connector):
    kind = "rabbitmq"
    config: RabbitMQConnectorConfig

    def __init__(self, name: str, config: RabbitMQConnectorConfig, env: Environment) -> None:
        super().__init__(name, config, env)
        self.pika = _aio_pika()
        self._last_activity = time.monotonic()

    async def run(self, stop: asyncio.Event) -> None:
        delay = 0.5
        while not stop.is_set():
            try:
                await self._session(stop)
                return
            except (asyncio.CancelledError, ConfigError):
                raise
            except Exception as exc:
                message = f"{type(exc).__name__}: {exc}"
                self.set_state("reconnecting", message)
                log.warning("connector %s: RabbitMQ session ended (%s); reconnecting in "
                            "%.1f s", self.name, message, delay)
                await sleep_unless(stop, delay)
                delay = min(delay * 2, 30.0)

    async def _session(self, stop: asyncio.Event) -> None:
        cfg = self.config
        pika = self.pika
        connection = await pika.connect(cfg.url.get_secret_value(),
                                        client_properties={"connection_name":
                                                           f"shipyard:{self.name}"})
        tasks: set[asyncio.Task[None]] = set()
        settler: asyncio.Task[None] | None = None
        try:
            transactional = cfg.settle == "transaction"
            channel = await connection.channel(publisher_confirms=not transactional)
            await channel.set_qos(prefetch_count=cfg.prefetch)
            queue = await channel.declare_queue(cfg.queue, durable=True,
                                                passive=not cfg.declare)
            if cfg.declare:
                await channel.declare_queue(cfg.dead_letter_queue, durable=True)
                if cfg.reply_queue:
                    await channel.declare_queue(cfg.reply_queue, durable=True)
            self.exchange = channel.default_exchange
            pending: asyncio.Queue[tuple[Any, Outcome, str | None]] = asyncio.Queue()
            failed = asyncio.Event()
            if transactional:
                tx = channel.transaction()
                await tx.select()
                settler = asyncio.create_task(self._settle_loop(tx, pending, failed))
            slots = asyncio.Semaphore(self.config.concurrency)
            done = asyncio.Event()

            async def handle(message: Any) -> None:
                try:
                    outcome, reply_to = await self._answer(message)
                    if outcome is None:
                        return
                    if transactional:
                        pending.put_nowait((message, outcome, reply_to))
                    else:
                        await self._publish(message, outcome, reply_to)
                        await message.ack()
                        self.counted(outcome)
                        self._check_done(done)
                except Exception as exc:
                    # The channel broke: start a new session (unacked messages come back).
                    self.stats.last_error = f"{type(exc).__name__}: {exc}"[:500]
                    failed.set()
                finally:
                    slots.release()
                    self.end()
                    self._last_activity = time.monotonic()

            async def on_message(message: Any) -> None:
                await slots.acquire()
                self.begin()
                task = asyncio.create_task(handle(message))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

            self._done, self._stop = done, stop
            tag = await queue.consume(on_message)
            self.set_state("running")
            log.info("connector %s: consuming %s (prefetch %d, %s)", self.name, cfg.queue,
                     cfg.prefetch, cfg.settle)
            waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(done.wait()),
                       asyncio.create_task(failed.wait()),
                       asyncio.create_task(self._idle(done))]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
            if failed.is_set():
                raise ConnectionError(self.stats.last_error or "the settler failed")
            await queue.cancel(tag)
            if tasks:  # let calls in flight finish and settle
                await asyncio.wait(tasks, timeout=30.0)
            if settler is not None:
                pending.put_nowait((None, Outcome(True, 0, {}), None))  # drain, then stop
                await asyncio.wait_for(settler, 30.0)
                settler = None
            self.set_state("stopped")
        finally:
            for task in list(tasks):
                task.cancel()
            if settler is not None:
                settler.cancel()
            self._up.set(0)
            await connection.close()

    def _check_done(self, done: asyncio.Event) -> None:
        if self.enough():
            done.set()

    async def _idle(self, done: asyncio.Event) -> None:
        """With `idle_exit_s`: stop once nothing has arrived for that long."""
        idle = self.env.idle_exit_s
        if idle is None:
            await asyncio.Event().wait()
            return
        while True:
            await asyncio.sleep(min(idle / 4, 0.5))
            if (self.stats.in_flight == 0
                    and time.monotonic() - self._last_activity > idle):
                done.set()
                return

    async def _answer(self, message: Any) -> tuple[Outcome | None, str | None]:
        """The outcome of one message and where its result goes; None when it must not be
        settled now (a passing failure while stopping: the broker redelivers it)."""
        cfg = self.config
        reply_to = message.reply_to or cfg.reply_queue
        headers = message.headers or {}
        traceparent = headers.get("traceparent")
        try:
            if not reply_to:
                raise Poison("no_reply_to", "The message has no reply_to and the connector has "
                             "no reply_queue; set the message's reply_to property, or "
                             f"connectors.{self.name}.reply_queue.")
            payload = decode(message.body)
        except Poison as poison:
            return Outcome(False, poison.status, {}, reason=poison.reason,
                           error=poison.message), None
        outcome = await self.dispatcher.call(
            payload, request_id=message.message_id,
            traceparent=traceparent if isinstance(traceparent, str) else None)
        if outcome.unsettled or (not outcome.ok and outcome.reason == "failed_after_retries"
                and (self._stop.is_set() or self._done.is_set())):
            return None, None
        return outcome, reply_to

    async def _publish(self, message: Any, outcome: Outcome, reply_to: str | None) -> None:
        pika = self.pika
        cfg = self.config
        correlation = message.correlation_id or message.message_id
        if outcome.ok and reply_to:
            await self.exchange.publish(pika.Message(
                outcome.result(), content_type="application/json",
                correlation_id=correlation, message_id=message.message_id,
                delivery_mode=pika.DeliveryMode.PERSISTENT,
                headers={"x-shipyard-status": outcome.status,
                         "x-shipyard-trace-id": outcome.trace_id,
                         "x-shipyard-connector": self.name}), routing_key=reply_to)
            return
        headers = dict(message.headers or {})
        headers.update({"x-shipyard-reason": outcome.reason,
                        "x-shipyard-error": outcome.error[:1000],
                        "x-shipyard-status": outcome.status,
                        "x-shipyard-attempts": outcome.attempts,
                        "x-shipyard-connector": self.name,
                        "x-shipyard-queue": cfg.queue})
        if outcome.trace_id:
            headers["x-shipyard-trace-id"] = outcome.trace_id
        await self.exchange.publish(pika.Message(
            message.body, content_type=message.content_type, correlation_id=correlation,
            message_id=message.message_id, reply_to=message.reply_to,
            delivery_mode=pika.DeliveryMode.PERSISTENT, headers=headers),
            routing_key=cfg.dead_letter_queue)

    async def _settle_loop(self, tx: Any, pending: asyncio.Queue[tuple[Any, Outcome,
                           str | None]], failed: asyncio.Event) -> None:
        """Publish results and dead letters and ack their requests, a transaction at a time."""
        limit = self.config.commit_every
        try:
            while True:
                batch = [await pending.get()]
                while len(batch) < limit and not pending.empty():
                    batch.append(pending.get_nowait())
                last = any(message is None for message, _, _ in batch)
                settled = [(m, o, r) for m, o, r in batch if m is not None]
                for message, outcome, reply_to in settled:
                    await self._publish(message, outcome, reply_to)
                    await message.ack()
                if settled:
                    await tx.commit()
                for _, outcome, _ in settled:
                    self.counted(outcome)
                if self.enough():
                    self._done.set()
                if last:
                    return
        except Exception as exc:
            self.stats.last_error = f"{type(exc).__name__}: {exc}"[:500]
            failed.set()
            raise
