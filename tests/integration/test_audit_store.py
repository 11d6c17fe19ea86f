"""The audit log on both backends: migrations, the chain, tampering, two appending processes,
and the real `shipyard audit` / `shipyard traces export` commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, inspect, text

from shipyard.security.audit import AuditLog
from shipyard.store import create_store_engine, migrate
from shipyard.store.engine import downgrade

APPENDER = """
import sys
from shipyard.security.audit import AuditLog
from shipyard.store import create_store_engine
engine = create_store_engine(sys.argv[1])
log = AuditLog(engine)
for i in range(int(sys.argv[3])):
    log.append(tenant_id=sys.argv[2], actor="proc:" + sys.argv[2], action="config.change",
               target="setting" + str(i))
engine.dispose()
"""


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    engine = create_store_engine(store_url)
    migrate(engine)
    yield engine
    engine.dispose()


def fill(log: AuditLog, n: int) -> None:
    for i in range(1, n + 1):
        log.append(tenant_id=f"tenant{i % 3}", actor="cli:ops@host", action="key.create",
                   target=f"key{i}", details={"role": "client", "n": i})


def run_sql(engine: Engine, *statements: str) -> None:
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))


def shipyard(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
    env.update(NO_COLOR="1", TERM="dumb", COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "shipyard", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def test_migrations_create_and_drop_the_audit_tables(store_url: str) -> None:
    engine = create_store_engine(store_url)
    try:
        migrate(engine)
        tables = set(inspect(engine).get_table_names())
        assert {"audit_log", "audit_head"} <= tables
        indexes = {i["name"] for i in inspect(engine).get_indexes("audit_log")}
        assert "ix_audit_log_tenant_id_seq" in indexes
        with engine.connect() as conn:
            head = conn.execute(text("SELECT id, seq, hash FROM audit_head")).all()
        assert [tuple(r) for r in head] == [(1, 0, "0" * 64)]
        downgrade(engine, "0003")
        assert "audit_head" not in inspect(engine).get_table_names()
        downgrade(engine, "0001")
        assert "audit_log" not in inspect(engine).get_table_names()
        migrate(engine)
        assert AuditLog(engine).verify().ok
    finally:
        engine.dispose()


def test_chain_round_trips_and_tampering_is_named(engine: Engine) -> None:
    log = AuditLog(engine)
    fill(log, 12)
    assert log.verify().ok  # times and JSON hash the same after the database's round trip
    run_sql(engine,
            "UPDATE audit_log SET target = 'someone-else' WHERE seq = 2",
            "DELETE FROM audit_log WHERE seq = 5",
            "UPDATE audit_log SET seq = -1 WHERE seq = 7",
            "UPDATE audit_log SET seq = 7 WHERE seq = 9",
            "UPDATE audit_log SET seq = 9 WHERE seq = -1",
            "DELETE FROM audit_log WHERE seq = 12")
    report = log.verify()
    assert [(p.kind, p.seq) for p in report.problems] == [
        ("edited", 2), ("deleted", 5), ("reordered", 7), ("reordered", 9), ("deleted", 12)]
    assert report.problems[1].message == "Entry 5 is missing (deleted) between 4 and 6."
    assert "after 11" in report.problems[4].message
    # scoped by tenant; entry 9 now sits at seq 7
    assert [e.seq for e in log.list(tenant_id="tenant0")] == [7, 6, 3]


def test_two_processes_appending_keep_one_chain(engine: Engine, store_url: str) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER, store_url, f"p{n}", "30"])
             for n in range(2)]
    for proc in procs:
        assert proc.wait(120) == 0
    log = AuditLog(engine)
    report = log.verify()
    assert report.ok, report.problems
    assert report.entries == 60
    assert {e.tenant_id for e in log.list(limit=None)} == {"p0", "p1"}


def test_cli_verify_names_the_tampered_entry(engine: Engine, store_url: str,
                                             tmp_path: Path) -> None:
    fill(AuditLog(engine), 4)
    intact = shipyard("audit", "verify", "--store-url", store_url, cwd=tmp_path)
    assert intact.returncode == 0, intact.stderr
    assert "Audit log intact: 4 entries" in intact.stdout
    anchor = intact.stdout.split("--anchor ")[1].split()[0].rstrip(".")

    run_sql(engine, "UPDATE audit_log SET actor = 'nobody' WHERE seq = 3")
    tampered = shipyard("audit", "verify", "--store-url", store_url, cwd=tmp_path)
    assert tampered.returncode == 1
    assert "NOT intact" in tampered.stdout and "Entry 3 was edited" in tampered.stdout

    run_sql(engine, "UPDATE audit_log SET actor = 'cli:ops@host' WHERE seq = 3",
            "DELETE FROM audit_log WHERE seq = 4",
            "UPDATE audit_head SET seq = 3, hash = (SELECT hash FROM audit_log WHERE seq = 3)")
    assert shipyard("audit", "verify", "--store-url", store_url, cwd=tmp_path).returncode == 0
    anchored = shipyard("audit", "verify", "--store-url", store_url, "--anchor", anchor,
                        "--json", cwd=tmp_path)
    assert anchored.returncode == 1
    report = json.loads(anchored.stdout)
    assert report["ok"] is False and report["problems"][0]["kind"] == "anchor"
    assert "Entry 4 named by the anchor is missing" in report["problems"][0]["message"]

    bad = shipyard("audit", "verify", "--store-url", store_url, "--anchor", "latest",
                   cwd=tmp_path)
    assert bad.returncode == 1 and "write it as SEQ:HASH" in bad.stderr


def test_traces_export_is_audited(store_url: str, tmp_path: Path) -> None:
    out = tmp_path / "export.jsonl"
    export = shipyard("traces", "export", "--store-url", store_url, "--errors", "-o", str(out),
                      cwd=tmp_path)
    assert export.returncode == 0, export.stderr
    listed = shipyard("audit", "list", "--store-url", store_url, "--action", "traces.*",
                      "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    [entry] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert entry["action"] == "traces.export" and entry["outcome"] == "ok"
    assert entry["actor"].startswith("cli:") and "@" in entry["actor"]
    assert entry["target"] == str(out.resolve())
    assert entry["details"] == {"format": "jsonl", "service": None, "errors": True,
                                "since": None, "rows": 0}
    table = shipyard("audit", "list", "--store-url", store_url, "--tenant", "default",
                     cwd=tmp_path)
    assert table.returncode == 0 and "traces.export" in table.stdout
    none = shipyard("audit", "list", "--store-url", store_url, "--tenant", "acme", cwd=tmp_path)
    assert none.returncode == 0 and "No audit entries match." in none.stdout
