"""The chat endpoint that `useChat`'s default transport talks to, unchanged: `POST /api/chat` (its
default `api`), `GET /api/chat/{id}/stream` (what `useChat({ resume: true })` calls), and a stop.

Each composes "admit, then submit" as `POST /chat` does, then streams the answer from the session's
replay log through `UIMessageEncoder`: the first POST's stream, a resumed one and one on another
instance are the same bytes, and an answer outlives its connection (the SDK's `stop()` only drops it;
`POST /api/chat/{id}/stop` ends the answer, and every stream of it then ends with `abort`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response

from admission.errors import SessionForbidden, SessionNotFound
from ai_service import AnswerFinished
from ids import answer_key
from models import ID_PATTERN, AnswerState
from protocols.ai_sdk.encoder import HEADERS, UIMessageEncoder
from protocols.ai_sdk.messages import UIChatRequest, read_exchange
from protocols.ai_sdk.resume import resumed_message
from protocols.deps import (
    AdmissionDep,
    ChatServiceDep,
    HistoryDep,
    PrincipalDep,
    SettingsDep,
    TelemetryDep,
)
from protocols.errors import ErrorResponse
from protocols.sse import EventStreamResponse

__all__ = ["router"]

ChatIdPath = Annotated[
    str, Path(min_length=1, max_length=128, pattern=ID_PATTERN, description="The chat's id (its session).")
]
# How far back a resumed answer's UI message is looked for: its earlier steps are its tool rounds.
RESUME_TURNS = 512

STREAM: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
        "description": "The UI message stream (v1): `data:` one chunk's JSON, ending with `data: [DONE]`.",
    }
}
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "API keys are on and no valid key was sent."},
    404: {"model": ErrorResponse, "description": "With API keys on: another key's chat, or none."},
    422: {"model": ErrorResponse, "description": "Invalid input: the body names each bad field."},
    503: {"model": ErrorResponse, "description": "Redis is unavailable, or the service is shutting down."},
}

router = APIRouter(prefix="/api/chat", tags=["ai-sdk"])


def _stream(cursor: Any, encoder: UIMessageEncoder, admission: AdmissionDep) -> EventStreamResponse:
    return EventStreamResponse(cursor, encoder=encoder, headers=HEADERS, clients=admission.sse_clients)


@router.post(
    "",
    summary="Chat through the AI SDK UI message stream (useChat)",
    response_class=EventStreamResponse,
    responses={
        **STREAM,
        **ERRORS,
        400: {"model": ErrorResponse, "description": "`regenerate-message`, or images the model cannot see."},
        409: {"model": ErrorResponse, "description": "Tool outputs that no call of the chat awaits."},
        413: {"model": ErrorResponse, "description": "The body is larger than MAX_BODY_BYTES."},
        429: {"model": ErrorResponse, "description": "RATE_LIMIT or MAX_STREAMS_PER_USER reached."},
    },
)
async def chat(
    body: UIChatRequest,
    principal: PrincipalDep,
    service: ChatServiceDep,
    admission: AdmissionDep,
    settings: SettingsDep,
) -> EventStreamResponse:
    """Submit the chat's last message (a question, or the outputs of the tools its answer called)."""
    exchange = read_exchange(body, settings.max_message_length)
    request = exchange.request
    admission.sse_clients.check()  # before the answer starts: no answer runs for a refused stream
    try:
        async with admission.admit(
            principal, user_id=request.user_id, session_id=body.id, message_id=str(request.message_id)
        ):
            accepted, _ = await service.submit(request, owner=principal.key_name)
    except SessionForbidden:
        # Another key's chat answers as a missing one does: a chat id tells nothing of other keys.
        raise SessionNotFound(body.id) from None
    cursor = await service.follow(body.id, message_id=accepted.message_id, owner=principal.key_name)
    encoder = UIMessageEncoder(exchange.ui_message_id or accepted.message_id, exchange.prelude)
    return _stream(cursor, encoder, admission)


@router.get(
    "/{chat_id}/stream",
    summary="Resume the chat's running answer (AI SDK UI message stream)",
    response_class=EventStreamResponse,
    status_code=200,
    responses={**STREAM, **ERRORS, 204: {"description": "No answer of this chat is running."}},
)
async def resume(
    chat_id: ChatIdPath,
    principal: PrincipalDep,
    service: ChatServiceDep,
    admission: AdmissionDep,
    history: HistoryDep,
    telemetry: TelemetryDep,
) -> Response:
    """The running answer from its `start` (its whole UI message), then live; `204` when none runs."""
    await admission.check_session(principal, chat_id)
    message_id = await service.running_answer(chat_id)
    if message_id is None:
        return Response(status_code=204)
    # This stream's trace links to the answer's (issue #16).
    await telemetry.link_follower(answer_key(principal.key_name, message_id))
    cursor = await service.follow(chat_id, message_id=message_id, owner=principal.key_name)
    ui_message_id, prelude = resumed_message(await history.read(chat_id, RESUME_TURNS), message_id)
    return _stream(cursor, UIMessageEncoder(ui_message_id, prelude), admission)


@router.post(
    "/{chat_id}/stop",
    response_model=AnswerState,
    response_model_exclude_none=True,
    summary="Stop the chat's running answer",
    responses={**ERRORS, 204: {"description": "No answer of this chat is running."}},
)
async def stop(
    chat_id: ChatIdPath, principal: PrincipalDep, service: ChatServiceDep, admission: AdmissionDep
) -> AnswerState | Response:
    """Stop the running answer on whichever instance runs it; its streams end with `abort`."""
    await admission.check_session(principal, chat_id)
    message_id = await service.running_answer(chat_id)
    if message_id is None:
        return Response(status_code=204)
    try:
        return await service.cancel(message_id, owner=principal.key_name)
    except AnswerFinished as finished:  # it ended while we looked: a stop button's race, not an error
        return finished.state
