"""Erasing sessions in both tiers (issue #15), for `DELETE /conversations/...` and `DELETE /history/...`:
what waits in the outbox, the Redis keys and answer states, and the record's rows. A clear that left
the record's rows would see `GET /history` read them back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends

from admission import Principal
from ai_service import ChatService
from archiver import ArchiveRunner
from ids import answer_key
from protocols.deps import ArchiverDep, ChatServiceDep, HistoryDep, RecordsDep, RegistryDep
from records.history import owner_of
from records.store import ConversationStore, reachable
from stores.answers import AnswerRegistry
from stores.history import HistoryStore

__all__ = ["Erasure", "ErasureDep"]


@dataclass(frozen=True, slots=True)
class Erasure:
    """What erasing touches, for a route to call with the caller's sessions."""

    records: ConversationStore
    archiver: ArchiveRunner
    service: ChatService
    registry: AnswerRegistry
    history: HistoryStore

    async def __call__(
        self, principal: Principal, session_ids: list[str], *, user_id: str | None = None
    ) -> None:
        """The caller's sessions, in both tiers: the outbox's waiting entries first (so nothing is
        archived again; the mark deletes again what a batch being stored meanwhile writes), Redis, then
        SQL; with `user_id`, that user's ratings too."""
        for session_id in session_ids:
            await self.archiver.outbox.mark_deleted(session_id)
            await self.archiver.outbox.forget(session_id)
            async with reachable():
                stored = await self.records.messages(session_id)
            hot = await self.history.read(session_id)  # turns not archived yet have answer states too
            answered = {message["message_id"] for message in stored} | {turn.message_id for turn in hot}
            await self.registry.release_all(answer_key(principal.key_name, m) for m in answered)
            await self.service.clear(session_id)
        async with reachable():
            await self.records.delete(owner_of(principal), session_ids, user_id=user_id)


async def get_erasure(
    records: RecordsDep,
    archiver: ArchiverDep,
    service: ChatServiceDep,
    registry: RegistryDep,
    history: HistoryDep,
) -> Erasure:
    return Erasure(records, archiver, service, registry, history)


ErasureDep = Annotated[Erasure, Depends(get_erasure)]
