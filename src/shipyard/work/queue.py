"""The work queue in the store: enqueue, claim with a lease, finish, retry, dead-letter.

An item moves `queued -> running -> succeeded | dead | cancelled`; a failed attempt puts it
back to `queued` with a later `run_after` until `max_attempts` is spent, then it is dead
(kept with its last error until someone requeues it). Every change of state is one
conditional UPDATE, so any number of workers in any number of processes can share a store:

- **claim**: `UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)` on PostgreSQL, the
  same UPDATE (re-checking `status = 'queued'`) on SQLite, where writers take turns. The claim
  stamps a random lease token; only its holder can finish the attempt.
- **lease**: a claim holds the item until `lease_until`; the holder extends it while it works
  (`extend`). A worker that dies stops extending; `reap` then puts its items back in the
  queue (or dead-letters them when their attempts are spent), so a crash loses nothing.
- **finish**: `complete` / `fail` / `release` / `mark_cancelled` only change an item whose
  lease token still matches, so an attempt that outlived its lease cannot finish it twice.

Delivery is at least once: a handler can run again after a crash, so it should be idempotent
(webhook receivers dedupe on `webhook-id`, which is the item id).

>>> queue = WorkQueue(engine)  # doctest: +SKIP
>>> queue.enqueue("email", {"to": "a@example.com"}, idempotency_key="welcome-42")  # doctest: +SKIP
>>> [claim] = queue.claim(["email"], owner="w1", lease_s=30)  # doctest: +SKIP
>>> queue.complete(claim, {"sent": True})  # doctest: +SKIP
True
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

import orjson
from sqlalchemy import Engine, case, delete, func, insert, select, true, update
from sqlalchemy.exc import IntegrityError, OperationalError

from shipyard.errors import Conflict, InvalidRequest, NotFound
from shipyard.work.tables import work_attempts, work_items

__all__ = [
    "FINISHED",
    "STATUSES",
    "AttemptLog",
    "Claim",
    "Enqueued",
    "Heartbeat",
    "WorkItem",
    "WorkQueue",
    "new_item_id",
]

log = logging.getLogger("shipyard.work")

Status = Literal["queued", "running", "succeeded", "dead", "cancelled"]
STATUSES: tuple[str, ...] = ("queued", "running", "succeeded", "dead", "cancelled")
FINISHED: tuple[str, ...] = ("succeeded", "dead", "cancelled")
_ID = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
_ERROR_MAX = 4000
T = TypeVar("T")


def new_item_id(prefix: str = "wrk") -> str:
    """A fresh id: `prefix` + `_` + 24 hex characters (96 random bits)."""
    return f"{prefix}_{os.urandom(12).hex()}"


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back without a zone; every stored time is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_UTC_Z).decode()


def _loads(value: str | None) -> Any:
    return None if value is None else orjson.loads(value)


@dataclass(frozen=True)
class WorkItem:
    """One row of the queue, as read."""

    id: str
    tenant_id: str
    kind: str
    status: str
    payload: Any
    attempts: int
    max_attempts: int
    priority: int
    run_after: datetime
    created_at: datetime
    updated_at: datetime
    result: Any = None
    last_error: str | None = None
    ref: str | None = None
    idempotency_key: str | None = None
    timeout_s: float | None = None
    lease_owner: str | None = None
    lease_until: datetime | None = None
    cancel_requested: bool = False
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Any) -> WorkItem:
        m = row._mapping
        return cls(
            id=m["id"], tenant_id=m["tenant_id"], kind=m["kind"], status=m["status"],
            payload=_loads(m["payload"]), attempts=m["attempts"],
            max_attempts=m["max_attempts"], priority=m["priority"],
            run_after=_aware(m["run_after"]),  # type: ignore[arg-type]
            created_at=_aware(m["created_at"]),  # type: ignore[arg-type]
            updated_at=_aware(m["updated_at"]),  # type: ignore[arg-type]
            result=_loads(m["result"]), last_error=m["last_error"], ref=m["ref"],
            idempotency_key=m["idempotency_key"], timeout_s=m["timeout_s"],
            lease_owner=m["lease_owner"], lease_until=_aware(m["lease_until"]),
            cancel_requested=bool(m["cancel_requested"]),
            started_at=_aware(m["started_at"]), finished_at=_aware(m["finished_at"]))

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def public(self, *, payload: bool = True) -> dict[str, Any]:
        """A JSON-ready view (times as ISO strings)."""
        out: dict[str, Any] = {
            "id": self.id, "object": "work_item", "tenant": self.tenant_id, "kind": self.kind,
            "status": self.status, "attempts": self.attempts,
            "max_attempts": self.max_attempts, "priority": self.priority, "ref": self.ref,
            "idempotency_key": self.idempotency_key, "last_error": self.last_error,
            "cancel_requested": self.cancel_requested}
        for name in ("run_after", "created_at", "updated_at", "started_at", "finished_at",
                     "lease_until"):
            value = getattr(self, name)
            out[name] = None if value is None else value.isoformat().replace("+00:00", "Z")
        if payload:
            out["payload"], out["result"] = self.payload, self.result
        return out


@dataclass(frozen=True)
class Claim:
    """An item this worker holds, with the lease token that lets it finish the item."""

    item: WorkItem
    token: str
    claimed_at: datetime

    @property
    def id(self) -> str:
        return self.item.id

    @property
    def attempt(self) -> int:
        """This attempt's number (1 for the first)."""
        return self.item.attempts


@dataclass(frozen=True)
class Enqueued:
    """What `enqueue` did: `created` is False when the idempotency key already named an
    item (which is returned as it stands)."""

    item: WorkItem
    created: bool


@dataclass(frozen=True)
class Heartbeat:
    """What `extend` found: items whose lease is gone (another worker may hold them now)
    and items someone asked to cancel."""

    lost: frozenset[str] = frozenset()
    cancel: frozenset[str] = frozenset()


@dataclass(frozen=True)
class AttemptLog:
    """One attempt of an item, from the attempt log."""

    item_id: str
    attempt: int
    outcome: str  # succeeded | retry | dead | lost | cancelled
    ended_at: datetime
    started_at: datetime | None = None
    owner: str | None = None
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return None if value is None else value.isoformat().replace("+00:00", "Z")

        return {"attempt": self.attempt, "outcome": self.outcome,
                "started_at": iso(self.started_at), "ended_at": iso(self.ended_at),
                "owner": self.owner, "error": self.error, **self.detail}


class WorkQueue:
    """The queue over a store engine (SQLite or PostgreSQL). Methods block: call them from a
    thread (`asyncio.to_thread`) in async code; `shipyard.work.Worker` does."""

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] | None = None) -> None:
        self.engine = engine
        self.clock = clock or (lambda: datetime.now(UTC))
        self._sqlite = engine.dialect.name == "sqlite"
        # SQLite has one writer at a time; threads of one process queue here rather than in
        # SQLite's busy handler, which sleeps in growing steps while it waits.
        self._write_lock = threading.Lock() if self._sqlite else contextlib.nullcontext()

    # -- plumbing ---------------------------------------------------------------------------
    def _write(self, work: Callable[[Any], T]) -> T:
        """Run `work(connection)` in one transaction; on SQLite, retry when another process
        holds the write lock longer than the busy timeout (writers take turns there)."""
        for attempt in range(8):
            try:
                with self._write_lock, self.engine.begin() as connection:
                    return work(connection)
            except OperationalError as exc:
                if not self._sqlite or "locked" not in str(exc) or attempt == 7:
                    raise
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")  # pragma: no cover

    def _pick(self, connection: Any, query: Any) -> Any:
        """The ids `query` selects, locked for this transaction.

        PostgreSQL: a separate `SELECT ... FOR UPDATE SKIP LOCKED` whose row locks hold until
        commit (inside `UPDATE ... WHERE id IN (subquery)` the planner may re-run a LIMIT
        subquery once per outer row and claim more rows than asked). SQLite has one writer at
        a time and evaluates the subquery once, so the UPDATE takes it as a subquery.
        """
        if self._sqlite:
            return query.scalar_subquery()
        return [row[0] for row in connection.execute(query)]

    # -- enqueue ----------------------------------------------------------------------------
    def enqueue(self, kind: str, payload: Any, *, tenant_id: str = "default",
                idempotency_key: str | None = None, max_attempts: int = 5,
                priority: int = 0, delay_s: float = 0.0, ref: str | None = None,
                timeout_s: float | None = None, item_id: str | None = None) -> Enqueued:
        """Queue one item (durably: it is in the store when this returns).

        With `idempotency_key`, a second enqueue of the same (tenant, kind, key) creates
        nothing and returns the first item (`created` False), whatever its status.
        """
        _check_kind(kind)
        if max_attempts < 1:
            raise InvalidRequest(f"max_attempts is {max_attempts}; it must be at least 1.",
                                 param="max_attempts")
        if item_id is not None and not _ID.match(item_id):
            raise InvalidRequest(f"Item id {item_id!r} must be 1-40 letters, digits, _ or -.",
                                 param="item_id")
        if idempotency_key is not None and not 0 < len(idempotency_key) <= 255:
            raise InvalidRequest("An idempotency key must have 1 to 255 characters.",
                                 param="idempotency_key")
        now = self.clock()
        new_id = item_id or new_item_id()
        row: dict[str, Any] = {
            "id": new_id, "tenant_id": tenant_id, "kind": kind,
            "status": "queued", "priority": priority, "ref": ref,
            "idempotency_key": idempotency_key, "payload": _json(payload), "attempts": 0,
            "max_attempts": max_attempts, "timeout_s": timeout_s,
            "run_after": now + timedelta(seconds=max(0.0, delay_s)),
            "cancel_requested": False, "created_at": now, "updated_at": now}
        try:
            self._write(lambda c: c.execute(insert(work_items).values(**row)))
        except IntegrityError:
            if idempotency_key is not None:
                existing = self.find(tenant_id=tenant_id, kind=kind,
                                     idempotency_key=idempotency_key)
                if existing is not None:
                    return Enqueued(existing, created=False)
            raise Conflict(f"A work item with id '{row['id']}' already exists; pass another "
                           "item_id or none.", param="item_id") from None
        return Enqueued(self._get(new_id), created=True)

    def enqueue_many(self, kind: str, payloads: Iterable[Any], *, tenant_id: str = "default",
                     max_attempts: int = 5, priority: int = 0, ref: str | None = None,
                     timeout_s: float | None = None, chunk: int = 1000) -> list[str]:
        """Queue many items (e.g. the lines of a batch) in chunks of `chunk` rows per
        transaction; returns their ids in order."""
        _check_kind(kind)
        ids: list[str] = []
        rows: list[dict[str, Any]] = []

        def flush() -> None:
            if rows:
                batch = list(rows)
                self._write(lambda c: c.execute(insert(work_items), batch))
                rows.clear()

        for payload in payloads:
            now = self.clock()
            item_id = new_item_id()
            ids.append(item_id)
            rows.append({"id": item_id, "tenant_id": tenant_id, "kind": kind,
                         "status": "queued", "priority": priority, "ref": ref,
                         "idempotency_key": None, "payload": _json(payload), "attempts": 0,
                         "max_attempts": max_attempts, "timeout_s": timeout_s,
                         "run_after": now, "cancel_requested": False, "created_at": now,
                         "updated_at": now})
            if len(rows) >= chunk:
                flush()
        flush()
        return ids

    # -- claim and lease --------------------------------------------------------------------
    def claim(self, kinds: Sequence[str], *, owner: str, lease_s: float,
              limit: int = 1) -> list[Claim]:
        """Take up to `limit` due items of `kinds` (highest priority, then oldest due first)
        and hold them for `lease_s` seconds. Never returns an item another claim holds."""
        if not kinds or limit < 1:
            return []
        now = self.clock()
        token = os.urandom(16).hex()
        t = work_items
        # A read first: an idle poll must not take SQLite's write lock (or open a PostgreSQL
        # write transaction) when nothing is due.
        with self.engine.connect() as connection:
            if connection.execute(select(t.c.id).where(
                    t.c.status == "queued", t.c.kind.in_(list(kinds)),
                    t.c.run_after <= now).limit(1)).first() is None:
                return []
        due = (select(t.c.id)
               .where(t.c.status == "queued", t.c.kind.in_(list(kinds)), t.c.run_after <= now)
               .order_by(t.c.priority.desc(), t.c.run_after, t.c.id)
               .limit(limit)
               .with_for_update(skip_locked=True))
        values = {"status": "running", "lease_token": token, "lease_owner": owner[:128],
                  "lease_until": now + timedelta(seconds=lease_s),
                  "attempts": t.c.attempts + 1,
                  "started_at": func.coalesce(t.c.started_at, now), "updated_at": now}

        def work(connection: Any) -> list[Any]:
            ids = self._pick(connection, due)
            if isinstance(ids, list) and not ids:
                return []
            return list(connection.execute(
                update(t).where(t.c.id.in_(ids), t.c.status == "queued").values(**values)
                .returning(*t.c)).fetchall())

        rows = self._write(work)
        claims = [Claim(WorkItem.from_row(r), token, now) for r in rows]
        claims.sort(key=lambda c: (-c.item.priority, c.item.run_after, c.item.id))
        return claims

    def extend(self, claims: Sequence[Claim], *, lease_s: float) -> Heartbeat:
        """Renew the leases of `claims`; says which are lost and which should be cancelled."""
        if not claims:
            return Heartbeat()
        now = self.clock()
        t = work_items
        held: dict[str, bool] = {}
        by_token: dict[str, list[str]] = {}
        for c in claims:
            by_token.setdefault(c.token, []).append(c.id)

        def work(connection: Any) -> None:
            for token, ids in by_token.items():
                for row in connection.execute(
                        update(t).where(t.c.id.in_(ids), t.c.lease_token == token,
                                        t.c.status == "running")
                        .values(lease_until=now + timedelta(seconds=lease_s))
                        .returning(t.c.id, t.c.cancel_requested)):
                    held[row[0]] = bool(row[1])

        self._write(work)
        return Heartbeat(lost=frozenset(c.id for c in claims if c.id not in held),
                         cancel=frozenset(i for i, cancel in held.items() if cancel))

    def reap(self, *, limit: int = 500) -> int:
        """Take back items whose lease expired (their worker died or froze): back to the
        queue, or dead when their attempts are spent, or cancelled when that was asked.
        Returns how many were taken back."""
        return len(self.reap_items(limit=limit))

    def reap_items(self, *, limit: int = 500) -> list[tuple[str, str, str]]:
        """`reap`, returning (id, kind, new status) of each item taken back."""
        now = self.clock()
        t = work_items
        expired = (select(t.c.id).where(t.c.status == "running", t.c.lease_until < now)
                   .limit(limit).with_for_update(skip_locked=True))

        def work(connection: Any) -> list[Any]:
            ids = self._pick(connection, expired)
            if isinstance(ids, list) and not ids:
                return []
            rows = connection.execute(
                update(t).where(t.c.id.in_(ids), t.c.status == "running",
                                t.c.lease_until < now)
                .values(status=case((t.c.cancel_requested == true(), "cancelled"),
                                    (t.c.attempts >= t.c.max_attempts, "dead"),
                                    else_="queued"),
                        last_error=case(
                            (t.c.cancel_requested == true(), t.c.last_error),
                            else_="The worker holding this item stopped renewing its lease "
                                  "(it crashed, was killed or froze); the attempt was "
                                  "abandoned."),
                        finished_at=case((t.c.cancel_requested == true(), now),
                                         (t.c.attempts >= t.c.max_attempts, now),
                                         else_=None),
                        run_after=now, lease_token=None, lease_until=None, updated_at=now)
                .returning(t.c.id, t.c.tenant_id, t.c.kind, t.c.attempts, t.c.lease_owner,
                           t.c.status)).fetchall()
            if rows:
                connection.execute(insert(work_attempts), [
                    {"item_id": r[0], "tenant_id": r[1], "kind": r[2], "attempt": r[3],
                     "owner": r[4], "started_at": None, "ended_at": now, "outcome": "lost",
                     "error": "lease expired", "detail": None} for r in rows])
            return list(rows)

        rows = self._write(work)
        for r in rows:
            log.warning("work item %s (%s) lost its lease on attempt %d; now %s",
                        r[0], r[2], r[3], r[5])
        return [(str(r[0]), str(r[2]), str(r[5])) for r in rows]

    # -- finishing an attempt ---------------------------------------------------------------
    def _finish(self, claim: Claim, values: dict[str, Any], outcome: str,
                error: str | None, detail: dict[str, Any] | None) -> str | None:
        """Apply `values` if the lease still holds; log the attempt; the new status."""
        now = self.clock()
        t = work_items
        status_value = values.pop("status")
        # A cancel asked for while the attempt ran wins over a retry or a dead letter; work
        # that did succeed stays succeeded.
        status: Any = status_value if status_value == "succeeded" else case(
            (t.c.cancel_requested == true(), "cancelled"), else_=status_value)
        stmt = (update(t).where(t.c.id == claim.id, t.c.lease_token == claim.token,
                                t.c.status == "running")
                .values(status=status,
                        lease_token=None, lease_until=None, updated_at=now, **values)
                .returning(t.c.status))

        def work(connection: Any) -> str | None:
            row = connection.execute(stmt).first()
            if row is None:
                return None
            final = str(row[0])
            if final == "cancelled":
                connection.execute(update(t).where(t.c.id == claim.id)
                                   .values(finished_at=now))
            connection.execute(insert(work_attempts).values(
                item_id=claim.id, tenant_id=claim.item.tenant_id, kind=claim.item.kind,
                attempt=claim.attempt, owner=claim.item.lease_owner,
                started_at=claim.claimed_at, ended_at=now,
                outcome="cancelled" if final == "cancelled" and outcome != "succeeded"
                else outcome,
                error=None if error is None else error[:_ERROR_MAX],
                detail=_json(detail) if detail else None))
            return final

        final = self._write(work)
        if final is None:
            log.warning("work item %s: attempt %d finished after its lease was lost; another "
                        "worker owns it now", claim.id, claim.attempt)
        return final

    def complete(self, claim: Claim, result: Any = None, *,
                 detail: dict[str, Any] | None = None) -> bool:
        """Mark the item succeeded with `result` (JSON-able). False when the lease was lost
        (the item was reclaimed; this attempt's result is not kept)."""
        now = self.clock()
        final = self._finish(claim, {"status": "succeeded", "result": _json(result),
                                     "finished_at": now, "last_error": None},
                             "succeeded", None, detail)
        return final is not None

    def fail(self, claim: Claim, error: str, *, retry: bool = True, delay_s: float = 0.0,
             detail: dict[str, Any] | None = None) -> str | None:
        """End a failed attempt: back to the queue after `delay_s` while attempts remain and
        `retry` is true, else dead with `error`. Returns the new status ("queued", "dead" or
        "cancelled"), or None when the lease was lost."""
        now = self.clock()
        dead = not retry or claim.attempt >= claim.item.max_attempts
        values: dict[str, Any] = {"status": "dead" if dead else "queued",
                                  "last_error": error[:_ERROR_MAX]}
        if dead:
            values["finished_at"] = now
        else:
            values["run_after"] = now + timedelta(seconds=max(0.0, delay_s))
        return self._finish(claim, values, "dead" if dead else "retry", error, detail)

    def release(self, claim: Claim) -> bool:
        """Give the item back untouched (this worker is stopping): it is due again at once and
        the attempt is not counted."""
        now = self.clock()
        t = work_items
        stmt = (update(t).where(t.c.id == claim.id, t.c.lease_token == claim.token,
                                t.c.status == "running")
                .values(status="queued", attempts=t.c.attempts - 1, run_after=now,
                        lease_token=None, lease_until=None, updated_at=now))
        return bool(self._write(lambda c: c.execute(stmt).rowcount))

    def mark_cancelled(self, claim: Claim, reason: str = "cancelled while running") -> bool:
        """The worker stopped a running item because it was asked to cancel it."""
        now = self.clock()
        return self._finish(claim, {"status": "cancelled", "finished_at": now,
                                    "last_error": reason}, "cancelled", reason, None) is not None

    # -- operator actions -------------------------------------------------------------------
    def cancel(self, item_id: str, *, tenant_id: str | None) -> WorkItem:
        """Cancel a queued item now, or ask the worker running it to stop (its status turns
        `cancelled` when the worker notices, within a third of the lease). A finished item is
        a 409 naming its status."""
        now = self.clock()
        t = work_items
        scope = [t.c.id == item_id] + ([t.c.tenant_id == tenant_id] if tenant_id else [])

        def work(connection: Any) -> int:
            done = connection.execute(update(t).where(*scope, t.c.status == "queued").values(
                status="cancelled", finished_at=now, updated_at=now)).rowcount
            if not done:
                done = connection.execute(update(t).where(*scope, t.c.status == "running")
                                          .values(cancel_requested=True,
                                                  updated_at=now)).rowcount
            return int(done)

        if not self._write(work):
            item = self.get(item_id, tenant_id=tenant_id)
            raise Conflict(f"Work item '{item_id}' is {item.status}; only queued or running "
                           "items can be cancelled.", param="status")
        return self.get(item_id, tenant_id=tenant_id)

    def requeue(self, item_id: str, *, tenant_id: str | None, delay_s: float = 0.0) -> WorkItem:
        """Run a finished item again (redeliver a webhook, retry a dead job) with a fresh set
        of attempts; it keeps its id and its attempt log. A queued or running item is a 409."""
        now = self.clock()
        t = work_items
        scope = [t.c.id == item_id] + ([t.c.tenant_id == tenant_id] if tenant_id else [])
        stmt = (update(t).where(*scope, t.c.status.in_(FINISHED))
                .values(status="queued", attempts=0, cancel_requested=False, finished_at=None,
                        run_after=now + timedelta(seconds=max(0.0, delay_s)),
                        lease_token=None, lease_until=None, updated_at=now))
        if not self._write(lambda c: c.execute(stmt).rowcount):
            item = self.get(item_id, tenant_id=tenant_id)
            raise Conflict(f"Work item '{item_id}' is {item.status}; it will run anyway. Only "
                           "succeeded, dead or cancelled items can be requeued.", param="status")
        return self.get(item_id, tenant_id=tenant_id)

    # -- reads ------------------------------------------------------------------------------
    def _get(self, item_id: str) -> WorkItem:
        with self.engine.connect() as connection:
            row = connection.execute(select(work_items).where(work_items.c.id == item_id)).first()
        if row is None:
            raise NotFound(f"There is no work item '{item_id}'.", param="id")
        return WorkItem.from_row(row)

    def get(self, item_id: str, *, tenant_id: str | None) -> WorkItem:
        """One item; another tenant's item is a 404 like a missing one (tenant None: any)."""
        t = work_items
        query = select(t).where(t.c.id == item_id)
        if tenant_id is not None:
            query = query.where(t.c.tenant_id == tenant_id)
        with self.engine.connect() as connection:
            row = connection.execute(query).first()
        if row is None:
            raise NotFound(f"There is no work item '{item_id}' in this tenant; list them to "
                           "find its id.", param="id")
        return WorkItem.from_row(row)

    def find(self, *, tenant_id: str, kind: str, idempotency_key: str) -> WorkItem | None:
        """The item enqueued with this idempotency key, if any."""
        t = work_items
        with self.engine.connect() as connection:
            row = connection.execute(select(t).where(
                t.c.tenant_id == tenant_id, t.c.kind == kind,
                t.c.idempotency_key == idempotency_key)).first()
        return None if row is None else WorkItem.from_row(row)

    def list_items(self, *, tenant_id: str | None, kind: str | None = None,
                   kinds: Sequence[str] | None = None, status: str | None = None,
                   ref: str | None = None, limit: int = 100,
                   before: tuple[datetime, str] | None = None,
                   kind_prefix: str | None = None,
                   key_prefix: str | None = None) -> list[WorkItem]:
        """Items newest first; `before` (created_at, id) of the last row pages on;
        `kind_prefix` selects every kind that starts with it (e.g. all jobs), `key_prefix`
        every idempotency key (e.g. the webhook deliveries announcing one job)."""
        if status is not None and status not in STATUSES:
            raise InvalidRequest(f"Status {status!r} is not a work item status; use one of "
                                 f"{', '.join(STATUSES)}.", param="status")
        t = work_items
        query = select(t)
        if tenant_id is not None:
            query = query.where(t.c.tenant_id == tenant_id)
        if kind is not None:
            query = query.where(t.c.kind == kind)
        if kinds is not None:
            query = query.where(t.c.kind.in_(list(kinds)))
        if kind_prefix is not None:
            query = query.where(t.c.kind.startswith(kind_prefix, autoescape=True))
        if key_prefix is not None:
            query = query.where(t.c.idempotency_key.startswith(key_prefix, autoescape=True))
        if status is not None:
            query = query.where(t.c.status == status)
        if ref is not None:
            query = query.where(t.c.ref == ref)
        if before is not None:
            at, last_id = before
            query = query.where((t.c.created_at < at)
                                | ((t.c.created_at == at) & (t.c.id < last_id)))
        query = query.order_by(t.c.created_at.desc(), t.c.id.desc()).limit(max(1, limit))
        with self.engine.connect() as connection:
            return [WorkItem.from_row(r) for r in connection.execute(query)]

    def attempts(self, item_id: str) -> list[AttemptLog]:
        """The attempt log of an item, oldest first."""
        a = work_attempts
        with self.engine.connect() as connection:
            rows = connection.execute(select(a).where(a.c.item_id == item_id)
                                      .order_by(a.c.seq)).fetchall()
        return [AttemptLog(item_id=r.item_id, attempt=r.attempt, outcome=r.outcome,
                           ended_at=_aware(r.ended_at),  # type: ignore[arg-type]
                           started_at=_aware(r.started_at), owner=r.owner, error=r.error,
                           detail=_loads(r.detail) or {}) for r in rows]

    def last_attempts(self, item_ids: Sequence[str]) -> dict[str, AttemptLog]:
        """The newest attempt of each item (for list views), in one query."""
        if not item_ids:
            return {}
        a = work_attempts
        newest = (select(func.max(a.c.seq)).where(a.c.item_id.in_(list(item_ids)))
                  .group_by(a.c.item_id))
        with self.engine.connect() as connection:
            rows = connection.execute(select(a).where(a.c.seq.in_(newest))).fetchall()
        return {r.item_id: AttemptLog(item_id=r.item_id, attempt=r.attempt, outcome=r.outcome,
                                      ended_at=_aware(r.ended_at),  # type: ignore[arg-type]
                                      started_at=_aware(r.started_at), owner=r.owner,
                                      error=r.error, detail=_loads(r.detail) or {})
                for r in rows}

    def counts(self, *, tenant_id: str | None = None, kind: str | None = None,
               kinds: Sequence[str] | None = None) -> dict[str, int]:
        """How many items are in each status."""
        t = work_items
        query = select(t.c.status, func.count()).group_by(t.c.status)
        if tenant_id is not None:
            query = query.where(t.c.tenant_id == tenant_id)
        if kind is not None:
            query = query.where(t.c.kind == kind)
        if kinds is not None:
            query = query.where(t.c.kind.in_(list(kinds)))
        out = dict.fromkeys(STATUSES, 0)
        with self.engine.connect() as connection:
            for status, n in connection.execute(query):
                out[str(status)] = int(n)
        return out

    def counts_by_kind(self, kind_prefix: str, *,
                       tenant_id: str | None = None) -> dict[tuple[str, str], int]:
        """How many items of each kind starting with `kind_prefix` are in each status (for
        gauges; of one tenant when given): {(kind, status): n}, only the pairs that exist."""
        t = work_items
        query = (select(t.c.kind, t.c.status, func.count())
                 .where(t.c.kind.startswith(kind_prefix, autoescape=True))
                 .group_by(t.c.kind, t.c.status))
        if tenant_id is not None:
            query = query.where(t.c.tenant_id == tenant_id)
        with self.engine.connect() as connection:
            return {(str(k), str(s)): int(n) for k, s, n in connection.execute(query)}

    def next_due(self, kinds: Sequence[str]) -> datetime | None:
        """When the next queued item of `kinds` becomes due (None: nothing queued)."""
        t = work_items
        with self.engine.connect() as connection:
            value = connection.execute(select(func.min(t.c.run_after)).where(
                t.c.status == "queued", t.c.kind.in_(list(kinds)))).scalar()
        return _aware(value)

    # -- retention --------------------------------------------------------------------------
    def purge(self, *, finished_before: datetime, limit: int = 5000) -> int:
        """Delete finished items (and their attempt logs) that finished before the cutoff."""
        t, a = work_items, work_attempts
        old = (select(t.c.id).where(t.c.status.in_(FINISHED), t.c.finished_at < finished_before)
               .limit(limit))

        def work(connection: Any) -> int:
            ids = [r[0] for r in connection.execute(old)]
            if not ids:
                return 0
            connection.execute(delete(a).where(a.c.item_id.in_(ids)))
            return int(connection.execute(delete(t).where(t.c.id.in_(ids))).rowcount)

        return self._write(work)


def _check_kind(kind: str) -> None:
    if not kind or len(kind) > 128 or "\x00" in kind:
        raise InvalidRequest(f"Work kind {kind!r} must be 1-128 characters without NUL.",
                             param="kind")
