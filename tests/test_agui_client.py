"""AG-UI driven by its own client: `@ag-ui/client`'s `HttpAgent` (pinned in `tests/node-agui/`) runs
an agent turn with a tool call and its result, and reconnects to a running answer with `connectAgent()`,
against the service as a process on a real redis-server with the simulated model.

The client verifies every event against the protocol's rules as it applies them (`verifyEvents`): a
stream that breaks them fails the scenario.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from testkit.node import node_for
from testkit.processes import ROOT
from testkit.redis_server import RedisServer
from testkit.service import ServiceProcess
from testkit.waiting import eventually_sync

Json = dict[str, Any]

NODE_DIR = ROOT / "tests" / "node-agui"
SCRIPT_TIMEOUT = 60


@pytest.fixture(scope="module")
def node() -> str:
    return node_for(NODE_DIR)


def start(**variables: str) -> ServiceProcess:
    service = ServiceProcess({"LOG_LEVEL": "WARNING", **variables})
    try:
        service.start(ready="/health")
    except BaseException:
        service.cleanup()
        raise
    return service


@pytest.fixture(scope="module")
def instant(node: str, shared_redis: RedisServer) -> Iterator[ServiceProcess]:
    """The simulated model answering at once."""
    service = start(REDIS_URL=shared_redis.url, STREAM_DELAY="0", CHUNK_DELAY="0")
    yield service
    service.cleanup()


@pytest.fixture(scope="module")
def paced(node: str, shared_redis: RedisServer) -> Iterator[ServiceProcess]:
    """The simulated model writing an answer over about ten seconds, so that a client started on a
    loaded machine still joins it while it runs."""
    service = start(REDIS_URL=shared_redis.url, STREAM_DELAY="0", CHUNK_DELAY="0.6")
    yield service
    service.cleanup()


def run_node(node: str, service: ServiceProcess, scenario: str, thread: str) -> Json:
    """Run `tests/node-agui/<scenario>.mjs`; its JSON result, or the test fails with what it raised."""
    command = [node, str(NODE_DIR / f"{scenario}.mjs"), "--base-url", service.url, "--thread", thread]
    completed = subprocess.run(
        command, cwd=NODE_DIR, env=dict(os.environ), capture_output=True, text=True, timeout=SCRIPT_TIMEOUT
    )
    lines = completed.stdout.strip().splitlines()
    if not lines:
        pytest.fail(f"{scenario} printed nothing (exit {completed.returncode}):\n{completed.stderr}")
    result: Json = json.loads(lines[-1])
    if not result["ok"]:
        pytest.fail(
            f"{scenario} failed: {json.dumps(result['error'])}\nstderr: {completed.stderr[-2000:]}\n"
            f"service log: {service.output()[-2000:]}"
        )
    return result


def squeezed(events: list[Json]) -> list[str]:
    names = [event["type"] for event in events]
    return [name for index, name in enumerate(names) if index == 0 or names[index - 1] != name]


def test_http_agent_runs_a_tool_call_turn_then_the_tool_result_turn(
    node: str, instant: ServiceProcess
) -> None:
    result = run_node(node, instant, "tool-turn", "node-tools")

    assert result["call"]["name"] == "get_weather"
    assert result["call"]["arguments"] == {"city": "Kyoto"}
    assert squeezed(result["firstEvents"]) == [
        "RUN_STARTED",
        "TOOL_CALL_START",
        "TOOL_CALL_ARGS",
        "TOOL_CALL_END",
        "RUN_FINISHED",
    ]
    assert result["firstResult"]["finishReason"] == "tool_calls"
    assert squeezed(result["secondEvents"]) == [
        "RUN_STARTED",
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",
        "RUN_FINISHED",
    ]
    assert result["secondResult"]["finishReason"] == "stop"
    assert "WX-4471" in result["answer"]  # the answer is built from the tool's result
    history = httpx.get(f"{instant.url}/history/node-tools").json()["messages"]
    assert [turn["role"] for turn in history] == ["user", "assistant", "tool", "assistant"]
    assert history[1]["tool_calls"][0]["id"] == result["call"]["id"]
    assert history[3]["content"] == result["answer"]
    # The client's messages after both runs: its own, and the answers named by their message ids.
    assert [(m["role"], m["id"]) for m in result["messages"] if m["role"] == "assistant"] == [
        ("assistant", history[1]["message_id"]),
        ("assistant", history[3]["message_id"]),
    ]


def _first_chunk(service: ServiceProcess, thread: str, message_id: str) -> None:
    """Wait, through the native SSE stream, until the answer has written its first text."""
    url = f"{service.url}/stream/{thread}?message_id={message_id}"
    with httpx.stream("GET", url, timeout=30) as response:
        for line in response.iter_lines():
            if line == "event: chunk":
                return
    pytest.fail("the answer ended before its first chunk")


def test_connect_agent_gets_the_thread_snapshot_then_the_running_answer(
    node: str, paced: ServiceProcess
) -> None:
    chat = {"session_id": "node-reload", "message": "Tell me about tea", "user_id": "u1"}
    message_id = httpx.post(f"{paced.url}/chat", json=chat).json()["message_id"]
    _first_chunk(paced, "node-reload", message_id)

    result = run_node(node, paced, "reconnect", "node-reload")

    events = result["events"]
    assert squeezed(events)[:2] == ["RUN_STARTED", "MESSAGES_SNAPSHOT"]
    assert squeezed(events)[-4:] == [
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",
        "RUN_FINISHED",
    ]
    assert events[0]["runId"] == message_id  # it joined the answer that was running
    assert [m["role"] for m in events[1]["messages"]] == ["user"]

    def stored() -> Json | None:
        turns: list[Json] = httpx.get(f"{paced.url}/history/node-reload").json()["messages"]
        return turns[-1] if turns[-1]["role"] == "assistant" else None

    answer = eventually_sync(stored, "the answer is stored")
    # The whole answer, each piece once: what the snapshot lacked came from the log, then live.
    assert [m for m in result["messages"] if m["role"] == "assistant"] == [
        {"id": message_id, "role": "assistant", "content": answer["content"]}
    ]
