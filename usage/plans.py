"""What an operator sets: the price table (`PRICES`) and the budgets (`BUDGETS`), parsed and checked.

Costs are kept as whole nano-dollars (10⁻⁹ USD), so that every sum in Redis is an exact integer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["NANOS_PER_USD", "Budget", "Price", "parse_budgets", "parse_prices"]

NANOS_PER_USD = 1_000_000_000
DEFAULT_BUDGET = "default"

_NUMBER = r"[0-9]+(?:\.[0-9]+)?"
_PRICE = re.compile(rf"(?P<model>[^\s:,]{{1,256}}):(?P<input>{_NUMBER})/(?P<output>{_NUMBER})")
_BUDGET = re.compile(
    rf"(?P<name>[A-Za-z0-9_.\-]{{1,64}}):(?P<amount>{_NUMBER})\s*(?P<unit>tokens|usd)/(?P<period>day|month)"
)


@dataclass(frozen=True, slots=True)
class Price:
    """A model's price in USD per million input (prompt) and output (completion) tokens."""

    input_per_million: float
    output_per_million: float

    def nanos(self, prompt_tokens: int, completion_tokens: int) -> int:
        """The cost of these tokens in nano-dollars (10⁻⁹ USD per unit, so 1 token costs its price in
        nano-dollars per 1,000: no rounding below one nano-dollar per thousand tokens)."""
        return round(
            (prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million) * 1000
        )


@dataclass(frozen=True, slots=True)
class Budget:
    """How much one key may spend per period: `amount` tokens, or nano-dollars for `usd`."""

    amount: int
    unit: Literal["tokens", "usd"]
    period: Literal["day", "month"]

    def describe(self) -> str:
        shown = f"{self.amount / NANOS_PER_USD:g} USD" if self.unit == "usd" else f"{self.amount} tokens"
        return f"{shown} per {self.period}"


def parse_prices(text: str) -> dict[str, Price]:
    """`model:input/output,...`, USD per million tokens: `gpt-4o-mini:0.15/0.60,gpt-4o:2.50/10`."""
    prices: dict[str, Price] = {}
    for position, item in enumerate((part.strip() for part in text.split(",")), start=1):
        if not item:
            continue
        match = _PRICE.fullmatch(item)
        if match is None:
            raise ValueError(f"entry {position} is not model:input/output (USD per million tokens)")
        if match["model"] in prices:
            raise ValueError(f"the model {match['model']!r} is priced twice")
        prices[match["model"]] = Price(float(match["input"]), float(match["output"]))
    return prices


def parse_budgets(text: str) -> dict[str, Budget]:
    """`name:amount unit/period,...` with unit `tokens` or `usd` and period `day` or `month`; the name
    `default` applies to every key without its own: `alice:200000tokens/day,default:5usd/month`."""
    budgets: dict[str, Budget] = {}
    for position, item in enumerate((part.strip() for part in text.split(",")), start=1):
        if not item:
            continue
        match = _BUDGET.fullmatch(item)
        if match is None:
            raise ValueError(f"entry {position} is not name:amount tokens|usd/day|month")
        name, amount = match["name"], float(match["amount"])
        if name in budgets:
            raise ValueError(f"the key {name!r} has two budgets")
        unit: Literal["tokens", "usd"] = "usd" if match["unit"] == "usd" else "tokens"
        if unit == "tokens" and not amount.is_integer():
            raise ValueError(f"the budget of {name!r} is not a whole number of tokens")
        whole = round(amount * NANOS_PER_USD) if unit == "usd" else int(amount)
        if whole <= 0:
            raise ValueError(f"the budget of {name!r} must be above 0")
        budgets[name] = Budget(whole, unit, "day" if match["period"] == "day" else "month")
    return budgets
