"""Authentication under attack and through outages, against a real `shipyard serve`.

- A PostgreSQL outage (`ALTER DATABASE … ALLOW_CONNECTIONS false` + `pg_terminate_backend`) on
  a database this test creates: tenant keys seen before keep working from their last known
  records for `auth.outage_grace_s`, revocations seen before stay in force, keys never seen get
  503 with Retry-After, and nothing is ever a 500.
- Brute force: failed attempts per client address and per key id end in 429 with Retry-After
  (a client that authenticated before keeps working), every route counts its failures in
  `shipyard_auth_failures_total{reason,route}`, and a lockout is in the audit log.
"""

from __future__ import annotations

import http.client
import json
import secrets
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
from prometheus_client.parser import text_string_to_metric_families

from conftest import API_KEY, Proc, gateway_config, launch_gateway, launch_sim
from shipyard.store import create_store_engine, migrate
from shipyard.store import tenants as store

PG_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
CHAT = json.dumps({"model": "demo", "messages": [{"role": "user", "content": "hi"}]}).encode()


def _call(gateway: Proc, key: str | None, *, method: str = "POST",
          path: str = "/v1/chat/completions", source: str = "127.0.0.1",
          body: bytes | None = CHAT) -> tuple[int, dict[str, str], Any]:
    """One request from the client address `source` (any 127.x.y.z reaches the gateway)."""
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=15,
                                      source_address=(source, 0))
    try:
        headers = {"content-type": "application/json"}
        if key is not None:
            headers["authorization"] = f"Bearer {key}"
        conn.request(method, path, body=body if method == "POST" else None, headers=headers)
        response = conn.getresponse()
        data = response.read()
        parsed = json.loads(data) if data.startswith(b"{") else data.decode(errors="replace")
        return response.status, {k.lower(): v for k, v in response.getheaders()}, parsed
    finally:
        conn.close()


def _with_auth(config: str, options: str) -> str:
    """`gateway_config` with extra `auth:` settings."""
    return config.replace("\nauth:\n", f"\nauth:\n{options}", 1)


def _pg_outage(name: str, *, down: bool) -> None:
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"false" if down else "true"}')
        if down:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))


def test_tenant_keys_survive_a_postgres_outage_from_their_last_known_records(
        postgres_url: str, tmp_path: Path) -> None:
    name = postgres_url.rsplit("/", 1)[1]
    engine = create_store_engine(postgres_url)
    migrate(engine)
    store.create_tenant(engine, "acme")
    _, used = store.create_key(engine, tenant_id="acme", name="used", role="client")
    revoked_here, revoked_here_secret = store.create_key(engine, tenant_id="acme",
                                                         name="revoked here", role="client")
    revoked_cli, revoked_cli_secret = store.create_key(engine, tenant_id="acme",
                                                       name="revoked by the CLI", role="client")
    _, unseen = store.create_key(engine, tenant_id="acme", name="never used", role="client")
    grace = 8.0
    gateway = launch_gateway(tmp_path, _with_auth(
        gateway_config(None, postgres_url),
        f"  key_cache_s: 1\n  outage_grace_s: {grace}\n  lockout: {{enabled: false}}\n"))
    try:
        assert _call(gateway, used)[0] == 200
        assert _call(gateway, revoked_cli_secret)[0] == 200
        status, _, _ = _call(gateway, API_KEY, body=b"",
                             path=f"/v1/admin/keys/{revoked_here.id}/revoke?tenant=acme")
        assert status == 200
        store.revoke_key(engine, revoked_cli.id, tenant_id="acme")  # another process revokes
        time.sleep(1.5)  # > key_cache_s: the gateway reads the revocation on the next use
        assert _call(gateway, revoked_cli_secret)[0] == 401
        assert _call(gateway, revoked_here_secret)[0] == 401
        assert _call(gateway, used)[0] == 200  # its record is fresh when the outage starts
        engine.dispose()

        _pg_outage(name, down=True)
        started = time.monotonic()
        seen: list[tuple[float, str, int, str | None]] = []
        while (elapsed := time.monotonic() - started) < grace + 4:
            for label, key in (("used", used), ("revoked here", revoked_here_secret),
                               ("revoked by the CLI", revoked_cli_secret), ("unseen", unseen),
                               ("random", f"sk-sy-{secrets.token_hex(6)}-guess")):
                status, headers, body = _call(gateway, key)
                seen.append((elapsed, label, status, headers.get("retry-after")))
                assert status != 500, (label, elapsed, body)
            time.sleep(0.5)
        for elapsed, label, status, retry_after in seen:
            if label == "used" and elapsed < grace - 2:
                assert status == 200, (label, elapsed, status)  # served from its last record
            elif label == "used" and elapsed > grace + 2:
                assert status == 503 and retry_after, (label, elapsed, status)  # too stale
            elif label.startswith("revoked"):
                assert status == 401, (label, elapsed, status)  # seen revoked: stays revoked
            elif label in ("unseen", "random"):
                assert status == 503 and retry_after, (label, elapsed, status)
        assert any(s[1] == "used" and s[2] == 503 for s in seen)

        _pg_outage(name, down=False)
        deadline = time.monotonic() + 20
        while _call(gateway, unseen)[0] != 200:
            assert time.monotonic() < deadline, "the store came back but keys did not"
            time.sleep(0.5)
        assert _call(gateway, used)[0] == 200
        assert _call(gateway, revoked_cli_secret)[0] == 401
        metrics = _metrics(gateway)
        assert metrics[("store_unavailable", "/v1/chat/completions")] > 0
        assert "Traceback" not in gateway.output()
    finally:
        _pg_outage(name, down=False)
        gateway.stop()
        engine.dispose()


def _metrics(gateway: Proc, source: str = "127.0.0.1") -> Counter[tuple[str, str]]:
    status, _, text = _call(gateway, API_KEY, method="GET", path="/metrics", source=source)
    assert status == 200
    out: Counter[tuple[str, str]] = Counter()
    for family in text_string_to_metric_families(text):
        if family.name == "shipyard_auth_failures":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    out[(sample.labels["reason"], sample.labels["route"])] += int(sample.value)
    return out


def test_brute_force_meets_429_per_address_and_per_key_id(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    engine = create_store_engine(url)
    migrate(engine)
    store.create_tenant(engine, "acme")
    target, target_secret = store.create_key(engine, tenant_id="acme", name="t", role="client")
    _, other_secret = store.create_key(engine, tenant_id="acme", name="o", role="client")
    engine.dispose()
    gateway = launch_gateway(tmp_path, _with_auth(gateway_config(None, url), (
        "  lockout: {max_failures_per_address: 5, max_failures_per_key: 8, window_s: 60}\n")))
    try:
        # A client that works before the attack starts, from the attacker's own address.
        assert _call(gateway, target_secret)[0] == 200
        for i in range(5):
            status, _, _ = _call(gateway, f"sk-sy-{secrets.token_hex(6)}-guess-{i}")
            assert status == 401
        status, headers, body = _call(gateway, f"sk-sy-{secrets.token_hex(6)}-guess")
        assert status == 429 and int(headers["retry-after"]) >= 1, body
        assert "Too many failed authentication attempts" in body["error"]["message"]
        # Locked attempts are not checked at all, so a right guess is refused too ...
        assert _call(gateway, other_secret)[0] == 429
        # ... except a key this address authenticated with before: it keeps working.
        assert _call(gateway, target_secret)[0] == 200
        # Other routes are limited and counted alike.
        assert _call(gateway, "wrong-static-key", method="GET", path="/v1/models")[0] == 429
        assert _call(gateway, "wrong-static-key", method="GET", path="/v1/models",
                     source="127.0.0.9")[0] == 401

        # Per key id: wrong secrets for one existing key id from many addresses, each under its
        # own address limit, lock the key id for every address that has not used it before.
        wrong = f"sk-sy-{target.id}-{secrets.token_urlsafe(32)}"
        statuses = [_call(gateway, wrong, source=f"127.0.1.{i}")[0] for i in range(1, 9)]
        assert statuses == [401] * 8
        status, headers, _ = _call(gateway, target_secret, source="127.0.2.1")
        assert status == 429 and headers["retry-after"]
        assert _call(gateway, target_secret)[0] == 200  # known good from 127.0.0.1
        assert _call(gateway, other_secret, source="127.0.2.2")[0] == 200  # other key ids work

        assert _call(gateway, API_KEY, method="GET", path="/metrics")[0] == 429  # not seen here
        metrics = _metrics(gateway, source="127.0.3.1")
        assert metrics[("unknown_key", "/v1/chat/completions")] == 5
        assert metrics[("invalid_key", "/v1/chat/completions")] == 8
        assert metrics[("invalid_key", "/v1/models")] == 1
        assert metrics[("locked_out", "/v1/chat/completions")] == 3
        assert metrics[("locked_out", "/v1/models")] == 1
        assert metrics[("locked_out", "/metrics")] == 1

        # One audit entry per lockout: the address's in the platform tenant, the key id's in
        # the key's own tenant (its admins see attacks on their keys).
        deadline = time.monotonic() + 10
        while True:
            lockouts = set()
            for tenant in ("default", "acme"):
                status, _, audit = _call(gateway, API_KEY, method="GET", source="127.0.3.1",
                                         path=f"/v1/admin/audit?limit=100&tenant={tenant}")
                assert status == 200, audit
                lockouts |= {(tenant, e["actor"], e["outcome"]) for e in audit["data"]
                             if e["action"] == "auth.lockout"}
            if len(lockouts) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert lockouts == {("default", "address:127.0.0.1", "denied"),
                            ("acme", f"key:{target.id}", "denied")}
    finally:
        gateway.stop()


def test_chaos_store_down_measures_a_tenant_key_through_a_postgres_outage(
        postgres_url: str, tmp_path: Path) -> None:
    from shipyard.readiness.chaos import run_scenarios

    name = postgres_url.rsplit("/", 1)[1]
    sim = launch_sim(tmp_path)
    gateway = launch_gateway(tmp_path, _with_auth(gateway_config(sim.port, postgres_url),
                                                  "  key_cache_s: 1\n"))
    script = tmp_path / "pg_outage.py"  # the hooks: what an operator's script would do
    script.write_text(f"""import sys
import psycopg
down = sys.argv[1] == "down"
with psycopg.connect({PG_DSN!r}, autocommit=True) as conn:
    conn.execute('ALTER DATABASE "{name}" ALLOW_CONNECTIONS ' + ('false' if down else 'true'))
    if down:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = %s AND pid <> pg_backend_pid()", ({name!r},))
""")
    hook = f"{sys.executable} {script} {{}}"
    try:
        report = run_scenarios(gateway.url, API_KEY, "demo", [sim.url], ["store-down"],
                               rate=20, baseline_s=2, fault_s=6, recovery_s=3, hold_s=1,
                               latency_factor=20, store_down_cmd=hook.format("down"),
                               store_up_cmd=hook.format("up"))
    finally:
        _pg_outage(name, down=False)
        gateway.stop()
        sim.stop()
    [scenario] = report.scenarios
    assert scenario.skipped is None and scenario.fault is not None
    notes = " ".join(scenario.notes)
    assert "Traffic used a fresh key of tenant 'chaos'" in notes, notes
    assert not any("exited with" in n for n in scenario.notes), notes  # the hooks ran
    # 6 s down with key_cache_s: 1: the key is served from its last known record throughout.
    assert scenario.fault.success_rate == 1.0, scenario.fault.errors
    assert scenario.fault.requests >= 100
    engine = create_store_engine(postgres_url)
    try:
        [key] = store.list_keys(engine, tenant_id="chaos")
        assert key.status() == "revoked"  # cleaned up after the drill
    finally:
        engine.dispose()
