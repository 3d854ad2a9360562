"""A response's life after `POST /v1/responses`, through the openai SDK: background mode and a dropped
stream resumed with `responses.retrieve(id, stream=True, starting_after=N)`, cancel, delete, input
items, `store: false`, another key's response id, and the requests refused with `400` naming the field.

The answer here comes from a source the test holds half-way (`HeldSource`): the resumed stream is
shown to replay what was missed and then follow live, without timing guesses."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from typing import Any, cast

import httpx
import openai
import pytest
from openai import OpenAI
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from app import create_app
from config import Settings
from conversation import ConversationMessage
from generation import GenerationOptions
from parts import Delta
from providers.base import Completion
from testkit.asgi_server import serve
from testkit.redis_server import RedisServer
from testkit.waiting import eventually_sync
from tests.chat_harness import ScriptedSource

SettingsFactory = Callable[..., Settings]
Json = dict[str, Any]

EVENTS: TypeAdapter[ResponseStreamEvent] = TypeAdapter(ResponseStreamEvent)
BEFORE = ["One ", "two ", "three ", "four "]
AFTER = ["five ", "six."]
# What the encoder sends before the first held-back delta: created, in_progress, the message item and
# its text part, then a delta per chunk.
HELD_AT = 3 + len(BEFORE)
ALICE, BOB = "alice-key-0123456789", "bob-key-0123456789ab"


class HeldSource(ScriptedSource):
    """Streams `BEFORE`, waits until the test releases it (from its own thread), then `AFTER`."""

    def __init__(self) -> None:
        super().__init__([*BEFORE, *AFTER])
        self.released = threading.Event()

    async def stream(
        self, conversation: Sequence[ConversationMessage], options: GenerationOptions, completion: Completion
    ) -> AsyncGenerator[Delta, None]:
        self.conversations.append(list(conversation))
        for delta in BEFORE:
            yield delta
        await asyncio.to_thread(self.released.wait, 30)
        for delta in AFTER:
            yield delta


@pytest.fixture
def source() -> Iterator[HeldSource]:
    held = HeldSource()
    yield held
    held.released.set()


@pytest.fixture
def url(make_settings: SettingsFactory, redis_server: RedisServer, source: HeldSource) -> Iterator[str]:
    settings = make_settings(redis_url=redis_server.url, api_keys=f"alice:{ALICE},bob:{BOB}")
    with serve(create_app(settings, source=source)) as base:
        yield base
        # A held answer waits in a thread of the server's loop: released first, or the server's
        # shutdown waits for that thread (15 s of every run, until the join gave up).
        source.released.set()


def client(url: str, key: str = ALICE) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def body_of(error: openai.APIStatusError) -> Json:
    """The error object the SDK read from the body (OpenAI's `error`)."""
    return cast(Json, error.body)


def dumped(events: Any) -> Iterator[Json]:
    for event in events:
        body = event.model_dump(mode="json", exclude_unset=True)
        EVENTS.validate_python(body)
        yield body


def test_a_dropped_background_stream_resumes_with_exactly_the_events_after_n(
    url: str, source: HeldSource
) -> None:
    with client(url) as sdk:
        stream = sdk.responses.create(model="scripted", input="Count.", background=True, stream=True)
        first = []
        for event in dumped(stream):
            first.append(event)
            if len(first) == 5:
                break
        stream.close()  # the connection drops mid-answer
        response_id, after = first[0]["response"]["id"], first[-1]["sequence_number"]
        assert sdk.responses.retrieve(response_id).status == "in_progress"

        resumed = []
        for event in dumped(sdk.responses.retrieve(response_id, stream=True, starting_after=after)):
            resumed.append(event)
            if event["sequence_number"] == HELD_AT:
                source.released.set()  # what was missed came from the log; the rest comes live
        full = list(dumped(sdk.responses.retrieve(response_id, stream=True)))
        retrieved = sdk.responses.retrieve(response_id)

    assert [e["sequence_number"] for e in resumed] == list(range(after + 1, after + 1 + len(resumed)))
    assert first + resumed == full
    assert resumed[-1]["type"] == "response.completed"
    text = "".join(e["delta"] for e in full if e["type"] == "response.output_text.delta")
    assert text == "".join(BEFORE + AFTER) == retrieved.output_text
    assert Response.model_validate(full[-1]["response"]).output == retrieved.output


def test_cancel_stops_a_background_response_and_every_reader_sees_it_cancelled(
    url: str, source: HeldSource
) -> None:
    with client(url) as sdk:
        started = sdk.responses.create(model="scripted", input="Count.", background=True)
        assert started.status == "in_progress"
        assert started.background is True
        eventually_sync(
            lambda: sdk.responses.retrieve(started.id).output_text == "".join(BEFORE),
            "the held answer has written its first part",
        )
        cancelled = sdk.responses.cancel(started.id)
        again = sdk.responses.cancel(started.id)
        replay = list(dumped(sdk.responses.retrieve(started.id, stream=True)))
    assert cancelled.status == again.status == "cancelled"
    assert cancelled.output_text == "".join(BEFORE)
    assert cancelled.output[0].type == "message"
    assert cancelled.output[0].status == "incomplete"
    assert replay[-1]["type"] == "response.incomplete"
    assert replay[-1]["response"]["status"] == "cancelled"


def test_cancelling_a_finished_response_is_refused(url: str, source: HeldSource) -> None:
    source.released.set()
    with client(url) as sdk:
        done = sdk.responses.create(model="scripted", input="Count.")
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.responses.cancel(done.id)
    assert done.status == "completed"
    assert body_of(refused.value)["param"] == "response_id"


def test_another_keys_response_is_not_found_like_a_missing_one(url: str, source: HeldSource) -> None:
    source.released.set()
    with client(url) as alice, client(url, BOB) as bob:
        mine = alice.responses.create(model="scripted", input="Count.")
        missing = "resp_" + "0" * 32
        errors: list[Json] = []
        for call in (
            lambda: bob.responses.retrieve(mine.id),
            lambda: bob.responses.cancel(mine.id),
            lambda: bob.responses.delete(mine.id),
            lambda: bob.responses.input_items.list(mine.id),
            lambda: bob.responses.create(model="scripted", input="Hi.", previous_response_id=mine.id),
            lambda: alice.responses.retrieve(missing),
        ):
            with pytest.raises(openai.NotFoundError) as caught:
                call()
            errors.append(body_of(caught.value))
        assert alice.responses.retrieve(mine.id).output_text == "".join(BEFORE + AFTER)
    for body in errors:
        assert body["type"] == "invalid_request_error"
        assert body["code"] == "not_found"
        assert body["message"].startswith("Response with id 'resp_")


def test_delete_forgets_the_response_and_input_items_list_what_it_was_asked(
    url: str, source: HeldSource
) -> None:
    source.released.set()
    with client(url) as sdk:
        done = sdk.responses.create(
            model="scripted",
            input=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "input_text", "text": "Count."}]},
            ],
        )
        newest_first = sdk.responses.input_items.list(done.id)
        one = sdk.responses.input_items.list(done.id, order="asc", limit=1)
        sdk.responses.delete(done.id)
        with pytest.raises(openai.NotFoundError):
            sdk.responses.retrieve(done.id)
        with pytest.raises(openai.NotFoundError):
            sdk.responses.create(model="scripted", input="More.", previous_response_id=done.id)
    assert [item.to_dict().get("role") for item in newest_first.data] == ["user", "system"]
    assert len(one.data) == 1
    assert one.has_more
    assert one.data[0].to_dict()["role"] == "system"


def test_store_false_answers_but_keeps_nothing(url: str, source: HeldSource) -> None:
    source.released.set()
    with client(url) as sdk:
        answered = sdk.responses.create(model="scripted", input="Count.", store=False)
        with pytest.raises(openai.NotFoundError):
            sdk.responses.retrieve(answered.id)
        with pytest.raises(openai.BadRequestError) as background:
            sdk.responses.create(model="scripted", input="Count.", store=False, background=True)
    assert answered.status == "completed"
    assert answered.to_dict()["store"] is False
    assert answered.output_text == "".join(BEFORE + AFTER)
    assert body_of(background.value)["param"] == "background"


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"model": "gpt-4o"}, "model"),
        ({"tools": [{"type": "web_search"}]}, "tools"),
        ({"tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
        ({"input": [{"type": "function_call_output", "call_id": "call_x", "output": "1"}]}, "input"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input.0"),
        ({"text": {"format": {"type": "json_schema", "name": "p", "schema": {"type": 5}}}}, "text.format"),
        ({"temperature": 3}, "temperature"),
        ({"previous_response_id": "resp_" + "1" * 32}, "previous_response_id"),
    ],
    ids=[
        "model",
        "builtin-tool",
        "tool-choice",
        "orphan-output",
        "item-reference",
        "schema",
        "range",
        "previous",
    ],
)
def test_a_bad_request_names_the_field_and_starts_nothing(
    url: str, source: HeldSource, params: Json, param: str
) -> None:
    request = {"model": "scripted", "input": "Count.", **params}
    reply = httpx.post(f"{url}/v1/responses", json=request, headers={"Authorization": f"Bearer {ALICE}"})
    assert reply.status_code in (400, 404), reply.text
    error = reply.json()["error"]
    assert error["param"] == param, error
    assert source.conversations == []


def test_an_answer_started_by_post_chat_is_a_response_too(url: str, source: HeldSource) -> None:
    source.released.set()
    chat = {"session_id": "s-native", "message": "Count.", "user_id": "u1"}
    accepted = httpx.post(f"{url}/chat", json=chat, headers={"Authorization": f"Bearer {ALICE}"}).json()
    response_id = "resp_" + accepted["message_id"].replace("-", "")
    with client(url) as sdk:
        eventually_sync(
            lambda: sdk.responses.retrieve(response_id).status == "completed", "the answer has ended"
        )
        done = sdk.responses.retrieve(response_id)
        items = sdk.responses.input_items.list(response_id)
        replay = list(dumped(sdk.responses.retrieve(response_id, stream=True)))
    assert done.output_text == "".join(BEFORE + AFTER)
    assert [item.to_dict()["content"] for item in items.data] == [[{"type": "input_text", "text": "Count."}]]
    assert replay[-1]["type"] == "response.completed"
    assert Response.model_validate(replay[-1]["response"]).output == done.output
