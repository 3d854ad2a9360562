"""The Conversations API: a user's conversations from the conversation record, and the history of a
session whose Redis keys have expired (issue #15). Ownership is the sessions': another key's
conversation is the same 404 as a missing one."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy.engine import RowMapping

from admission import SessionNotFound
from conversation_tree import turn_row_id
from models import ID_PATTERN, ChatTurn, StatusResponse
from protocols.branches import BranchPosition, active_branch
from protocols.branches import router as branches_router
from protocols.deps import (
    AdmissionDep,
    ArchiverDep,
    HistoryDep,
    PrincipalDep,
    RecordsDep,
)
from protocols.erasure import ErasureDep
from protocols.errors import ErrorResponse
from protocols.feedback import router as feedback_router
from protocols.native import ERRORS, ConversationIdPath
from protocols.validation import InvalidRequest
from records.history import owner_of as _owner
from records.store import reachable, utc

__all__ = ["router"]

# The conversations' routes, and feedback on answers (`protocols/feedback.py`): one router for the app.
router = APIRouter(tags=["history"])

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "No such conversation (or another key's)."}
}
UserQuery = Annotated[str, Query(min_length=1, max_length=128, pattern=ID_PATTERN, description="Whose.")]


class ConversationSummary(BaseModel):
    """One conversation in a list."""

    id: str = Field(description="The conversation's id: its session id.")
    user_id: str
    title: str
    created_at: datetime
    updated_at: datetime = Field(description="When its newest turn was stored.")
    message_count: int = Field(ge=0, description="Stored turns, every branch counted.")
    pinned: bool
    archived: bool
    snippet: str | None = Field(default=None, description="Search only: a matching message's text.")


class ConversationPage(BaseModel):
    """A page of conversations, newest first."""

    conversations: list[ConversationSummary]
    next_cursor: str | None = Field(default=None, description="Pass as `cursor` for the next page.")


class StoredMessage(BaseModel):
    """A turn in the conversation's message tree."""

    id: str = Field(description="The turn's own id: `<message_id>:<role>` (`:<tool_call_id>` for a tool).")
    message_id: str
    parent_id: str | None = Field(
        default=None,
        description="The message_id of the exchange it follows (absent for a first message); a "
        "regenerated answer's is the message it answers.",
    )
    turn: ChatTurn


class ConversationDetail(ConversationSummary):
    """A conversation with its message tree and the path of its active branch."""

    messages: list[StoredMessage]
    active_branch: list[str] = Field(description="The ids of the turns on the active branch, oldest first.")
    positions: list[BranchPosition] = Field(
        description="Each message and answer of the active branch among its alternatives (a 2 / 3 switcher)."
    )


class ConversationPatch(BaseModel):
    """What may be changed: at least one of the fields."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(default=None, min_length=1, max_length=200)
    pinned: bool | None = None
    archived: bool | None = None

    @model_validator(mode="after")
    def _something(self) -> ConversationPatch:
        if self.title is None and self.pinned is None and self.archived is None:
            raise ValueError("send at least one of title, pinned, archived")
        if self.title is not None and not self.title.strip():
            raise ValueError("title must not be blank")
        return self


class DeletedResponse(BaseModel):
    status: str = "success"
    deleted: int = Field(ge=0, description="How many conversations were deleted.")


def _summary(row: RowMapping) -> ConversationSummary:
    values = dict(row)
    values["created_at"], values["updated_at"] = utc(row["created_at"]), utc(row["updated_at"])
    return ConversationSummary.model_validate(values)


def _cursor_of(summary: ConversationSummary) -> str:
    raw = orjson.dumps([summary.updated_at.isoformat(), summary.id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _parse_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        moment, last_id = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return utc(datetime.fromisoformat(moment)), str(last_id)
    except (binascii.Error, orjson.JSONDecodeError, ValueError, TypeError):
        raise InvalidRequest([("cursor", "not a cursor this service returned")]) from None


@router.get(
    "/conversations", response_model=ConversationPage, summary="List a user's conversations", responses=ERRORS
)
async def list_conversations(
    principal: PrincipalDep,
    records: RecordsDep,
    user_id: UserQuery,
    cursor: Annotated[
        str | None, Query(max_length=512, pattern=r"^[A-Za-z0-9_\-]+$", description="From `next_cursor`.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    archived: Annotated[bool, Query(description="List the archived ones instead.")] = False,
) -> ConversationPage:
    """The caller's (API key's) conversations of `user_id`, newest first, a page at a time."""
    after = _parse_cursor(cursor) if cursor else None
    async with reachable():
        rows = await records.page(_owner(principal), user_id, after=after, limit=limit + 1, archived=archived)
    summaries = [_summary(row) for row in rows[:limit]]
    next_cursor = _cursor_of(summaries[-1]) if len(rows) > limit else None
    return ConversationPage(conversations=summaries, next_cursor=next_cursor)


@router.get(
    "/conversations/search",
    response_model=ConversationPage,
    summary="Search a user's conversations",
    responses=ERRORS,
)
async def search_conversations(
    principal: PrincipalDep,
    records: RecordsDep,
    user_id: UserQuery,
    q: Annotated[str, Query(min_length=1, max_length=200, description="Words to find in the messages.")],
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> ConversationPage:
    """Conversations whose messages contain the words (full-text: PostgreSQL's, or SQLite's FTS5)."""
    if not q.split():
        raise InvalidRequest([("q", "must contain a word")])
    async with reachable():
        rows = await records.search(_owner(principal), user_id, q, limit)
    return ConversationPage(conversations=[_summary(row) for row in rows])


@router.get(
    "/conversations/{conversation_id}",
    response_model=ConversationDetail,
    response_model_exclude_none=True,
    summary="Get a conversation with its messages",
    responses={**ERRORS, **NOT_FOUND},
)
async def get_conversation(
    conversation_id: ConversationIdPath, principal: PrincipalDep, records: RecordsDep
) -> ConversationDetail:
    """The conversation, its message tree, and its active branch."""
    async with reachable():
        row = await records.conversation(_owner(principal), conversation_id)
        if row is None:
            raise SessionNotFound(conversation_id)
        stored = await records.messages(conversation_id)
    messages = [
        StoredMessage(
            id=turn_row_id(m["parts"]), message_id=m["message_id"], parent_id=m["parent_id"], turn=m["parts"]
        )
        for m in stored
    ]
    branch, positions = active_branch((m["parts"] for m in stored), row["active_id"])
    return ConversationDetail(
        **_summary(row).model_dump(), messages=messages, active_branch=branch, positions=positions
    )


@router.patch(
    "/conversations/{conversation_id}",
    response_model=ConversationSummary,
    response_model_exclude_none=True,
    summary="Rename, pin or archive a conversation",
    responses={**ERRORS, **NOT_FOUND},
)
async def patch_conversation(
    conversation_id: ConversationIdPath,
    change: ConversationPatch,
    principal: PrincipalDep,
    records: RecordsDep,
) -> ConversationSummary:
    """Change its title, pinned or archived; the others stay as they are."""
    changes = change.model_dump(exclude_none=True)
    if "title" in changes:
        changes["title"] = " ".join(changes["title"].split())
    async with reachable():
        row = await records.update(_owner(principal), conversation_id, changes)
    if row is None:
        raise SessionNotFound(conversation_id)
    return _summary(row)


@router.delete(
    "/conversations/{conversation_id}",
    response_model=StatusResponse,
    summary="Delete a conversation",
    responses={**ERRORS, **NOT_FOUND},
)
async def delete_conversation(
    conversation_id: ConversationIdPath,
    principal: PrincipalDep,
    admission: AdmissionDep,
    history: HistoryDep,
    records: RecordsDep,
    erase: ErasureDep,
) -> StatusResponse:
    """Delete it everywhere: its history, replay log and answer states in Redis, and its SQL rows."""
    async with reachable():
        owner = await records.owner_of(conversation_id)
    # Not archived yet: it is the caller's if Redis has its turns under the caller's key.
    in_redis = owner is None and await admission.owns(principal, conversation_id)
    if owner != _owner(principal) and not (in_redis and await history.read(conversation_id, 1)):
        raise SessionNotFound(conversation_id)
    await erase(principal, [conversation_id])
    return StatusResponse(message=f"Conversation {conversation_id} deleted")


@router.delete(
    "/conversations",
    response_model=DeletedResponse,
    summary="Delete all of a user's conversations",
    responses=ERRORS,
)
async def delete_user_conversations(
    principal: PrincipalDep,
    user_id: UserQuery,
    admission: AdmissionDep,
    records: RecordsDep,
    archiver: ArchiverDep,
    erase: ErasureDep,
) -> DeletedResponse:
    """Everything of `user_id` under the caller's key, in both tiers (a data-deletion request): the
    conversations in the record, those whose turns still wait in the outbox, and the user's ratings."""
    async with reachable():
        session_ids = await records.ids_of_user(_owner(principal), user_id)
    for session_id in sorted(await archiver.outbox.sessions_of_user(user_id) - set(session_ids)):
        if await admission.owns(principal, session_id):  # not archived yet: the caller's by its key
            session_ids.append(session_id)
    await erase(principal, session_ids, user_id=user_id)
    return DeletedResponse(deleted=len(session_ids))


router.include_router(feedback_router)
router.include_router(branches_router)
