"""`POST /v1/chat/completions`: OpenAI's Chat Completions, whole or streamed as `chat.completion.chunk`
events, on the service's model.

With an `X-Session-Id` header a call runs through `ChatService` like `POST /chat`: its user turn and its
answer land in the session's history and the answer's events are published on the session's channel.
Without it the call is stateless, as clients of that API expect: nothing is stored or published.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Header, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from admission import Principal
from ai_service import ChatService
from config import Settings
from conversation import ConversationMessage, build_context
from models import ID_PATTERN, ChatRequest, ChunkEvent, EndEvent, ErrorEvent, StreamEvent
from protocols.deps import AdmissionDep, ChatServiceDep, PrincipalDep, SettingsDep
from protocols.errors import OpenAIErrorResponse, openai_error, problem_of
from protocols.openai.wire import (
    AssistantMessage,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Choice,
    InboundMessage,
)
from protocols.validation import InvalidRequest, check_message_length
from providers.base import AnswerError, Completion

__all__ = ["router"]

# The user id stored with a session's turns when the request names none in `user`.
DEFAULT_USER_ID = "openai-api"

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": OpenAIErrorResponse, "description": "Invalid request; `param` names the field."},
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


def _conversation(
    messages: list[InboundMessage], settings: Settings
) -> tuple[list[ConversationMessage], str]:
    """The conversation to answer, through the same context limits as `POST /chat`, and its new message.

    The request's leading system (or developer) messages replace `SYSTEM_PROMPT`; a request with none
    gets `SYSTEM_PROMPT`.
    """
    last = messages[-1]
    message = last.text()
    if last.role != "user" or not message.strip():
        raise InvalidRequest([("messages", "The last message must be a non-empty user message.")])
    check_message_length(message, settings.max_message_length, "messages")
    leading = 0
    while leading < len(messages) - 1 and messages[leading].role in {"system", "developer"}:
        leading += 1
    system_prompt = "\n\n".join(m.text() for m in messages[:leading]) if leading else settings.system_prompt
    earlier = [
        ConversationMessage(role="system" if m.role == "developer" else m.role, content=m.text())
        for m in messages[leading:]
    ]
    conversation = build_context(
        earlier,
        system_prompt=system_prompt,
        max_messages=settings.max_context_messages,
        max_chars=settings.max_context_chars,
    )
    return conversation, message


async def _relay(
    events: asyncio.Queue[StreamEvent | None],
    completion: Completion,
    *,
    stop: Callable[[], object] | None = None,
) -> AsyncGenerator[str, None]:
    """The text deltas of a `ChatService` answer, read from its listener queue. `stop` ends the
    answer when the caller leaves before its end."""
    try:
        while (event := await events.get()) is not None:
            if isinstance(event, ChunkEvent):
                yield event.content
            elif isinstance(event, EndEvent):
                completion.finish_reason = event.finish_reason
                completion.usage = event.usage
                return
            elif isinstance(event, ErrorEvent):
                raise AnswerError(event.error.code, event.error.message)
        raise AnswerError("internal_error", "The answer ended without a result.")
    finally:
        if stop is not None:
            stop()


# --- The chunk encoder ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Meta:
    id: str
    model: str
    created: int
    include_usage: bool


def _data(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"


def _chunk(meta: _Meta, choices: list[dict[str, Any]], **extra: Any) -> str:
    body: dict[str, Any] = {
        "id": meta.id,
        "object": "chat.completion.chunk",
        "created": meta.created,
        "model": meta.model,
        "choices": choices,
    }
    if meta.include_usage:
        body["usage"] = None  # every chunk but the last carries a null usage, as OpenAI's do
    body.update(extra)
    return _data(body)


def _delta(meta: _Meta, delta: dict[str, str], finish_reason: str | None = None) -> str:
    return _chunk(meta, [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}])


async def _event_stream(
    meta: _Meta, first: str | None, deltas: AsyncGenerator[str, None], completion: Completion
) -> AsyncIterator[str]:
    """The answer as Server-Sent Events in OpenAI's chunk format, ending with `data: [DONE]`.

    A failure once the stream has begun is sent as an `error` object (the OpenAI clients raise it) and
    ends the stream without `[DONE]`.
    """
    try:
        yield _delta(meta, {"role": "assistant", "content": ""})
        if first:
            yield _delta(meta, {"content": first})
        try:
            async for delta in deltas:
                yield _delta(meta, {"content": delta})
        except AnswerError as error:
            yield _data({"error": openai_error(problem_of(error)).model_dump()})
            return
        yield _delta(meta, {}, completion.finish_reason)
        if meta.include_usage:
            usage = completion.usage.model_dump() if completion.usage else None
            yield _chunk(meta, [], usage=usage)
        yield "data: [DONE]\n\n"
    finally:
        # A client that hangs up closes this stream; closing the source closes its upstream request.
        await deltas.aclose()


# --- The route -----------------------------------------------------------------------------------


async def _in_session(
    session_id: str,
    body: ChatCompletionRequest,
    conversation: list[ConversationMessage],
    message: str,
    completion: Completion,
    *,
    principal: Principal,
    admission: AdmissionDep,
    service: ChatService,
) -> tuple[str, AsyncGenerator[str, None]]:
    """Admit, then submit to `ChatService` like `POST /chat`; the completion's id and its deltas."""
    try:
        chat = ChatRequest(
            session_id=session_id,
            message=message,
            user_id=body.user or DEFAULT_USER_ID,
            message_id=uuid.uuid4(),
        )
    except ValidationError as error:
        raise InvalidRequest([("user", f"Invalid user: {error.errors()[0]['msg']}")]) from None
    events: asyncio.Queue[StreamEvent | None] = asyncio.Queue()
    async with admission.admit(
        principal, user_id=chat.user_id, session_id=session_id, message_id=str(chat.message_id)
    ):
        accepted, _ = await service.submit(chat, context=conversation, listener=events)
    return f"chatcmpl-{accepted.message_id}", _relay(events, completion)


async def _stateless(
    body: ChatCompletionRequest,
    conversation: list[ConversationMessage],
    completion: Completion,
    *,
    principal: Principal,
    admission: AdmissionDep,
    service: ChatService,
) -> tuple[str, AsyncGenerator[str, None]]:
    """Admit, then run through `ChatService` like every answer (counted, observed, ended at shutdown),
    but neither stored nor published: no session to own; capacity, the rate limit and the slot apply."""
    answer_id = str(uuid.uuid4())
    user_id = body.user or DEFAULT_USER_ID
    events: asyncio.Queue[StreamEvent | None] = asyncio.Queue()
    async with admission.admit(principal, user_id=user_id, message_id=answer_id):
        service.submit_stateless(conversation, body, user_id=user_id, listener=events, message_id=answer_id)
    # Nobody else can follow a stateless answer: it ends when its caller leaves.
    deltas = _relay(events, completion, stop=lambda: service.stop_local(answer_id))
    return f"chatcmpl-{answer_id.replace('-', '')}", deltas


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
    service: ChatServiceDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    admission: AdmissionDep,
    session_id: SessionHeader = None,
) -> Response:
    """Answer the conversation, whole or streamed, as OpenAI's Chat Completions API does."""
    conversation, message = _conversation(body.messages, settings)
    completion = Completion()
    if session_id is None:
        completion_id, deltas = await _stateless(
            body, conversation, completion, principal=principal, admission=admission, service=service
        )
    else:
        completion_id, deltas = await _in_session(
            session_id,
            body,
            conversation,
            message,
            completion,
            principal=principal,
            admission=admission,
            service=service,
        )
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    meta = _Meta(completion_id, service.source.model, int(time.time()), include_usage)

    # Wait for the first piece: a failure before it gets an HTTP status, which clients raise as such.
    try:
        first = await anext(deltas, None)
    except BaseException:
        await deltas.aclose()
        raise
    if body.stream:
        return StreamingResponse(
            _event_stream(meta, first, deltas, completion),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    parts = [first] if first else []
    try:
        parts.extend([delta async for delta in deltas])
    finally:
        await deltas.aclose()
    response = ChatCompletionResponse(
        id=meta.id,
        created=meta.created,
        model=meta.model,
        choices=[
            Choice(message=AssistantMessage(content="".join(parts)), finish_reason=completion.finish_reason)
        ],
        usage=completion.usage,
    )
    return JSONResponse(response.model_dump(mode="json"))
