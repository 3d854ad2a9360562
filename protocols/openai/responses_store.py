"""What the Responses API keeps beside an answer, and how it reads an answer back.

The answer itself (its session, state, events, stored turn) is the core's, as for every protocol. A
response adds what its request said and the core does not keep: the fields of the response object that
come from the request (`instructions`, `metadata`, `tools`, ...), its input items (for
`GET /v1/responses/{id}/input_items`), and the conversation it answered (what `previous_response_id`
continues: the Responses API continues a response's own conversation, so a fork from an older response
is answered as its own, not with the turns its session had since). One JSON value per response, with
the history's TTL, under `<prefix>:response:{<message_id>}`. An answer started by another protocol has
none: it is read with the defaults.
"""

from __future__ import annotations

import uuid
from typing import Any, TypeVar, cast

from pydantic import BaseModel, Field

from ai_service import AnswerNotFound
from conversation import ConversationMessage
from models import (
    AnswerState,
    AnyEvent,
    ChatTurn,
    ChunkEvent,
    EndEvent,
    ErrorEvent,
    ErrorInfo,
    EventBase,
    ReasoningEvent,
    RefusalEvent,
    StartEvent,
    ToolCallDeltaEvent,
    ToolCallEndEvent,
    ToolCallStartEvent,
    stream_event_adapter,
)
from redis_client import KeySpace, RedisClient, bounded
from services import Services
from stores.replay_log import TERMINAL

__all__ = [
    "ResponseNotFound",
    "ResponseRecord",
    "ResponseStore",
    "answer_events",
    "message_id_of",
    "response_id",
    "stored_message",
    "turn_events",
]


class ResponseNotFound(AnswerNotFound):
    """No such response, or another key's: the same 404 either way, in OpenAI's error shape."""

    def __init__(self, response_id: str) -> None:
        super().__init__(response_id)
        self.message = f"Response with id '{response_id}' not found."
        self.args = (self.message,)
        self.details = {"param": "response_id"}


def response_id(message_id: str) -> str:
    """`resp_` and the answer's message id without its dashes."""
    return f"resp_{uuid.UUID(message_id).hex}"


def message_id_of(response_id: str) -> str:
    """The answer's message id; `ResponseNotFound` for anything that is not one of our response ids."""
    hex_part = response_id.removeprefix("resp_")
    if hex_part == response_id or len(hex_part) != 32:
        raise ResponseNotFound(response_id)
    try:
        return str(uuid.UUID(hex=hex_part))
    except ValueError:
        raise ResponseNotFound(response_id) from None


def stored_message(message: ConversationMessage) -> dict[str, Any]:
    """A conversation message as a stored turn's JSON (`ConversationMessage.from_stored` reads it)."""
    stored: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        stored["tool_calls"] = [call.model_dump() for call in message.tool_calls]
    if message.tool_call_id is not None:
        stored["tool_call_id"] = message.tool_call_id
    if message.images:
        stored["images"] = list(message.images)
    if message.reasoning:
        stored["reasoning"] = message.reasoning
    return stored


class ResponseRecord(BaseModel):
    """What a response's request said: `head` (the response object's request fields), `input` (its
    input items, as `input_items` lists them), `conversation` (what it answered, system messages
    included, within the context limits), and whether it was deleted."""

    head: dict[str, Any] = Field(default_factory=dict)
    input: list[dict[str, Any]] = Field(default_factory=list)
    conversation: list[dict[str, Any]] = Field(default_factory=list)
    deleted: bool = False

    def messages(self) -> list[ConversationMessage]:
        return [ConversationMessage.from_stored(stored) for stored in self.conversation]


class ResponseStore:
    """The records, one Redis string each, with the history's TTL."""

    def __init__(self, redis: RedisClient, keys: KeySpace, *, ttl: int, timeout: float) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl = ttl
        self._timeout = timeout

    @classmethod
    def of(cls, services: Services) -> ResponseStore:
        settings = services.settings
        return cls(
            services.redis, services.keys, ttl=settings.chat_history_ttl, timeout=settings.redis_timeout
        )

    def _key(self, message_id: str) -> str:
        return f"{self._keys.prefix}:response:{{{message_id}}}"

    async def put(self, message_id: str, record: ResponseRecord) -> None:
        async with bounded(self._timeout):
            await self._redis.set(self._key(message_id), record.model_dump_json(), ex=self._ttl)

    async def get(self, message_id: str) -> ResponseRecord | None:
        async with bounded(self._timeout):
            raw = await self._redis.get(self._key(message_id))
        return None if raw is None else ResponseRecord.model_validate_json(cast(bytes, raw))

    async def delete(self, message_id: str) -> None:
        """Leave a tombstone: the answer stays in its session's history, the response is gone."""
        await self.put(message_id, ResponseRecord(deleted=True))


# --- An answer's events, read back --------------------------------------------------------------

_E = TypeVar("_E", bound=EventBase)


def turn_events(turn: ChatTurn, session_id: str) -> list[AnyEvent]:
    """The events of a stored answer, in the order every part is encoded: reasoning, text, refusal,
    tool calls, then its end (or its failure)."""
    seq = 0
    base = {"message_id": turn.message_id, "session_id": session_id, "timestamp": turn.created_at}

    def make(kind: type[_E], **fields: Any) -> _E:
        nonlocal seq
        event = kind(seq=seq, **base, **fields)
        seq += 1
        return event

    events: list[AnyEvent] = [make(StartEvent)]
    if turn.reasoning:
        events.append(make(ReasoningEvent, content=turn.reasoning))
    if turn.content:
        events.append(make(ChunkEvent, content=turn.content))
    if turn.refusal:
        events.append(make(RefusalEvent, content=turn.refusal))
    for index, call in enumerate(turn.tool_calls or ()):
        events.append(make(ToolCallStartEvent, tool_call_id=call.id, name=call.name, index=index))
        events.append(make(ToolCallDeltaEvent, tool_call_id=call.id, arguments=call.arguments))
        events.append(make(ToolCallEndEvent, tool_call_id=call.id, name=call.name, arguments=call.arguments))
    reason = turn.finish_reason or "stop"
    if reason in ("error", "shutdown"):
        events.append(make(ErrorEvent, error=ErrorInfo(code=reason, message="The answer failed.")))
    else:
        fields = {"reasoning": turn.reasoning, "tool_calls": turn.tool_calls, "refusal": turn.refusal}
        events.append(make(EndEvent, content=turn.content, finish_reason=reason, usage=turn.usage, **fields))
    return events


async def answer_events(services: Services, state: AnswerState, key: str) -> list[AnyEvent]:
    """The answer's (`key`: `ids.answer_key`) events so far, from its `start`: from the replay log while
    it holds them, else (an ended answer whose events were trimmed or expired) rebuilt from its stored
    turn. Never waits."""
    log = services.log
    since = await log.start_of(key)
    if since is not None:
        entries = [
            e for e in await log.read_after(state.session_id, since) if e.message_id == state.message_id
        ]
        if entries and entries[0].type == "start":
            end = next((i for i, e in enumerate(entries) if e.type in TERMINAL), len(entries) - 1)
            return [stream_event_adapter.validate_json(e.payload) for e in entries[: end + 1]]
    if state.status == "streaming":
        return []  # not started yet: its `start` is on its way
    turns = await services.history.read(state.session_id)
    answer = next(
        (t for t in reversed(turns) if t.role == "assistant" and t.message_id == state.message_id), None
    )
    return [] if answer is None else turn_events(answer, state.session_id)
