"""Prices per model and the cost of a request. Shipped defaults are never fetched at run time;
`pricing:` in the config adds models or overrides these (prices in USD per million tokens).

The defaults are list prices of common hosted models as published by their providers at the
time of this release; check them against your contract and override what differs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["DEFAULT_PRICES", "Price", "PriceTable", "format_usd"]


def format_usd(value: float) -> str:
    """Dollars for people: cents for ordinary amounts, three significant digits for the small
    ones a single request costs (never `$0.00` for a non-zero amount, never `2.91e-05`).

    >>> format_usd(12.345), format_usd(0.1), format_usd(0.0123), format_usd(2.91e-05)
    ('$12.35', '$0.10', '$0.0123', '$0.0000291')
    """
    if not math.isfinite(value):
        return f"${value}"
    if value == 0 or abs(value) >= 0.1:
        return f"${value:,.2f}"
    text = f"{value:.{2 - math.floor(math.log10(abs(value)))}f}".rstrip("0")
    if len(text.split(".")[1]) < 2:
        text = f"{value:.2f}"
    return "$" + text


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
