"""Erasing sessions in both tiers (issue #15), for `DELETE /conversations/...` and `DELETE /history/...`:
what waits in the outbox, the Redis keys and answer states, and the record's rows. A clear that left
the record's rows would see `GET /history` read them back."""

from __future__ import annotations

from admission import Principal
from ai_service import ChatService
from archiver import ArchiveRunner
from ids import answer_key
from records.history import owner_of
from records.store import ConversationStore, reachable
from stores.answers import AnswerRegistry
from stores.history import HistoryStore

__all__ = ["erase"]


async def erase(
    principal: Principal,
    session_ids: list[str],
    *,
    records: ConversationStore,
    archiver: ArchiveRunner,
    service: ChatService,
    registry: AnswerRegistry,
    history: HistoryStore,
    user_id: str | None = None,
) -> None:
    """The caller's sessions, in both tiers: the outbox's waiting entries first (so nothing is archived
    again; the mark deletes again what a batch being stored meanwhile writes), Redis, then SQL; with
    `user_id`, that user's ratings too."""
    for session_id in session_ids:
        await archiver.outbox.mark_deleted(session_id)
        await archiver.outbox.forget(session_id)
        async with reachable():
            stored = await records.messages(session_id)
        hot = await history.read(session_id)  # turns not archived yet have answer states too
        for message_id in {message["message_id"] for message in stored} | {turn.message_id for turn in hot}:
            await registry.release(answer_key(principal.key_name, message_id))
        await service.clear(session_id)
    async with reachable():
        await records.delete(owner_of(principal), session_ids, user_id=user_id)
