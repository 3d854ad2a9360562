"""The Vercel AI SDK's own chat client against `/api/chat` (issue #12): `AbstractChat`, the class that
`useChat` drives, with `DefaultChatTransport`, from the Node scenarios in `tests/node-ui/`.

It sends, streams, resumes after a dropped connection, stops, and round-trips a client-side tool
result; every chunk it received is checked again with the SDK's own `uiMessageChunkSchema`. The service
runs as a process (`python app.py`) on a real redis-server, with the simulated model reasoning and paced
so that an answer lasts long enough to lose its connection or stop it in the middle.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from testkit.node import node_for
from testkit.processes import ROOT
from testkit.redis_server import RedisServer
from testkit.service import ServiceProcess

Json = dict[str, Any]

NODE_DIR = ROOT / "tests" / "node-ui"
SCRIPT_TIMEOUT = 60
# Per chunk of three words: 3 x STREAM_DELAY + CHUNK_DELAY = 0.2 s, so an answer takes a few seconds.
PACING = {"STREAM_DELAY": "0.05", "CHUNK_DELAY": "0.05"}
ALICE_KEY = "alice-key-0123456789abcdef"
BOB_KEY = "bob-key-0123456789abcdef00"
STATION = "WX-4471"  # what the scenario's tool returns: an answer built from it repeats it


@pytest.fixture(scope="module")
def node() -> str:
    return node_for(NODE_DIR)


@pytest.fixture(scope="module")
def service(node: str, shared_redis: RedisServer) -> Iterator[ServiceProcess]:
    """The service with API keys on, the simulated model reasoning, on a real redis-server."""
    process = ServiceProcess(
        {
            "REDIS_URL": shared_redis.url,
            "SIMULATED_REASONING": "true",
            "LOG_LEVEL": "WARNING",
            "API_KEYS": f"alice:{ALICE_KEY},bob:{BOB_KEY}",
            **PACING,
        }
    )
    try:
        process.start(ready="/health")
        yield process
    finally:
        process.cleanup()


def run_chat(
    node: str,
    service: ServiceProcess,
    scenario: str,
    *args: str,
    key: str = ALICE_KEY,
    chat_id: str | None = None,
) -> Json:
    """Run `tests/node-ui/<scenario>.mjs` on a chat (a new one unless given); its JSON result, or the
    test fails saying why."""
    chat_id = chat_id or f"ai-sdk-{uuid.uuid4().hex[:12]}"
    command = [node, str(NODE_DIR / f"{scenario}.mjs"), "--base-url", service.url, "--chat-id", chat_id]
    command += ["--api-key", key, *args]
    completed = subprocess.run(
        command, cwd=NODE_DIR, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT, check=False
    )
    lines = completed.stdout.strip().splitlines()
    if not lines:
        pytest.fail(f"{scenario} printed nothing (exit {completed.returncode}):\n{completed.stderr}")
    result: Json = json.loads(lines[-1])
    if not result["ok"]:
        pytest.fail(f"{scenario} failed: {result['error']}\nservice log: {service.output()[-2000:]}")
    result["chat_id"] = chat_id
    for exchange in result["exchanges"]:
        # Every chunk the client received is one of the SDK's own: re-checked with its schema.
        assert exchange["problems"] == [], exchange["problems"]
    return result


def history(service: ServiceProcess, chat_id: str) -> list[Json]:
    response = httpx.get(f"{service.url}/history/{chat_id}", headers={"X-API-Key": ALICE_KEY}, timeout=5)
    response.raise_for_status()
    turns: list[Json] = response.json()["messages"]
    return turns


def streams(result: Json) -> list[Json]:
    return [exchange for exchange in result["exchanges"] if exchange["status"] == 200]


def types(exchange: Json) -> list[str]:
    return [chunk["type"] for chunk in exchange["chunks"]]


def text_of(message: Json, kind: str = "text") -> str:
    return "".join(part["text"] for part in message["parts"] if part["type"] == kind)


def part_types(message: Json) -> list[str]:
    return [part["type"] for part in message["parts"]]


def test_chat_client_streams_an_answer_that_matches_history(node: str, service: ServiceProcess) -> None:
    result = run_chat(node, service, "chat-send")
    post, resume = result["exchanges"]
    assert (post["method"], post["path"], post["status"]) == ("POST", "/api/chat", 200)
    assert post["streamHeader"] == "v1"
    assert post["done"] is True
    assert post["body"]["trigger"] == "submit-message"
    assert post["body"]["id"] == result["chat_id"]
    assert types(post)[:3] == ["start", "start-step", "reasoning-start"]
    assert types(post)[-2:] == ["finish-step", "finish"]
    # Nothing runs once the answer has ended: the resume GET gets 204 and the chat is unchanged.
    assert (resume["method"], resume["path"], resume["status"]) == (
        "GET",
        f"/api/chat/{result['chat_id']}/stream",
        204,
    )
    assert result["status"] == "ready"
    assert result["error"] is None
    user, assistant = result["messages"]
    assert text_of(user) == "Hello there"
    turns = history(service, result["chat_id"])
    assert [turn["role"] for turn in turns] == ["user", "assistant"]
    # The UI message is the stored answer: its id, its text, its reasoning, how it ended.
    assert assistant["id"] == turns[1]["message_id"] == post["chunks"][0]["messageId"]
    assert text_of(assistant) == turns[1]["content"] != ""
    assert text_of(assistant, "reasoning") == turns[1]["reasoning"]
    assert assistant["metadata"]["finishReason"] == "stop"
    assert post["chunks"][-1]["finishReason"] == "stop"


def test_chat_client_resumes_a_dropped_answer_into_the_same_message(
    node: str, service: ServiceProcess
) -> None:
    result = run_chat(node, service, "chat-resume")
    post, resumed = result["exchanges"]
    assert post["dropped"] is True
    assert result["dropped"]["status"] == "error"
    partial = result["dropped"]["messages"][1]
    assert (resumed["method"], resumed["status"], resumed["done"]) == ("GET", 200, True)
    # The resumed stream starts from the answer's `start`, naming the same message.
    assert resumed["chunks"][0] == {"type": "start", "messageId": partial["id"]}
    assert types(resumed)[-1] == "finish"
    assert result["status"] == "ready"
    _user, assistant = result["messages"]  # replaced, not appended
    assert assistant["id"] == partial["id"]
    assert part_types(assistant) == ["step-start", "reasoning", "text"]  # no part twice
    stored = history(service, result["chat_id"])[1]
    assert text_of(assistant) == stored["content"]
    assert text_of(assistant).startswith(text_of(partial))
    assert text_of(assistant, "reasoning") == stored["reasoning"]


@pytest.mark.parametrize("via", ["post", "resume"])
def test_stop_endpoint_ends_the_stream_the_client_reads_with_abort(
    node: str, service: ServiceProcess, via: str
) -> None:
    result = run_chat(node, service, "chat-stop", "--via", via)
    assert result["stop"]["status"] == 200
    assert result["stop"]["body"]["status"] == "cancelled"
    reading = result["exchanges"][-1]
    assert reading["method"] == ("POST" if via == "post" else "GET")
    assert types(reading)[-1] == "abort"
    assert reading["done"] is True
    assert "finish" not in types(reading)
    assert result["status"] == "ready"
    assert result["error"] is None
    stored = history(service, result["chat_id"])[1]
    assert stored["finish_reason"] == "cancelled"
    assert text_of(result["messages"][1]) == stored["content"]


def assert_tool_round_trip(result: Json, service: ServiceProcess) -> None:
    (call,) = result["calls"]
    assert call["toolName"] == "get_weather"
    assert call["input"] == {"city": "Paris"}
    first, second = streams(result)[:2]
    assert types(first)[-3:] == ["tool-input-available", "finish-step", "finish"]
    assert first["chunks"][-1]["finishReason"] == "tool-calls"
    # The continuation posts the assistant message whose tool part now has its output...
    sent = second["body"]["messages"][-1]
    assert sent["role"] == "assistant"
    assert sent["id"] == first["chunks"][0]["messageId"]
    (tool_part,) = [part for part in sent["parts"] if part["type"] == "tool-get_weather"]
    assert tool_part["state"] == "output-available"
    assert tool_part["output"]["station"] == STATION
    # ...and its answer continues the same UI message, echoing the result before its own step.
    assert second["chunks"][0] == {"type": "start", "messageId": sent["id"]}
    assert second["chunks"][1] == {
        "type": "tool-output-available",
        "toolCallId": call["toolCallId"],
        "output": tool_part["output"],
    }
    _user, assistant = result["messages"]
    assert part_types(assistant) == [
        "step-start", "reasoning", "tool-get_weather", "step-start", "reasoning", "text",
    ]  # fmt: skip
    assert STATION in text_of(assistant)
    turns = history(service, result["chat_id"])
    assert [turn["role"] for turn in turns] == ["user", "assistant", "tool", "assistant"]
    assert turns[2]["tool_call_id"] == call["toolCallId"]
    assert json.loads(turns[2]["content"]) == tool_part["output"]
    assert text_of(assistant) == turns[3]["content"]


def test_client_side_tool_output_continues_the_same_message(node: str, service: ServiceProcess) -> None:
    result = run_chat(node, service, "chat-tools")
    assert len(result["exchanges"]) == 2
    assert_tool_round_trip(result, service)


def test_resumed_continuation_replays_the_earlier_step_without_running_the_tool_again(
    node: str, service: ServiceProcess
) -> None:
    result = run_chat(node, service, "chat-tools", "--drop-continuation")
    post, continuation, resumed = result["exchanges"]
    assert continuation["dropped"] is True
    assert resumed["method"] == "GET"
    assert resumed["chunks"][0] == {"type": "start", "messageId": post["chunks"][0]["messageId"]}
    # The earlier step streams its call (no second `onToolCall`: `calls` has one) and its result.
    assert "tool-input-available" not in types(resumed)
    assert types(resumed).count("start-step") == 2
    assert_tool_round_trip(result, service)


def test_another_keys_chat_gets_404_like_a_missing_one(node: str, service: ServiceProcess) -> None:
    owned = run_chat(node, service, "chat-send")
    intruder = run_chat(node, service, "chat-send", key=BOB_KEY, chat_id=owned["chat_id"])
    post, resume = intruder["exchanges"]
    assert (post["status"], resume["status"]) == (404, 404)
    assert intruder["status"] == "error"
    assert json.loads(intruder["error"])["error"]["code"] == "not_found"
    missing = httpx.get(f"{service.url}/api/chat/no-such-chat/stream", headers={"X-API-Key": BOB_KEY})
    assert (missing.status_code, missing.json()) == (404, json.loads(intruder["error"]))
    stop = httpx.post(f"{service.url}/api/chat/{owned['chat_id']}/stop", headers={"X-API-Key": BOB_KEY})
    assert stop.status_code == 404
    assert len(history(service, owned["chat_id"])) == 2  # nothing of Bob's was stored
