"""NATS JetStream (nats-py): a durable pull consumer on a stream's subject; each message is
answered through the target, its result published to JetStream (`reply_subject`, or the
message's `Reply-To` header over core NATS), then the message is acknowledged (a double ack,
confirmed by the server). Poison messages go to `dead_letter_subject` with the reason in
their headers, then are acknowledged.

No loss, no duplicates: a message is acknowledged only after its result is stored (the
publish's ack), and results and dead letters carry `Nats-Msg-Id: <durable>:<stream
sequence>`, so when a consumer dies between the two, the redelivered message's result is
dropped by the stream's duplicate window (2 minutes by default; keep `ack_wait_s` below it).

Backpressure: at most `prefetch` messages are fetched and unacknowledged at once (the
consumer's `max_ack_pending` too); at most `concurrency` calls run at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from shipyard.config.connectors import NATSConnectorConfig
from shipyard.connectors.base import (
    Connector,
    Environment,
    Outcome,
    Poison,
    decode,
    sleep_unless,
)
from shipyard.errors import ConfigError

__all__ = ["NATSConnector"]

log = logging.getLogger("shipyard.connectors")


def _nats() -> Any:
    try:
        import nats
        import nats.js.api
        import nats.js.errors
    except ImportError as exc:
        raise ConfigError(f"NATS connectors need nats-py ({exc}); install it with "
                          "pip install 'shipyard[queues]'.") from None
    return nats


class NATSConnector(Connector):
    kind = "nats"
    config: NATSConnectorConfig

    def __init__(self, name: str, config: NATSConnectorConfig, env: Environment) -> None:
        super().__init__(name, config, env)
        self.nats = _nats()
        self.durable = config.durable or name.replace(".", "_").replace(":", "_")
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
                log.warning("connector %s: NATS session ended (%s); reconnecting in %.1f s",
                            self.name, message, delay)
                await sleep_unless(stop, delay)
                delay = min(delay * 2, 30.0)

    async def _session(self, stop: asyncio.Event) -> None:
        cfg = self.config
        nats = self.nats
        servers = [s.strip() for s in cfg.url.get_secret_value().split(",") if s.strip()]
        nc = await nats.connect(servers=servers, name=f"shipyard:{self.name}",
                                connect_timeout=5, max_reconnect_attempts=3,
                                allow_reconnect=True)
        tasks: set[asyncio.Task[None]] = set()
        try:
            js = nc.jetstream()
            if cfg.declare:
                await self._declare(js)
            consumer = nats.js.api.ConsumerConfig(
                durable_name=self.durable, ack_policy=nats.js.api.AckPolicy.EXPLICIT,
                ack_wait=cfg.ack_wait_s, max_ack_pending=cfg.prefetch * 2,
                filter_subject=cfg.subject)
            sub = await js.pull_subscribe(cfg.subject, durable=self.durable,
                                          stream=cfg.stream, config=consumer)
            self.js, self.nc, self._stop = js, nc, stop
            slots = asyncio.Semaphore(cfg.concurrency)
            self.set_state("running")
            log.info("connector %s: consuming %s on stream %s (durable %s)", self.name,
                     cfg.subject, cfg.stream, self.durable)
            while not stop.is_set() and not self.enough():
                # Refill in bulk: a fetch is a round trip, so wait until half the window is
                # free rather than fetching one message each time one finishes.
                while len(tasks) > cfg.prefetch // 2:
                    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                free = cfg.prefetch - len(tasks)
                try:
                    messages = await sub.fetch(free, timeout=0.5)
                except (nats.errors.TimeoutError, TimeoutError):  # nothing to fetch
                    if self._idle_over(tasks):
                        break
                    continue
                self._last_activity = time.monotonic()
                for message in messages:
                    self.begin()
                    task = asyncio.create_task(self._handle(message, slots, stop))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(tasks, timeout=30.0)
            self.set_state("stopped")
        finally:
            for task in list(tasks):
                task.cancel()
            self._up.set(0)
            # Every message was settled above (or is left for redelivery): close at once (a
            # drain would wait for the pull subscription's open request to expire).
            try:
                await nc.close()
            except Exception:  # closing a broken connection must not hide the first error
                log.debug("connector %s: closing the NATS connection failed", self.name)

    def _idle_over(self, tasks: set[asyncio.Task[None]]) -> bool:
        idle = self.env.idle_exit_s
        return (idle is not None and not tasks
                and time.monotonic() - self._last_activity > idle)

    async def _declare(self, js: Any) -> None:
        cfg = self.config
        wanted = [cfg.subject, cfg.dead_letter_subject]
        if cfg.reply_subject:
            wanted.append(cfg.reply_subject)
        try:
            info = await js.stream_info(cfg.stream)
        except self.nats.js.errors.NotFoundError:
            await js.add_stream(name=cfg.stream, subjects=wanted)
            return
        have = list(info.config.subjects or [])
        missing = [s for s in wanted if s not in have]
        if missing:
            info.config.subjects = have + missing
            await js.update_stream(info.config)

    async def _handle(self, message: Any, slots: asyncio.Semaphore,
                      stop: asyncio.Event) -> None:
        try:
            async with slots:
                outcome, reply_to = await self._answer(message)
                if outcome is None:
                    await message.nak()
                    return
                await self._publish(message, outcome, reply_to)
                await message.ack_sync()
                self.counted(outcome)
        except Exception as exc:
            # Not acknowledged: JetStream redelivers it after ack_wait.
            self.stats.last_error = f"{type(exc).__name__}: {exc}"[:500]
            log.warning("connector %s: a message was left for redelivery (%s)", self.name,
                        self.stats.last_error)
        finally:
            self.end()
            self._last_activity = time.monotonic()

    async def _answer(self, message: Any) -> tuple[Outcome | None, str | None]:
        cfg = self.config
        headers = message.headers or {}
        reply_to = headers.get("Reply-To") or cfg.reply_subject
        try:
            if not reply_to:
                raise Poison("no_reply_to", "The message has no Reply-To header and the "
                             "connector has no reply_subject; send the header, or set "
                             f"connectors.{self.name}.reply_subject.")
            payload = decode(message.data)
        except Poison as poison:
            return Outcome(False, poison.status, {}, reason=poison.reason,
                           error=poison.message), None
        outcome = await self.dispatcher.call(payload, request_id=headers.get("Nats-Msg-Id"),
                                             traceparent=headers.get("traceparent"))
        if outcome.unsettled or (not outcome.ok and outcome.reason == "failed_after_retries"
                and self._stopping()):
            return None, None
        return outcome, reply_to

    def _stopping(self) -> bool:
        return self._stop.is_set() or self.enough()

    async def _publish(self, message: Any, outcome: Outcome, reply_to: str | None) -> None:
        cfg = self.config
        headers = message.headers or {}
        sequence = message.metadata.sequence.stream
        correlation = headers.get("Correlation-Id") or headers.get("Nats-Msg-Id") or str(
            sequence)
        if outcome.ok and reply_to:
            out = {"Nats-Msg-Id": f"{self.durable}:{sequence}",
                   "Correlation-Id": correlation, "Shipyard-Status": str(outcome.status),
                   "Shipyard-Trace-Id": outcome.trace_id, "Shipyard-Connector": self.name}
            if headers.get("Reply-To"):  # a requester waiting on its inbox: core NATS
                await self.nc.publish(reply_to, outcome.result(), headers=out)
                await self.nc.flush()
            else:
                await self.js.publish(reply_to, outcome.result(), headers=out)
            return
        dead = {k: v for k, v in headers.items() if not k.startswith("Nats-")}
        dead.update({"Nats-Msg-Id": f"{self.durable}:{sequence}:dead",
                     "Correlation-Id": correlation, "Shipyard-Reason": outcome.reason,
                     "Shipyard-Error": outcome.error[:1000].replace("\r", " ").replace(
                         "\n", " "),
                     "Shipyard-Status": str(outcome.status),
                     "Shipyard-Attempts": str(outcome.attempts),
                     "Shipyard-Connector": self.name, "Shipyard-Subject": message.subject,
                     "Shipyard-Trace-Id": outcome.trace_id})
        await self.js.publish(cfg.dead_letter_subject, message.data, headers=dead)
