"""The simulated model's tool calls (providers/simulated_tools.py): which tools it calls for each
`tool_choice`, the ids and arguments of its calls, and its answer once their results are back."""

from __future__ import annotations

import json
import re
from typing import Any

import openai
import pytest
from jsonschema import Draft202012Validator
from pydantic import BaseModel, Field

from conversation import ConversationMessage
from generation import FunctionTool, GenerationOptions
from parts import ToolCall
from providers.simulated_json import Material, SchemaUnsupported
from providers.simulated_tools import arguments_for, call_id, named_in, results_answer, tools_to_call
from tests.chat_harness import user


def tool(name: str, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name, "description": f"The {name} function."}
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


WEATHER = tool(
    "get_weather",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
SEARCH = tool("search_docs", {"type": "object", "properties": {"query": {"type": "string"}}})
CLOCK = tool("now")
TOOLS = [WEATHER, SEARCH, CLOCK]


def options(**fields: Any) -> GenerationOptions:
    return GenerationOptions.model_validate({"tools": TOOLS, **fields})


def names(tools: list[FunctionTool]) -> list[str]:
    return [tool.function.name for tool in tools]


def called(message: str, **fields: Any) -> list[str]:
    return names(tools_to_call([user(message)], options(**fields)))


def test_a_tool_is_named_as_a_whole_word_in_any_case() -> None:
    tools = options().tools or []
    assert names(named_in("Please call GET_WEATHER for Oslo", tools)) == ["get_weather"]
    assert names(named_in("what is now?", tools)) == ["now"]
    assert names(named_in("nowhere and get_weathers and my_get_weather", tools)) == []


def test_tools_are_named_in_the_order_the_message_names_them() -> None:
    tools = options().tools or []
    assert names(named_in("search_docs, then get_weather", tools)) == ["search_docs", "get_weather"]


@pytest.mark.parametrize(
    ("message", "fields", "expected"),
    [
        ("What is the weather in Oslo? Use get_weather", {}, ["get_weather"]),
        ("What is the weather in Oslo?", {}, []),
        ("Use get_weather", {"tool_choice": "auto"}, ["get_weather"]),
        ("Use get_weather", {"tool_choice": "none"}, []),
        ("What is the weather in Oslo?", {"tool_choice": "required"}, ["get_weather"]),
        ("Look it up with search_docs", {"tool_choice": "required"}, ["search_docs"]),
        ("Use get_weather", {"tool_choice": {"type": "function", "function": {"name": "now"}}}, ["now"]),
        ("search_docs and get_weather", {}, ["search_docs", "get_weather"]),
        ("search_docs and get_weather", {"parallel_tool_calls": True}, ["search_docs", "get_weather"]),
        ("search_docs and get_weather", {"parallel_tool_calls": False}, ["search_docs"]),
        (
            "search_docs and get_weather",
            {"tool_choice": "required", "parallel_tool_calls": False},
            ["search_docs"],
        ),
    ],
)
def test_which_tools_are_called_for_each_tool_choice(
    message: str, fields: dict[str, Any], expected: list[str]
) -> None:
    assert called(message, **fields) == expected


def test_no_tools_means_no_calls() -> None:
    assert tools_to_call([user("Use get_weather")], GenerationOptions()) == []


def answered(choice: Any = None) -> list[str]:
    conversation = [
        user("Use get_weather for Oslo"),
        ConversationMessage(
            role="assistant", content="", tool_calls=(ToolCall(id="c1", name="get_weather", arguments="{}"),)
        ),
        ConversationMessage(role="tool", content="sunny", tool_call_id="c1"),
    ]
    fields = {} if choice is None else {"tool_choice": choice}
    return names(tools_to_call(conversation, options(**fields)))


def test_once_results_are_back_auto_answers_instead_of_calling_again() -> None:
    assert answered() == []
    assert answered("auto") == []


def test_a_required_call_is_made_even_after_results() -> None:
    assert answered("required") == ["get_weather"]
    assert answered({"type": "function", "function": {"name": "now"}}) == ["now"]


def test_call_ids_are_deterministic_and_distinct() -> None:
    conversation = [user("Use get_weather")]
    first = call_id(conversation, 0)
    assert re.fullmatch(r"call_[0-9a-f]{24}", first)
    assert call_id(list(conversation), 0) == first
    assert call_id(conversation, 1) != first
    assert call_id([user("Use get_weather again")], 0) != first


MATERIAL = Material(words=("Oslo", "weather"), phrase="weather Oslo", sentence="Use get_weather for Oslo")


def test_arguments_fit_the_tools_parameters() -> None:
    weather = FunctionTool.model_validate(WEATHER)
    arguments = arguments_for(weather, MATERIAL)
    assert json.loads(arguments) == {"city": "Oslo"}


def test_a_tool_without_parameters_gets_an_empty_object() -> None:
    assert arguments_for(FunctionTool.model_validate(CLOCK), MATERIAL) == "{}"


class Booking(BaseModel):
    guests: int = Field(ge=1, le=8)
    nights: list[str] = Field(min_length=2)
    vip: bool


def test_arguments_for_a_pydantic_tool_validate() -> None:
    schema = Booking.model_json_schema()
    booking = FunctionTool.model_validate(tool("book", schema))
    arguments = json.loads(arguments_for(booking, MATERIAL))
    Draft202012Validator(schema).validate(arguments)
    Booking.model_validate(arguments)


def test_parameters_it_cannot_satisfy_name_the_tool() -> None:
    impossible = tool(
        "broken",
        {
            "type": "object",
            "properties": {"n": {"type": "integer", "minimum": 2, "maximum": 1}},
            "required": ["n"],
        },
    )
    with pytest.raises(SchemaUnsupported, match="the parameters of broken"):
        arguments_for(FunctionTool.model_validate(impossible), MATERIAL)


def conversation_with_results(*results: tuple[str, str, str]) -> list[ConversationMessage]:
    calls = tuple(ToolCall(id=call, name=name, arguments="{}") for call, name, _ in results)
    return [
        user("What is the weather in Oslo? Use get_weather"),
        ConversationMessage(role="assistant", content="", tool_calls=calls),
        *(
            ConversationMessage(role="tool", content=content, tool_call_id=call)
            for call, _, content in results
        ),
    ]


def test_the_answer_to_results_names_each_tool_and_what_it_returned() -> None:
    conversation = conversation_with_results(
        ("c1", "get_weather", '{"temperature": 21, "sky": "clear"}'), ("c2", "now", "It is 09:30.")
    )
    assert results_answer(conversation, "Oslo") == (
        "I called get_weather, and it returned: temperature 21, sky clear. "
        'I called now, and it returned "It is 09:30.". That is what I found about Oslo.'
    )


def test_a_long_result_is_shortened() -> None:
    answer = results_answer(conversation_with_results(("c1", "get_weather", "word " * 200)), None)
    assert answer is not None
    assert "…" in answer
    assert len(answer) < 300


def test_a_conversation_that_does_not_end_with_results_gets_none() -> None:
    assert results_answer([user("Hello")], "hello") is None


class Trip(BaseModel):
    """A model as the openai SDK sends it for strict function calling: every field required, nullable
    ones as `anyOf [..., null]`, no additional properties, a recursive part."""

    destination: str
    guests: int = Field(ge=1, le=8)
    notes: str | None = None
    next_leg: Trip | None = None


def test_arguments_for_the_openai_sdks_strict_pydantic_tool_parse_into_the_model() -> None:
    strict = openai.pydantic_function_tool(Trip)
    assert strict["function"].get("strict") is True
    trip_tool = FunctionTool.model_validate(strict)
    arguments = arguments_for(trip_tool, MATERIAL)
    Draft202012Validator(strict["function"]["parameters"]).validate(json.loads(arguments))
    trip = Trip.model_validate_json(arguments)
    assert trip.destination == "Oslo"
