"""Estimated cost of a call from its token usage: dollars per million tokens, per model.

The built-in table holds list prices at the time of writing; a TOML file (setting
`prices_file`) overrides or extends it:

    [prices."gpt-4o-mini"]
    input = 0.15    # $ per million prompt tokens
    output = 0.60   # $ per million completion tokens

A model matches the longest table key that its name starts with, so dated snapshots
(`gpt-4o-mini-2024-07-18`) and provider prefixes (`openai/gpt-4o`) price like their family.

An upstream that charges nothing can say so on each answer: the response header
`X-Understudy-Cost: 0` (the offline teacher sends it) makes that call cost $0 whatever the
requested model's list price, so reports never show spend that never happened.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

COST_HEADER = "x-understudy-cost"
FREE = (0.0, 0.0)


def answer_price(headers, route_price: tuple[float, float] | None) -> tuple[float, float] | None:
    """The price of one upstream answer: free when the upstream says so, else its route's."""
    return FREE if headers.get(COST_HEADER, "").strip() in ("0", "0.0") else route_price


# (input, output) in $ per million tokens.
BUILT_IN_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4": (30.00, 60.00),
    "gpt-3.5-turbo": (0.50, 1.50),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
    "o3": (2.00, 8.00),
    "claude-3-5-haiku": (0.80, 4.00),
    "claude-3-5-sonnet": (3.00, 15.00),
    "claude-3-7-sonnet": (3.00, 15.00),
    "claude-sonnet-4": (3.00, 15.00),
    "claude-opus-4": (15.00, 75.00),
    "gemini-2.0-flash": (0.10, 0.40),
    "gemini-2.5-flash": (0.30, 2.50),
    "gemini-2.5-pro": (1.25, 10.00),
    "gemini-1.5-pro": (1.25, 5.00),
}


class PriceTable:
    def __init__(self, prices: dict[str, tuple[float, float]]):
        # Longest key first, so "gpt-4o-mini" wins over "gpt-4o" and "gpt-4".
        self._prices = sorted(prices.items(), key=lambda item: len(item[0]), reverse=True)

    @classmethod
    def load(cls, override_file: Path | None) -> PriceTable:
        prices = dict(BUILT_IN_PRICES)
        if override_file is not None:
            with open(override_file, "rb") as handle:
                for model, entry in tomllib.load(handle).get("prices", {}).items():
                    prices[model] = (float(entry["input"]), float(entry["output"]))
        return cls(prices)

    def price_of(self, model: str | None) -> tuple[float, float] | None:
        if not model:
            return None
        name = model.split("/", 1)[1] if "/" in model else model
        for key, price in self._prices:
            if name.startswith(key):
                return price
        return None

    def cost(self, model: str | None, prompt_tokens: int | None, completion_tokens: int | None) -> float | None:
        price = self.price_of(model)
        if price is None or prompt_tokens is None:
            return None
        return (prompt_tokens * price[0] + (completion_tokens or 0) * price[1]) / 1_000_000
