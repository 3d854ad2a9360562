"""Real Node clients against `/v1/chat/completions`, as their users drive them (issue #11): the Vercel AI
SDK through `@ai-sdk/openai-compatible` (`streamText` with tools, a tool loop, `generateObject`) and the
`openai` npm package (tool calls streamed, `runTools()`).

Each scenario is a small ESM program in `tests/node/` that prints one JSON result; `make pytest` installs
the pinned packages there with `npm ci`. The service runs as a process (`python app.py`) on a real
redis-server, with the simulated model, and with the openai provider in front of the scriptable upstream.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from jsonschema.validators import validator_for

from testkit.node import node_for
from testkit.openai_server import OpenAIServer, Reply, tool_call
from testkit.processes import ROOT
from testkit.redis_server import RedisServer
from testkit.service import ServiceProcess

Json = dict[str, Any]

NODE_DIR = ROOT / "tests" / "node"
# What `npm ci` writes last: present only when the pinned packages are installed.
SCRIPT_TIMEOUT = 60  # seconds for one whole scenario; each answer is a few hundred milliseconds
WEATHER = "get_weather"
# The tool's result names this station (tests/node/weather.mjs): an answer built from it repeats it.
STATION = "WX-4471"
UPSTREAM_MODEL = "test-model"


@pytest.fixture(scope="module")
def node() -> str:
    """The `node` binary, with the pinned clients installed beside the scenarios."""
    return node_for(NODE_DIR)


def start(variables: dict[str, str]) -> ServiceProcess:
    service = ServiceProcess({"STREAM_DELAY": "0", "CHUNK_DELAY": "0", "LOG_LEVEL": "WARNING", **variables})
    try:
        service.start(ready="/health")
    except BaseException:
        service.cleanup()
        raise
    return service


def upstream_variables(redis: RedisServer, server: OpenAIServer) -> dict[str, str]:
    """The service's variables for the openai provider in front of the scriptable upstream."""
    return {
        "REDIS_URL": redis.url,
        "AI_PROVIDER": "openai",
        "OPENAI_BASE_URL": server.url,
        "OPENAI_API_KEY": server.api_key,
        "AI_MODEL": UPSTREAM_MODEL,
        "AI_MAX_RETRIES": "0",
        "AI_TIMEOUT": "10",
    }


@pytest.fixture(scope="module")
def simulated(node: str, shared_redis: RedisServer) -> Iterator[ServiceProcess]:
    """The service with the simulated model, on a real redis-server."""
    service = start({"REDIS_URL": shared_redis.url})
    yield service
    service.cleanup()


@pytest.fixture(scope="module")
def upstream(
    node: str, shared_redis: RedisServer, shared_model_server: OpenAIServer
) -> Iterator[ServiceProcess]:
    """The service with the openai provider, in front of the scriptable upstream."""
    service = start(upstream_variables(shared_redis, shared_model_server))
    yield service
    service.cleanup()


def run_node(node: str, service: ServiceProcess, scenario: str, *args: str, model: str = "simulated") -> Json:
    """Run `tests/node/<scenario>.mjs` against the service; its JSON result, or the test fails saying
    what the client raised (and what the service logged)."""
    command = [node, str(NODE_DIR / f"{scenario}.mjs"), "--base-url", service.url, "--model", model, *args]
    env = {name: value for name, value in os.environ.items() if not name.startswith("SERVICE_")}
    completed = subprocess.run(
        command, cwd=NODE_DIR, env=env, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT, check=False
    )
    lines = completed.stdout.strip().splitlines()
    if not lines:
        pytest.fail(f"{scenario} printed nothing (exit {completed.returncode}):\n{completed.stderr}")
    result: Json = json.loads(lines[-1])
    if not result["ok"]:
        pytest.fail(
            f"{scenario} failed: {json.dumps(result['error'], indent=1)}\n"
            f"requests: {json.dumps(result['requests'])[:2000]}\n"
            f"stderr: {completed.stderr[-2000:]}\nservice log: {service.output()[-2000:]}"
        )
    return result


def sent(result: Json, index: int = 0) -> Json:
    """The JSON body of the client's `index`-th request to the service."""
    body: Json = result["requests"][index]["body"]
    return body


def tool_schema(body: Json, name: str = WEATHER) -> Json:
    """The JSON Schema the client sent for a tool's parameters."""
    schemas: list[Json] = [
        tool["function"]["parameters"] for tool in body["tools"] if tool["function"]["name"] == name
    ]
    assert len(schemas) == 1, body["tools"]
    return schemas[0]


def schema_errors(schema: Json, instance: Any) -> list[str]:
    """Why `instance` does not match `schema` (empty when it does), by the schema's own draft."""
    validator = validator_for(schema)(schema)
    return [error.message for error in validator.iter_errors(instance)]


def assert_valid_weather_calls(calls: list[Json], schema: Json, step: Json) -> None:
    """Each call names the tool, and its input passed the SDK's zod check and passes the JSON Schema."""
    assert calls, f"no tool call; the step ended {step['rawFinishReason']!r} with text {step['text']!r}"
    for call in calls:
        assert call["name"] == WEATHER
        assert call["invalid"] is False, call["error"]
        assert schema_errors(schema, call["input"]) == []


# --- The Vercel AI SDK, simulated model --------------------------------------------------------------


def test_ai_sdk_stream_text_with_required_tool_choice_gets_a_schema_valid_tool_call(
    node: str, simulated: ServiceProcess
) -> None:
    result = run_node(node, simulated, "ai-sdk-tool-required")
    assert sent(result)["tool_choice"] == "required"
    assert result["problems"] == []
    assert_valid_weather_calls(result["toolCalls"], tool_schema(sent(result)), result["steps"][0])
    # The call streamed as tool-input parts before it was whole, and the answer ended for the tools.
    assert result["parts"]["tool-input-start"] == len(result["toolCalls"])
    assert result["parts"]["tool-input-delta"] >= 1
    assert result["finishReason"] == "tool-calls"
    assert result["steps"][0]["rawFinishReason"] == "tool_calls"


def test_ai_sdk_tool_loop_runs_the_tool_and_answers_from_its_result(
    node: str, simulated: ServiceProcess
) -> None:
    result = run_node(node, simulated, "ai-sdk-tool-loop")
    assert result["problems"] == []
    steps = result["steps"]
    assert_valid_weather_calls(steps[0]["toolCalls"], tool_schema(sent(result)), steps[0])
    assert steps[0]["finishReason"] == "tool-calls"
    assert len(steps) == 2, steps
    first, second = steps
    assert result["executed"] == [call["input"] for call in first["toolCalls"]]
    # The SDK sent the result back after the call, and the model answered with text built from it.
    tool_messages = [message for message in sent(result, 1)["messages"] if message["role"] == "tool"]
    assert [message["tool_call_id"] for message in tool_messages] == [c["id"] for c in first["toolCalls"]]
    assert second["finishReason"] == "stop"
    assert second["toolCalls"] == []
    assert STATION in second["text"]
    assert result["text"] == second["text"]
    assert result["finishReason"] == "stop"


@pytest.mark.parametrize("api", ["generateObject", "output"])
def test_ai_sdk_structured_output_returns_an_object_matching_the_schema(
    node: str, simulated: ServiceProcess, api: str
) -> None:
    result = run_node(node, simulated, "ai-sdk-object", "--api", api)
    response_format = sent(result)["response_format"]
    assert response_format["type"] == "json_schema"
    # The SDK parsed the answer and checked it against the zod schema; the JSON Schema agrees.
    assert schema_errors(response_format["json_schema"]["schema"], result["object"]) == []
    assert result["object"]["ingredients"]
    assert result["finishReason"] == "stop"


# --- The openai npm package, simulated model ---------------------------------------------------------


def test_openai_streamed_tool_calls_assemble_into_schema_valid_calls(
    node: str, simulated: ServiceProcess
) -> None:
    result = run_node(node, simulated, "openai-tools-stream")
    calls = result["toolCalls"]
    assert calls, f"no tool call; the stream ended {result['finishReason']!r} with {result['content']!r}"
    schema = tool_schema(sent(result))
    for index, call in enumerate(calls):
        assert call["index"] == index
        assert call["id"]
        assert call["type"] == "function"
        assert call["name"] == WEATHER
        assert call["input"] is not None, f"arguments are not JSON: {call['arguments']!r}"
        assert schema_errors(schema, call["input"]) == []
    assert len({call["id"] for call in calls}) == len(calls)
    assert result["finishReason"] == "tool_calls"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_openai_run_tools_calls_the_function_and_finishes_with_text(
    node: str, simulated: ServiceProcess, stream: bool
) -> None:
    result = run_node(node, simulated, "openai-run-tools", *(["--stream"] if stream else []))
    schema = tool_schema(sent(result))
    # zodFunction parsed the arguments before the function was called with them.
    assert result["called"], f"runTools never called the function: {result['completions']}"
    for arguments in result["called"]:
        assert schema_errors(schema, arguments) == []
    completions = result["completions"]
    assert completions[0]["finishReason"] == "tool_calls"
    assert completions[-1] == {"finishReason": "stop", "toolCalls": []}
    assert len(completions) == 2
    assert STATION in result["content"]


# --- The Vercel AI SDK, through the service to the scriptable upstream --------------------------------

# The upstream streams this call's arguments in several pieces, as OpenAI does.
OSLO = {"city": "Oslo", "unit": "celsius", "days": 3}


def called_upstream(call_id: str) -> Reply:
    return Reply(
        tokens=tool_call(0, WEATHER, json.dumps(OSLO), call_id=call_id, pieces=5), finish_reason="tool_calls"
    )


def test_ai_sdk_required_tool_call_through_the_openai_provider(
    node: str, upstream: ServiceProcess, model_server: OpenAIServer
) -> None:
    model_server.script(called_upstream("call_up_1"))
    result = run_node(node, upstream, "ai-sdk-tool-required", model=UPSTREAM_MODEL)
    assert result["problems"] == []
    assert [(call["name"], call["input"], call["invalid"]) for call in result["toolCalls"]] == [
        (WEATHER, OSLO, False)
    ]
    assert result["finishReason"] == "tool-calls"
    # The model got the user's tool, its schema unchanged, and the required choice.
    (received,) = model_server.requests
    assert received.body["tool_choice"] == "required"
    assert tool_schema(received.body) == tool_schema(sent(result))


def test_ai_sdk_tool_loop_through_the_openai_provider_sends_the_result_upstream(
    node: str, upstream: ServiceProcess, model_server: OpenAIServer
) -> None:
    answer = ("Light rain in Oslo", " today", f" (station {STATION}).")
    model_server.script(called_upstream("call_up_2"), Reply(tokens=answer))
    result = run_node(node, upstream, "ai-sdk-tool-loop", model=UPSTREAM_MODEL)
    assert result["problems"] == []
    assert result["executed"] == [OSLO]
    assert [step["finishReason"] for step in result["steps"]] == ["tool-calls", "stop"]
    assert result["text"] == "".join(answer)
    # On the second turn the model received its own call and the tool's result, paired by id.
    first, second = model_server.requests
    assert first.body["tool_choice"] == "auto"
    *_, call, outcome = second.body["messages"]
    assert call["role"] == "assistant"
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in call["tool_calls"]] == [
        (WEATHER, OSLO)
    ]
    assert outcome["role"] == "tool"
    assert outcome["tool_call_id"] == call["tool_calls"][0]["id"]
    assert outcome["content"] == result["toolResults"][0]["output"]
