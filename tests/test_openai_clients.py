"""Real client libraries against `/v1/chat/completions`, as their users call them: the openai SDK (tools
and tool choice, streamed and whole, a full tool round trip, `chat.completions.parse`, reasoning),
langchain-openai (`bind_tools`, `with_structured_output` by function calling and by JSON Schema) and
instructor's `Mode.TOOLS`. Each runs against both model paths: the simulated model (the default
provider), and the `openai` provider in front of the scriptable model server, told what to answer."""

from __future__ import annotations

import json
from typing import Any

import instructor
import jsonschema
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.tools import tool
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletion
from pydantic import BaseModel, Field

from testkit.openai_server import Reply
from tests.openai_backends import Backend, calls_reply

CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER: Any = {
    "type": "function",
    "function": {"name": "get_weather", "description": "The weather in a city.", "parameters": CITY},
}
TIME: Any = {
    "type": "function",
    "function": {"name": "get_time", "description": "The time now.", "parameters": {"type": "object"}},
}
ASK: list[Any] = [{"role": "user", "content": "What is the weather in Paris? Use get_weather."}]


class Person(BaseModel):
    """A person named in the text."""

    name: str = Field(description="Their name.")
    age: int = Field(description="Their age in years.")


PERSON_JSON = '{"name": "Ada Lovelace", "age": 36}'
PARIS = '{"city": "Paris"}'


# --- The openai SDK ------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "tool_choice",
    ["auto", "required", {"type": "function", "function": {"name": "get_weather"}}],
    ids=["auto", "required", "named"],
)
def test_openai_sdk_gets_the_tool_call_it_asked_for(backend: Backend, stream: bool, tool_choice: Any) -> None:
    backend.script(calls_reply(("get_weather", PARIS)))
    completion: ChatCompletion
    with backend.openai() as client:
        if stream:
            with client.chat.completions.stream(
                model=backend.model, messages=ASK, tools=[WEATHER, TIME], tool_choice=tool_choice
            ) as events:
                completion = events.get_final_completion()
        else:
            completion = client.chat.completions.create(
                model=backend.model, messages=ASK, tools=[WEATHER, TIME], tool_choice=tool_choice
            )
    choice = completion.choices[0]
    calls = [call.model_dump() for call in choice.message.tool_calls or []]
    assert [call["function"]["name"] for call in calls] == ["get_weather"]
    jsonschema.validate(json.loads(calls[0]["function"]["arguments"]), CITY)
    assert calls[0]["id"]
    assert choice.finish_reason == "tool_calls"


@pytest.mark.parametrize("session", [None, "round-trip"])
async def test_openai_sdk_tool_round_trip_answers_from_the_result(
    backend: Backend, session: str | None
) -> None:
    backend.script(
        calls_reply(("get_weather", PARIS)),
        Reply(tokens=("It is ", "sunny and 21 °C", " in Paris.")),
    )
    headers = {"X-Session-Id": session} if session else {}
    async with AsyncOpenAI(
        base_url=f"{backend.url}/v1", api_key="k", max_retries=0, default_headers=headers
    ) as client:
        first = await client.chat.completions.create(model=backend.model, messages=ASK, tools=[WEATHER])
        message = first.choices[0].message
        calls = message.tool_calls or []
        conversation: list[Any] = [
            *ASK,
            message.model_dump(exclude_none=True),
            *[{"role": "tool", "tool_call_id": call.id, "content": "sunny and 21 °C"} for call in calls],
        ]
        stream = await client.chat.completions.create(
            model=backend.model, messages=conversation, tools=[WEATHER], stream=True
        )
        chunks = [chunk async for chunk in stream]
    answer = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert len(calls) == 1
    assert "sunny and 21 °C" in answer
    assert chunks[-1].choices[0].finish_reason == "stop"
    if backend.server is not None:
        # The tool call went back upstream with its result (the model server refuses them unpaired).
        sent = backend.server.requests[1].body["messages"]
        assert [(m["role"], m.get("tool_call_id")) for m in sent[-2:]] == [
            ("assistant", None),
            ("tool", "call_0"),
        ]
        assert sent[-2]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": PARIS}


def test_openai_sdk_parse_returns_the_pydantic_object(backend: Backend) -> None:
    backend.script(Reply(tokens=(PERSON_JSON[:12], PERSON_JSON[12:])))
    with backend.openai() as client:
        completion = client.chat.completions.parse(
            model=backend.model,
            messages=[{"role": "user", "content": "Ada Lovelace was 36 when she died."}],
            response_format=Person,
        )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Person)
    if backend.server is not None:
        assert parsed == Person(name="Ada Lovelace", age=36)
        assert backend.server.requests[0].body["response_format"]["json_schema"]["name"] == "Person"


@pytest.mark.parametrize("stream", [False, True])
def test_openai_sdk_sees_the_reasoning_apart_from_the_answer(backend: Backend, stream: bool) -> None:
    backend.script(
        Reply(tokens=({"reasoning_content": "Redis keeps "}, {"reasoning_content": "it fast."}, "Use AOF."))
    )
    question: list[Any] = [{"role": "user", "content": "How should I tune Redis persistence?"}]
    with backend.openai() as client:
        if stream:
            chunks = list(
                client.chat.completions.create(
                    model=backend.model, messages=question, reasoning_effort="low", stream=True
                )
            )
            deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
            reasoning = "".join(getattr(delta, "reasoning_content", None) or "" for delta in deltas)
            content = "".join(delta.content or "" for delta in deltas)
        else:
            message = (
                client.chat.completions.create(model=backend.model, messages=question, reasoning_effort="low")
                .choices[0]
                .message
            )
            reasoning, content = getattr(message, "reasoning_content", None) or "", message.content or ""
    assert reasoning.strip()
    assert content.strip()
    assert reasoning not in content
    if backend.server is not None:
        assert (reasoning, content) == ("Redis keeps it fast.", "Use AOF.")
        assert backend.server.requests[0].body["reasoning_effort"] == "low"


# --- langchain-openai ----------------------------------------------------------------------------


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def test_langchain_bind_tools_returns_tool_calls(backend: Backend) -> None:
    backend.script(calls_reply(("get_weather", PARIS)), calls_reply(("get_weather", PARIS)))
    model = backend.chat_model().bind_tools([get_weather])
    whole = model.invoke("What is the weather in Paris? Use get_weather.")
    streamed: AIMessageChunk | None = None
    for chunk in model.stream("What is the weather in Paris? Use get_weather."):
        assert isinstance(chunk, AIMessageChunk)
        streamed = chunk if streamed is None else streamed + chunk  # LangChain's own assembly
    assert isinstance(whole, AIMessage)
    assert isinstance(streamed, AIMessageChunk)
    for message in (whole, streamed):
        assert [call["name"] for call in message.tool_calls] == ["get_weather"]
        assert isinstance(message.tool_calls[0]["args"]["city"], str)
    assert whole.response_metadata["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("method", ["function_calling", "json_schema"])
def test_langchain_structured_output_returns_the_object(backend: Backend, method: str) -> None:
    if method == "function_calling":
        backend.script(calls_reply(("Person", PERSON_JSON)))
    else:
        backend.script(Reply(tokens=(PERSON_JSON,)))
    model = backend.chat_model().with_structured_output(Person, method=method)  # type: ignore[arg-type]
    result = model.invoke("Ada Lovelace was 36 when she died.")
    assert isinstance(result, Person)
    if backend.server is not None:
        assert result == Person(name="Ada Lovelace", age=36)


# --- instructor ----------------------------------------------------------------------------------


def test_instructor_tools_mode_returns_the_object(backend: Backend) -> None:
    backend.script(calls_reply(("Person", PERSON_JSON)))
    with backend.openai() as openai_client:
        client = instructor.from_openai(openai_client, mode=instructor.Mode.TOOLS)
        person = client.chat.completions.create(
            model=backend.model,
            response_model=Person,
            messages=[{"role": "user", "content": "Ada Lovelace was 36 when she died."}],
            max_retries=0,
        )
    assert isinstance(person, Person)
    if backend.server is not None:
        assert person.model_dump() == {"name": "Ada Lovelace", "age": 36}
        assert backend.server.requests[0].body["tool_choice"] == {
            "type": "function",
            "function": {"name": "Person"},
        }
