"""Ratings of answers: `POST /chat/{message_id}/feedback` (issue #15). One rating per answer, API key and
user, replaced by a new one; counted by model in `/metrics`. Another key's answer is the same 404 as a
missing one."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

from chat_errors import NoSuchAnswer
from errors import ServiceError
from ids import answer_key
from models import UserId, utc_now
from protocols.deps import AdmissionDep, MetricsDep, PrincipalDep, RecordsDep, RegistryDep
from protocols.errors import ErrorResponse
from protocols.native import ERRORS
from records.history import owner_of
from records.store import reachable

__all__ = ["router"]

router = APIRouter(tags=["chat"])

Tag = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\- ]+$")]


class NotArchivedYet(ServiceError):
    """The answer exists but has not reached the conversation record yet (well under a second)."""

    status = 409
    code = "not_archived_yet"


class FeedbackRequest(BaseModel):
    """A rating of an answer, by the user who rates it."""

    model_config = ConfigDict(extra="forbid")

    user_id: UserId
    rating: Literal["up", "down"]
    comment: str | None = Field(default=None, min_length=1, max_length=2000)
    tags: list[Tag] | None = Field(default=None, max_length=16)


class FeedbackResponse(BaseModel):
    message_id: str
    conversation_id: str
    user_id: str
    rating: Literal["up", "down"]
    comment: str | None = None
    tags: list[str] | None = None
    model: str | None = Field(default=None, description="The model that wrote the answer.")
    created_at: datetime


@router.post(
    "/chat/{message_id}/feedback",
    response_model=FeedbackResponse,
    response_model_exclude_none=True,
    summary="Rate an answer",
    responses={
        404: {"model": ErrorResponse, "description": "No such answer (or another key's)."},
        409: {"model": ErrorResponse, "description": "The answer is not archived yet; retry in a second."},
        **ERRORS,
    },
)
async def rate_answer(
    message_id: Annotated[uuid.UUID, Path(description="The answer's message_id.")],
    body: FeedbackRequest,
    principal: PrincipalDep,
    admission: AdmissionDep,
    registry: RegistryDep,
    records: RecordsDep,
    metrics: MetricsDep,
) -> FeedbackResponse:
    """Thumbs up or down, with an optional comment and tags; a new rating replaces the user's last."""
    answer_id = str(message_id)
    async with reachable():
        answer = await records.answer_of(answer_id, owner_of(principal))
    if answer is None:
        state = await registry.get(answer_key(principal.key_name, answer_id))
        if state is not None and await admission.owns(principal, state.session_id):
            raise NotArchivedYet(
                "The answer is not archived yet; retry in a second.", headers={"Retry-After": "1"}
            )
        raise NoSuchAnswer(answer_id)
    row = {
        "message_id": answer_id,
        "owner": owner_of(principal),
        "user_id": body.user_id,
        "conversation_id": answer["conversation_id"],
        "rating": body.rating,
        "comment": body.comment,
        "tags": body.tags,
        "model": answer["model"],
        "created_at": utc_now(),
    }
    async with reachable():
        await records.rate(row)
    metrics.feedback.labels(answer["model"] or "unknown", body.rating).inc()
    return FeedbackResponse.model_validate(row)
