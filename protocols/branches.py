"""Edit, regenerate and branch (issue #15): `POST /chat/{message_id}/regenerate` starts a sibling answer,
`POST /conversations/{id}/branch` makes another branch the active one; an edit is `POST /chat` with
`parent_id` (`protocols/native.py`). Where each turn of the active branch stands among its alternatives
is in `GET /conversations/{id}`, built here from the stored turns."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, ConfigDict, Field

from admission import Admission, Principal, SessionNotFound
from chat_errors import NoSuchAnswer
from conversation_tree import Tree, turn_row_id
from generation import GenerationOptions
from ids import answer_key
from models import ChatAccepted, ChatTurn, HistoryResponse, MessageId, UserId
from protocols.deps import AdmissionDep, ChatServiceDep, HistoryDep, PrincipalDep, RecordsDep, RegistryDep
from protocols.errors import ErrorResponse
from protocols.native import ERRORS, ConversationIdPath
from records.history import owner_of
from records.store import ConversationStore, reachable
from stores.answers import AnswerRegistry
from stores.history import HistoryStore

__all__ = ["BranchPosition", "active_branch", "router"]

router = APIRouter()

BUSY: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorResponse, "description": "An answer of the session is still streaming."}
}


class BranchPosition(BaseModel):
    """A message or answer of the active branch among its alternatives, for a "2 / 3" switcher."""

    id: str = Field(description="The turn's own id, as in `messages` and `active_branch`.")
    message_id: str
    position: int = Field(ge=1, description="Its place among `siblings`, from 1.")
    count: int = Field(ge=1, description="How many alternatives it has, itself included.")
    siblings: list[str] = Field(
        description="The alternatives' message_ids, oldest first: a message and its edits, or an answer "
        "and its regenerations. Pass one's newest leaf to `POST /conversations/{id}/branch` to show it."
    )


def active_branch(
    stored: Iterable[Mapping[str, Any]], leaf: str | None
) -> tuple[list[str], list[BranchPosition]]:
    """The turn ids of the branch ending with `leaf` (every turn, in order, without one), and where
    each of its messages and answers stands among its alternatives."""
    turns = list(stored)
    tree = Tree(turns)
    path = tree.path(leaf) if leaf is not None and leaf in tree.exchanges else turns
    positions = [
        BranchPosition(
            id=p.turn_id,
            message_id=p.message_id,
            position=p.index,
            count=len(p.siblings),
            siblings=p.siblings,
        )
        for p in tree.positions(path)
    ]
    return [turn_row_id(turn) for turn in path], positions


class RegenerateRequest(GenerationOptions):
    """Another answer to the message an answer answered; with this answer's own options."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"user_id": "user1"}]})

    user_id: UserId
    message_id: MessageId | None = Field(
        default=None,
        description="Your own id for the new answer, for safe retries (as `POST /chat`'s): a random UUID.",
    )


class BranchRequest(BaseModel):
    """Which branch to make the session's active one."""

    model_config = ConfigDict(extra="forbid")

    message_id: uuid.UUID = Field(
        description="An exchange of the conversation: the branch ending with it becomes the active one "
        "(pass a leaf to continue a whole branch)."
    )


async def _session_of_answer(
    answer_id: str,
    principal: Principal,
    *,
    admission: Admission,
    registry: AnswerRegistry,
    records: ConversationStore,
) -> str:
    """The caller's session the answer belongs to: from its state in Redis, else from the record."""
    state = await registry.get(answer_key(principal.key_name, answer_id))
    if state is not None:
        if not await admission.owns(principal, state.session_id):
            raise NoSuchAnswer(answer_id)
        return state.session_id
    async with reachable():
        answer = await records.answer_of(answer_id, owner_of(principal))
    if answer is None:
        raise NoSuchAnswer(answer_id)
    return str(answer["conversation_id"])


@router.post(
    "/chat/{message_id}/regenerate",
    status_code=202,
    response_model=ChatAccepted,
    response_model_exclude_none=True,
    summary="Regenerate an answer",
    tags=["chat"],
    responses={
        200: {"model": ChatAccepted, "description": "A repeated message_id: the existing answer's state."},
        404: {"model": ErrorResponse, "description": "No such answer (or another key's)."},
        **BUSY,
        **ERRORS,
    },
)
async def regenerate(
    message_id: Annotated[uuid.UUID, Path(description="The answer to replace.")],
    body: RegenerateRequest,
    response: Response,
    principal: PrincipalDep,
    service: ChatServiceDep,
    admission: AdmissionDep,
    registry: RegistryDep,
    records: RecordsDep,
) -> ChatAccepted:
    """A new answer (its own message_id) to the same message, on a branch that becomes the active one."""
    answer_id = str(message_id)
    session_id = await _session_of_answer(
        answer_id, principal, admission=admission, registry=registry, records=records
    )
    new_id = str(body.message_id or uuid.uuid4())
    async with admission.admit(principal, user_id=body.user_id, session_id=session_id, message_id=new_id):
        accepted, started = await service.regenerate(
            session_id, answer_id, body, user_id=body.user_id, message_id=new_id, owner=principal.key_name
        )
    accepted.stream_token = admission.stream_token(principal, session_id)
    if not started:
        response.status_code = 200
    return accepted


@router.post(
    "/conversations/{conversation_id}/branch",
    response_model=HistoryResponse,
    response_model_exclude_none=True,
    summary="Switch a conversation's active branch",
    tags=["history"],
    responses={
        404: {"model": ErrorResponse, "description": "No such conversation (or another key's)."},
        **BUSY,
        **ERRORS,
    },
)
async def switch_branch(
    conversation_id: ConversationIdPath,
    body: BranchRequest,
    principal: PrincipalDep,
    admission: AdmissionDep,
    history: HistoryDep,
    records: RecordsDep,
    service: ChatServiceDep,
) -> HistoryResponse:
    """Make the branch ending with `message_id` the one history returns and answers are built from."""
    await _check_owner(conversation_id, principal, admission=admission, history=history, records=records)
    await admission.claim_session(principal, conversation_id)
    turns = await service.branches.switch(conversation_id, str(body.message_id))
    messages = [ChatTurn.model_validate(turn) for turn in turns]
    return HistoryResponse(session_id=conversation_id, messages=messages, count=len(messages))


async def _check_owner(
    session_id: str,
    principal: Principal,
    *,
    admission: Admission,
    history: HistoryStore,
    records: ConversationStore,
) -> None:
    """The caller's conversation: in the record under its key, or (not archived yet) in Redis."""
    async with reachable():
        owner = await records.owner_of(session_id)
    if owner == owner_of(principal):
        return
    if owner is None and await admission.owns(principal, session_id) and await history.read(session_id, 1):
        return
    raise SessionNotFound(session_id)
