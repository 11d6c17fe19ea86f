"""The audit log on SQLite: the hash chain, every kind of tampering named, secrets refused."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from shipyard.errors import InvalidRequest, ShipyardError
from shipyard.security.audit import GENESIS, AuditAnchor, AuditLog, entry_hash
from shipyard.store import create_store_engine, migrate

Sql = Callable[..., None]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_store_engine(f"sqlite:///{tmp_path}/store.db")
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def log(engine: Engine) -> AuditLog:
    return AuditLog(engine)


@pytest.fixture
def sql(engine: Engine) -> Sql:
    """Raw SQL, as an attacker with write access to the database would use."""

    def run(statement: str, **params: Any) -> None:
        with engine.begin() as conn:
            conn.execute(text(statement), params)

    return run


def fill(log: AuditLog, n: int = 5) -> None:
    for i in range(1, n + 1):
        log.append(tenant_id="acme" if i % 2 else "globex", actor="cli:ops@host",
                   action="key.create", target=f"key{i}", details={"role": "client", "n": i})


def problems(log: AuditLog) -> list[tuple[str, int | None]]:
    return [(p.kind, p.seq) for p in log.verify().problems]


def rehash(engine: Engine, seq: int) -> str:
    """Recompute an entry's hash from its (edited) content, as a careful attacker would."""
    with engine.begin() as conn:
        row = conn.execute(text("SELECT * FROM audit_log WHERE seq = :s"), {"s": seq}).one()
        at = datetime.fromisoformat(str(row.at))
        digest = entry_hash(seq=seq, tenant_id=row.tenant_id, at=at, actor=row.actor,
                            action=row.action, target=row.target, outcome=row.outcome,
                            details=row.details, prev_hash=row.prev_hash)
        conn.execute(text("UPDATE audit_log SET hash = :h WHERE seq = :s"),
                     {"h": digest, "s": seq})
    return digest


def test_appends_form_one_chain_across_tenants(log: AuditLog) -> None:
    fill(log)
    entries = sorted(log.list(), key=lambda e: e.seq)
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0].prev_hash == GENESIS
    for before, after in itertools.pairwise(entries):
        assert after.prev_hash == before.hash
    first = entries[0]
    assert first.hash == entry_hash(
        seq=1, tenant_id="acme", at=first.at, actor="cli:ops@host", action="key.create",
        target="key1", outcome="ok", details='{"n":1,"role":"client"}', prev_hash=GENESIS)
    assert first.at.tzinfo is not None and first.details == {"role": "client", "n": 1}
    report = log.verify()
    assert report.ok and report.entries == 5
    assert report.head == log.head() == AuditAnchor(5, entries[-1].hash)


def test_empty_log_verifies(log: AuditLog) -> None:
    report = log.verify()
    assert report.ok and report.entries == 0 and report.head is None


def test_list_is_scoped_and_filtered(log: AuditLog) -> None:
    fill(log)
    log.append(tenant_id="acme", actor="key:ab12", action="key.revoke", target="key1",
               outcome="denied")
    assert [e.seq for e in log.list()] == [6, 5, 4, 3, 2, 1]  # newest first
    assert {e.tenant_id for e in log.list(tenant_id="globex")} == {"globex"}
    assert [e.seq for e in log.list(tenant_id="acme", limit=2)] == [6, 5]
    assert [e.outcome for e in log.list(action="key.revoke")] == ["denied"]
    assert len(log.list(action="key.*")) == 6
    assert log.list(action="key_*") == []  # "_" is not a wildcard
    assert len(log.list(since=datetime.now(UTC) - timedelta(minutes=1))) == 6
    assert log.list(since=datetime.now(UTC) + timedelta(minutes=1)) == []


def test_edited_entry_is_named(log: AuditLog, sql: Sql) -> None:
    fill(log)
    sql("UPDATE audit_log SET target = 'someone-else' WHERE seq = 3")
    report = log.verify()
    assert [(p.kind, p.seq) for p in report.problems] == [("edited", 3)]
    assert "Entry 3 was edited" in report.problems[0].message


def test_deleted_middle_entry_is_named(log: AuditLog, sql: Sql) -> None:
    fill(log)
    sql("DELETE FROM audit_log WHERE seq = 3")
    report = log.verify()
    assert [(p.kind, p.seq) for p in report.problems] == [("deleted", 3)]
    assert report.problems[0].message == "Entry 3 is missing (deleted) between 2 and 4."


def test_deleted_first_entries_are_named(log: AuditLog, sql: Sql) -> None:
    fill(log)
    sql("DELETE FROM audit_log WHERE seq IN (1, 2)")
    [problem] = log.verify().problems
    assert problem.message == "Entries 1 to 2 are missing (deleted) before 3."


def test_swapped_entries_are_named_as_reordered(log: AuditLog, sql: Sql) -> None:
    fill(log, 8)
    sql("UPDATE audit_log SET seq = -1 WHERE seq = 2")
    sql("UPDATE audit_log SET seq = 2 WHERE seq = 6")
    sql("UPDATE audit_log SET seq = 6 WHERE seq = -1")
    report = log.verify()
    assert [(p.kind, p.seq) for p in report.problems] == [("reordered", 2), ("reordered", 6)]
    assert "seq 2 was written as entry 6" in report.problems[0].message
    assert "seq 6 was written as entry 2" in report.problems[1].message


def test_adjacent_swap_is_named_as_reordered(log: AuditLog, sql: Sql) -> None:
    fill(log)
    sql("UPDATE audit_log SET seq = -1 WHERE seq = 3")
    sql("UPDATE audit_log SET seq = 3 WHERE seq = 4")
    sql("UPDATE audit_log SET seq = 4 WHERE seq = -1")
    assert problems(log) == [("reordered", 3), ("reordered", 4)]


def test_edited_last_entry_is_named(log: AuditLog, sql: Sql) -> None:
    fill(log)
    sql("UPDATE audit_log SET outcome = 'denied' WHERE seq = 5")
    assert problems(log) == [("edited", 5)]


def test_deleted_last_entry_is_caught_by_the_head(log: AuditLog, sql: Sql) -> None:
    fill(log)
    sql("DELETE FROM audit_log WHERE seq = 5")
    report = log.verify()
    assert [(p.kind, p.seq) for p in report.problems] == [("deleted", 5)]
    assert report.problems[0].message == (
        "Entry 5 is missing (deleted) after 4: the head records 5 entries.")


def test_emptied_log_is_caught_by_the_head(log: AuditLog, sql: Sql) -> None:
    fill(log, 3)
    sql("DELETE FROM audit_log")
    [problem] = log.verify().problems
    assert problem.kind == "deleted" and "Entries 1 to 3 are missing" in problem.message


def test_rehashed_last_entry_is_caught_by_the_head(log: AuditLog, engine: Engine,
                                                   sql: Sql) -> None:
    fill(log)
    sql("UPDATE audit_log SET target = 'other' WHERE seq = 5")
    rehash(engine, 5)
    [problem] = log.verify().problems
    assert (problem.kind, problem.seq) == ("edited", 5)
    assert "does not match the hash recorded in the head" in problem.message


def test_rehashed_middle_entry_breaks_the_next_link(log: AuditLog, engine: Engine,
                                                    sql: Sql) -> None:
    fill(log)
    sql("UPDATE audit_log SET target = 'other' WHERE seq = 2")
    rehash(engine, 2)
    [problem] = log.verify().problems
    assert (problem.kind, problem.seq) == ("unlinked", 3)
    assert "Entry 3 does not chain to entry 2" in problem.message


def test_truncation_with_the_head_moved_back_needs_an_anchor(log: AuditLog, sql: Sql) -> None:
    fill(log)
    anchor = log.verify().head
    assert anchor is not None
    with log.engine.begin() as conn:
        row = conn.execute(text("SELECT seq, hash FROM audit_log WHERE seq = 4")).one()
    sql("DELETE FROM audit_log WHERE seq = 5")
    sql("UPDATE audit_head SET seq = :s, hash = :h", s=row.seq, h=row.hash)
    assert log.verify().ok  # consistent inside the database: only an outside anchor tells
    [problem] = log.verify(anchor=anchor).problems
    assert (problem.kind, problem.seq) == ("anchor", 5)
    assert "Entry 5 named by the anchor is missing" in problem.message


def test_missing_head_row_is_reported_and_blocks_appends(log: AuditLog, sql: Sql) -> None:
    fill(log, 2)
    sql("DELETE FROM audit_head")
    assert problems(log) == [("head", None)]
    with pytest.raises(ShipyardError, match=r"head row .* is missing"):
        log.append(tenant_id="acme", actor="a", action="key.create", target="k")


def test_entry_written_around_the_api_is_reported(log: AuditLog, engine: Engine,
                                                  sql: Sql) -> None:
    fill(log, 2)
    head = log.head()
    assert head is not None
    at = datetime.now(UTC)
    forged = entry_hash(seq=3, tenant_id="acme", at=at, actor="a", action="key.create",
                        target="k", outcome="ok", details=None, prev_hash=head.hash)
    sql("INSERT INTO audit_log (seq, tenant_id, at, actor, action, target, outcome, prev_hash, "
        "hash) VALUES (3, 'acme', :at, 'a', 'key.create', 'k', 'ok', :p, :h)",
        at=at.replace(tzinfo=None).isoformat(sep=" "), p=head.hash, h=forged)
    assert problems(log) == [("inserted", 3)]


def test_concurrent_appends_keep_one_chain(log: AuditLog) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(25):
                log.append(tenant_id=f"t{n}", actor=f"thread:{n}", action="config.change",
                           target=f"setting{i}")
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    report = log.verify()
    assert report.ok and report.entries == 100
    assert sorted(e.seq for e in log.list(limit=None)) == list(range(1, 101))


@pytest.mark.parametrize("details", [
    {"secret": "x"}, {"password": "x"}, {"api_key": "x"}, {"apiKey": "x"}, {"key": "x"},
    {"token": "x"}, {"refresh_token": "x"}, {"client_secret": "x"}, {"Authorization": "x"},
    {"private_key": "x"}, {"nested": {"db_password": "x"}}, {"list": [{"passwd": "x"}]},
])
def test_secret_looking_details_keys_are_refused(log: AuditLog, details: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest, match="named like a secret") as caught:
        log.append(tenant_id="acme", actor="a", action="key.create", target="k",
                   details=details)
    assert caught.value.param is not None and caught.value.param.startswith("details.")
    assert log.list() == []


@pytest.mark.parametrize("value", [
    "sk-sy-0123456789ab-abcdefghijklmnop", "Bearer abc.def", "-----BEGIN PRIVATE KEY-----",
    "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.sig",
])
def test_secret_looking_details_values_are_refused(log: AuditLog, value: str) -> None:
    with pytest.raises(InvalidRequest, match="looks like a secret"):
        log.append(tenant_id="acme", actor="a", action="key.create", target="k",
                   details={"note": value})


def test_ids_of_secrets_are_allowed(log: AuditLog) -> None:
    entry = log.append(tenant_id="acme", actor="a", action="key.rotate", target="ab12",
                       details={"key_id": "ab12", "new_key": "cd34", "token_ids": ["x"],
                                "keys_total": 3, "role": "admin"})
    assert entry.details is not None and entry.details["new_key"] == "cd34"


def test_invalid_fields_name_the_field_and_the_fix(log: AuditLog) -> None:
    with pytest.raises(InvalidRequest, match="outcome 'maybe' is not one of ok, denied, error"):
        log.append(tenant_id="acme", actor="a", action="key.create", target="k",
                   outcome="maybe")
    with pytest.raises(InvalidRequest, match="'Create Key' is not a dotted lowercase name"):
        log.append(tenant_id="acme", actor="a", action="Create Key", target="k")
    with pytest.raises(InvalidRequest, match="tenant_id is ''"):
        log.append(tenant_id="", actor="a", action="key.create", target="k")
    with pytest.raises(InvalidRequest, match=r"details.at' is a datetime.*isoformat"):
        log.append(tenant_id="acme", actor="a", action="key.create", target="k",
                   details={"at": datetime.now(UTC)})
    with pytest.raises(InvalidRequest, match="under 8192"):
        log.append(tenant_id="acme", actor="a", action="key.create", target="k",
                   details={"note": "x" * 9000})
    with pytest.raises(InvalidRequest, match="write it as SEQ:HASH"):
        AuditAnchor.parse("latest")


def test_long_actor_and_target_are_cut(log: AuditLog) -> None:
    entry = log.append(tenant_id="acme", actor="a" * 300, action="traces.export",
                       target="/" + "d" * 400)
    assert len(entry.actor) == 128 and len(entry.target) == 256 and entry.target.endswith("…")
    assert log.verify().ok
