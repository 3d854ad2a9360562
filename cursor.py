"""The transport-neutral cursor: a session's (or one answer's) events after a position, then live.

Every wire protocol follows answers through an `EventCursor`: it yields the replay log's entries a
client has not seen, in log order and each at most once, then the live ones the process's `StreamHub`
hands it, plus two signals, `Reset` (the log no longer reaches back to where the client was) and
`KEEPALIVE` (nothing was sent for a while). SSE and every later protocol are encoders over it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from enum import Enum

from hub import StreamHub
from stores.replay_log import Entry, EntryKey, parse_entry_id

__all__ = ["KEEPALIVE", "AnswerStart", "CursorItem", "EventCursor", "Keepalive", "Reset"]


@dataclass(frozen=True, slots=True)
class Reset:
    """Events were missed and cannot be replayed: reload the history. `position` is the newest entry,
    from which the client may resume."""

    session_id: str
    position: str | None


class Keepalive(Enum):
    """Nothing was sent for `SSE_PING_SECONDS`: a transport may send a keepalive."""

    KEEPALIVE = "keepalive"


KEEPALIVE = Keepalive.KEEPALIVE
CursorItem = Entry | Reset | Keepalive


@dataclass(frozen=True, slots=True)
class AnswerStart:
    """One answer to follow: after which entry its events begin (None if it never started), and whether
    it had ended when the cursor was made."""

    message_id: str
    since: str | None
    finished: bool
    key: str  # its state's name (`ids.answer_key`)


class EventCursor:
    """What one client receives of a session.

    - `after`: resume exactly after that entry; when the log no longer reaches back that far, `Reset`,
      then live events.
    - `answer`: only that answer, from its `start` (or after `after`), ending after its terminal event;
      one that had ended before the cursor read the log, whose end the client already has, ends at once.
    - neither: the session's running answers from their `start`, then everything live.

    The listener is registered before the log is read, so every entry is either in the replay or
    arrives live. `close()` ends the iteration at its next step.
    """

    # Every idle SSE client holds one: kept small (issue #6, f).
    __slots__ = ("_after", "_answer", "_close_listener", "_closed", "_hub", "_session_id")

    def __init__(
        self,
        hub: StreamHub,
        session_id: str,
        *,
        after: str | None = None,
        answer: AnswerStart | None = None,
    ) -> None:
        self._hub = hub
        self._session_id = session_id
        self._after = after
        self._answer = answer
        self._closed = False
        self._close_listener: Callable[[], None] | None = None

    def close(self) -> None:
        self._closed = True
        if self._close_listener is not None:
            self._close_listener()

    def _wanted(self, entry: Entry) -> bool:
        return self._answer is None or entry.message_id == self._answer.message_id

    async def __aiter__(self) -> AsyncGenerator[CursorItem, None]:
        async with contextlib.aclosing(self.batches()) as batches:
            async for batch in batches:
                for item in batch:
                    yield item

    async def batches(self) -> AsyncGenerator[list[CursorItem], None]:
        """The same items, as lists: each time all that is ready at once (the replay, or what arrived
        while the client's task waited for its turn on a busy loop), so that a transport can send them
        in one write. Never an empty list."""
        hub, log, session_id, answer = self._hub, self._hub.log, self._session_id, self._answer
        loop = asyncio.get_running_loop()
        listener = await hub.join(session_id)
        try:
            self._close_listener = listener.close
            if self._closed:
                return
            replay, last_sent = await self._replay()
            batch: list[CursorItem] = []
            if isinstance(replay, Reset):
                if answer is not None and answer.finished:
                    yield [replay]
                    return
                batch.append(replay)
                if replay.position is not None:
                    last_sent = parse_entry_id(replay.position)
                replay = []
            elif answer is not None and answer.finished and not any(e.terminal for e in replay):
                # It had ended, and its end is at or before where the client resumes: it has everything.
                if replay:
                    yield list(replay)
                return
            pending = replay
            while True:
                for entry in pending:
                    if entry.key <= last_sent or not self._wanted(entry):
                        continue
                    last_sent = entry.key
                    batch.append(entry)
                    if answer is not None and entry.terminal:
                        yield batch
                        return
                if batch:
                    yield batch
                    batch = []
                listener.active = loop.time()
                await listener.wait()
                if listener.closed:
                    return
                if listener.ping_due:
                    listener.ping_due = False
                    batch.append(KEEPALIVE)
                if listener.lagged:
                    listener.lagged = False
                    listener.entries.clear()
                    pending = await log.read_after(session_id, f"{last_sent[0]}-{last_sent[1]}")
                else:
                    pending, listener.entries = listener.entries, []
        finally:
            hub.leave(listener)

    async def _replay(self) -> tuple[list[Entry] | Reset, EntryKey]:
        """What the client missed (or `Reset` when it missed more than the log still holds), and the
        position up to which it has everything."""
        log, session_id, answer = self._hub.log, self._session_id, self._answer
        if self._after is not None:
            oldest, newest = await log.bounds(session_id)
            if oldest is None or parse_entry_id(self._after) < parse_entry_id(oldest):
                return Reset(session_id, newest), (0, 0)
            return [e for e in await log.read_after(session_id, self._after) if self._wanted(e)], (0, 0)
        if answer is not None:
            # Read again now that the listener is registered: it may have started since the cursor
            # was made. If it still has not, its `start` arrives live.
            since = answer.since or await log.start_of(answer.key)
            replay = (
                []
                if since is None
                else [e for e in await log.read_after(session_id, since) if self._wanted(e)]
            )
            # Its events are in the log but not its start (trimmed), or the log no longer has it.
            if (replay and replay[0].type != "start") or (not replay and answer.finished):
                return Reset(session_id, await log.newest(session_id)), (0, 0)
            return replay, (0, 0)
        starts = await log.running_starts(session_id)
        if starts:
            return await log.read_after(session_id, min(starts, key=parse_entry_id)), (0, 0)
        newest = await log.newest(session_id)
        return [], parse_entry_id(newest) if newest else (0, 0)
