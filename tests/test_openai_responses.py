"""The Responses API (`/v1/responses`) driven by its official clients as their users call them: the
openai SDK (plain, streamed, tools and a `function_call_output` through `previous_response_id`,
`text.format`, reasoning) and langchain-openai with `use_responses_api=True`; against the simulated
model and the openai provider in front of the scriptable upstream, on a real redis-server. Every object
and event the service sends is validated with the SDK's own types (`openai.types.responses`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from openai import OpenAI
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import BaseModel, TypeAdapter

from testkit.openai_server import Reply
from tests.openai_backends import Backend, calls_reply

Json = dict[str, Any]

EVENTS: TypeAdapter[ResponseStreamEvent] = TypeAdapter(ResponseStreamEvent)
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER: Any = {"type": "function", "name": "get_weather", "description": "The weather.", "parameters": CITY}
TIME: Any = {
    "type": "function",
    "name": "get_time",
    "description": "The time.",
    "parameters": {"type": "object"},
}
ASK = "What is the weather in Paris? Use get_weather."
PARIS = '{"city": "Paris"}'


class Person(BaseModel):
    name: str
    age: int


def create_raw(client: OpenAI, **params: Any) -> Response:
    """`responses.create`, its JSON validated by the SDK's own `Response` model."""
    raw = client.responses.with_raw_response.create(**params)
    return Response.model_validate(raw.http_response.json())


def checked_events(lines: Iterator[Any]) -> list[Json]:
    """The events of a stream, each validated by the SDK's own event union; numbered from 0 on."""
    events = [event.model_dump(mode="json", exclude_unset=True) for event in lines]
    for event in events:
        EVENTS.validate_python(event)
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    return events


# --- Plain and streamed -------------------------------------------------------------------------


def test_create_answers_with_a_completed_message(backend: Backend) -> None:
    backend.script(Reply(tokens=["Redis ", "streams ", "keep order."], usage=(12, 3)))
    with backend.openai() as client:
        response = create_raw(client, model=backend.model, input="Tell me about Redis streams.")
    assert response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.object == "response"
    assert response.model == backend.model
    [message] = response.output
    assert message.type == "message"
    assert message.status == "completed"
    assert response.output_text.strip()
    if backend.server is not None:
        assert response.output_text == "Redis streams keep order."
        assert response.usage is not None
        assert (response.usage.input_tokens, response.usage.output_tokens) == (12, 3)


def test_streamed_events_build_the_same_response_as_the_sdk_helper(backend: Backend) -> None:
    backend.script(Reply(tokens=["One ", "two ", "three."]), Reply(tokens=["One ", "two ", "three."]))
    with backend.openai() as client:
        events = checked_events(
            iter(client.responses.create(model=backend.model, input="Count.", stream=True))
        )
        with client.responses.stream(model=backend.model, input="Count.") as stream:
            final = stream.get_final_response()
    kinds = [event["type"] for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[2:5] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    text = "".join(event["delta"] for event in events if event["type"] == "response.output_text.delta")
    completed = Response.model_validate(events[-1]["response"])
    assert completed.output_text == text
    assert final.status == "completed"
    assert final.output_text.strip()
    if backend.server is not None:
        assert text == final.output_text == "One two three."


def test_instructions_and_metadata_are_echoed_and_sent_as_the_system_prompt(
    backend: Backend,
) -> None:
    with backend.openai() as client:
        response = create_raw(
            client,
            model=backend.model,
            input="Hi there.",
            instructions="Answer like a pirate.",
            metadata={"ticket": "T-1"},
        )
        again = client.responses.retrieve(response.id)
    assert response.instructions == again.instructions == "Answer like a pirate."
    assert response.metadata == again.metadata == {"ticket": "T-1"}
    if backend.server is not None:
        sent = backend.server.requests[-1].body["messages"]
        assert sent[0] == {"role": "system", "content": "Answer like a pirate."}


# --- Tools --------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_call_and_its_output_continue_through_previous_response_id(
    backend: Backend, stream: bool
) -> None:
    backend.script(calls_reply(("get_weather", PARIS)), Reply(tokens=["It is sunny in Paris."]))
    first: Response
    with backend.openai() as client:
        if stream:
            with client.responses.stream(model=backend.model, input=ASK, tools=[WEATHER, TIME]) as events:
                first = events.get_final_response()
        else:
            first = create_raw(
                client, model=backend.model, input=ASK, tools=[WEATHER, TIME], tool_choice="auto"
            )
        calls = [item for item in first.output if item.type == "function_call"]
        assert [(call.name, json.loads(call.arguments)) for call in calls] == [
            ("get_weather", {"city": "Paris"})
        ]
        result = {"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny, 21C"}
        second = create_raw(
            client, model=backend.model, previous_response_id=first.id, input=[result], tools=[WEATHER, TIME]
        )
    assert second.status == "completed"
    assert second.previous_response_id == first.id
    assert "sunny" in second.output_text.lower()
    if backend.server is not None:
        sent = backend.server.requests[-1].body["messages"]
        assert [m["role"] for m in sent[-3:]] == ["user", "assistant", "tool"]
        assert sent[-1] == {"role": "tool", "tool_call_id": "call_0", "content": "Sunny, 21C"}
        assert sent[-2]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": PARIS}


def test_a_required_tool_streams_its_arguments_as_events(backend: Backend) -> None:
    backend.script(calls_reply(("get_time", "{}")))
    with backend.openai() as client:
        events = checked_events(
            iter(
                client.responses.create(
                    model=backend.model,
                    input="Hello.",
                    tools=[WEATHER, TIME],
                    tool_choice="required",
                    stream=True,
                )
            )
        )
    added = [e["item"] for e in events if e["type"] == "response.output_item.added"]
    assert [item["type"] for item in added][-1] == "function_call"
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta")
    [done] = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert done["arguments"] == deltas
    assert json.loads(deltas) is not None
    assert events[-1]["type"] == "response.completed"


def test_the_whole_conversation_can_be_sent_as_input_items(backend: Backend) -> None:
    """As a client that keeps its own history sends it: the call echoed back, then its output."""
    backend.script(Reply(tokens=["Paris is sunny."]))
    items: list[Any] = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "input_text", "text": ASK}]},
        {"type": "function_call", "call_id": "call_9", "name": "get_weather", "arguments": PARIS},
        {"type": "function_call_output", "call_id": "call_9", "output": "Sunny"},
    ]
    with backend.openai() as client:
        response = create_raw(client, model=backend.model, input=items, tools=[WEATHER])
        listed = client.responses.input_items.list(response.id, order="asc")
    assert response.status == "completed"
    assert response.output_text
    assert [item.type for item in listed.data] == [
        "message",
        "message",
        "function_call",
        "function_call_output",
    ]
    if backend.server is not None:
        sent = backend.server.requests[-1].body["messages"]
        assert sent[0] == {"role": "system", "content": "Be brief."}
        assert [m["role"] for m in sent[1:]] == ["user", "assistant", "tool"]


def test_an_item_reference_brings_back_an_earlier_answer(backend: Backend) -> None:
    """As the AI SDK sends an earlier answer while `store` is on: by the id of its output item."""
    backend.script(Reply(tokens=["Blue light scatters."]), Reply(tokens=["Yes, really."]))
    question: Any = {"role": "user", "content": "Why is the sky blue?"}
    with backend.openai() as client:
        first = create_raw(client, model=backend.model, input=[question])
        [message] = [item for item in first.output if item.type == "message"]
        again: Any = [
            question,
            {"type": "item_reference", "id": message.id},
            {"role": "user", "content": "Really?"},
        ]
        second = create_raw(client, model=backend.model, input=again)
    assert second.status == "completed"
    if backend.server is not None:
        sent = backend.server.requests[-1].body["messages"]
        assert sent[-2:] == [
            {"role": "assistant", "content": "Blue light scatters."},
            {"role": "user", "content": "Really?"},
        ]


# --- Structured output and reasoning ------------------------------------------------------------


def test_text_format_json_schema_parses_into_the_model(backend: Backend) -> None:
    backend.script(Reply(tokens=['{"name": "Ada", ', '"age": 36}']))
    with backend.openai() as client:
        parsed = client.responses.parse(model=backend.model, input="Ada Lovelace, 36.", text_format=Person)
    assert isinstance(parsed.output_parsed, Person)
    assert parsed.text is not None
    assert parsed.text.format is not None
    assert parsed.text.format.type == "json_schema"
    if backend.server is not None:
        assert parsed.output_parsed == Person(name="Ada", age=36)
        sent_format = backend.server.requests[-1].body["response_format"]
        assert sent_format["type"] == "json_schema"
        assert sent_format["json_schema"]["name"] == "Person"


def test_reasoning_streams_as_a_summary_and_counts_its_tokens(backend: Backend) -> None:
    backend.script(
        Reply(
            tokens=[{"reasoning_content": "Think "}, {"reasoning_content": "first."}, "Answer."],
            usage=(10, 6),
            reasoning_tokens=4,
        )
    )
    with backend.openai() as client:
        stream = client.responses.create(
            model=backend.model, input="Why is the sky blue?", reasoning={"effort": "low"}, stream=True
        )
        events = checked_events(iter(stream))
    summary = "".join(e["delta"] for e in events if e["type"] == "response.reasoning_summary_text.delta")
    final = Response.model_validate(events[-1]["response"])
    [reasoning, message] = final.output
    assert reasoning.type == "reasoning"
    assert reasoning.summary[0].text == summary != ""
    assert message.type == "message"
    if backend.server is not None:
        assert summary == "Think first."
        assert final.usage is not None
        assert final.usage.output_tokens_details.reasoning_tokens == 4
        assert backend.server.requests[-1].body["reasoning_effort"] == "low"


def test_a_length_cut_answer_is_incomplete_with_its_reason(backend: Backend) -> None:
    backend.script(Reply(tokens=["Cut ", "short"], finish_reason="length"))
    with backend.openai() as client:
        events = checked_events(
            iter(
                client.responses.create(
                    model=backend.model, input="Write an essay.", max_output_tokens=2, stream=True
                )
            )
        )
    final = Response.model_validate(events[-1]["response"])
    assert events[-1]["type"] == "response.incomplete"
    assert final.status == "incomplete"
    assert final.incomplete_details is not None
    assert final.incomplete_details.reason == "max_output_tokens"
    assert final.output[0].type == "message"
    assert final.output[0].status == "incomplete"


# --- langchain-openai with use_responses_api=True -----------------------------------------------


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}"


def test_langchain_invokes_and_streams_through_the_responses_api(backend: Backend) -> None:
    backend.script(
        Reply(tokens=["Caching ", "saves ", "work."]), Reply(tokens=["Caching ", "saves ", "work."])
    )
    chat = backend.chat_model(use_responses_api=True)
    answer = chat.invoke("Explain caching.")
    chunks = list(chat.stream("Explain caching."))
    streamed = "".join(chunk.text for chunk in chunks)
    assert answer.text.strip()
    assert answer.response_metadata["id"].startswith("resp_")
    assert streamed == answer.text
    if backend.server is not None:
        assert answer.text == "Caching saves work."


def test_langchain_tool_round_trip_sends_the_conversation_as_items(backend: Backend) -> None:
    backend.script(calls_reply(("get_weather", PARIS)), Reply(tokens=["Sunny in Paris, it says."]))
    chat = backend.chat_model(use_responses_api=True).bind_tools([get_weather])
    asked = HumanMessage(ASK)
    called = chat.invoke([asked])
    assert isinstance(called, AIMessage)
    [call] = called.tool_calls
    assert (call["name"], call["args"]) == ("get_weather", {"city": "Paris"})
    result = ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"] or "")
    answered = chat.invoke([asked, called, result])
    assert "Paris" in answered.text
    if backend.server is not None:
        sent = backend.server.requests[-1].body["messages"]
        assert sent[-1] == {"role": "tool", "tool_call_id": "call_0", "content": "Sunny in Paris"}


def test_langchain_continues_by_previous_response_id_with_reasoning(backend: Backend) -> None:
    backend.script(
        Reply(tokens=[{"reasoning_content": "Hmm."}, "Blue light scatters."]), Reply(tokens=["Yes."])
    )
    chat = backend.chat_model(
        use_responses_api=True, use_previous_response_id=True, reasoning={"effort": "low", "summary": "auto"}
    )
    first = chat.invoke("Why is the sky blue?")
    second = chat.invoke([HumanMessage("Why is the sky blue?"), first, HumanMessage("Really?")])
    blocks = first.content if isinstance(first.content, list) else []
    assert [block["type"] for block in blocks if isinstance(block, dict)][:1] == ["reasoning"]
    assert second.text.strip()
    if backend.server is not None:
        sent = backend.server.requests[-1].body["messages"]
        assert [m["role"] for m in sent[-3:]] == ["user", "assistant", "user"]
        assert sent[-2]["content"] == "Blue light scatters."
