"""Alert queries, history and the lease on real SQLite and PostgreSQL stores."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, insert, text

from shipyard.config import parse_config
from shipyard.monitor import history
from shipyard.monitor.alerts import AlertEvaluator, definitions
from shipyard.monitor.channels import MemoryChannel
from shipyard.monitor.queries import Scope, custom_query, metric_value, window_counts
from shipyard.monitor.slo import SLOCounter, SLOStatus, error_budget, evaluate_slo
from shipyard.monitor.state import advance
from shipyard.store import create_store_engine, migrate, new_trace_record
from shipyard.store.tables import traces

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    engine = create_store_engine(store_url)
    migrate(engine)
    yield engine
    engine.dispose()


def plant(engine: Engine, *, ago_s: float, n: int = 1, status: int = 200,
          total_ms: float = 100.0, **values: object) -> None:
    values.setdefault("service", "support")
    rows = [new_trace_record(route="chat", status=status, total_ms=total_ms,
                             started_at=NOW - timedelta(seconds=ago_s), **values)
            for _ in range(n)]
    with engine.begin() as connection:
        connection.execute(insert(traces), rows)


def test_metrics_over_a_window(engine: Engine) -> None:
    plant(engine, ago_s=30, n=90, total_ms=100, total_tokens=10, cost_usd=0.01)
    plant(engine, ago_s=30, n=5, status=502, total_ms=900)
    plant(engine, ago_s=30, n=3, status=503, total_ms=1, error_type="CapacityError")
    plant(engine, ago_s=30, n=2, status=429, total_ms=1)
    plant(engine, ago_s=30, n=4, attributes='{"cache":"hit"}', total_ms=2)
    plant(engine, ago_s=30, n=4, attributes='{"cache":"miss"}', total_ms=200)
    plant(engine, ago_s=30, n=50, status=500, service="other")
    plant(engine, ago_s=4000, n=50, status=500)  # outside the window
    since, until, scope = NOW - timedelta(seconds=60), NOW, Scope(service="support")

    def value(metric: str, s: Scope = scope) -> float | None:
        return metric_value(engine, metric, s, since, until)

    assert value("requests") == 108
    assert value("error_rate") == pytest.approx(8 / 108)
    assert value("client_error_rate") == pytest.approx(2 / 108)
    assert value("request_rate") == pytest.approx(108 / 60)
    assert value("shed_requests") == 3
    assert value("tokens") == 900 and value("tokens_per_minute") == pytest.approx(900)
    assert value("cost_per_hour") == pytest.approx(0.9 * 60)
    assert value("cache_hit_rate") == pytest.approx(0.5)
    assert value("latency_p50_ms") == 100 and value("latency_p99_ms") == 900
    assert value("latency_p95_ms") == 200  # nearest rank: the 103rd of 108 sorted values
    assert value("ttft_p95_ms") is None  # no streams: no data, never a false alert
    assert value("error_rate", Scope()) == pytest.approx(58 / 158)
    assert value("requests", Scope(tenant="acme")) == 0
    assert value("error_rate", Scope(tenant="acme")) is None
    assert metric_value(engine, "error_rate", scope, since, until, min_requests=500) is None
    sql = "SELECT count(*) FROM traces WHERE status >= 500 AND started_at >= :since"
    assert custom_query(engine, sql, since, until) == 58


def test_window_counts_and_the_error_budget(engine: Engine) -> None:
    plant(engine, ago_s=10, n=8)
    plant(engine, ago_s=10, n=2, status=500)
    plant(engine, ago_s=100, n=90)
    plant(engine, ago_s=100, n=10, status=500, total_ms=5000)
    short, long = window_counts(engine, Scope(), NOW, [60, 600])
    assert (short.total, short.bad, long.total, long.bad) == (10, 2, 110, 12)
    [slow] = window_counts(engine, Scope(), NOW, [600], latency_ms=1000)
    assert (slow.total, slow.bad) == (110, 10)
    config = parse_config("""
slos:
  - name: avail
    sli: availability
    objective: 0.9
    period: 1h
    burn_rates: [{severity: page, long_window: 10m, short_window: 1m, burn_rate: 1}]
""")
    slo = config.slos[0]
    status = evaluate_slo(engine, slo, NOW)
    [check] = status.checks
    assert check.long_burn == pytest.approx(12 / 110 / 0.1)
    assert check.short_burn == pytest.approx(2.0) and check.firing
    budget = error_budget(engine, slo, NOW)
    assert (budget.total, budget.bad) == (110, 12)
    assert budget.remaining == pytest.approx(1 - 12 / 11)


def test_the_lease_elects_one_evaluator(engine: Engine) -> None:
    assert history.acquire_lease(engine, "a", 30, now=NOW)
    assert not history.acquire_lease(engine, "b", 30, now=NOW)
    assert history.acquire_lease(engine, "a", 30, now=NOW + timedelta(seconds=10))  # renew
    assert not history.acquire_lease(engine, "b", 30, now=NOW + timedelta(seconds=39))
    assert history.acquire_lease(engine, "b", 30, now=NOW + timedelta(seconds=41))  # expired
    assert not history.acquire_lease(engine, "a", 30, now=NOW + timedelta(seconds=42))
    history.release_lease(engine, "b")
    assert history.acquire_lease(engine, "a", 30, now=NOW + timedelta(seconds=43))


def test_only_one_of_two_racing_evaluators_wins_a_transition(engine: Engine) -> None:
    config = parse_config("alerts: {rules: [{name: r, metric: requests, threshold: 0, "
                          "for_duration: 10}]}")
    [d] = definitions(config)
    pending, step = advance(None, active=True, value=1, now=NOW, for_s=10, resolve_after_s=0)
    assert history.save_transition(engine, None, pending, step, d.info, now=NOW,
                                   url_base="http://x")
    later = NOW + timedelta(seconds=10)
    firing, step = advance(pending, active=True, value=2, now=later, for_s=10,
                           resolve_after_s=0)
    assert step == "firing"
    won = [history.save_transition(engine, pending, firing, step, d.info, now=later,
                                   url_base="http://x") for _ in range(2)]
    assert won == [True, False]
    [row] = history.list_alerts(engine)
    assert row["state"] == "firing" and row["url"] == f"http://x/ui/alerts/{row['id']}"
    events = history.alert_events_of(engine, [row["id"]])[row["id"]]
    assert [e["event"] for e in events] == ["pending", "firing"]
    assert history.open_alerts(engine)["r"].state == "firing"


def test_the_evaluator_fires_and_resolves_once_from_stored_traces(engine: Engine) -> None:
    config = parse_config("""
server: {public_url: "https://ai.example.com"}
alerts:
  resolve_after: 0
  rules:
    - {name: errors, metric: error_rate, service: support, window: 1m, threshold: 0.1,
       severity: page, runbook: "check the upstream"}
slos:
  - name: avail
    sli: availability
    objective: 0.99
    service: support
    burn_rates: [{severity: page, long_window: 10m, short_window: 1m, burn_rate: 10}]
""")
    clock = [NOW]
    channel = MemoryChannel("mem")
    evaluator = AlertEvaluator(config, engine, channels={"mem": channel},
                               clock=lambda: clock[0], holder="test")

    async def scenario() -> list[list[tuple[str, str]]]:
        steps = [await evaluator.run_once()]
        plant(engine, ago_s=5, n=10, status=502)
        steps.append(await evaluator.run_once())
        steps.append(await evaluator.run_once())  # still failing: nothing new
        clock[0] = NOW + timedelta(minutes=2)  # 1m windows are clean, 10m is not
        plant(engine, ago_s=-115, n=10)
        steps.append(await evaluator.run_once())
        await evaluator.stop()
        return steps

    steps = asyncio.run(scenario())
    assert steps[0] == [] and steps[2] == []
    assert sorted(steps[1]) == [("avail:page", "firing"), ("errors", "firing")]
    assert sorted(steps[3]) == [("avail:page", "resolved"), ("errors", "resolved")]
    events = sorted((n.alert["key"], n.event) for n in channel.sent)
    assert events == [("avail:page", "firing"), ("avail:page", "resolved"),
                      ("errors", "firing"), ("errors", "resolved")]
    fired = next(n for n in channel.sent if n.alert["key"] == "errors")
    assert fired.alert["url"].startswith("https://ai.example.com/ui/alerts/")
    assert fired.alert["runbook"] == "check the upstream" and fired.alert["value"] == 1.0
    rows = history.list_alerts(engine, state="resolved")
    assert len(rows) == 2
    events_of = history.alert_events_of(engine, [r["id"] for r in rows])
    for row in rows:
        kinds = [e["event"] for e in events_of[row["id"]]]
        assert kinds.count("firing") == 1 and kinds.count("resolved") == 1
        assert kinds.count("notified") == 2
    with engine.connect() as connection:  # the lease was handed on at stop
        assert connection.execute(text("SELECT count(*) FROM alert_lease")).scalar() == 0


def test_two_evaluators_opening_the_same_incident_store_one(engine: Engine) -> None:
    config = parse_config("alerts: {rules: [{name: r, metric: requests, threshold: 0}]}")
    [d] = definitions(config)
    first, step = advance(None, active=True, value=1, now=NOW, for_s=0, resolve_after_s=0)
    second, _ = advance(None, active=True, value=1, now=NOW, for_s=0, resolve_after_s=0)
    assert first is not None and second is not None and first.id != second.id
    won = [history.save_transition(engine, None, a, step, d.info, now=NOW, url_base="http://x")
           for a in (first, second)]
    assert won == [True, False]
    assert [r["id"] for r in history.list_alerts(engine)] == [first.id]
    # Once resolved, the key may open a new incident.
    assert history.save_transition(engine, first, None, "resolved", d.info, now=NOW,
                                   url_base="http://x")
    assert history.save_transition(engine, None, second, "firing", d.info, now=NOW,
                                   url_base="http://x")
    assert len(history.list_alerts(engine)) == 2


def test_an_alert_whose_rule_left_the_config_is_closed(engine: Engine) -> None:
    old = parse_config("alerts: {rules: [{name: gone, metric: requests, threshold: -1}]}")
    evaluator = AlertEvaluator(old, engine, channels={}, holder="a")
    assert asyncio.run(evaluator.run_once()) == [("gone", "firing")]
    history.release_lease(engine, "a")
    new = parse_config("alerts: {rules: [{name: other, metric: requests, threshold: 1e9}]}")
    successor = AlertEvaluator(new, engine, channels={}, holder="b")
    assert asyncio.run(successor.run_once()) == []
    [row] = history.list_alerts(engine)
    assert row["key"] == "gone" and row["state"] == "resolved"
    events = history.alert_events_of(engine, [row["id"]])[row["id"]]
    assert events[-1]["details"] == {"reason": "no longer configured"}


def test_the_incremental_slo_counter_matches_a_full_count(engine: Engine) -> None:
    # One request a minute for three days, every 7th failing, plus a recent burst of errors.
    rows = [new_trace_record(route="chat", service="support", total_ms=10.0,
                             status=500 if i % 7 == 0 else 200,
                             started_at=NOW - timedelta(minutes=i)) for i in range(3 * 1440)]
    with engine.begin() as connection:
        connection.execute(insert(traces), rows)
    plant(engine, ago_s=60, n=30, status=503)
    [slo] = parse_config("slos: [{name: s, sli: availability, objective: 0.99, "
                         "service: support}]").slos
    counter = SLOCounter(engine, slo)
    assert counter.horizon == 6 * 3600 and counter.long == [86400.0, 3 * 86400.0]

    def burns(status: SLOStatus) -> list[tuple[float | None, float | None]]:
        return [(c.long_burn, c.short_burn) for c in status.checks]

    assert burns(counter.status(NOW)) == burns(evaluate_slo(engine, slo, NOW))
    for minutes in (1, 30, 90, 600):  # time passes; new traffic keeps arriving
        later = NOW + timedelta(minutes=minutes)
        plant(engine, ago_s=-(minutes * 60 - 1), n=5, status=200)
        got, want = counter.status(later), evaluate_slo(engine, slo, later)
        for (g_long, g_short), (w_long, w_short) in zip(burns(got), burns(want), strict=True):
            assert g_short == w_short
            assert g_long == pytest.approx(w_long, rel=0.02)
        assert [c.firing for c in got.checks] == [c.firing for c in want.checks]


def test_a_failing_query_neither_fires_nor_resolves(engine: Engine,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    config = parse_config("""
alerts:
  resolve_after: 0
  rules:
    - {name: fine, metric: requests, threshold: -1}
    - {name: broken, query: "SELECT count(*) FROM no_such_table", threshold: 0}
""")
    evaluator = AlertEvaluator(config, engine, channels={}, holder="a")
    assert asyncio.run(evaluator.run_once()) == [("fine", "firing")]
    assert "evaluating 'broken' failed (ProgrammingError)" in caplog.text or (
        "evaluating 'broken' failed (OperationalError)" in caplog.text)
    with engine.begin() as connection:  # now the rule that fired cannot be evaluated
        connection.execute(text("ALTER TABLE traces RENAME TO traces_away"))
    try:
        assert asyncio.run(evaluator.run_once()) == []
        assert history.open_alerts(engine)["fine"].state == "firing"  # kept, not resolved
    finally:
        with engine.begin() as connection:
            connection.execute(text("ALTER TABLE traces_away RENAME TO traces"))
