"""A session's history across both tiers: Redis while it holds the turns, then the conversation record
(same shape), with the sessions' ownership: another key's is the same 404 as a missing one."""

from __future__ import annotations

import asyncio
import logging

import orjson
from sqlalchemy.exc import SQLAlchemyError

from admission import Admission, Principal, SessionNotFound
from records.store import ConversationStore, reachable
from stores.history import HistoryPage, HistoryStore

__all__ = ["owner_in_record", "owner_of", "read_history_page"]

logger = logging.getLogger(__name__)

# A chat into a session that Redis no longer knows waits at most this long for the record to say whose
# it is (a key may not take up another key's conversation); past it, the chat goes on.
RECORD_OWNER_SECONDS = 1.0


def owner_of(principal: Principal) -> str:
    """The `owner` the record files the caller's conversations under ("" on an open service)."""
    return principal.key_name or ""


async def owner_in_record(records: ConversationStore, session_id: str) -> str | None:
    """Who the record says owns a session, for admission, which must not wait on it: None when it has
    no such conversation, or does not answer within RECORD_OWNER_SECONDS (the chat goes on, and the
    archiver keeps another key's conversation that key's)."""
    try:
        async with asyncio.timeout(RECORD_OWNER_SECONDS):
            return await records.owner_of(session_id)
    except (SQLAlchemyError, OSError, TimeoutError) as error:
        logger.warning("the conversation record did not say who owns session %s: %r", session_id, error)
        return None


async def read_history_page(
    principal: Principal,
    session_id: str,
    *,
    limit: int,
    before: int | None,
    max_bytes: int,
    admission: Admission,
    history: HistoryStore,
    records: ConversationStore,
) -> HistoryPage:
    """A page of a session's turns: from Redis while it holds them, then from the conversation record,
    where positions count from the oldest archived turn as they do in Redis."""
    if await admission.owns(principal, session_id):
        page = await history.read_page(session_id, limit=limit, before=before, max_bytes=max_bytes)
        if page.turns:
            return page
    async with reachable():
        owner = await records.owner_of(session_id)
        if owner is None or owner != owner_of(principal):
            if principal.key_name is None or (owner is None and await admission.owns(principal, session_id)):
                return HistoryPage([], None)
            raise SessionNotFound(session_id)
        stored, start = await records.history_page(session_id, limit=limit, before=before)
    return HistoryStore.fit(session_id, [orjson.dumps(turn) for turn in stored], start, max_bytes)
