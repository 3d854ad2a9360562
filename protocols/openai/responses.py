"""OpenAI's Responses API under `/v1`: create a response, retrieve it (or stream it again from any
sequence number), cancel it, delete it, list its input items.

A response is an answer of a session, run by `ChatService` like every other: `resp_<message id hex>`
is its id, its events are in the session's replay log, and `ResponseEncoder` turns them into the
Responses events (a fold, so a replay recomputes the same sequence numbers). Keys, ownership and limits
are `POST /chat`'s; another key's response is `404` like a missing one.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from ai_service import AnswerFinished, ChatService, ImagesUnsupported
from ids import answer_key
from models import ChatRequest, StreamEvent
from protocols.deps import AdmissionDep, ChatServiceDep, PrincipalDep, SettingsDep
from protocols.errors import OpenAIErrorResponse
from protocols.openai.models import ModelNotFound
from protocols.openai.responses_create import (
    continued,
    default_head,
    find,
    fold,
    generation_options,
    head_of,
    new_session_id,
    relay,
    resolve_references,
    response_object,
)
from protocols.openai.responses_encoder import ResponseEncoder, ResponseStream
from protocols.openai.responses_input import Reading, input_items, read_input
from protocols.openai.responses_objects import InputItemList, ResponseDeleted, ResponseObject
from protocols.openai.responses_store import ResponseRecord, ResponseStore, stored_message
from protocols.openai.responses_wire import RESPONSE_ID_PATTERN, ResponseCreateRequest
from protocols.sse import EventStreamResponse
from protocols.validation import InvalidRequest
from services import Services

__all__ = ["router"]

# The user id stored with a response's turns when the request names none in `user`.
DEFAULT_USER_ID = "openai-api"

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": OpenAIErrorResponse, "description": "Invalid request; `param` names the field."},
    404: {"model": OpenAIErrorResponse, "description": "No such response (or another key's), or model."},
    409: {"model": OpenAIErrorResponse, "description": "Tool results while the session's answer streams."},
    413: {"model": OpenAIErrorResponse, "description": "The body is larger than MAX_BODY_BYTES."},
    429: {"model": OpenAIErrorResponse, "description": "A limit is reached, or the model server limits."},
    502: {"model": OpenAIErrorResponse, "description": "The model server failed (`code` says how)."},
    503: {"model": OpenAIErrorResponse, "description": "Redis is unavailable, or the service is stopping."},
}
STREAMED = {
    "description": "The response object; with `stream: true`, Server-Sent Events of Responses events.",
    "content": {"text/event-stream": {}},
}

ResponseIdPath = Annotated[str, Path(pattern=RESPONSE_ID_PATTERN, description="`resp_...`")]

router = APIRouter()


async def get_services(request: Request) -> Services:
    return cast(Services, request.state.services)


ServicesDep = Annotated[Services, Depends(get_services)]


def _check_servable(body: ResponseCreateRequest, reading: Reading, service: ChatService) -> None:
    model = service.source.model
    if body.model != model:
        raise ModelNotFound(
            f"The model {body.model!r} does not exist; this service answers with {model!r}.", param="model"
        )
    if not service.source.accepts_images and any(m.images for m in reading.exchange.conversation):
        raise ImagesUnsupported(f"The model {model!r} cannot see images.", param="input")


def _json(body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body)


async def _stateless(
    body: ResponseCreateRequest,
    reading: Reading,
    *,
    principal: PrincipalDep,
    admission: AdmissionDep,
    service: ChatService,
) -> Response:
    """`store: false`: the answer runs like every other but is neither stored nor published; it ends
    when its caller leaves."""
    answer_id = str(uuid.uuid4())
    user_id = body.user or DEFAULT_USER_ID
    hex_id = uuid.UUID(answer_id).hex
    encoder = ResponseEncoder(head_of(body, f"resp_{hex_id}", service.source.model), hex_id)
    events: asyncio.Queue[StreamEvent | None] = asyncio.Queue()
    async with admission.admit(principal, user_id=user_id, message_id=answer_id):
        key = service.submit_stateless(
            reading.exchange.conversation,
            generation_options(body),
            user_id=user_id,
            listener=events,
            message_id=answer_id,
            owner=principal.key_name,
        )
    answer = relay(events, stop=lambda: service.stop_local(key))
    if not body.stream:
        return _json(await fold(encoder, answer))

    async def frames() -> AsyncIterator[bytes]:
        try:
            async for frame in ResponseStream(encoder).relay(answer):
                yield frame
        finally:
            await answer.aclose()

    return StreamingResponse(
        frames(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.post(
    "/responses",
    response_model=ResponseObject,
    summary="Create a response (OpenAI Responses API)",
    responses={**ERRORS, 200: STREAMED},
)
async def create_response(
    body: ResponseCreateRequest,
    principal: PrincipalDep,
    admission: AdmissionDep,
    service: ChatServiceDep,
    settings: SettingsDep,
    services: ServicesDep,
) -> Response:
    """Answer the input, whole, streamed, or in the background; continue `previous_response_id`."""
    if body.background and not body.store:
        raise InvalidRequest([("background", "Background responses require `store: true`.")])
    store = ResponseStore.of(services)
    options = generation_options(body)
    await resolve_references(body, principal, admission=admission, services=services, store=store)
    before = await continued(body, principal, admission=admission, services=services, store=store)
    reading = read_input(body, before.prior, settings)
    _check_servable(body, reading, service)
    if body.stream and body.store:
        admission.sse_clients.check()  # before the answer starts: no answer runs for a refused stream
    if not body.store:
        return await _stateless(body, reading, principal=principal, admission=admission, service=service)
    message_id = str(uuid.uuid4())
    hex_id = uuid.UUID(message_id).hex
    session_id = before.session_id or new_session_id(message_id)
    head = head_of(body, f"resp_{hex_id}", service.source.model)
    record = ResponseRecord(
        head=head,
        input=input_items(body, hex_id),
        conversation=[stored_message(message) for message in reading.conversation],
    )
    await store.put(message_id, record)  # before the answer exists: whoever finds the answer finds it
    exchange = reading.exchange
    chat = ChatRequest(
        session_id=session_id,
        message=exchange.message,
        images=list(exchange.images) or None,
        tool_results=list(exchange.tool_results) or None,
        user_id=body.user or DEFAULT_USER_ID,
        message_id=uuid.UUID(message_id),
        **options.model_dump(exclude_unset=True),
    )
    waits = not (body.stream or body.background)
    events: asyncio.Queue[StreamEvent | None] | None = asyncio.Queue() if waits else None
    async with admission.admit(principal, user_id=chat.user_id, session_id=session_id, message_id=message_id):
        await service.submit(chat, context=exchange.conversation, listener=events, owner=principal.key_name)
    encoder = ResponseEncoder(dict(head), hex_id)
    if events is not None:
        return _json(await fold(encoder, relay(events)))
    if not body.stream:
        return _json(encoder.response())
    cursor = await service.follow(session_id, message_id=message_id, owner=principal.key_name)
    return EventStreamResponse(cursor, encoder=ResponseStream(encoder), clients=admission.sse_clients)


@router.get(
    "/responses/{response_id}",
    response_model=ResponseObject,
    summary="Retrieve a response, or stream it again",
    responses={**ERRORS, 200: STREAMED},
)
async def retrieve_response(
    response_id: ResponseIdPath,
    principal: PrincipalDep,
    admission: AdmissionDep,
    service: ChatServiceDep,
    services: ServicesDep,
    stream: Annotated[bool, Query(description="Stream its events from its start, then live.")] = False,
    starting_after: Annotated[
        int | None, Query(ge=-1, description="With `stream`: only the events after this sequence number.")
    ] = None,
    include: Annotated[list[str] | None, Query(alias="include[]", include_in_schema=False)] = None,
) -> Response:
    """The response as it stands; with `stream=true`, its events from its start (or after
    `starting_after`), then live until it ends, on whichever instance runs it."""
    store = ResponseStore.of(services)
    state, record = await find(
        response_id, principal, admission=admission, registry=services.answers, store=store
    )
    if not stream:
        return _json(await response_object(state, record, services, response_id, principal))
    head = record.head if record is not None else default_head(response_id, service.source.model)
    encoder = ResponseEncoder(dict(head), response_id.removeprefix("resp_"))
    key = answer_key(principal.key_name, state.message_id)
    await services.telemetry.link_follower(key)  # a link to the answer's trace (issue #16)
    cursor = await service.follow(state.session_id, message_id=state.message_id, owner=principal.key_name)
    after = -1 if starting_after is None else starting_after
    return EventStreamResponse(
        cursor, encoder=ResponseStream(encoder, after=after), clients=admission.sse_clients
    )


@router.post(
    "/responses/{response_id}/cancel",
    response_model=ResponseObject,
    summary="Cancel a response",
    responses=ERRORS,
)
async def cancel_response(
    response_id: ResponseIdPath,
    principal: PrincipalDep,
    admission: AdmissionDep,
    service: ChatServiceDep,
    services: ServicesDep,
) -> JSONResponse:
    """Stop the answer wherever it runs; the response is `cancelled` (again: the same object)."""
    store = ResponseStore.of(services)
    state, record = await find(
        response_id, principal, admission=admission, registry=services.answers, store=store
    )
    try:
        state = await service.cancel(state.message_id, owner=principal.key_name)
    except AnswerFinished as finished:
        if finished.state.status != "cancelled":
            raise InvalidRequest(
                [("response_id", "Cannot cancel a response that has already ended.")]
            ) from None
        state = finished.state
    return _json(await response_object(state, record, services, response_id, principal))


@router.delete(
    "/responses/{response_id}",
    response_model=ResponseDeleted,
    summary="Delete a response",
    responses=ERRORS,
)
async def delete_response(
    response_id: ResponseIdPath, principal: PrincipalDep, admission: AdmissionDep, services: ServicesDep
) -> ResponseDeleted:
    """Forget the response: it can no longer be retrieved or continued. Its turns stay in the session's
    history (`DELETE /history/{session_id}` clears them)."""
    store = ResponseStore.of(services)
    state, _ = await find(response_id, principal, admission=admission, registry=services.answers, store=store)
    await store.delete(state.message_id)
    return ResponseDeleted(id=response_id)


def _history_items(turns: list[Any], message_id: str, hex_id: str) -> list[dict[str, Any]]:
    """The input items of an answer no Responses request described: its user turn or tool results."""
    items: list[dict[str, Any]] = []
    for index, turn in enumerate(t for t in turns if t.message_id == message_id and t.role != "assistant"):
        if turn.role == "tool":
            item = {"type": "function_call_output", "call_id": turn.tool_call_id, "output": turn.content}
            items.append({"id": f"fco_{hex_id}_in{index}", **item, "status": "completed"})
            continue
        content: list[dict[str, Any]] = [{"type": "input_text", "text": turn.content}]
        content += [{"type": "input_image", "image_url": url, "detail": "auto"} for url in turn.images or ()]
        message = {"type": "message", "role": "user", "status": "completed", "content": content}
        items.append({"id": f"msg_{hex_id}_in{index}", **message})
    return items


@router.get(
    "/responses/{response_id}/input_items",
    response_model=InputItemList,
    summary="List a response's input items",
    responses=ERRORS,
)
async def list_input_items(
    response_id: ResponseIdPath,
    principal: PrincipalDep,
    admission: AdmissionDep,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Annotated[Literal["asc", "desc"], Query()] = "desc",
    after: Annotated[
        str | None, Query(max_length=128, description="An item id: list the ones after it.")
    ] = None,
) -> InputItemList:
    """The items the response was asked, newest first unless `order=asc`."""
    store = ResponseStore.of(services)
    state, record = await find(
        response_id, principal, admission=admission, registry=services.answers, store=store
    )
    if record is not None:
        items = list(record.input)
    else:
        items = _history_items(
            await services.history.read(state.session_id), state.message_id, response_id[5:]
        )
    if order == "desc":
        items.reverse()
    if after is not None:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    page = items[:limit]
    return InputItemList(
        data=page,
        first_id=page[0]["id"] if page else None,
        last_id=page[-1]["id"] if page else None,
        has_more=len(items) > limit,
    )
