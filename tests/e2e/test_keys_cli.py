"""`shipyard tenants` and `shipyard keys` end to end, on a real SQLite store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from shipyard.store import create_store_engine
from shipyard.store import tenants as store


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
    env.update(NO_COLOR="1", TERM="dumb", COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "shipyard", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def test_bootstrap_create_rotate_revoke(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    first = run("keys", "create", "--bootstrap", "--store-url", url, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    secret = first.stdout.strip().splitlines()[-1]
    assert secret.startswith("sk-sy-")
    again = run("keys", "create", "--bootstrap", "--store-url", url, cwd=tmp_path)
    assert again.returncode == 1 and "already has 1 active admin key" in again.stderr

    assert run("tenants", "create", "acme", "--store-url", url, cwd=tmp_path).returncode == 0
    bad = run("tenants", "create", "Not Valid!", "--store-url", url, cwd=tmp_path)
    assert bad.returncode == 1 and "lowercase letters" in bad.stderr
    made = run("keys", "create", "--tenant", "acme", "--name", "bot", "--role", "client",
               "--model", "demo", "--store-url", url, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    bot_secret = made.stdout.strip().splitlines()[-1]
    wrong = run("keys", "create", "--tenant", "acme", "--role", "wizard", "--store-url", url,
                cwd=tmp_path)
    assert wrong.returncode == 1 and "Role 'wizard' is not valid" in wrong.stderr

    listed = run("keys", "list", "--tenant", "acme", "--json", "--store-url", url, cwd=tmp_path)
    [key] = json.loads(listed.stdout)
    assert key["role"] == "client" and key["models"] == ["demo"]
    assert bot_secret not in listed.stdout and "digest" not in listed.stdout

    rotated = run("keys", "rotate", key["id"], "--overlap", "60", "--store-url", url,
                  cwd=tmp_path)
    assert rotated.returncode == 0, rotated.stderr
    assert "keeps working until" in rotated.stdout
    revoked = run("keys", "revoke", key["id"], "--store-url", url, cwd=tmp_path)
    assert revoked.returncode == 0
    engine = create_store_engine(url)
    try:
        records = {r.id: r for r in store.list_keys(engine, tenant_id="acme")}
        assert records[key["id"]].status() == "revoked"
        [new] = [r for r in records.values() if r.rotated_from == key["id"]]
        assert new.status() == "active" and new.models == ("demo",)
        assert all(bot_secret not in r.digest for r in records.values())
    finally:
        engine.dispose()
