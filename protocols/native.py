"""The service's native API: send a message, stop and follow its answer, read and clear history."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Path, Query, Response
from pydantic import AfterValidator

from admission import Principal
from ai_service import AnswerNotFound
from ids import answer_key
from models import (
    ID_PATTERN,
    AnswerState,
    ChatAccepted,
    ChatRequest,
    HistoryResponse,
    MessageId,
    StatusResponse,
    stream_event_schema,
)
from protocols.deps import (
    AdmissionDep,
    ChatServiceDep,
    HistoryDep,
    PrincipalDep,
    RecordsDep,
    RegistryDep,
    ServicesDep,
    StreamPrincipalDep,
    TelemetryDep,
)
from protocols.erasure import ErasureDep
from protocols.errors import ConflictResponse, ErrorResponse
from protocols.sse import EventStreamResponse, encode, encode_v1
from protocols.validation import InvalidRequest, check_message_length
from records.history import owner_of, read_history_page
from records.store import reachable
from services import Services

__all__ = ["ERRORS", "NO_SESSION", "ConversationIdPath", "accept_chat", "router"]

ENTRY_ID_PATTERN = r"^[0-9]{1,20}-[0-9]{1,20}$"
# A stream entry id is two unsigned 64-bit numbers; Redis refuses larger ones, and the largest id as an
# exclusive start (issue #13, item 7: that error came after the 200 and dropped the connection).
ENTRY_ID_MAX = 2**64 - 1

# A history page (issue #13): how many turns by default and at most, and how many bytes of turns at most
# (a turn may hold a megabyte of tool results); the newest turns are kept when a page is cut short.
HISTORY_PAGE = 100
HISTORY_PAGE_MAX = 1000
HISTORY_PAGE_BYTES = 1_048_576


def check_entry_id(value: str | None) -> str | None:
    """`value` if Redis takes it as the position to resume after; ValueError otherwise."""
    if value is None:
        return None
    milliseconds, _, sequence = value.partition("-")
    if int(milliseconds) > ENTRY_ID_MAX or int(sequence) > ENTRY_ID_MAX:
        raise ValueError("is not a stream entry id: each part is at most 18446744073709551615")
    if int(milliseconds) == int(sequence) == ENTRY_ID_MAX:
        raise ValueError("is the largest entry id: nothing can follow it")
    return value


EntryIdQuery = Annotated[
    str | None,
    Query(
        pattern=ENTRY_ID_PATTERN, description="Resume after this event (for clients that cannot set headers)."
    ),
    AfterValidator(check_entry_id),
]
EntryIdHeader = Annotated[
    str | None,
    Header(alias="Last-Event-ID", pattern=ENTRY_ID_PATTERN, include_in_schema=False),
    AfterValidator(check_entry_id),
]

MessageIdPath = Annotated[MessageId, Path(description="The answer's message_id.")]
SessionIdPath = Annotated[
    str, Path(min_length=1, max_length=128, pattern=ID_PATTERN, description="The chat session.")
]
ConversationIdPath = Annotated[
    str, Path(min_length=1, max_length=128, pattern=ID_PATTERN, description="The conversation (session) id.")
]

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "The body cannot be read (not UTF-8 JSON)."},
    401: {"model": ErrorResponse, "description": "API keys are on and no valid key was sent."},
    422: {"model": ErrorResponse, "description": "Invalid input: the body names each bad field."},
    503: {"model": ErrorResponse, "description": "Redis is unavailable, or the service is shutting down."},
}
NO_SESSION: dict[int | str, dict[str, Any]] = {
    404: {
        "model": ErrorResponse,
        "description": "With API keys on: the session does not exist, or belongs to another key.",
    }
}

router = APIRouter()


@router.post(
    "/chat",
    status_code=202,
    response_model=ChatAccepted,
    response_model_exclude_none=True,
    summary="Send a message and stream the answer",
    tags=["chat"],
    responses={
        200: {
            "model": ChatAccepted,
            "description": "A repeated message_id: the existing answer's state.",
        },
        403: {"model": ErrorResponse, "description": "The session belongs to another API key."},
        409: {
            "model": ErrorResponse,
            "description": "The message_id belongs to another session of the same API key; or, with "
            "`parent_id`, an answer of the session is still streaming.",
        },
        413: {"model": ErrorResponse, "description": "The body is larger than MAX_BODY_BYTES."},
        429: {
            "model": ErrorResponse,
            "description": "RATE_LIMIT or MAX_STREAMS_PER_USER reached; see `Retry-After`.",
        },
        **ERRORS,
    },
)
async def chat(
    request: ChatRequest, response: Response, principal: PrincipalDep, services: ServicesDep
) -> ChatAccepted:
    """Store the message, start the answer in the background, and return where it streams."""
    accepted, started = await accept_chat(request, principal, services)
    if not started:
        response.status_code = 200
    return accepted


async def accept_chat(
    request: ChatRequest, principal: Principal, services: Services
) -> tuple[ChatAccepted, bool]:
    """`POST /chat`'s work, for this route and for `protocols/direct.py`: the answer's state, and
    whether this call started it (`202`) or found it started by an earlier one (`200`)."""
    service, admission, settings = services.chat, services.admission, services.settings
    if request.message is not None:
        check_message_length(request.message, settings.max_message_length, "message")
    if request.tool_results is not None and "parent_id" in request.model_fields_set:
        raise InvalidRequest([("parent_id", "goes with a message (an edit), not with tool_results")])
    if request.message_id is None:
        request = request.model_copy(update={"message_id": uuid.uuid4()})
    async with admission.admit(
        principal,
        user_id=request.user_id,
        session_id=request.session_id,
        message_id=str(request.message_id),
    ):
        accepted, started = await service.submit(request, owner=principal.key_name)
    accepted.stream_token = admission.stream_token(principal, request.session_id)
    return accepted, started


@router.post(
    "/chat/{message_id}/cancel",
    response_model=AnswerState,
    response_model_exclude_none=True,
    summary="Stop an answer",
    tags=["chat"],
    responses={
        404: {"model": ErrorResponse, "description": "No such answer (or another key's)."},
        409: {"model": ConflictResponse, "description": "The answer has already ended."},
        **ERRORS,
    },
)
async def cancel(
    message_id: MessageIdPath,
    principal: PrincipalDep,
    service: ChatServiceDep,
    registry: RegistryDep,
    admission: AdmissionDep,
) -> AnswerState:
    """Stop the answer on whichever instance runs it; the partial answer is stored as `cancelled`."""
    if principal.key_name is not None:
        state = await registry.get(answer_key(principal.key_name, str(message_id)))
        if state is None or not await admission.owns(principal, state.session_id):
            raise AnswerNotFound(str(message_id))
    return await service.cancel(str(message_id), owner=principal.key_name)


@router.get(
    "/stream/{session_id}",
    summary="Follow a session's answers (Server-Sent Events)",
    tags=["chat"],
    response_class=EventStreamResponse,
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "Every event is named (`onmessage` receives none): `id:` the log entry id, "
            "`event:` the type (an answer's `error` is `answer_error`), `data:` the event's JSON.",
        },
        404: {
            "model": ErrorResponse,
            "description": "message_id is not an answer of this session; with API keys on, the "
            "session does not exist or belongs to another key.",
        },
        **ERRORS,
    },
)
async def stream(
    session_id: SessionIdPath,
    principal: StreamPrincipalDep,
    admission: AdmissionDep,
    service: ChatServiceDep,
    telemetry: TelemetryDep,
    message_id: Annotated[
        MessageId | None, Query(description="Follow only this answer; the stream ends with it.")
    ] = None,
    last_event_id: EntryIdQuery = None,
    last_event_id_header: EntryIdHeader = None,
    events: Annotated[
        int,
        Query(
            ge=1,
            le=2,
            description="The stream's version: 2 names an answer's error event `answer_error`; 1, for "
            "clients not yet updated, names it `error`, as a browser's EventSource names its own "
            "connection errors.",
        ),
    ] = 2,
) -> EventStreamResponse:
    """Replay what the client missed from the session's log, then stream live events.

    Authenticate with the API key, or with `token`: the `stream_token` that `POST /chat` returned."""
    await admission.check_session(principal, session_id)
    if message_id is not None:  # this stream's trace links to the answer's (issue #16)
        await telemetry.link_follower(answer_key(principal.key_name, str(message_id)))
    cursor = await service.follow(
        session_id,
        after=last_event_id_header or last_event_id,
        message_id=str(message_id) if message_id else None,
        owner=principal.key_name,
    )
    return EventStreamResponse(
        cursor,
        encoder=encode if events == 2 else encode_v1,
        clients=admission.sse_clients,
        expires_in=admission.expires_in(principal),
    )


@router.get(
    "/history/{session_id}",
    response_model=HistoryResponse,
    response_model_exclude_none=True,
    summary="Get a session's history",
    tags=["history"],
    responses={
        **ERRORS,
        **NO_SESSION,
        429: {"model": ErrorResponse, "description": "RATE_LIMIT_PER_KEY reached; see `Retry-After`."},
    },
)
async def get_session_history(
    session_id: SessionIdPath,
    principal: PrincipalDep,
    admission: AdmissionDep,
    history: HistoryDep,
    records: RecordsDep,
    limit: Annotated[
        int,
        Query(
            ge=1,
            le=HISTORY_PAGE_MAX,
            description=f"At most this many turns (and at most {HISTORY_PAGE_BYTES} bytes of them).",
        ),
    ] = HISTORY_PAGE,
    before: Annotated[
        int | None,
        Query(ge=0, description="The `next_before` of the previous page: read the turns older than it."),
    ] = None,
) -> Response:
    """A page of the session's turns, oldest first: the most recent, or those before `before`; from the
    conversation record once Redis has let them expire.

    An unknown session has an empty history (404 with API keys). Each read counts toward the key's
    `RATE_LIMIT_PER_KEY`."""
    await admission.admit_read(principal)
    page = await read_history_page(
        principal,
        session_id,
        limit=limit,
        before=before,
        max_bytes=HISTORY_PAGE_BYTES,
        admission=admission,
        history=history,
        records=records,
    )
    # The stored turns are the response's messages as they are: joined, not parsed into models, so
    # that 50 reads at once do not stall the event loop (issue #13).
    cursor = b"" if page.next_before is None else b',"next_before":%d' % page.next_before
    body = b"".join(
        (
            b'{"session_id":',
            orjson.dumps(session_id),
            b',"messages":[',
            b",".join(page.turns),
            b'],"count":%d' % len(page.turns),
            cursor,
            b"}",
        )
    )
    return Response(body, media_type="application/json")


@router.delete(
    "/history/{session_id}",
    response_model=StatusResponse,
    summary="Clear a session's history",
    tags=["history"],
    responses={**ERRORS, **NO_SESSION},
)
async def clear_session_history(
    session_id: SessionIdPath,
    principal: PrincipalDep,
    admission: AdmissionDep,
    service: ChatServiceDep,
    records: RecordsDep,
    erase: ErasureDep,
) -> StatusResponse:
    """Delete every stored turn of the session, in Redis and in the conversation record, as `DELETE
    /conversations/{id}` does (the session stays its key's until its owner record's TTL runs out)."""
    await admission.check_session(principal, session_id)
    async with reachable():
        owner = await records.owner_of(session_id)
    if owner not in (None, owner_of(principal)):  # the id's record is another key's: only Redis is ours
        await service.clear(session_id)
    else:
        await erase(principal, [session_id])
    return StatusResponse(message=f"History cleared for session {session_id}")


@router.get("/schema/events", summary="JSON Schema of stream events", tags=["service"])
async def event_schema() -> dict[str, Any]:
    """The JSON Schema every PubSub event validates against (a union discriminated by `type`)."""
    return stream_event_schema()
