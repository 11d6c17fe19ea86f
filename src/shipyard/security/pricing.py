"""Prices per model and the cost of a request. Shipped defaults are never fetched at run time;
`pricing:` in the config adds models or overrides these (prices in USD per million tokens).

The defaults are list prices of common hosted models as published by their providers at the
time of this release; check them against your contract and override what differs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["DEFAULT_PRICES", "Price", "PriceTable"]


@dataclass(frozen=True)
class Price:
    input_per_1m: float
    output_per_1m: float

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> float:
        return ((prompt_tokens or 0) * self.input_per_1m
                + (completion_tokens or 0) * self.output_per_1m) / 1_000_000


DEFAULT_PRICES: Mapping[str, Price] = {
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "o3-mini": Price(1.10, 4.40),
    "text-embedding-3-small": Price(0.02, 0.0),
    "text-embedding-3-large": Price(0.13, 0.0),
    # The simulated model: priced like a small model, so demos and tests show real numbers.
    "sim-chat": Price(0.15, 0.60),
    "sim-embed": Price(0.02, 0.0),
}


class PriceTable:
    """Look up a price by alias first (config), then by upstream model name."""

    def __init__(self, overrides: Mapping[str, Price] | None = None) -> None:
        self.prices = {**DEFAULT_PRICES, **(overrides or {})}

    def cost(self, *, alias: str | None, upstream_model: str | None,
             prompt_tokens: int | None, completion_tokens: int | None) -> float | None:
        for name in (alias, upstream_model):
            if name and name in self.prices:
                return self.prices[name].cost(prompt_tokens, completion_tokens)
        return None

    def bound(self, names: Iterable[str]) -> Price | None:
        """The highest input and output prices among `names` (an alias, its upstream models
        and fallbacks): what a request to that alias may cost at most per token. None when
        none of them has a price (its requests cost nothing the gateway can count)."""
        found = [self.prices[name] for name in names if name in self.prices]
        if not found:
            return None
        return Price(max(p.input_per_1m for p in found), max(p.output_per_1m for p in found))
