"""The OpenAI-compatible API: `POST /v1/chat/completions` and `GET /v1/models`, on the service's model.

Any OpenAI client (the official SDKs, LangChain, Open WebUI) can use the service as its backend. With an
`X-Session-Id` header a call runs through `ChatService` like `POST /chat`: its user turn and its answer
land in the session's history and the answer's events are published on the session's channel. Without
it the call is stateless, as clients of that API expect: nothing is stored or published.

Errors on this router have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, so the
clients raise their usual exceptions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.exceptions import HTTPException

from ai_service import ServiceUnavailable
from config import Settings
from conversation import ConversationMessage, build_context
from deps import ChatServiceDep, SettingsDep
from models import ID_PATTERN, ChatRequest, ChunkEvent, EndEvent, ErrorEvent, StreamEvent, Usage
from providers.base import AnswerError, Completion
from redis_client import RedisUnavailable
from security import AccessDep, PrincipalDep

__all__ = ["router"]

logger = logging.getLogger(__name__)

# The user id stored with a session's turns when the request names none in `user`.
DEFAULT_USER_ID = "openai-api"


# --- Wire shapes ---------------------------------------------------------------------------------


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = None


class InboundMessage(BaseModel):
    """One message of the conversation. Text only: no images, audio or tool calls."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None

    @field_validator("content")
    @classmethod
    def _text_only(cls, value: str | list[ContentPart] | None) -> str | list[ContentPart] | None:
        if isinstance(value, list) and any(part.type != "text" or part.text is None for part in value):
            raise ValueError("only text content parts are supported")
        return value

    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n".join(part.text or "" for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """OpenAI's Chat Completions request. Sampling options (`temperature`, `max_tokens`, ...) are accepted
    and ignored: the service's `AI_TEMPERATURE` and `AI_MAX_TOKENS` apply."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [{"model": "simulated", "messages": [{"role": "user", "content": "Hello!"}]}]
        },
    )

    model: str = Field(
        min_length=1, max_length=256, description="Any name: answers come from the service's model."
    )
    messages: list[InboundMessage] = Field(
        min_length=1, description="The conversation; the last is the user's."
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1, description="Only one choice is supported.")
    user: str | None = Field(
        default=None,
        description="With X-Session-Id: the user id stored with the turns (1 to 128 of A-Z a-z 0-9 _ . : -).",
    )


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletionResponse(BaseModel):
    """A whole answer. Its `id` is `chatcmpl-<message_id>` when it belongs to a session."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(examples=["invalid_request_error", "server_error"])
    param: str | None = None
    code: str | None = Field(default=None, examples=["invalid_request", "upstream_timeout"])


class OpenAIErrorResponse(BaseModel):
    """Every error on `/v1` has this body, as OpenAI's API does."""

    error: OpenAIErrorDetail


# --- Errors --------------------------------------------------------------------------------------

# How an answer's failure reaches a client that is still waiting for the status line.
ANSWER_ERROR_STATUS = {
    "rate_limited": 429,
    "upstream_timeout": 504,
    "shutdown": 503,
    "redis_unavailable": 503,
    "internal_error": 500,
}


def _error_type(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    return "invalid_request_error" if status < 500 else "server_error"


class OpenAIAPIError(Exception):
    """An error answer of this router, in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.detail = OpenAIErrorDetail(message=message, type=_error_type(status), param=param, code=code)

    @classmethod
    def from_answer(cls, error: AnswerError) -> OpenAIAPIError:
        return cls(ANSWER_ERROR_STATUS.get(error.code, 502), error.message, code=error.code)

    def response(self) -> JSONResponse:
        return JSONResponse(OpenAIErrorResponse(error=self.detail).model_dump(), status_code=self.status)


def _location(loc: Sequence[int | str]) -> str:
    parts = [str(part) for part in loc]
    if parts and parts[0] in {"body", "header", "path", "query"}:
        parts = parts[1:]
    return ".".join(parts)


class OpenAIRoute(APIRoute):
    """A route whose errors, from validation to Redis, answer in OpenAI's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except OpenAIAPIError as error:
                return error.response()
            except HTTPException as error:
                # FastAPI's own refusals, such as a body that is not UTF-8: OpenAI's shape here too.
                return OpenAIAPIError(error.status_code, str(error.detail)).response()
            except RequestValidationError as error:
                errors = error.errors()
                param = (_location(errors[0]["loc"]) or None) if errors else None
                summary = "; ".join(f"{_location(item['loc']) or 'body'}: {item['msg']}" for item in errors)
                message = f"Invalid request: {summary}"
                return OpenAIAPIError(400, message, code="invalid_request", param=param).response()
            except RedisUnavailable as error:
                logger.warning("Redis unavailable: %s", error.reason)
                message = f"Service temporarily unavailable: {error.reason}"
                return OpenAIAPIError(503, message, code="redis_unavailable").response()
            except ServiceUnavailable as error:
                return OpenAIAPIError(503, str(error), code="shutting_down").response()

        return handle


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

router = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAIRoute)


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


# --- Chat completions ----------------------------------------------------------------------------


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
        raise OpenAIAPIError(400, "The last message must be a non-empty user message.", param="messages")
    if len(message) > settings.max_message_length:
        raise OpenAIAPIError(
            400,
            f"The last message is longer than {settings.max_message_length} characters.",
            param="messages",
        )
    leading = 0
    while leading < len(messages) - 1 and messages[leading].role in {"system", "developer"}:
        leading += 1
    system_prompt = "\n\n".join(m.text() for m in messages[:leading]) if leading else settings.system_prompt
    earlier = [
        ConversationMessage(role="system" if m.role == "developer" else m.role, content=m.text())
        for m in messages[leading:-1]
    ]
    conversation = build_context(
        earlier,
        message,
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
    """The text deltas of a `ChatService` answer, read from its listener queue. `stop`, for an answer
    nobody else can follow (a stateless one), ends it when its caller leaves before its end."""
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


@dataclass(frozen=True, slots=True)
class _Meta:
    id: str
    model: str
    created: int
    include_usage: bool


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
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"


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
            detail = OpenAIAPIError.from_answer(error).detail
            yield f"data: {json.dumps({'error': detail.model_dump()}, separators=(',', ':'))}\n\n"
            return
        yield _delta(meta, {}, completion.finish_reason)
        if meta.include_usage:
            usage = completion.usage.model_dump() if completion.usage else None
            yield _chunk(meta, [], usage=usage)
        yield "data: [DONE]\n\n"
    finally:
        # A client that hangs up closes this stream; closing the source closes its upstream request.
        await deltas.aclose()


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
    access: AccessDep,
    session_id: SessionHeader = None,
) -> Response:
    """Answer the conversation, whole or streamed, as OpenAI's Chat Completions API does."""
    conversation, message = _conversation(body.messages, settings)
    completion = Completion()
    events: asyncio.Queue[StreamEvent | None] = asyncio.Queue()
    if session_id is None:
        # Stateless, but an answer like any other: counted against the caps, observed, ended at shutdown.
        access.check_capacity(service.active_answers)
        await access.rate_limit(principal, body.user or DEFAULT_USER_ID)
        message_id = service.submit_stateless(
            conversation, user_id=body.user or DEFAULT_USER_ID, listener=events
        )
        completion_id = f"chatcmpl-{message_id.replace('-', '')}"
        deltas = _relay(events, completion, stop=lambda: service.stop_local(message_id))
    else:
        try:
            chat = ChatRequest(session_id=session_id, message=message, user_id=body.user or DEFAULT_USER_ID)
        except ValidationError as error:
            raise OpenAIAPIError(400, f"Invalid user: {error.errors()[0]['msg']}", param="user") from None
        # Through the same checks as POST /chat: owner, rate and stream limits.
        accepted, _ = await access.submit(principal, chat, service, context=conversation, listener=events)
        completion_id = f"chatcmpl-{accepted.message_id}"
        deltas = _relay(events, completion)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    meta = _Meta(completion_id, service.source.model, int(time.time()), include_usage)

    # Wait for the first piece: a failure before it gets an HTTP status, which clients raise as such.
    try:
        first = await anext(deltas, None)
    except AnswerError as error:
        raise OpenAIAPIError.from_answer(error) from None
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
    except AnswerError as error:
        raise OpenAIAPIError.from_answer(error) from None
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


# --- Models --------------------------------------------------------------------------------------


@router.get("/models", response_model=ModelList, summary="List models (OpenAI-compatible)")
async def list_models(service: ChatServiceDep) -> ModelList:
    """The model that answers (`AI_MODEL` for the openai provider), owned by its `AI_PROVIDER`."""
    return ModelList(data=[ModelCard(id=service.source.model, owned_by=service.source.name)])


@router.get(
    "/models/{model_id:path}",
    response_model=ModelCard,
    summary="Describe a model (OpenAI-compatible)",
    responses={404: {"model": OpenAIErrorResponse, "description": "Not the model that answers."}},
)
async def retrieve_model(model_id: str, service: ChatServiceDep) -> ModelCard:
    """The model that answers, when `model_id` names it."""
    if model_id != service.source.model:
        raise OpenAIAPIError(
            404, f"The model {model_id!r} does not exist.", code="model_not_found", param="model"
        )
    return ModelCard(id=model_id, owned_by=service.source.name)
