"""What every connector shares: turning a message (or row, or file line) into a call through
the gateway's chain, telling a passing failure from a poison message, retrying the first,
and counting everything.

A message's call goes through the gateway's `Invoker` (handed down by the gateway or the
CLI: connectors sit below the gateway) — the same authentication
result, key restrictions, budget, rate limits, admission, escalation, PII, guards, cache,
trace (route `connector`, attribute `connector`) and cost as an HTTP request.

- `Poison`: the message can never succeed (bad JSON, an input the target refuses, a 4xx);
  it goes to the dead letter with its reason, at once.
- A passing failure (429, 5xx, a timeout, a draining gateway) is tried again with backoff
  (full jitter) up to `max_attempts`, then dead-lettered with reason `failed_after_retries`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from shipyard.config.connectors import ConnectorTarget
from shipyard.connectors.runs import RunLog
from shipyard.observe.metrics import Metrics
from shipyard.pipeline import Endpoint
from shipyard.security.principal import Principal

if TYPE_CHECKING:  # the gateway hands connectors its invoker; they sit below it
    from shipyard.gateway.invoke import Invoker

__all__ = ["TRANSIENT", "Connector", "Dispatcher", "Environment", "Outcome", "Poison",
           "Stats", "decode", "sleep_unless"]

log = logging.getLogger("shipyard.connectors")

# Statuses worth another try: the request was fine, the moment was not.
TRANSIENT = frozenset({408, 425, 429, 500, 502, 503, 504})


class Poison(Exception):
    """A message that can never succeed; `reason` is a short code (bad_json, invalid,
    rejected, no_reply_to, failed_after_retries), `message` says what and how to fix it."""

    def __init__(self, reason: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status = status


async def sleep_unless(stop: asyncio.Event, seconds: float) -> bool:
    """Wait `seconds` or until `stop` is set; True when it was set."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True


def decode(body: bytes) -> Any:
    """A message body as JSON, or `Poison("bad_json")`."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Poison("bad_json", f"The message body is not valid JSON ({exc}); send one JSON "
                     "value (a service's input or an OpenAI request body).") from None


@dataclass(slots=True)
class Outcome:
    """How one message ended: `ok` with the answer (`body`, as an HTTP client would get it,
    and `output`, the part a table or result file keeps), or dead with a reason."""

    ok: bool
    status: int
    body: dict[str, Any]
    output: Any = None
    reason: str = ""
    error: str = ""
    trace_id: str = ""
    attempts: int = 1

    def result(self) -> bytes:
        return orjson.dumps(self.body)

    @property
    def unsettled(self) -> bool:
        """A passing failure while the process stops: leave the message for redelivery
        (the row, the file for the next run) instead of dead-lettering it."""
        return not self.ok and self.reason == "stopping"


@dataclass(slots=True)
class Stats:
    """Live counts of one connector in this process (the dashboard and `status` show them)."""

    state: str = "starting"  # starting|running|reconnecting|idle|stopped|failed
    processed: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    in_flight: int = 0
    last_error: str = ""
    started: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "processed": self.processed,
                "succeeded": self.succeeded, "failed": self.failed, "retried": self.retried,
                "in_flight": self.in_flight,
                "last_error": self.last_error, "uptime_s": round(time.time() - self.started, 1)}


class Dispatcher:
    """Runs one payload through the connector's target (see the module docstring)."""

    def __init__(self, connector: str, target: ConnectorTarget, invoker: Invoker,
                 principal: Principal, metrics: Metrics, *, max_attempts: int = 3,
                 retry_backoff_s: float = 0.5, timeout_s: float | None = None) -> None:
        self.connector = connector
        self.target = target
        self.invoker = invoker
        self.principal = principal
        self.metrics = metrics
        self.max_attempts = max_attempts
        self.retry_backoff_s = retry_backoff_s
        self.timeout_s = timeout_s
        self._attributes = {"connector": connector}
        # The service's input schema, when it declares one (text columns of a CSV file are
        # converted to the types it names).
        self.input_schema: dict[str, Any] | None = None
        # True while the process stops (the gateway drains): a passing failure then is not
        # retried nor dead-lettered but left for redelivery (`Outcome.unsettled`).
        self.stopping: Callable[[], bool] = lambda: False
        self._retried = metrics.connector_messages.labels(connector, "retried")

    def request(self, payload: Any) -> tuple[Endpoint, Any]:
        """The endpoint and body a payload becomes (`Poison` when it cannot be one)."""
        target = self.target
        if target.service is not None:
            return "invoke", payload
        if target.prompt is not None:
            if not isinstance(payload, dict):
                raise Poison("invalid", "With a prompt template the message must be a JSON "
                             f"object of the fields it names; got {type(payload).__name__}.",
                             422)
            try:
                text = target.prompt.format(**payload)
            except (KeyError, IndexError, ValueError) as exc:
                raise Poison("invalid", f"The message lacks the field {exc} that the prompt "
                             "template names; send it, or change the connector's prompt.",
                             422) from None
            if target.endpoint == "embeddings":
                return "embeddings", {"model": target.model, "input": text}
            if target.endpoint == "completions":
                return "completions", {"model": target.model, "prompt": text}
            return "chat/completions", {"model": target.model,
                                        "messages": [{"role": "user", "content": text}]}
        if not isinstance(payload, dict):
            raise Poison("invalid", f"A message for model '{target.model}' must be an OpenAI "
                         f"request body (a JSON object); got {type(payload).__name__}.", 422)
        return target.endpoint, {"model": target.model, **payload}

    async def once(self, payload: Any, *, request_id: str | None = None,
                   traceparent: str | None = None) -> Outcome:
        """One call, no retry."""
        endpoint, body = self.request(payload)
        result = await self.invoker.run(
            self.principal, endpoint, body, route="connector",
            service=self.target.service, request_id=request_id, traceparent=traceparent,
            deadline_s=self.timeout_s, attributes=self._attributes)
        if result.ok:
            return Outcome(True, result.status, result.body, _output(endpoint, result.body),
                           trace_id=result.trace_id)
        error = result.body.get("error") if isinstance(result.body, dict) else None
        message = (error.get("message") if isinstance(error, dict) else None) or str(
            result.body)[:500]
        return Outcome(False, result.status, result.body,
                       reason="rejected" if result.status not in TRANSIENT else "transient",
                       error=str(message), trace_id=result.trace_id)

    async def call(self, payload: Any, *, request_id: str | None = None,
                   traceparent: str | None = None, attempts: int | None = None) -> Outcome:
        """The payload's outcome after retrying passing failures (`attempts` overrides
        `max_attempts`, e.g. for a message that was already tried elsewhere)."""
        tries = attempts if attempts is not None else self.max_attempts
        outcome: Outcome | None = None
        for attempt in range(1, max(1, tries) + 1):
            try:
                outcome = await self.once(payload, request_id=request_id,
                                          traceparent=traceparent)
            except Poison as poison:
                return Outcome(False, poison.status, _error_body(poison), reason=poison.reason,
                               error=poison.message, attempts=attempt)
            outcome.attempts = attempt
            if outcome.ok or outcome.status not in TRANSIENT:
                return outcome
            if self.stopping():
                outcome.reason = "stopping"
                return outcome
            if attempt < tries:
                self._retried.inc()
                delay = self.retry_backoff_s * (2 ** (attempt - 1))
                await asyncio.sleep(random.uniform(0, delay))
        if outcome is None:  # pragma: no cover - the loop runs at least once
            raise RuntimeError("no attempt was made")
        outcome.reason = "failed_after_retries"
        outcome.error = f"{outcome.error} (after {outcome.attempts} attempts)"
        return outcome


def _error_body(poison: Poison) -> dict[str, Any]:
    return {"error": {"message": poison.message, "type": "invalid_request_error",
                      "code": poison.reason}}


def _output(endpoint: Endpoint, body: dict[str, Any]) -> Any:
    """The part of an answer a table or a result file keeps."""
    try:
        if endpoint == "invoke":
            return body.get("output")
        if endpoint == "chat/completions":
            return body["choices"][0]["message"]["content"]
        if endpoint == "completions":
            return body["choices"][0]["text"]
        return body["data"][0]["embedding"]
    except (KeyError, IndexError, TypeError):
        return body


@dataclass(slots=True)
class Environment:
    """What a connector gets from the process that runs it."""

    dispatcher: Dispatcher | None
    runs: RunLog
    metrics: Metrics
    idle_exit_s: float | None = None  # stop after this long without work (CLI, tests)
    max_messages: int | None = None  # stop after this many (CLI, tests)
    scheduled: bool = False  # SQL: repeat on the connector's schedule


class Connector:
    """Base of every connector kind: `run(stop)` works until `stop` is set (a queue), or
    until its work is done (a SQL pass, the files present, with `idle_exit_s`)."""

    kind: ClassVar[str] = "connector"

    def __init__(self, name: str, config: Any, env: Environment) -> None:
        self.name = name
        self.config = config
        self.env = env
        self.stats = Stats()
        metrics = env.metrics
        self._ok = metrics.connector_messages.labels(name, "ok")
        self._dead = metrics.connector_messages.labels(name, "dead")
        self._in_flight = metrics.connector_in_flight.labels(name)
        self._up = metrics.connector_up.labels(name)
        self._up.set(0)

    @property
    def dispatcher(self) -> Dispatcher:
        if self.env.dispatcher is None:
            raise RuntimeError(f"connector {self.name} has no target")
        return self.env.dispatcher

    async def run(self, stop: asyncio.Event) -> None:
        raise NotImplementedError

    def set_state(self, state: str, error: str = "") -> None:
        self.stats.state = state
        if error:
            self.stats.last_error = error[:500]
        self._up.set(1 if state in ("running", "idle") else 0)

    def counted(self, outcome: Outcome) -> None:
        """Count a message that has been settled (its result or dead letter is stored)."""
        stats = self.stats
        stats.processed += 1
        stats.retried += outcome.attempts - 1
        if outcome.ok:
            stats.succeeded += 1
            self._ok.inc()
        else:
            stats.failed += 1
            self._dead.inc()
            stats.last_error = f"{outcome.reason}: {outcome.error}"[:500]

    def begin(self) -> None:
        self.stats.in_flight += 1
        self._in_flight.inc()

    def end(self) -> None:
        self.stats.in_flight -= 1
        self._in_flight.dec()

    def enough(self) -> bool:
        """True once `max_messages` have been settled (the CLI's and tests' bound)."""
        limit = self.env.max_messages
        return limit is not None and self.stats.processed >= limit
