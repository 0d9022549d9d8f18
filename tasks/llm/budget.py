"""An invocation's spending limit: tokens paid for, and their cost from a price table.

Answers from the cache cost nothing and are never counted. A flow hands its chat tasks one spend
spec per invocation; every gateway built from it, in the flow's process or a Dask worker, counts
into the invocation's meter (tasks/llm/meter.py), and its budget checks the meter's totals, over
all processes, before each paid call. Once spent, the next call raises BudgetExhausted, which stops
the run like a dead endpoint: no retries, finished shards stay done, and every answer received is
in the cache, so rerunning with a larger budget (or none) continues where it stopped and ends with
what an unbounded run gives. Calls already in flight finish, so a run may pass its limit by up to
the concurrency times one call's tokens, plus, on Dask, about a second of the other workers' calls.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from personahub.tasks.llm.endpoint_breaker import EndpointDown
from personahub.tasks.llm.meter import InvocationMeter, meter_path


class BudgetError(ValueError):
    """A budget that cannot be enforced (a cost limit without the model's price)."""


class BudgetExhausted(EndpointDown):
    """The run's token or cost budget is spent (handled like EndpointDown: the run stops, resumable)."""


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens."""

    prompt: float
    completion: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.prompt + completion_tokens * self.completion) / 1e6


def price_for(prices: Mapping[str, Mapping[str, float]], model: str) -> Price | None:
    """The model's price from a table {model: {prompt, completion}} (per million tokens), or None."""
    entry = prices.get(model)
    return Price(float(entry["prompt"]), float(entry["completion"])) if entry else None


class RunBudget:
    """Limits on what an invocation's meter has counted (every process's paid calls together)."""

    def __init__(self, max_tokens: int | None, max_cost: float | None, price: Price | None, meter: InvocationMeter):
        if max_cost is not None and price is None:
            raise ValueError("a cost budget needs the model's price (settings.llm_prices)")
        self.max_tokens = max_tokens
        self.max_cost = max_cost
        self.price = price
        self.meter = meter

    def check(self) -> None:
        """Raise BudgetExhausted when the budget is spent (before a paid call)."""
        spent = self.meter.total()
        if self.max_tokens is not None and spent.total_tokens >= self.max_tokens:
            raise BudgetExhausted(f"the run's token budget is spent: {spent.total_tokens} of {self.max_tokens} tokens paid for")
        if self.max_cost is not None and self.price is not None:
            cost = self.price.cost(spent.prompt_tokens, spent.completion_tokens)
            if cost >= self.max_cost:
                raise BudgetExhausted(f"the run's cost budget is spent: ${cost:.4f} of ${self.max_cost:.4f}")


def spend_spec(run_id: str, max_tokens: int | None, max_cost: float | None,
               prices: Mapping[str, Mapping[str, float]], model: str) -> dict[str, Any]:
    """What a flow hands its chat tasks (with the endpoint) so their gateways, wherever they run,
    count into one meter for this invocation and share its budget. A cost limit without the
    model's price is refused before any call."""
    price = price_for(prices, model)
    if max_cost is not None and price is None:
        raise BudgetError(f"a cost budget needs the price of model {model!r}: add it to settings.llm_prices "
                         "(PERSONAHUB_LLM_PRICES='{\"%s\": {\"prompt\": 0.15, \"completion\": 0.6}}', USD per million tokens)" % model)
    return {"meter": meter_path(run_id, uuid.uuid4().hex), "max_tokens": max_tokens, "max_cost": max_cost,
            "price": asdict(price) if price else None}


def run_cost(prices: Mapping[str, Mapping[str, float]], model: str, usage: Mapping[str, int]) -> float | None:
    """What a run's paid tokens cost by the price table; None when the model is not in it."""
    price = price_for(prices, model)
    if price is None:
        return None
    return round(price.cost(int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))), 6)


def budget_for(spec: Mapping[str, Any] | None, meter: InvocationMeter | None) -> RunBudget | None:
    """A gateway's view of its invocation's limits (spec from spend_spec), or None without limits."""
    if not spec or meter is None or (spec.get("max_tokens") is None and spec.get("max_cost") is None):
        return None
    price = Price(**spec["price"]) if spec.get("price") else None
    return RunBudget(spec.get("max_tokens"), spec.get("max_cost"), price, meter)
