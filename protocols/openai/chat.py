"""`POST /v1/chat/completions`: OpenAI's Chat Completions, whole or streamed as `chat.completion.chunk`
events, on the service's model.

With an `X-Session-Id` header a call runs through `ChatService` like `POST /chat`: its user turn (or the
tool results that end its messages, as `tool` turns) and its answer land in the session's history, and
the answer's events are published on the session's channel. Without it the call is stateless, as clients
of that API expect: nothing is stored or published. Either way the request's options (tools, structured
output, sampling) go to the model; `protocols.openai.encoder` puts the answer's parts on the wire.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from admission import Principal
from ai_service import ChatService, ImagesUnsupported
from generation import GenerationOptions
from models import ID_PATTERN, ChatRequest, EndEvent, ErrorEvent, StartEvent, StreamEvent
from protocols.deps import AdmissionDep, PrincipalDep, ServicesDep
from protocols.errors import OpenAIErrorResponse
from protocols.openai.context import Exchange, read_messages
from protocols.openai.encoder import Meta, event_stream, whole_response
from protocols.openai.models import ModelNotFound
from protocols.openai.wire import ChatCompletionRequest, ChatCompletionResponse
from protocols.validation import InvalidRequest
from providers.base import AnswerError

__all__ = ["router"]

# The user id stored with a session's turns when the request names none in `user`.
DEFAULT_USER_ID = "openai-api"
# What a `ChatRequest` takes over from the completion request: everything the model is asked besides
# the messages (tools, structured output, sampling).
OPTION_FIELDS = tuple(GenerationOptions.model_fields)

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": OpenAIErrorResponse, "description": "Invalid request; `param` names the field."},
    404: {"model": OpenAIErrorResponse, "description": "`model` is not the model that answers."},
    413: {"model": OpenAIErrorResponse, "description": "The body is larger than MAX_BODY_BYTES."},
    429: {"model": OpenAIErrorResponse, "description": "The model server is rate limiting."},
    502: {
        "model": OpenAIErrorResponse,
        "description": "The model server failed or refused (`code` says how).",
    },
    503: {
        "model": OpenAIErrorResponse,
        "description": "Redis is unavailable, or the service is shutting down.",
    },
    504: {"model": OpenAIErrorResponse, "description": "The model server did not answer in time."},
}

SessionHeader = Annotated[
    str | None,
    Header(
        alias="X-Session-Id",
        min_length=1,
        max_length=128,
        pattern=ID_PATTERN,
        description="Ties the call to a chat session: its turns land in history, its events on the channel.",
    ),
]

router = APIRouter()


async def _relay(
    events: asyncio.Queue[StreamEvent | None], *, stop: Callable[[], object] | None = None
) -> AsyncGenerator[StreamEvent, None]:
    """The events of a `ChatService` answer after its `start`, read from its listener queue, up to and
    including its `end`; its `error` is raised as `AnswerError`. `stop` ends the answer when the caller
    leaves before its end."""
    try:
        while (event := await events.get()) is not None:
            if isinstance(event, ErrorEvent):
                raise AnswerError(event.error.code, event.error.message)
            if not isinstance(event, StartEvent):
                yield event
            if isinstance(event, EndEvent):
                return
        raise AnswerError("internal_error", "The answer ended without a result.")
    finally:
        if stop is not None:
            stop()


async def _end_of(first: StreamEvent, events: AsyncGenerator[StreamEvent, None]) -> EndEvent:
    """The answer's `end`, which carries the whole message: the events before it are not needed."""
    event = first
    while not isinstance(event, EndEvent):
        event = await anext(events)
    return event


def _chat_request(session_id: str, body: ChatCompletionRequest, exchange: Exchange) -> ChatRequest:
    """`POST /chat`'s request for the exchange: the user's message, or the tool results to store."""
    options = {name: getattr(body, name) for name in OPTION_FIELDS}
    try:
        return ChatRequest(
            session_id=session_id,
            message=exchange.message,
            images=list(exchange.images) or None,
            tool_results=list(exchange.tool_results) or None,
            user_id=body.user or DEFAULT_USER_ID,
            message_id=uuid.uuid4(),
            **options,
        )
    except ValidationError as error:  # what the completion request's own schema let through
        raise InvalidRequest([("messages", error.errors()[0]["msg"])]) from None


async def _in_session(
    session_id: str,
    body: ChatCompletionRequest,
    exchange: Exchange,
    *,
    principal: Principal,
    admission: AdmissionDep,
    service: ChatService,
) -> tuple[str, AsyncGenerator[StreamEvent, None]]:
    """Admit, then submit to `ChatService` like `POST /chat`: the user's message or the tool results
    are stored as the session's turns. The completion's id and the answer's events."""
    chat = _chat_request(session_id, body, exchange)
    events: asyncio.Queue[StreamEvent | None] = asyncio.Queue()
    async with admission.admit(
        principal, user_id=chat.user_id, session_id=session_id, message_id=str(chat.message_id)
    ):
        accepted, _ = await service.submit(
            chat, context=exchange.conversation, listener=events, owner=principal.key_name
        )
    return f"chatcmpl-{accepted.message_id}", _relay(events)


async def _stateless(
    body: ChatCompletionRequest,
    exchange: Exchange,
    *,
    principal: Principal,
    admission: AdmissionDep,
    service: ChatService,
) -> tuple[str, AsyncGenerator[StreamEvent, None]]:
    """Admit, then run through `ChatService` like every answer (counted, observed, ended at shutdown),
    but neither stored nor published: no session to own; capacity, the rate limit and the slot apply."""
    answer_id = str(uuid.uuid4())
    user_id = body.user or DEFAULT_USER_ID
    events: asyncio.Queue[StreamEvent | None] = asyncio.Queue()
    async with admission.admit(principal, user_id=user_id, message_id=answer_id):
        key = service.submit_stateless(
            exchange.conversation,
            body,
            user_id=user_id,
            listener=events,
            message_id=answer_id,
            owner=principal.key_name,
        )
    # Nobody else can follow a stateless answer: it ends when its caller leaves.
    events_out = _relay(events, stop=lambda: service.stop_local(key))
    return f"chatcmpl-{answer_id.replace('-', '')}", events_out


def _check_servable(body: ChatCompletionRequest, exchange: Exchange, service: ChatService) -> None:
    """The model must be the one that answers, and able to see the conversation's images."""
    model = service.source.model
    if body.model != model:
        raise ModelNotFound(
            f"The model {body.model!r} does not exist; this service answers with {model!r}.", param="model"
        )
    if not service.source.accepts_images and any(m.images for m in exchange.conversation):
        raise ImagesUnsupported(f"The model {model!r} cannot see images.", param="messages")


@router.post(
    "/chat/completions",
    response_model=ChatCompletionResponse,
    summary="Create a chat completion (OpenAI-compatible)",
    responses={
        **ERRORS,
        200: {
            "description": "The answer: JSON, or with `stream: true` Server-Sent Events of "
            "`chat.completion.chunk` objects ending with `data: [DONE]`.",
            "content": {"text/event-stream": {}},
        },
    },
)
async def create_chat_completion(
    body: ChatCompletionRequest,
    principal: PrincipalDep,
    services: ServicesDep,
    session_id: SessionHeader = None,
) -> Response:
    """Answer the conversation, whole or streamed, as OpenAI's Chat Completions API does."""
    service, admission, settings = services.chat, services.admission, services.settings
    exchange = read_messages(body.messages, settings)
    _check_servable(body, exchange, service)
    if session_id is None:
        completion_id, events = await _stateless(
            body, exchange, principal=principal, admission=admission, service=service
        )
    else:
        completion_id, events = await _in_session(
            session_id, body, exchange, principal=principal, admission=admission, service=service
        )
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    meta = Meta(completion_id, service.source.model, int(time.time()), include_usage)

    # Wait for the first event: a failure before it gets an HTTP status, which clients raise as such.
    try:
        first = await anext(events)
        end = None if body.stream else await _end_of(first, events)
    except BaseException:
        await events.aclose()
        raise
    if end is None:
        return StreamingResponse(
            event_stream(meta, first, events),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    await events.aclose()
    return JSONResponse(whole_response(meta, end).model_dump(mode="json"))
