"""The Vercel AI SDK's default OpenAI provider, `@ai-sdk/openai`, which speaks the Responses API, against
`/v1/responses` (issue #12): `generateText`, and `streamText` plain and with a tool the SDK runs and
answers through a `function_call_output` item.

The scenarios are ESM programs in `tests/node/` (the pinned packages installed there by `npm ci`); the
service runs as a process on a real redis-server, with the simulated model and with the openai provider
in front of the scriptable upstream. The process helpers are `tests/test_node_clients.py`'s.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testkit.node import node_for
from testkit.openai_server import OpenAIServer, Reply, tool_call
from testkit.redis_server import RedisServer
from testkit.service import ServiceProcess
from tests.test_node_clients import (
    NODE_DIR,
    STATION,
    UPSTREAM_MODEL,
    WEATHER,
    Json,
    run_node,
    start,
    upstream_variables,
)

OSLO = '{"city": "Oslo", "unit": "celsius", "days": 2}'


@pytest.fixture(scope="module")
def node() -> str:
    return node_for(NODE_DIR)


@pytest.fixture(scope="module")
def simulated(node: str, shared_redis: RedisServer) -> Iterator[ServiceProcess]:
    service = start({"REDIS_URL": shared_redis.url})
    yield service
    service.cleanup()


@pytest.fixture(scope="module")
def upstream(
    node: str, shared_redis: RedisServer, shared_model_server: OpenAIServer
) -> Iterator[ServiceProcess]:
    service = start(upstream_variables(shared_redis, shared_model_server))
    yield service
    service.cleanup()


def called_responses(result: Json) -> list[str]:
    return [request["url"].rsplit("/v1", 1)[1] for request in result["requests"]]


def test_generate_text_answers_through_the_responses_api(node: str, simulated: ServiceProcess) -> None:
    result = run_node(node, simulated, "responses-generate")
    assert called_responses(result) == ["/responses"]
    assert result["requests"][0]["body"]["input"][0] == {
        "role": "system",
        "content": "Answer in one paragraph.",
    }
    assert result["finishReason"] == "stop"
    assert "streams" in result["text"]
    assert result["responseId"].startswith("resp_")
    assert result["responseIds"] == [result["responseId"]]


def test_a_follow_up_turn_references_the_earlier_answer_by_its_item_id(
    node: str, upstream: ServiceProcess, shared_model_server: OpenAIServer
) -> None:
    shared_model_server.reset()
    shared_model_server.script(Reply(tokens=["Streams ", "keep order."]), Reply(tokens=["Yes."]))
    result = run_node(node, upstream, "responses-generate", "--follow-up", "Really?", model=UPSTREAM_MODEL)
    follow_up = result["requests"][1]["body"]["input"]
    [reference] = [item for item in follow_up if item.get("type") == "item_reference"]
    assert reference["id"].startswith("msg_")
    assert result["followUp"]["text"] == "Yes."
    sent = shared_model_server.requests[-1].body["messages"]
    assert sent[-2:] == [
        {"role": "assistant", "content": "Streams keep order."},
        {"role": "user", "content": "Really?"},
    ]


def test_stream_text_streams_a_plain_answer(node: str, simulated: ServiceProcess) -> None:
    result = run_node(node, simulated, "responses-stream", "--steps", "1", "--prompt", "Explain caching.")
    assert result["requests"][0]["body"]["stream"] is True
    assert result["problems"] == []
    assert result["parts"]["text-start"] == result["parts"]["text-end"] == 1
    assert result["streamedText"] == result["text"] != ""
    assert result["finishReason"] == "stop"


def test_stream_text_runs_the_tool_and_answers_from_its_output(node: str, simulated: ServiceProcess) -> None:
    result = run_node(node, simulated, "responses-stream")
    assert called_responses(result) == ["/responses", "/responses"]
    first, second = (request["body"] for request in result["requests"])
    assert first["tools"][0]["name"] == WEATHER
    assert first["tools"][0]["type"] == "function"
    [call] = result["toolCalls"]
    assert call["invalid"] is False
    assert call["input"]["city"] == "Oslo"
    outputs = [item for item in second["input"] if item.get("type") == "function_call_output"]
    assert [output["call_id"] for output in outputs] == [call["id"]]
    assert [step["finishReason"] for step in result["steps"]] == ["tool-calls", "stop"]
    assert STATION in result["text"]
    assert len(set(result["responseIds"])) == 2


def test_stream_text_with_the_scriptable_upstream_reads_usage_and_reasoning(
    node: str, upstream: ServiceProcess, shared_model_server: OpenAIServer
) -> None:
    shared_model_server.reset()
    shared_model_server.script(
        Reply(tokens=tool_call(0, WEATHER, OSLO, call_id="call_oslo", pieces=4), finish_reason="tool_calls"),
        Reply(
            tokens=[{"reasoning_content": "The tool said rain."}, f"Rain in Oslo ({STATION})."],
            usage=(40, 9),
            reasoning_tokens=5,
        ),
    )
    result = run_node(node, upstream, "responses-stream", model=UPSTREAM_MODEL)
    assert result["problems"] == []
    assert result["toolCalls"][0]["input"] == {"city": "Oslo", "unit": "celsius", "days": 2}
    assert result["text"] == f"Rain in Oslo ({STATION})."
    assert result["parts"].get("reasoning-delta", 0) >= 1
    usage = result["usage"]
    assert (usage["outputTokens"], usage["outputTokenDetails"]["reasoningTokens"]) == (9, 5), usage
    sent = shared_model_server.requests[-1].body["messages"]
    assert [m["role"] for m in sent[-2:]] == ["assistant", "tool"]
    assert sent[-1]["tool_call_id"] == "call_oslo"
    assert STATION in sent[-1]["content"]
