"""Wait for a condition, never for a fixed time: poll it within a retry budget and fail saying what did
not happen. The polling interval is how often to look, not a guess at how long something takes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["ConditionNotMet", "eventually", "eventually_sync"]

T = TypeVar("T")


class ConditionNotMet(AssertionError):
    """The condition never held within its timeout (an assertion failure to pytest)."""


def _describe(condition: Callable[[], object], what: str | None) -> str:
    return what or str(getattr(condition, "__qualname__", condition))


def _failure(description: str, timeout: float, last: object, error: BaseException | None) -> ConditionNotMet:
    detail = f"; last error: {error!r}" if error is not None else f"; last value: {last!r}"
    return ConditionNotMet(f"{description}: not true within {timeout:g}s{detail}")


async def eventually(
    condition: Callable[[], Awaitable[T | None]],
    what: str | None = None,
    *,
    timeout: float = 30,
    interval: float = 0.02,
    ignoring: tuple[type[Exception], ...] = (),
) -> T:
    """Await `condition()` until it returns something truthy, and return that (a condition may return
    the value it waited for, or None while there is none yet).

    Exceptions of the `ignoring` types count as "not yet"; any other propagates at once. After
    `timeout` seconds, raises `ConditionNotMet` naming `what` (or the condition) and its last result.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        error: Exception | None = None
        result: T | None = None
        try:
            result = await condition()
        except ignoring as caught:
            error = caught
        else:
            if result:
                return result
        if loop.time() >= deadline:
            raise _failure(_describe(condition, what), timeout, result, error)
        await asyncio.sleep(interval)


def eventually_sync(
    condition: Callable[[], T | None],
    what: str | None = None,
    *,
    timeout: float = 30,
    interval: float = 0.02,
    ignoring: tuple[type[Exception], ...] = (),
) -> T:
    """`eventually` for blocking code: call `condition()` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        error: Exception | None = None
        result: T | None = None
        try:
            result = condition()
        except ignoring as caught:
            error = caught
        else:
            if result:
                return result
        if time.monotonic() >= deadline:
            raise _failure(_describe(condition, what), timeout, result, error)
        time.sleep(interval)
