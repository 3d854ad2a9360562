"""An answer's events as subscribers read them (`read_answers`, `assert_well_formed`), and the chat service
as the services builder makes it, answering from a scripted source (`ScriptedSource`, `Harness`; conftest's
`run_service` fixture): shared by the ChatService, cursor and flow tests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from redis.asyncio.client import PubSub

from conversation import ConversationMessage
from generation import GenerationOptions
from models import ChatRequest
from parts import Delta
from providers.base import AnswerSource, Completion
from redis_client import KeySpace
from services import Services

KEYS = KeySpace("chat")
Json = dict[str, Any]


def ended(events: list[Json]) -> bool:
    return bool(events) and events[-1]["type"] in {"end", "error"}


async def read_answers(
    pubsub: PubSub,
    message_ids: set[str] | list[str],
    *,
    until: Callable[[list[Json]], bool] = ended,
    timeout: float = 20,
) -> dict[str, list[Json]]:
    """Collect the events of these answers from a subscribed PubSub until `until` holds for each.

    Returns each answer's events in arrival order; by default reads until each has ended.
    """
    events: dict[str, list[Json]] = {message_id: [] for message_id in message_ids}
    async with asyncio.timeout(timeout):
        while not all(until(answer) for answer in events.values()):
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None:
                continue
            event: Json = json.loads(message["data"])
            if event["message_id"] in events:
                events[event["message_id"]].append(event)
    return events


PARTS = {"chunk", "reasoning", "refusal", "tool_call_start", "tool_call_delta", "tool_call_end"}


def assert_well_formed(events: list[Json], message_id: str) -> None:
    """One answer's events as the stream contract promises: start, its parts, then one end or error;
    and an `end` holds exactly what the parts' deltas add up to."""
    assert {event["message_id"] for event in events} == {message_id}
    assert [event["seq"] for event in events] == list(range(len(events))), "seq is not 0..n"
    assert events[0]["type"] == "start"
    assert {event["type"] for event in events[1:-1]} <= PARTS
    assert events[-1]["type"] in {"end", "error"}
    if events[-1]["type"] == "end":
        assert events[-1] == {**events[-1], **assembled(events)}


def assembled(events: list[Json]) -> Json:
    """The message an answer's part events add up to, as its `end` carries it."""

    def joined(kind: str) -> str:
        return "".join(event["content"] for event in events if event["type"] == kind)

    calls: dict[str, Json] = {}
    for event in events:
        if event["type"] == "tool_call_start":
            calls[event["tool_call_id"]] = {
                "id": event["tool_call_id"],
                "name": event["name"],
                "arguments": "",
            }
        elif event["type"] == "tool_call_delta":
            calls[event["tool_call_id"]]["arguments"] += event["arguments"]
    for event in events:
        if event["type"] == "tool_call_end":
            assert calls[event["tool_call_id"]] == {
                "id": event["tool_call_id"],
                "name": event["name"],
                "arguments": event["arguments"],
            }
    message: Json = {"content": joined("chunk")}
    if joined("reasoning"):
        message["reasoning"] = joined("reasoning")
    if joined("refusal"):
        message["refusal"] = joined("refusal")
    if calls:
        message["tool_calls"] = list(calls.values())
    return message


def user(content: str) -> ConversationMessage:
    return ConversationMessage(role="user", content=content)


class ScriptedSource(AnswerSource):
    """An answer source that yields given deltas, optionally pausing on an event or failing at the end."""

    name = "scripted"
    model = "scripted"

    def __init__(
        self,
        deltas: Sequence[Delta],
        *,
        hold: asyncio.Event | None = None,
        fail: Exception | None = None,
        delay: float = 0,
    ) -> None:
        self.deltas = deltas
        self.hold = hold
        self.fail = fail
        self.delay = delay
        self.conversations: list[list[ConversationMessage]] = []
        self.options: list[GenerationOptions] = []

    async def stream(
        self,
        conversation: Sequence[ConversationMessage],
        options: GenerationOptions,
        completion: Completion,
    ) -> AsyncGenerator[Delta, None]:
        self.conversations.append(list(conversation))
        self.options.append(options)
        for delta in self.deltas:
            if self.delay:
                await asyncio.sleep(self.delay)  # a model's pace: the subject of the test, not a wait
            yield delta
        if self.hold is not None:
            await self.hold.wait()
        if self.fail is not None:
            raise self.fail


class Harness:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.service = services.chat
        self.history = services.history
        self.redis = services.redis

    async def chat(
        self, message: str | None = "Hello!", session_id: str = "s1", **fields: Any
    ) -> tuple[str, list[Json]]:
        """Submit a chat (with any other `ChatRequest` fields: options, `tool_results` in place of the
        message) while subscribed to its channel; return its message id and its events."""
        async with self.redis.pubsub() as pubsub:
            await pubsub.subscribe(KEYS.channel(session_id))
            accepted, _ = await self.service.submit(
                ChatRequest.model_validate(
                    {"session_id": session_id, "message": message, "user_id": "user1", **fields}
                )
            )
            events = await read_answers(pubsub, {accepted.message_id}, timeout=10)
        return accepted.message_id, events[accepted.message_id]


RunService = Callable[..., AbstractAsyncContextManager[Harness]]
