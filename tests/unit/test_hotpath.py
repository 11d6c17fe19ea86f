"""The hot path's shortcuts answer exactly what the long way does."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from shipyard.gateway.app import _service_of
from shipyard.observe.metrics import Metrics
from shipyard.security.pricing import PriceTable, base_model


def test_service_paths_match_what_the_route_table_matches() -> None:
    assert _service_of("/v1/services/echo/invoke") == "echo"
    assert _service_of("/v1/services/a b/invoke") == "a b"  # the path is already decoded
    for path in ("/v1/services//invoke", "/v1/services/a/b/invoke", "/v1/services/invoke",
                 "/v1/services/echo", "/v1/services/echo/invoke/", "/v1/chat/completions"):
        assert _service_of(path) is None, path


def test_prices_by_base_name_are_remembered_and_stay_right() -> None:
    table = PriceTable()
    dated = "us.anthropic.claude-3-5-haiku-20241022-v1:0"
    first = table.cost(alias="a", upstream_model=dated, prompt_tokens=1000,
                       completion_tokens=500)
    again = table.cost(alias="a", upstream_model=dated, prompt_tokens=2000,
                       completion_tokens=0)
    price = table.prices[base_model(dated)]
    assert first == price.cost(1000, 500)
    assert again == price.cost(2000, 0)
    assert table.cost(alias="a", upstream_model="no-such-model-2024", prompt_tokens=1,
                      completion_tokens=1) is None
    assert table.cost(alias="a", upstream_model="no-such-model-2024", prompt_tokens=1,
                      completion_tokens=1) is None


def test_cached_metric_children_count_like_labels() -> None:
    metrics = Metrics(CollectorRegistry())
    child = metrics.child(metrics.tokens, "svc", "m", "prompt")
    assert child is metrics.child(metrics.tokens, "svc", "m", "prompt")
    assert child is metrics.tokens.labels("svc", "m", "prompt")
    child.inc(3)
    metrics.child(metrics.tokens, "svc", "m", "completion").inc(2)
    text = metrics.exposition().decode()
    assert 'shipyard_tokens_total{kind="prompt",model="m",service="svc"} 3.0' in text
    assert 'shipyard_tokens_total{kind="completion",model="m",service="svc"} 2.0' in text
