"""Prices per model and the cost of a request. Shipped defaults are never fetched at run time;
`pricing:` in the config adds models or overrides these (prices in USD per million tokens).

The defaults are list prices of common hosted models as published by their providers at the
time of this release; check them against your contract and override what differs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["DEFAULT_PRICES", "Price", "PriceTable", "base_model", "format_usd"]


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
    # Anthropic (Claude), also on Bedrock under ids such as
    # `us.anthropic.claude-sonnet-4-5-20250929-v1:0` (see `PriceTable.cost`).
    "claude-opus-4-5": Price(5.00, 25.00),
    "claude-opus-4-1": Price(15.00, 75.00),
    "claude-opus-4": Price(15.00, 75.00),
    "claude-sonnet-4-5": Price(3.00, 15.00),
    "claude-sonnet-4": Price(3.00, 15.00),
    "claude-3-7-sonnet": Price(3.00, 15.00),
    "claude-haiku-4-5": Price(1.00, 5.00),
    "claude-3-5-haiku": Price(0.80, 4.00),
    "claude-3-haiku": Price(0.25, 1.25),
    # Google Gemini (Generative Language API; prompts up to 200k tokens for the Pro model).
    "gemini-2.5-pro": Price(1.25, 10.00),
    "gemini-2.5-flash": Price(0.30, 2.50),
    "gemini-2.5-flash-lite": Price(0.10, 0.40),
    "gemini-2.0-flash": Price(0.10, 0.40),
    "gemini-2.0-flash-lite": Price(0.075, 0.30),
    # Amazon Nova on Bedrock.
    "nova-premier": Price(2.50, 12.50),
    "nova-pro": Price(0.80, 3.20),
    "nova-lite": Price(0.06, 0.24),
    "nova-micro": Price(0.035, 0.14),
    # The simulated model: priced like a small model, so demos and tests show real numbers.
    "sim-chat": Price(0.15, 0.60),
    "sim-embed": Price(0.02, 0.0),
}


# Dated and versioned model ids (`claude-sonnet-4-5-20250929`, Bedrock's
# `us.anthropic.claude-3-5-haiku-20241022-v1:0`, `gemini-2.5-flash-001`) name the same model
# as their base name.
_REGION = re.compile(r"^(?:us|eu|apac|au|jp|ca|us-gov|global)\.")
_VENDOR = re.compile(r"^(?:anthropic|amazon|meta|mistral|cohere|ai21|deepseek|openai)\.")
_SUFFIX = re.compile(r"(?:-v\d+(?::\d+)?)$|(?:[-@]\d{8})$|(?:-\d{3})$|(?:-latest)$")


def base_model(name: str) -> str:
    """The model name without region, vendor, date or version parts.

    >>> base_model("us.anthropic.claude-3-5-haiku-20241022-v1:0")
    'claude-3-5-haiku'
    """
    name = _VENDOR.sub("", _REGION.sub("", name.removeprefix("models/")))
    while (stripped := _SUFFIX.sub("", name)) != name:
        name = stripped
    return name


class PriceTable:
    """Look up a price by alias first (config), then by upstream model name, then by that
    name without its date or version (`claude-sonnet-4-5-20250929` → `claude-sonnet-4-5`)."""

    def __init__(self, overrides: Mapping[str, Price] | None = None) -> None:
        self.prices = {**DEFAULT_PRICES, **(overrides or {})}
        self._base: dict[str, Price | None] = {}  # upstream model -> price via its base name

    def cost(self, *, alias: str | None, upstream_model: str | None,
             prompt_tokens: int | None, completion_tokens: int | None) -> float | None:
        for name in (alias, upstream_model):
            if name and name in self.prices:
                return self.prices[name].cost(prompt_tokens, completion_tokens)
        if upstream_model:
            # Every request of an alias asks about the same few names: remember the answer
            # rather than run three regular expressions each time.
            if upstream_model in self._base:
                price = self._base[upstream_model]
            else:
                price = self.prices.get(base_model(upstream_model))
                if len(self._base) < 10_000:
                    self._base[upstream_model] = price
            if price is not None:
                return price.cost(prompt_tokens, completion_tokens)
        return None

    def bound(self, names: Iterable[str]) -> Price | None:
        """The highest input and output prices among `names` (an alias, its upstream models
        and fallbacks): what a request to that alias may cost at most per token. None when
        none of them has a price (its requests cost nothing the gateway can count)."""
        found = [self.prices[key] for name in names
                 for key in dict.fromkeys((name, base_model(name))) if key in self.prices]
        if not found:
            return None
        return Price(max(p.input_per_1m for p in found), max(p.output_per_1m for p in found))
