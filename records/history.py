"""A session's history across both tiers: Redis while it holds the turns, then the conversation record
(same shape), with the sessions' ownership: another key's is the same 404 as a missing one."""

from __future__ import annotations

from typing import NamedTuple

import orjson

from admission import Admission, Principal, SessionNotFound
from records.store import ConversationStore, reachable
from stores.history import HistoryPage, HistoryStore

__all__ = ["HistoryWindow", "owner_of", "read_history"]


class HistoryWindow(NamedTuple):
    """Which page of history: at most `limit` turns before position `before`, within `max_bytes`."""

    limit: int
    before: int | None
    max_bytes: int


def owner_of(principal: Principal) -> str:
    """The `owner` the record files the caller's conversations under ("" on an open service)."""
    return principal.key_name or ""


async def read_history(
    principal: Principal,
    session_id: str,
    window: HistoryWindow,
    *,
    admission: Admission,
    history: HistoryStore,
    records: ConversationStore,
) -> HistoryPage:
    """A page of the session's turns (its active branch): from Redis while it holds them, then from the
    conversation record, paged alike (positions count from the branch's first turn)."""
    if await admission.owns(principal, session_id):
        page = await history.read_page(
            session_id, limit=window.limit, before=window.before, max_bytes=window.max_bytes
        )
        if page.turns:
            return page
    async with reachable():
        owner = await records.owner_of(session_id)
        if owner is None or owner != owner_of(principal):
            if principal.key_name is None or (owner is None and await admission.owns(principal, session_id)):
                return HistoryPage([], None)
            raise SessionNotFound(session_id)
        stored = [orjson.dumps(turn) for turn in await records.history(session_id)]
    end = len(stored) if window.before is None else min(window.before, len(stored))
    start = max(0, end - window.limit)
    return HistoryStore.fit(session_id, stored[start:end], start, window.max_bytes)
