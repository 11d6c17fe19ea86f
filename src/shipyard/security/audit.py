"""Audit log: an append-only, hash-chained record of control-plane actions.

Every entry records who (`actor`), when (`at`), what (`action`), on what (`target`), for which
tenant, with which `outcome`, plus optional JSON `details`. Entry *n* stores
`hash = SHA-256(canonical(seq, tenant_id, at, actor, action, target, outcome, details,
prev_hash))` where `prev_hash` is the hash of entry *n-1* (64 zeros for entry 1). There is one
chain across all tenants, so removing any tenant's entry breaks it. The `audit_head` row holds
the seq and hash of the last entry and is updated in the same transaction as each append.

>>> log = AuditLog(engine)  # doctest: +SKIP
>>> log.append(tenant_id="acme", actor="key:ab12", action="key.revoke", target="cd34")
>>> log.verify().ok
True

What `verify()` can tell apart, entry by entry (walking in seq order):

- **edited**: the entry's content no longer hashes to its stored hash (the content or the
  stored hash was changed): "entry 17 was edited".
- **reordered**: an entry's hash matches its content under a *different* seq (seq values were
  swapped or moved), or an intact entry is chained to some other existing entry rather than to
  its predecessor: "the entry at seq 5 was written as entry 3".
- **deleted**: a gap in seq: "entry 18 is missing (deleted) between 17 and 19". A deleted last
  entry shows as the head recording more entries than exist: "entry 20 is missing (deleted)
  after 19".
- **unlinked**: no gap, but an entry does not chain to its predecessor, and nothing else
  explains it. That is either an edit whose hash was recomputed (the next entry still carries
  the old hash) or a deletion followed by renumbering and rehashing of the later entries; the
  data cannot tell these two apart.
- **inserted**: entries after the recorded head were written without this class.
- A last entry edited *and* rehashed is caught by the head's hash.

What it cannot see: someone with write access to the database who rewrites the chain from
some point on, recomputing every later hash *and* the head (or who deletes the last entries and
moves the head back), leaves a consistent log. Only an anchor kept outside the database
catches that: save `verify().head` ("seq:hash") elsewhere and pass it back as
`verify(anchor=...)`; an anchored entry that is gone or different is reported.

Secrets never go into `details`: it is stored in clear text and shown by `shipyard audit list`.
`append` refuses keys named like secrets (`secret`, `password`, `token`, `credential`,
`authorization`, `cookie`, `key`, `api_key`, `private_key`, ...; a name ending in `_id`, such
as `key_id`, names a secret without being one and is allowed) and string values that look like
one (`sk-...`, `Bearer ...`, PEM blocks, JWTs). Record a key's id, never the key.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Connection, Engine, Row, insert, select, update
from sqlalchemy.exc import IntegrityError

from shipyard.errors import InvalidRequest, ShipyardError
from shipyard.store.tables import audit_head, audit_log

__all__ = [
    "GENESIS",
    "OUTCOMES",
    "AuditAnchor",
    "AuditEntry",
    "AuditLog",
    "AuditProblem",
    "VerifyReport",
    "entry_hash",
]

GENESIS = "0" * 64  # the prev_hash of entry 1
OUTCOMES = ("ok", "denied", "error")
_FORMAT = "shipyard-audit-v1"  # first element of every hashed record; bump to change the format
_HEAD_ID = 1
_MAX_DETAILS = 8192  # bytes of canonical JSON
_ACTION = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")
_SECRET_WORDS = frozenset({
    "secret", "secrets", "password", "passwords", "passwd", "pwd", "passphrase", "token",
    "tokens", "credential", "credentials", "apikey", "authorization", "cookie", "cookies",
    "privatekey",
})
_SECRET_KEY_KINDS = frozenset({
    "api", "private", "secret", "access", "signing", "encryption", "master", "fernet",
    "session", "client", "shared",
})
_SECRET_VALUE = re.compile(
    r"^\s*(sk-|bearer\s|basic\s|-----BEGIN)|^eyJ[\w-]{8,}\.[\w-]{8,}\.", re.IGNORECASE)
_WINDOW = 64  # seqs either side tried when looking for where a moved entry came from
_DEEP_LOOKUPS = 50  # table scans spent on diagnosing moved entries before settling for less

ProblemKind = Literal["edited", "reordered", "deleted", "unlinked", "inserted", "head", "anchor"]


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit log entry as stored."""

    seq: int
    tenant_id: str
    at: datetime
    actor: str
    action: str
    target: str
    outcome: str
    details: dict[str, Any] | None
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "tenant_id": self.tenant_id, "at": _iso(self.at),
                "actor": self.actor, "action": self.action, "target": self.target,
                "outcome": self.outcome, "details": self.details,
                "prev_hash": self.prev_hash, "hash": self.hash}


@dataclass(frozen=True, slots=True)
class AuditAnchor:
    """A (seq, hash) pair kept outside the database, written and parsed as "seq:hash"."""

    seq: int
    hash: str

    @classmethod
    def parse(cls, text: str) -> AuditAnchor:
        seq, _, digest = text.strip().partition(":")
        if not seq.isdigit() or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise InvalidRequest(
                f"The audit anchor is '{text}'; write it as SEQ:HASH, e.g. 42:<64 hex digits>, "
                "as printed by 'shipyard audit verify'.", param="anchor")
        return cls(int(seq), digest)

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"


@dataclass(frozen=True, slots=True)
class AuditProblem:
    """One thing `verify()` found wrong; `seq` is the entry it is about (None: the log)."""

    kind: ProblemKind
    seq: int | None
    message: str


@dataclass(slots=True)
class VerifyReport:
    """The result of `AuditLog.verify()`: entries checked, the last one, and what is wrong."""

    entries: int = 0
    head: AuditAnchor | None = None  # the last entry found (anchor it outside the database)
    problems: builtins.list[AuditProblem] = field(default_factory=builtins.list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "entries": self.entries,
                "head": None if self.head is None else str(self.head),
                "problems": [{"kind": p.kind, "seq": p.seq, "message": p.message}
                             for p in self.problems]}


def entry_hash(*, seq: int, tenant_id: str, at: datetime, actor: str, action: str, target: str,
               outcome: str, details: str | None, prev_hash: str) -> str:
    """SHA-256 (hex) of an entry's canonical form; `details` is the stored JSON text."""
    record = [_FORMAT, seq, tenant_id, _iso(at), actor, action, target, outcome, details,
              prev_hash]
    canonical = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class AuditLog:
    """The audit log in the store; safe to share between threads and processes.

    Appends are serialised by the database: on PostgreSQL each append locks the `audit_head`
    row (`SELECT ... FOR UPDATE`) before reading it, on SQLite it opens its transaction with
    `BEGIN IMMEDIATE` (the database's write lock). Locking the head row rather than the last
    entry also covers the empty log, where there is no last entry to lock. The seq primary key
    is the backstop: two appenders that computed the same seq could not both insert it.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- writing ----------------------------------------------------------------------------
    def append(self, *, tenant_id: str, actor: str, action: str, target: str,
               outcome: str = "ok", details: dict[str, Any] | None = None) -> AuditEntry:
        """Append one entry and return it (durable when this returns).

        `actor` and `target` longer than their columns (128, 256) are cut, marked with "…".
        """
        _check_text("tenant_id", tenant_id, 64)
        _check_text("action", action, 64)
        if not _ACTION.match(action):
            raise InvalidRequest(
                f"Audit action '{action}' is not a dotted lowercase name; use e.g. "
                "'key.create' or 'traces.export'.", param="action")
        if outcome not in OUTCOMES:
            raise InvalidRequest(
                f"Audit outcome '{outcome}' is not one of {', '.join(OUTCOMES)}; pass one of "
                "them.", param="outcome")
        actor, target = _cut(actor, 128), _cut(target, 256)
        details_text = _details_text(details)
        try:
            return self._append(tenant_id, actor, action, target, outcome, details_text)
        except IntegrityError:
            # Only when the head row had to be created and another appender created it first
            # (PostgreSQL cannot lock a row that does not exist yet): once more, now locked.
            return self._append(tenant_id, actor, action, target, outcome, details_text)

    def _append(self, tenant_id: str, actor: str, action: str, target: str, outcome: str,
                details_text: str | None) -> AuditEntry:
        with self.engine.connect() as conn:
            sqlite = conn.dialect.name == "sqlite"
            if sqlite:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            head = conn.execute(select(audit_head.c.seq, audit_head.c.hash)
                                .where(audit_head.c.id == _HEAD_ID)
                                .with_for_update()).first()
            at = datetime.now(UTC)  # read under the lock, so times follow seq order
            if head is None:
                last_seq = self._head_missing(conn)
                conn.execute(insert(audit_head).values(id=_HEAD_ID, seq=0, hash=GENESIS,
                                                       updated_at=at))
                prev_seq, prev_hash = last_seq, GENESIS
            else:
                prev_seq, prev_hash = int(head.seq), str(head.hash)
            seq = prev_seq + 1
            digest = entry_hash(seq=seq, tenant_id=tenant_id, at=at, actor=actor, action=action,
                                target=target, outcome=outcome, details=details_text,
                                prev_hash=prev_hash)
            conn.execute(insert(audit_log).values(
                seq=seq, tenant_id=tenant_id, at=at, actor=actor, action=action, target=target,
                outcome=outcome, details=details_text, prev_hash=prev_hash, hash=digest))
            conn.execute(update(audit_head).where(audit_head.c.id == _HEAD_ID)
                         .values(seq=seq, hash=digest, updated_at=at))
            conn.commit()
        return AuditEntry(seq, tenant_id, at, actor, action, target, outcome,
                          _details(details_text), prev_hash, digest)

    @staticmethod
    def _head_missing(conn: Connection) -> int:
        """A missing head is fine for an empty log (tables made without the migration)."""
        last = conn.execute(select(audit_log.c.seq).order_by(audit_log.c.seq.desc())
                            .limit(1)).first()
        if last is None:
            return 0
        raise ShipyardError(
            f"The audit log has entries up to seq {last.seq} but its head row (table "
            "audit_head, id 1) is missing, so the log may have been tampered with; nothing was "
            "appended. Run 'shipyard audit verify', then restore audit_head from a backup or "
            "re-create it from the last verified entry: INSERT INTO audit_head (id, seq, hash, "
            "updated_at) VALUES (1, <seq>, '<hash>', CURRENT_TIMESTAMP).")

    # -- reading ----------------------------------------------------------------------------
    def list(self, *, tenant_id: str | None = None, since: datetime | None = None,
             action: str | None = None, limit: int | None = 100) -> builtins.list[AuditEntry]:
        """Entries, newest first; only `tenant_id`'s when given. `action` is exact, or a
        prefix ending in `*` ("key.*")."""
        if limit is not None and limit < 1:
            raise InvalidRequest(f"limit is {limit}; it must be at least 1.", param="limit")
        query = select(audit_log).order_by(audit_log.c.seq.desc())
        if tenant_id is not None:
            query = query.where(audit_log.c.tenant_id == tenant_id)
        if since is not None:
            moment = since.replace(tzinfo=UTC) if since.tzinfo is None else since
            query = query.where(audit_log.c.at >= moment.astimezone(UTC))
        if action:
            if action.endswith("*"):
                prefix = action[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                query = query.where(audit_log.c.action.like(prefix + "%", escape="\\"))
            else:
                query = query.where(audit_log.c.action == action)
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            return [_entry(row) for row in conn.execute(query)]

    def head(self) -> AuditAnchor | None:
        """The recorded head (seq and hash of the last entry), or None when it is missing."""
        with self.engine.connect() as conn:
            row = conn.execute(select(audit_head.c.seq, audit_head.c.hash)
                               .where(audit_head.c.id == _HEAD_ID)).first()
        return None if row is None else AuditAnchor(int(row.seq), str(row.hash))

    # -- verifying --------------------------------------------------------------------------
    def verify(self, *, anchor: AuditAnchor | None = None, batch: int = 1000) -> VerifyReport:
        """Walk the whole chain in seq order and report every problem found (see the module
        docstring for what can and cannot be told apart). Reads one consistent snapshot, so
        appends running meanwhile are not mistaken for tampering."""
        report = VerifyReport()
        with self.engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN")  # the first read fixes the snapshot
            else:
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            _Walk(conn, report).run(batch)
            if anchor is not None:
                _check_anchor(conn, anchor, report)
            conn.rollback()
        return report


class _Walk:
    """One pass over the chain; keeps only the previous entry in memory."""

    def __init__(self, conn: Connection, report: VerifyReport) -> None:
        self.conn = conn
        self.report = report
        self.prev: tuple[int, str, bool] | None = None  # seq, stored hash, already reported
        self.lookups = 0

    def problem(self, kind: ProblemKind, seq: int | None, message: str) -> None:
        self.report.problems.append(AuditProblem(kind, seq, message))

    def run(self, batch: int) -> None:
        for row in self._rows(batch):
            self.report.entries += 1
            self._entry(row)
        if self.prev is not None:
            self.report.head = AuditAnchor(self.prev[0], self.prev[1])
        self._check_head()

    def _rows(self, batch: int) -> Iterator[Row[Any]]:
        after = None
        while True:
            query = select(audit_log).order_by(audit_log.c.seq).limit(batch)
            if after is not None:
                query = query.where(audit_log.c.seq > after)
            rows = self.conn.execute(query).all()
            yield from rows
            if len(rows) < batch:
                return
            after = rows[-1].seq

    def _entry(self, row: Row[Any]) -> None:
        seq = int(row.seq)
        flagged = False
        if _row_hash(row, seq) != row.hash:
            flagged = True
            origin = self._origin(row)
            if origin is not None:
                self.problem("reordered", seq, f"The entry at seq {seq} was written as entry "
                             f"{origin} ({row.action} on {row.target!r}); entries were "
                             "reordered.")
            else:
                self.problem("edited", seq, f"Entry {seq} was edited: its content (or its "
                             "stored hash) no longer matches the hash written with it.")
        expected_seq = 1 if self.prev is None else self.prev[0] + 1
        expected_prev = GENESIS if self.prev is None else self.prev[1]
        if seq > expected_seq:
            where = (f"before {seq}" if self.prev is None
                     else f"between {self.prev[0]} and {seq}")
            self.problem("deleted", expected_seq, f"{_span(expected_seq, seq - 1)} (deleted) "
                         f"{where}.")
        elif row.prev_hash != expected_prev and not flagged and not (self.prev and self.prev[2]):
            before = self.prev[0] if self.prev else None
            other = self._seq_with(audit_log.c.hash, row.prev_hash, exclude=before)
            if other is not None:
                self.problem("reordered", seq, f"Entry {seq} is chained to entry {other}, not "
                             f"to entry {before}; entries were reordered.")
            elif self.prev is None:
                self.problem("unlinked", seq, f"Entry {seq} is the first entry but does not "
                             "start the chain: earlier entries were deleted and the rest "
                             "renumbered.")
            else:
                self.problem("unlinked", seq, f"Entry {seq} does not chain to entry {before}: "
                             f"entry {before} was edited and its hash recomputed, or entries "
                             "between them were deleted and the later ones renumbered.")
        self.prev = (seq, str(row.hash), flagged)

    def _origin(self, row: Row[Any]) -> int | None:
        """The seq under which this entry's content hashes to its stored hash, if any."""
        seq = int(row.seq)
        candidates = [s for d in range(1, _WINDOW + 1) for s in (seq - d, seq + d) if s > 0]
        if row.prev_hash == GENESIS:
            candidates.insert(0, 1)
        if self.lookups < _DEEP_LOOKUPS:  # far moves: ask who it chained to / who chains to it
            self.lookups += 1
            before = self._seq_with(audit_log.c.hash, row.prev_hash, exclude=seq)
            after = self._seq_with(audit_log.c.prev_hash, row.hash, exclude=seq)
            candidates[:0] = [s for s in (before and before + 1, after and after - 1) if s]
        for candidate in candidates:
            if candidate != seq and _row_hash(row, candidate) == row.hash:
                return candidate
        return None

    def _seq_with(self, column: Any, value: str, *, exclude: int | None) -> int | None:
        query = select(audit_log.c.seq).where(column == value)
        if exclude is not None:
            query = query.where(audit_log.c.seq != exclude)
        found = self.conn.execute(query.order_by(audit_log.c.seq).limit(1)).first()
        return None if found is None else int(found.seq)

    def _check_head(self) -> None:
        head = self.conn.execute(select(audit_head.c.seq, audit_head.c.hash)
                                 .where(audit_head.c.id == _HEAD_ID)).first()
        last = self.prev
        if head is None:
            if last is not None:
                self.problem("head", None, "The audit_head row is missing, so entries deleted "
                             "from the end cannot be detected; it was deleted (tampering) or "
                             "the store was not migrated with 'shipyard'.")
            return
        head_seq, head_hash = int(head.seq), str(head.hash)
        last_seq = 0 if last is None else last[0]
        if head_seq > last_seq:
            after = f"after {last_seq}" if last else "(the log is empty)"
            self.problem("deleted", last_seq + 1, f"{_span(last_seq + 1, head_seq)} (deleted) "
                         f"{after}: the head records {head_seq} entries.")
        elif head_seq < last_seq:
            self.problem("inserted", head_seq + 1, f"{_span(head_seq + 1, last_seq, 'is', 'are')}"
                         f" beyond the recorded head ({head_seq}): written outside the audit "
                         "log API, so possibly forged.")
        elif last is not None and head_hash != last[1] and not last[2]:
            self.problem("edited", last_seq, f"Entry {last_seq}, the last, does not match the "
                         "hash recorded in the head: it was edited and its hash recomputed, or "
                         "replaced.")


def _check_anchor(conn: Connection, anchor: AuditAnchor, report: VerifyReport) -> None:
    row = conn.execute(select(audit_log.c.hash).where(audit_log.c.seq == anchor.seq)).first()
    if row is None:
        report.problems.append(AuditProblem(
            "anchor", anchor.seq, f"Entry {anchor.seq} named by the anchor is missing: it was "
            "deleted, or the log was cut back to before it."))
    elif row.hash != anchor.hash:
        report.problems.append(AuditProblem(
            "anchor", anchor.seq, f"Entry {anchor.seq} does not match the anchor's hash: it, or "
            "an entry before it, was rewritten and the chain recomputed."))


def _span(first: int, last: int, one: str = "is missing", many: str = "are missing") -> str:
    if first == last:
        return f"Entry {first} {one}"
    return f"Entries {first} to {last} {many}"


def _row_hash(row: Row[Any], seq: int) -> str:
    return entry_hash(seq=seq, tenant_id=row.tenant_id, at=row.at, actor=row.actor,
                      action=row.action, target=row.target, outcome=row.outcome,
                      details=row.details, prev_hash=row.prev_hash)


def _entry(row: Row[Any]) -> AuditEntry:
    at = row.at if row.at.tzinfo else row.at.replace(tzinfo=UTC)
    return AuditEntry(int(row.seq), row.tenant_id, at, row.actor, row.action, row.target,
                      row.outcome, _details(row.details), row.prev_hash, row.hash)


def _iso(at: datetime) -> str:
    """UTC, microseconds: SQLite hands times back naive, PostgreSQL in the session's zone."""
    moment = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return moment.isoformat(timespec="microseconds")


def _details(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:  # an edited row; verify() names it, listing still works
        return {"_unreadable": text[:200]}
    return value if isinstance(value, dict) else {"_value": value}


def _check_text(name: str, value: object, size: int) -> None:
    if not isinstance(value, str) or not value or len(value) > size:
        raise InvalidRequest(f"Audit {name} is {value!r}; it must be a non-empty string of at "
                             f"most {size} characters.", param=name)


def _cut(value: str, size: int) -> str:
    value = str(value) or "-"
    return value if len(value) <= size else value[: size - 1] + "…"


def _details_text(details: dict[str, Any] | None) -> str | None:
    """Canonical JSON (sorted keys, no spaces) after refusing secrets and non-JSON values."""
    if details is None:
        return None
    if not isinstance(details, dict):
        raise InvalidRequest(f"Audit details is a {type(details).__name__}; pass a dict of JSON "
                             "values, or None.", param="details")
    _check_value("details", details)
    text = json.dumps(details, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    if len(text.encode("utf-8")) > _MAX_DETAILS:
        raise InvalidRequest(f"Audit details are {len(text.encode('utf-8'))} bytes as JSON; keep "
                             f"them under {_MAX_DETAILS} (ids and counts, not payloads).",
                             param="details")
    return text


def _check_value(path: str, value: Any) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidRequest(f"Audit details key {key!r} at '{path}' is not a string; "
                                     "use string keys.", param=path)
            if _secret_name(key):
                raise InvalidRequest(
                    f"Audit details key '{path}.{key}' is named like a secret; the audit log "
                    "never stores secrets. Record an id instead (e.g. 'key_id') or leave it "
                    "out.", param=f"{path}.{key}")
            _check_value(f"{path}.{key}", item)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_value(f"{path}[{index}]", item)
    elif isinstance(value, str):
        if _SECRET_VALUE.search(value):
            raise InvalidRequest(
                f"Audit details value at '{path}' looks like a secret (an API key, bearer "
                "token, JWT or PEM block); the audit log never stores secrets. Record an id "
                "instead.", param=path)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidRequest(f"Audit details value at '{path}' is {value}; use a finite "
                                 "number or null.", param=path)
    elif value is not None and not isinstance(value, bool | int):
        raise InvalidRequest(
            f"Audit details value at '{path}' is a {type(value).__name__}; use JSON values "
            "(string, number, bool, null, list, dict), e.g. a time as .isoformat().",
            param=path)


def _secret_name(name: str) -> bool:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()
    words = re.findall(r"[a-z0-9]+", spaced)
    if not words or words[-1] in ("id", "ids"):
        return False  # "key_id", "token_id": the id of a secret, not the secret
    if any(word in _SECRET_WORDS for word in words) or "".join(words) in _SECRET_WORDS:
        return True
    for index, word in enumerate(words):
        if word in ("key", "keys") and (
                len(words) == 1 or (index and words[index - 1] in _SECRET_KEY_KINDS)):
            return True
    return False
