"""A session's history across both tiers: Redis while it holds the turns, then the conversation record
(same shape), with the sessions' ownership: another key's is the same 404 as a missing one."""

from __future__ import annotations

from admission import Admission, Principal, SessionNotFound
from models import ChatTurn
from records.store import ConversationStore, reachable
from stores.history import HistoryStore

__all__ = ["owner_of", "read_history"]


def owner_of(principal: Principal) -> str:
    """The `owner` the record files the caller's conversations under ("" on an open service)."""
    return principal.key_name or ""


async def read_history(
    principal: Principal,
    session_id: str,
    limit: int | None,
    *,
    admission: Admission,
    history: HistoryStore,
    records: ConversationStore,
) -> list[ChatTurn]:
    """A session's turns: from Redis while it holds them, then from the conversation record."""
    if await admission.owns(principal, session_id):
        turns = await history.read(session_id, limit)
        if turns:
            return turns
    async with reachable():
        owner = await records.owner_of(session_id)
        if owner is None or owner != owner_of(principal):
            if principal.key_name is None or (owner is None and await admission.owns(principal, session_id)):
                return []
            raise SessionNotFound(session_id)
        stored = await records.history(session_id, limit)
    return [ChatTurn.model_validate(turn) for turn in stored]
