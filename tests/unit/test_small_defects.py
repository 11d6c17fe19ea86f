"""Small defects found by outside testing (issue 16, item 8), each pinned by a test."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from shipyard.config.security import BudgetConfig
from shipyard.errors import RateLimited
from shipyard.security.budgets import BudgetGuard
from shipyard.security.pricing import format_usd
from shipyard.ui.monitor_pages import drift_page
from shipyard.ui.pages import PageContext, PageError


@pytest.mark.parametrize(("period", "limit", "spent", "words"), [
    ("day", 0.001, 0.002, "The daily budget of tenant 'acme' ($0.001) is spent ($0.002 so far)"),
    ("month", 25.0, 25.5, "The monthly budget of tenant 'acme' ($25.00) is spent ($25.50 so"),
])
def test_the_budget_error_names_the_period_and_the_real_amounts(
        period: str, limit: float, spent: float, words: str, tmp_path: Path) -> None:
    import asyncio

    from shipyard.security.budget_ledger import StoreLedger
    from shipyard.store import create_store_engine, migrate

    engine = create_store_engine(f"sqlite:///{tmp_path}/store.db")
    migrate(engine)
    guard = BudgetGuard([BudgetConfig(tenant="acme", period=period, limit_usd=limit)],
                        StoreLedger(engine), engine=engine)

    async def spend() -> None:
        await guard.start()
        await guard.charge("acme", None, spent)
        await guard.refresh()
        await guard.stop()

    asyncio.run(spend())
    with pytest.raises(RateLimited) as raised:
        guard.check("acme", None)
    assert words in raised.value.message
    assert "dayly" not in raised.value.message
    engine.dispose()


def test_dollars_are_never_shown_as_zero_or_in_exponent_form() -> None:
    assert format_usd(2.91e-05) == "$0.0000291"
    assert format_usd(0.004) == "$0.004"
    assert format_usd(1234.5) == "$1,234.50"
    assert format_usd(0.0) == "$0.00"


def test_the_drift_page_without_the_monitor_extra_is_a_clear_501(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # numpy/scipy missing: importing the drift store fails as it would without the extra.
    monkeypatch.setitem(sys.modules, "shipyard.monitor.drift.store", None)
    ctx = PageContext(engine=create_engine(f"sqlite:///{tmp_path}/s.db"), tenant_id="default",
                      role="admin", params={})
    with pytest.raises(PageError) as raised:
        drift_page(ctx)
    assert raised.value.status == 501
    assert "pip install 'shipyard[monitor]'" in raised.value.message


def test_jsonl_corpora_keep_line_separators_inside_strings(tmp_path: Path) -> None:
    from shipyard.guards.classifier import load_examples
    from shipyard.guards.corpus import read_corpus

    lines = ['{"text": "first\u2028part\u0085two\u2029three", "label": "attack"}',
             '{"text": "benign\u2028text", "label": "benign"}']
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    items = read_corpus(corpus)
    assert [i.text for i in items] == ["first\u2028part\u0085two\u2029three", "benign\u2028text"]
    assert [text for text, _ in load_examples(corpus)] == [i.text for i in items]


def test_the_trace_page_shows_milliseconds_and_dollars_for_people(tmp_path: Path) -> None:
    from shipyard.store import create_store_engine, migrate, new_trace_record
    from shipyard.store.writer import TraceWriter
    from shipyard.ui.pages import trace_detail

    engine = create_store_engine(f"sqlite:///{tmp_path}/s.db")
    migrate(engine)
    writer = TraceWriter(engine)
    writer.start()
    record = new_trace_record(route="chat", status=200, total_ms=9.396971999876769,
                              upstream_ms=8.1234567, cost_usd=2.91e-05, service="demo")
    writer.submit(record)
    writer.stop()
    ctx = PageContext(engine=engine, tenant_id="default", role="admin", params={},
                      path_params={"trace_id": record["id"]})
    fields = dict(trace_detail(ctx)["fields"])
    assert fields["total_ms"] == "9.40 ms" and fields["upstream_ms"] == "8.12 ms"
    assert fields["cost_usd"] == "$0.0000291"
    engine.dispose()
