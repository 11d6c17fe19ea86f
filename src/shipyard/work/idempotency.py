"""Idempotency keys: a client's retry of a request returns the first result, never a second
side effect.

Per tenant and scope (e.g. `POST /v1/services/score/invoke`), a key maps to the fingerprint
of the request that first used it and to what it produced: a stored response, or the id of
the job it started. `begin` decides what to do with a request that carries a key:

- `proceed`: the key is new (or expired, or its first request died mid-way): do the work, then
  `complete` (store the response) or `abandon` (forget the key, so a retry runs again);
- `replay`: the same request already finished: answer `record.response_*` (or the job
  `record.job_id`) again;
- `in_progress`: the same request is running right now: answer 409 "try again shortly";
- a different request under the same key raises `Conflict` (409) naming the header.

Records live for `ttl_s` (the setting `work.idempotency_ttl_s`); `purge` deletes expired ones.

>>> store = IdempotencyStore(engine, ttl_s=86400)  # doctest: +SKIP
>>> decision = store.begin(tenant_id="acme", scope="POST /v1/jobs", key="k-1",
...                        request_hash=request_fingerprint("POST", "/v1/jobs", body))
... # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
from sqlalchemy import Engine, and_, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from shipyard.errors import Conflict, InvalidRequest
from shipyard.work.tables import idempotency_keys

__all__ = [
    "HEADER",
    "Decision",
    "IdempotencyRecord",
    "IdempotencyStore",
    "check_key",
    "request_fingerprint",
]

HEADER = "Idempotency-Key"
_KEY_MAX = 255


def check_key(value: str) -> str:
    """Validate an `Idempotency-Key` header value (1-255 visible ASCII characters)."""
    if not value or len(value) > _KEY_MAX or not all(33 <= ord(c) < 127 for c in value):
        shown = value[:40] + ("…" if len(value) > 40 else "")
        raise InvalidRequest(
            f"Header '{HEADER}' is {shown!r}; it must be 1-{_KEY_MAX} visible ASCII characters "
            "without spaces, e.g. a UUID such as 3f9a0c52-7d1e-4f0b-9a4e-1c2d3e4f5a6b.",
            param=HEADER)
    return value


def request_fingerprint(method: str, path: str, body: bytes) -> str:
    """SHA-256 of the request's method, path and body: what must match for a replay."""
    digest = hashlib.sha256()
    for part in (method.upper().encode(), path.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def _aware(value: datetime | None) -> datetime | None:
    return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class IdempotencyRecord:
    tenant_id: str
    scope: str
    key: str
    request_hash: str
    status: str  # in_progress | completed
    created_at: datetime
    expires_at: datetime
    job_id: str | None = None
    response_status: int | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    response_body: bytes | None = None
    locked_until: datetime | None = None

    @classmethod
    def from_row(cls, row: Any) -> IdempotencyRecord:
        m = row._mapping
        body = m["response_body"]
        return cls(tenant_id=m["tenant_id"], scope=m["scope"], key=m["key"],
                   request_hash=m["request_hash"], status=m["status"],
                   created_at=_aware(m["created_at"]),  # type: ignore[arg-type]
                   expires_at=_aware(m["expires_at"]),  # type: ignore[arg-type]
                   job_id=m["job_id"], response_status=m["response_status"],
                   response_headers=orjson.loads(m["response_headers"])
                   if m["response_headers"] else {},
                   response_body=None if body is None else bytes(body),
                   locked_until=_aware(m["locked_until"]))


@dataclass(frozen=True)
class Decision:
    """What to do with a request that carries a key (see the module docstring)."""

    action: Literal["proceed", "replay", "in_progress"]
    record: IdempotencyRecord


class IdempotencyStore:
    """Idempotency records in the store (SQLite or PostgreSQL). Blocking: call from a thread."""

    def __init__(self, engine: Engine, *, ttl_s: float = 86_400.0, lock_s: float = 300.0,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.engine = engine
        self.ttl_s = ttl_s
        self.lock_s = lock_s  # how long an unfinished first request holds its key
        self.clock = clock or (lambda: datetime.now(UTC))

    def _where(self, tenant_id: str, scope: str, key: str) -> Any:
        k = idempotency_keys.c
        return and_(k.tenant_id == tenant_id, k.scope == scope, k.key == key)

    def get(self, *, tenant_id: str, scope: str, key: str) -> IdempotencyRecord | None:
        """The live record of a key (None when there is none or it expired)."""
        with self.engine.connect() as connection:
            row = connection.execute(select(idempotency_keys).where(
                self._where(tenant_id, scope, key))).first()
        if row is None:
            return None
        record = IdempotencyRecord.from_row(row)
        return None if record.expires_at <= self.clock() else record

    def begin(self, *, tenant_id: str, scope: str, key: str, request_hash: str,
              job_id: str | None = None) -> Decision:
        """Claim `key` for this request, or say how to answer a repeat of it.

        With `job_id` (creating a job), the key maps to that job for the whole retention
        window: a repeat is a `replay` whose `record.job_id` is the job to return.
        """
        check_key(key)
        for _ in range(3):
            now = self.clock()
            row: dict[str, Any] = {
                "tenant_id": tenant_id, "scope": scope, "key": key,
                "request_hash": request_hash,
                "status": "completed" if job_id else "in_progress", "job_id": job_id,
                "created_at": now, "expires_at": now + timedelta(seconds=self.ttl_s),
                "locked_until": None if job_id else now + timedelta(seconds=self.lock_s)}
            try:
                with self.engine.begin() as connection:
                    connection.execute(insert(idempotency_keys).values(**row))
                return Decision("proceed", _record(row))
            except IntegrityError:
                pass
            existing = self._existing(tenant_id, scope, key)
            if existing is None:
                continue  # it expired and was purged meanwhile: insert again
            if existing.expires_at <= now:
                self._drop_expired(tenant_id, scope, key, now)
                continue
            if existing.request_hash != request_hash:
                raise Conflict(
                    f"Header '{HEADER}' value '{key}' was already used "
                    f"{existing.created_at.isoformat(timespec='seconds')} with a different "
                    "request body; send a new key for a new request (a retry must repeat the "
                    "first request exactly).", param=HEADER, code="idempotency_key_reused")
            if existing.status == "completed":
                return Decision("replay", existing)
            if existing.locked_until is not None and existing.locked_until > now:
                return Decision("in_progress", existing)
            # The first request died before finishing: this retry takes the key over.
            with self.engine.begin() as connection:
                taken = connection.execute(update(idempotency_keys).where(
                    self._where(tenant_id, scope, key),
                    idempotency_keys.c.status == "in_progress",
                    idempotency_keys.c.locked_until <= now).values(
                    locked_until=now + timedelta(seconds=self.lock_s),
                    job_id=job_id, status="completed" if job_id else "in_progress")).rowcount
            if taken:
                fresh = self._existing(tenant_id, scope, key)
                if fresh is not None:
                    return Decision("proceed", fresh)
        raise Conflict(f"Header '{HEADER}' value '{key}' is being used by several requests "
                       "at once; retry in a moment.", param=HEADER, code="idempotency_busy")

    def complete(self, *, tenant_id: str, scope: str, key: str, status: int, body: bytes,
                 headers: Mapping[str, str] | None = None) -> bool:
        """Store the response of the request that holds the key; repeats get it back."""
        with self.engine.begin() as connection:
            return bool(connection.execute(update(idempotency_keys).where(
                self._where(tenant_id, scope, key)).values(
                status="completed", response_status=status, response_body=body,
                response_headers=orjson.dumps(dict(headers or {})).decode(),
                locked_until=None)).rowcount)

    def attach_job(self, *, tenant_id: str, scope: str, key: str, job_id: str) -> bool:
        """Point a key at the job its request started (a repeat then returns that job)."""
        with self.engine.begin() as connection:
            return bool(connection.execute(update(idempotency_keys).where(
                self._where(tenant_id, scope, key)).values(
                status="completed", job_id=job_id, locked_until=None)).rowcount)

    def abandon(self, *, tenant_id: str, scope: str, key: str) -> None:
        """Forget the key (the request failed before producing an answer worth repeating, e.g.
        a 5xx), so the client's retry runs the request again."""
        with self.engine.begin() as connection:
            connection.execute(delete(idempotency_keys).where(
                self._where(tenant_id, scope, key),
                idempotency_keys.c.status == "in_progress"))

    def purge(self, *, now: datetime | None = None) -> int:
        """Delete expired records; returns how many."""
        now = now or self.clock()
        with self.engine.begin() as connection:
            return int(connection.execute(delete(idempotency_keys).where(
                idempotency_keys.c.expires_at <= now)).rowcount)

    def _existing(self, tenant_id: str, scope: str, key: str) -> IdempotencyRecord | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(idempotency_keys).where(
                self._where(tenant_id, scope, key))).first()
        return None if row is None else IdempotencyRecord.from_row(row)

    def _drop_expired(self, tenant_id: str, scope: str, key: str, now: datetime) -> None:
        with self.engine.begin() as connection:
            connection.execute(delete(idempotency_keys).where(
                self._where(tenant_id, scope, key), idempotency_keys.c.expires_at <= now))


def _record(row: dict[str, Any]) -> IdempotencyRecord:
    return IdempotencyRecord(
        tenant_id=row["tenant_id"], scope=row["scope"], key=row["key"],
        request_hash=row["request_hash"], status=row["status"], created_at=row["created_at"],
        expires_at=row["expires_at"], job_id=row["job_id"], locked_until=row["locked_until"])
