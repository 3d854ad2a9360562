"""`MAX_SSE_CLIENTS`: how many event streams this process holds open, whatever their protocol, and
ending them all, within a bound, when the server stops."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from admission.errors import Overloaded

__all__ = ["Gauge", "SseClients"]

logger = logging.getLogger(__name__)


class Gauge(Protocol):
    def inc(self) -> None: ...

    def dec(self) -> None: ...


class SseClients:
    """The open event streams of this process. `check` refuses one more (503 `Overloaded`, with
    `Retry-After`) at the limit; each open stream registers its deadline (an `asyncio.Timeout`) from
    `opened` to `closed`, and `end_all` brings every deadline to within a bound: at shutdown a stream
    whose client stopped reading ends then, rather than hold the server open (issue #13, item 6)."""

    # An idle stream costs a connection and a few tens of KB; a client that was refused should not
    # come straight back, and EventSource waits `retry` (3 s by default) anyway.
    RETRY_AFTER = 5

    def __init__(self, limit: int, gauge: Gauge | None = None) -> None:
        self.limit = limit
        self._gauge = gauge
        self._deadlines: set[asyncio.Timeout] = set()
        self._ending_at: float | None = None
        # When (the event loop's time) `end_all` was first called: the server began to drain.
        self.draining_since: float | None = None

    @property
    def open(self) -> int:
        return len(self._deadlines)

    def check(self) -> None:
        if self.limit and self.open >= self.limit:
            raise Overloaded(retry_after=self.RETRY_AFTER)

    def opened(self, deadline: asyncio.Timeout) -> None:
        self._deadlines.add(deadline)
        if self._ending_at is not None:
            self._bring_forward(deadline, self._ending_at)
        if self._gauge is not None:
            self._gauge.inc()

    def closed(self, deadline: asyncio.Timeout) -> None:
        self._deadlines.discard(deadline)
        if self._gauge is not None:
            self._gauge.dec()

    @property
    def ending(self) -> bool:
        """Whether `end_all` was called: the streams are being ended."""
        return self._ending_at is not None

    def end_all(self, within: float) -> None:
        """Every open stream ends within `within` seconds from now, whether or not its client reads."""
        if self._ending_at is not None:
            return
        self.draining_since = asyncio.get_running_loop().time()
        self._ending_at = self.draining_since + within
        if self._deadlines:
            logger.info("ending %d open streams within %.1fs", len(self._deadlines), within)
        for deadline in self._deadlines:
            self._bring_forward(deadline, self._ending_at)

    def on_draining(self, draining: Callable[[], bool], within: float) -> Callable[[], bool]:
        """`draining`, which also ends every stream (`end_all(within)`) the first time it is true: the
        stream hub asks it as it polls (`draining.py` says why nothing tells the application)."""

        def check() -> bool:
            if draining():
                self.end_all(within)
                return True
            return False

        return check

    @staticmethod
    def _bring_forward(deadline: asyncio.Timeout, when: float) -> None:
        current = deadline.when()
        if current is None or current > when:
            deadline.reschedule(when)
