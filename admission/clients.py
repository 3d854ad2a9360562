"""`MAX_SSE_CLIENTS`: how many event streams this process holds open, whatever their protocol."""

from __future__ import annotations

from typing import Protocol

from admission.errors import Overloaded

__all__ = ["Gauge", "SseClients"]


class Gauge(Protocol):
    def inc(self) -> None: ...

    def dec(self) -> None: ...


class SseClients:
    """The open event streams of this process: `check` refuses one more (503 `Overloaded`, with
    `Retry-After`) at the limit, `inc` and `dec` count them (and move `gauge`, the metric)."""

    # An idle stream costs a connection and a few tens of KB; a client that was refused should not
    # come straight back, and EventSource waits `retry` (3 s by default) anyway.
    RETRY_AFTER = 5

    def __init__(self, limit: int, gauge: Gauge | None = None) -> None:
        self.limit = limit
        self.open = 0
        self._gauge = gauge

    def check(self) -> None:
        if self.limit and self.open >= self.limit:
            raise Overloaded(retry_after=self.RETRY_AFTER)

    def inc(self) -> None:
        self.open += 1
        if self._gauge is not None:
            self._gauge.inc()

    def dec(self) -> None:
        self.open -= 1
        if self._gauge is not None:
            self._gauge.dec()
