"""`GET /usage`: what the caller's API key spent, by day, model and user, over a range of days, and its
budget. With API keys off, the service's whole usage (there is one key, `-`): the operator's view."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from errors import ServiceError
from models import ID_PATTERN
from protocols.deps import BudgetsDep, PrincipalDep, UsageDep
from protocols.errors import ErrorResponse
from protocols.native import ERRORS
from usage.budgets import BudgetStatus
from usage.ledger import MEASURES, UsageRow, day_of
from usage.plans import NANOS_PER_USD

__all__ = ["router"]

MAX_DAYS = 366

router = APIRouter(tags=["service"])


class Totals(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = Field(default=0, description="Part of `completion_tokens`.")
    total_tokens: int = 0
    answers: int = 0
    counted_answers: int = Field(
        default=0, description="Answers whose tokens were counted with tiktoken, the model reporting none."
    )
    cost_usd: float = Field(default=0.0, description="By the `PRICES` table; 0 for unpriced models.")


class DayTotals(Totals):
    day: dt.date


class ModelTotals(Totals):
    model: str


class UserTotals(Totals):
    user_id: str


class BudgetView(BaseModel):
    limit: float = Field(description="Tokens, or USD, per period.")
    unit: str = Field(examples=["tokens"])
    period: str = Field(examples=["day"], description="`day` or `month`, in UTC.")
    current_period: str = Field(examples=["2026-11-30"])
    spent: float
    remaining: float
    overshoot: float = Field(description="How far answers running when it ran out went past it.")
    resets_at: dt.datetime


class UsageResponse(BaseModel):
    key: str = Field(description="The API key's name (`-` with API keys off).")
    start: dt.date
    end: dt.date
    totals: Totals
    by_day: list[DayTotals]
    by_model: list[ModelTotals]
    by_user: list[UserTotals]
    session: Totals | None = Field(default=None, description="The `session_id` asked for, all time.")
    budget: BudgetView | None = None


def _add(into: dict[str, int], measures: dict[str, int]) -> None:
    for name in MEASURES:
        into[name] = into.get(name, 0) + measures.get(name, 0)


def _totals(measures: dict[str, int]) -> dict[str, int | float]:
    prompt, completion = measures.get("prompt_tokens", 0), measures.get("completion_tokens", 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "reasoning_tokens": measures.get("reasoning_tokens", 0),
        "total_tokens": prompt + completion,
        "answers": measures.get("answers", 0),
        "counted_answers": measures.get("counted", 0),
        "cost_usd": measures.get("cost_nanos", 0) / NANOS_PER_USD,
    }


def _budget(status: BudgetStatus) -> BudgetView:
    scale = NANOS_PER_USD if status.budget.unit == "usd" else 1
    return BudgetView(
        limit=status.budget.amount / scale,
        unit=status.budget.unit,
        period=status.budget.period,
        current_period=status.period,
        spent=status.spent / scale,
        remaining=max(0, status.budget.amount - status.spent) / scale,
        overshoot=status.overshoot / scale,
        resets_at=status.resets_at,
    )


class RangeInvalid(ServiceError):
    """`start` after `end`, or a range longer than MAX_DAYS."""

    status = 400
    code = "invalid_range"


def _grouped(rows: list[UsageRow], by: Callable[[UsageRow], str]) -> dict[str, dict[str, int]]:
    groups: dict[str, dict[str, int]] = {}
    for row in rows:
        _add(groups.setdefault(by(row), {}), row.measures)
    return dict(sorted(groups.items()))


@router.get(
    "/usage",
    response_model=UsageResponse,
    response_model_exclude_none=True,
    summary="Tokens and cost spent by the caller's API key",
    responses={400: {"model": ErrorResponse, "description": "`start` is after `end`."}, **ERRORS},
)
async def usage(
    principal: PrincipalDep,
    ledger: UsageDep,
    budgets: BudgetsDep,
    start: Annotated[
        dt.date | None, Query(description="First UTC day (default: 29 days before `end`).")
    ] = None,
    end: Annotated[dt.date | None, Query(description="Last UTC day, included (default: today).")] = None,
    session_id: Annotated[
        str | None,
        Query(min_length=1, max_length=128, pattern=ID_PATTERN, description="Also this session's totals."),
    ] = None,
) -> UsageResponse:
    """What the caller's key spent per day, model and user from `start` to `end` (at most 366 days)."""
    key = principal.owner
    last = end or day_of(budgets.clock())
    try:
        first = start or last - dt.timedelta(days=29)
    except OverflowError:  # before year 1
        first = dt.date.min
    span = (last - first).days + 1
    if span < 1 or span > MAX_DAYS:
        raise RangeInvalid(
            f"`start` must be on or before `end`, at most {MAX_DAYS} days before it", param="start"
        )
    rows = await ledger.rows(key, (first + dt.timedelta(days=offset) for offset in range(span)))
    totals: dict[str, int] = {}
    for row in rows:
        _add(totals, row.measures)
    status = await budgets.status(key)
    session = await ledger.session(key, session_id) if session_id is not None else None
    return UsageResponse(
        key=key,
        start=first,
        end=last,
        totals=Totals.model_validate(_totals(totals)),
        by_day=[
            DayTotals.model_validate({"day": day, **_totals(m)})
            for day, m in _grouped(rows, lambda row: row.day.isoformat()).items()
        ],
        by_model=[
            ModelTotals.model_validate({"model": model, **_totals(m)})
            for model, m in _grouped(rows, lambda row: row.model).items()
        ],
        by_user=[
            UserTotals.model_validate({"user_id": user, **_totals(m)})
            for user, m in _grouped(rows, lambda row: row.user_id).items()
        ],
        session=Totals.model_validate(_totals(session)) if session is not None else None,
        budget=_budget(status) if status is not None else None,
    )
