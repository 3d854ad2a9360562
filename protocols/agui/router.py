"""`POST /agui` runs the agent on a thread; `POST /agui/connect` reconnects to a thread.

Both take AG-UI's `RunAgentInput` (parsed with the `ag-ui-protocol` package's own model) and answer
with AG-UI events over Server-Sent Events. A run composes "admit, then submit" as `POST /chat` does,
then follows its answer through the transport-neutral cursor, so a run, its retry and a reconnect
stream the same log; the answer is also in the thread's history and on its channel, and can be
followed or stopped through every other protocol (`GET /stream/{threadId}`, `POST /chat/{id}/cancel`).
"""

from __future__ import annotations

import re
from typing import Any

from ag_ui.core import MessagesSnapshotEvent, RunAgentInput, RunFinishedEvent, RunStartedEvent
from ag_ui.encoder import EventEncoder
from fastapi import APIRouter
from starlette.responses import Response

from admission import SessionForbidden, SessionNotFound
from ai_service import ChatService
from ids import answer_key
from models import ID_PATTERN
from protocols.agui.encoder import RunEncoder
from protocols.agui.inputs import read_input
from protocols.agui.snapshot import snapshot_messages
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
from protocols.validation import InvalidRequest

__all__ = ["router"]

STREAM: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
        "description": "AG-UI events, each as `data: <JSON>` (the `ag-ui-protocol` package's encoding).",
    },
    400: {"model": ErrorResponse, "description": "The body cannot be read (not UTF-8 JSON)."},
    401: {"model": ErrorResponse, "description": "API keys are on and no valid key was sent."},
    404: {
        "model": ErrorResponse,
        "description": "With API keys on: the thread is another key's (or, to reconnect, does not exist).",
    },
    422: {"model": ErrorResponse, "description": "The input cannot be served: the body names the field."},
    503: {"model": ErrorResponse, "description": "Redis is unavailable, or the service is shutting down."},
}

router = APIRouter(prefix="/agui", tags=["agui"])


def _encoder(body: RunAgentInput, service: ChatService, run_id: str, **kwargs: Any) -> RunEncoder:
    source = service.source
    return RunEncoder(body.thread_id, run_id, provider=source.name, model=source.model, **kwargs)


@router.post(
    "",
    summary="Run the agent on a thread (AG-UI)",
    response_class=EventStreamResponse,
    responses={
        **STREAM,
        409: {
            "model": ErrorResponse,
            "description": "Tool results for calls that await none, or while the thread's answer streams; "
            "or the runId's answer belongs to another thread.",
        },
        413: {"model": ErrorResponse, "description": "The body is larger than MAX_BODY_BYTES."},
        429: {"model": ErrorResponse, "description": "RATE_LIMIT or MAX_STREAMS_PER_USER reached."},
    },
)
async def run_agent(
    body: RunAgentInput,
    principal: PrincipalDep,
    admission: AdmissionDep,
    service: ChatServiceDep,
    settings: SettingsDep,
) -> EventStreamResponse:
    """Submit the thread's new turn (the last user message, or tool results) and stream the answer
    as one run: `RUN_STARTED`, its text, reasoning and tool calls, then `RUN_FINISHED` or `RUN_ERROR`.
    A repeated runId streams the same answer again from its start."""
    run = read_input(body, settings)
    request = run.request
    session_id, message_id = request.session_id, str(request.message_id)
    admission.sse_clients.check()  # before the answer starts: no answer runs for a refused stream
    try:
        async with admission.admit(
            principal, user_id=request.user_id, session_id=session_id, message_id=message_id
        ):
            await service.submit(request, system_prompt=run.system_prompt, owner=principal.key_name)
    except SessionForbidden:
        raise SessionNotFound(session_id) from None  # another key's thread is as good as missing
    cursor = await service.follow(session_id, message_id=message_id, owner=principal.key_name)
    return EventStreamResponse(
        cursor, encoder=_encoder(body, service, body.run_id), clients=admission.sse_clients
    )


@router.post(
    "/connect",
    summary="Reconnect to a thread (AG-UI)",
    response_class=EventStreamResponse,
    responses=STREAM,
)
async def connect(
    body: RunAgentInput,
    principal: PrincipalDep,
    admission: AdmissionDep,
    service: ChatServiceDep,
    history: HistoryDep,
    telemetry: TelemetryDep,
) -> Response:
    """The thread's messages as a `MESSAGES_SNAPSHOT`, then the answer running now, live, as its run
    (runId: the answer's message id); a thread with none running gets the snapshot in a run that
    finishes at once. Only `threadId` and `runId` of the input are read."""
    if not re.fullmatch(ID_PATTERN, body.thread_id):
        raise InvalidRequest([("threadId", "1 to 128 of A-Z a-z 0-9 _ . : -")])
    await admission.check_session(principal, body.thread_id)
    running = await service.running_answer(body.thread_id)
    snapshot = MessagesSnapshotEvent(
        messages=snapshot_messages(await history.read(body.thread_id), streaming=running)
    )
    if running is None:
        encoder = EventEncoder()
        events = [
            RunStartedEvent(thread_id=body.thread_id, run_id=body.run_id),
            snapshot,
            RunFinishedEvent(thread_id=body.thread_id, run_id=body.run_id),
        ]
        content = "".join(encoder.encode(event) for event in events)
        return Response(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    # This stream's trace links to the answer's (issue #16).
    await telemetry.link_follower(answer_key(principal.key_name, running))
    cursor = await service.follow(body.thread_id, message_id=running, owner=principal.key_name)
    encoder_ = _encoder(body, service, running, before=[snapshot])
    return EventStreamResponse(cursor, encoder=encoder_, clients=admission.sse_clients)
