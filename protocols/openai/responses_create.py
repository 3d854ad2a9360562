"""What `POST /v1/responses` asks of the core: the options of the answer, the conversation a
`previous_response_id` continues, and the response object's fields that come from the request.

A response is an answer of a session: a new conversation gets a new session, named like the id of its
first response; `previous_response_id` continues the session of that response (its owner's only). With
`store: false` the answer runs as a stateless one (`ChatService.submit_stateless`): nothing is stored
or published, and the response cannot be retrieved or continued.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from typing import Any

from pydantic import ValidationError

from admission import Admission, Principal
from conversation import ConversationMessage
from generation import GenerationOptions
from ids import answer_key
from models import AnswerState, AnyEvent, EndEvent, ErrorEvent, StreamEvent
from protocols.openai.responses_encoder import ResponseEncoder
from protocols.openai.responses_store import (
    ResponseNotFound,
    ResponseRecord,
    ResponseStore,
    answer_events,
    message_id_of,
)
from protocols.openai.responses_wire import (
    FunctionCallItem,
    InputItem,
    InputMessage,
    ItemReference,
    ReasoningInput,
    ResponseCreateRequest,
    TextFormatJSONObject,
    TextFormatJSONSchema,
    TextFormatText,
)
from protocols.validation import InvalidRequest
from providers.base import AnswerError
from services import Services
from stores.answers import AnswerRegistry

# The ids `ResponseEncoder` gives output items: kind, the answer's message id, the output index.
ITEM_ID = re.compile(r"^(msg|rs|fc)_([0-9a-f]{32})_([0-9]+)$")

__all__ = [
    "Continued",
    "continued",
    "default_head",
    "find",
    "fold",
    "generation_options",
    "head_of",
    "new_session_id",
    "relay",
    "resolve_references",
    "response_object",
]

# Where the Chat Completions names of the options are the Responses API's other names.
FIELD_NAMES = {
    "response_format": "text.format",
    "max_tokens": "max_output_tokens",
    "reasoning_effort": "reasoning.effort",
}


def _response_format(body: ResponseCreateRequest) -> dict[str, Any] | None:
    text_format = body.text.format if body.text else None
    if isinstance(text_format, TextFormatJSONSchema):
        schema = text_format.model_dump(by_alias=False, exclude={"type"}, exclude_none=True)
        schema["schema"] = schema.pop("json_schema")
        return {"type": "json_schema", "json_schema": schema}
    if isinstance(text_format, TextFormatJSONObject | TextFormatText):
        return {"type": text_format.type}
    return None


def generation_options(body: ResponseCreateRequest) -> GenerationOptions:
    """The answer's options in Chat Completions' vocabulary, which the core and the sources speak;
    `InvalidRequest` names the Responses field when they do not hold together."""
    tools = [
        {"type": "function", "function": tool.model_dump(exclude={"type"}, exclude_none=True)}
        for tool in body.function_tools()
    ]
    choice: Any = body.tool_choice
    if choice is not None and not isinstance(choice, str):
        choice = {"type": "function", "function": {"name": choice.name}}
    values = {
        "tools": tools or None,
        "tool_choice": choice,
        "parallel_tool_calls": body.parallel_tool_calls,
        "response_format": _response_format(body),
        "temperature": body.temperature,
        "top_p": body.top_p,
        "max_tokens": body.max_output_tokens,
        "reasoning_effort": body.reasoning.effort if body.reasoning else None,
    }
    try:
        return GenerationOptions.model_validate(values)
    except ValidationError as error:
        first = error.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "body"
        raise InvalidRequest([(FIELD_NAMES.get(name, name), first["msg"])]) from None


def default_head(response_id: str, model: str) -> dict[str, Any]:
    """The request fields of a response object for an answer no Responses request described (one
    started through another protocol): OpenAI's defaults."""
    return {
        "id": response_id,
        "object": "response",
        "background": False,
        "instructions": None,
        "max_output_tokens": None,
        "metadata": {},
        "model": model,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": True,
        "temperature": None,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": None,
        "truncation": "disabled",
        "user": None,
    }


def head_of(body: ResponseCreateRequest, response_id: str, model: str) -> dict[str, Any]:
    """The response object's fields that come from the request, as OpenAI echoes them."""
    text_format = body.text.format if body.text and body.text.format else None
    choice: Any = body.tool_choice or "auto"
    return {
        **default_head(response_id, model),
        "created_at": int(time.time()),
        "background": body.background,
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "metadata": body.metadata or {},
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "previous_response_id": body.previous_response_id,
        "reasoning": body.reasoning.model_dump() if body.reasoning else {"effort": None, "summary": None},
        "store": body.store,
        "temperature": body.temperature,
        "text": {"format": text_format.model_dump(by_alias=True) if text_format else {"type": "text"}},
        "tool_choice": choice if isinstance(choice, str) else choice.model_dump(),
        "tools": [tool.model_dump() for tool in body.function_tools()],
        "top_p": body.top_p,
        "truncation": body.truncation or "disabled",
        "user": body.user,
    }


async def find(
    response_id: str,
    principal: Principal,
    *,
    admission: Admission,
    registry: AnswerRegistry,
    store: ResponseStore,
) -> tuple[AnswerState, ResponseRecord | None]:
    """The response's answer and record; `ResponseNotFound` for a missing, deleted or another key's
    one alike (the same 404 as `POST /chat`'s routes give for another key's session)."""
    message_id = message_id_of(response_id)
    state = await registry.get(answer_key(principal.key_name, message_id))
    if state is None or not await admission.owns(principal, state.session_id):
        raise ResponseNotFound(response_id)
    record = await store.get(message_id)
    if record is not None and record.deleted:
        raise ResponseNotFound(response_id)
    return state, record


class Continued:
    """The conversation a new response answers after: none for a new conversation; for
    `previous_response_id`, that response's conversation and answer, and its session."""

    def __init__(self, session_id: str | None, prior: list[ConversationMessage]) -> None:
        self.session_id = session_id
        self.prior = prior


async def continued(
    body: ResponseCreateRequest,
    principal: Principal,
    *,
    admission: Admission,
    services: Services,
    store: ResponseStore,
) -> Continued:
    """What `previous_response_id` continues; `ResponseNotFound` (naming it) if it is not the caller's,
    `InvalidRequest` while it is still in progress (its answer is not whole yet)."""
    previous = body.previous_response_id
    if previous is None:
        return Continued(None, [])
    try:
        state, record = await find(
            previous, principal, admission=admission, registry=services.answers, store=store
        )
    except ResponseNotFound as missing:
        missing.details = {"param": "previous_response_id"}
        raise
    if state.status == "streaming":
        raise InvalidRequest([("previous_response_id", f"The response {previous!r} is still in progress.")])
    turns = await services.history.recent(state.session_id, services.settings.max_history_messages)
    answer = next(
        (i for i, (mid, turn) in enumerate(turns) if mid == state.message_id and turn.role == "assistant"),
        None,
    )
    if answer is None:  # its session's history was cleared, or has moved past it
        raise ResponseNotFound(previous)
    prior = record.messages() if record is not None else [turn for _, turn in turns[:answer]]
    return Continued(state.session_id, [*prior, turns[answer][1]])


def new_session_id(message_id: str) -> str:
    """A new conversation's session: named like its first response."""
    return f"resp_{uuid.UUID(message_id).hex}"


async def response_object(
    state: AnswerState,
    record: ResponseRecord | None,
    services: Services,
    response_id: str,
    principal: Principal,
) -> dict[str, Any]:
    """The response object as its answer (the caller's) stands: its events so far, from the log (or its
    stored turn)."""
    head = record.head if record is not None else default_head(response_id, services.chat.source.model)
    encoder = ResponseEncoder(dict(head), response_id.removeprefix("resp_"))
    for event in await answer_events(services, state, answer_key(principal.key_name, state.message_id)):
        encoder.feed(event)
    response = encoder.response()
    response.setdefault("created_at", int(time.time()))  # an answer of another protocol, not started
    return response


def _as_input(item: dict[str, Any]) -> InputItem:
    """An output item given back as input."""
    if item["type"] == "function_call":
        return FunctionCallItem.model_validate(item)
    if item["type"] == "reasoning":
        return ReasoningInput(type="reasoning", id=item["id"])
    return InputMessage.model_validate({"role": "assistant", "content": item["content"]})


async def resolve_references(
    body: ResponseCreateRequest,
    principal: Principal,
    *,
    admission: Admission,
    services: Services,
    store: ResponseStore,
) -> None:
    """Replace each `item_reference` of the input by the output item it names (one of the caller's
    responses'), as the AI SDK sends earlier answers when `store` is on; `InvalidRequest` naming the
    item when there is no such item."""
    if isinstance(body.input, str):
        return
    resolved: list[InputItem] = []
    for index, item in enumerate(body.input):
        if not isinstance(item, ItemReference):
            resolved.append(item)
            continue
        match = ITEM_ID.match(item.id)
        output: list[dict[str, Any]] = []
        if match is not None:
            response_id = f"resp_{match[2]}"
            try:
                state, record = await find(
                    response_id, principal, admission=admission, registry=services.answers, store=store
                )
                output = (await response_object(state, record, services, response_id, principal))["output"]
            except ResponseNotFound:
                pass
        position = int(match[3]) if match is not None else -1
        if not 0 <= position < len(output) or output[position]["id"] != item.id:
            raise InvalidRequest([(f"input.{index}", f"Item with id {item.id!r} not found.")])
        resolved.append(_as_input(output[position]))
    body.input = resolved


async def relay(
    events: asyncio.Queue[StreamEvent | None], *, stop: Callable[[], object] | None = None
) -> AsyncGenerator[AnyEvent, None]:
    """An answer's events from its listener queue, `start` to its end or failure; `stop` ends the
    answer when the reader leaves first (a stateless one: nobody else can follow it)."""
    try:
        while (event := await events.get()) is not None:
            yield event
            if isinstance(event, EndEvent | ErrorEvent):
                return
        raise AnswerError("internal_error", "The answer ended without a result.")
    finally:
        if stop is not None:
            stop()


async def fold(encoder: ResponseEncoder, events: AsyncGenerator[AnyEvent, None]) -> dict[str, Any]:
    """The whole response object, once the answer has ended; a failure is raised as `AnswerError`
    (an HTTP status, as for a Chat Completion), since the caller still waits for the status line."""
    try:
        async for event in events:
            if isinstance(event, ErrorEvent):
                raise AnswerError(event.error.code, event.error.message)
            encoder.feed(event)
    finally:
        await events.aclose()
    return encoder.response()
