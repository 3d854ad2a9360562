"""One answer through every protocol (issue #12): started through the Responses API, followed at once
through the native SSE stream and the AI SDK's resume, stopped through `POST /chat/{id}/cancel`; all of
them see the same terminal state and the same content, as history stores it. The service runs as a
process on a real redis-server, the simulated model paced so that the answer is stopped mid-way."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse
from openai import AsyncOpenAI

from testkit.node import node_for
from testkit.processes import ROOT
from testkit.redis_server import RedisServer
from testkit.service import ServiceProcess
from testkit.waiting import eventually

Json = dict[str, Any]
NODE_DIR = ROOT / "tests" / "node-ui"
# A three-word chunk every 0.35 s: the answer lasts several seconds, time enough to join and stop it.
PACING = {"STREAM_DELAY": "0.1", "CHUNK_DELAY": "0.05"}


@pytest.fixture
def service(shared_redis: RedisServer) -> Iterator[ServiceProcess]:
    process = ServiceProcess({"REDIS_URL": shared_redis.url, "LOG_LEVEL": "WARNING", **PACING})
    try:
        process.start(ready="/health")
        yield process
    finally:
        process.cleanup()


async def follow_native(base_url: str, session_id: str, message_id: str, seen: list[Json]) -> None:
    """The answer's events on the native SSE stream, from its start to its end."""
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=30) as client,
        aconnect_sse(client, "GET", f"/stream/{session_id}", params={"message_id": message_id}) as source,
    ):
        async for event in source.aiter_sse():
            seen.append(json.loads(event.data))


async def follow_ai_sdk(node: str, base_url: str, session_id: str, ready: Path) -> Json:
    """The AI SDK chat client resuming the chat (`useChat({ resume: true })`); its JSON report."""
    process = await asyncio.create_subprocess_exec(
        node,
        str(NODE_DIR / "chat-follow.mjs"),
        "--base-url",
        base_url,
        "--chat-id",
        session_id,
        "--ready-file",
        str(ready),
        cwd=NODE_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    lines = stdout.decode().strip().splitlines()
    assert lines, f"chat-follow printed nothing: {stderr.decode()}"
    result: Json = json.loads(lines[-1])
    assert result["ok"], result
    return result


async def test_an_answer_started_through_responses_is_followed_and_stopped_through_the_others(
    service: ServiceProcess, tmp_path: Path
) -> None:
    node = node_for(NODE_DIR)
    client = AsyncOpenAI(base_url=f"{service.url}/v1", api_key="unused")
    started = await client.responses.create(
        model="simulated", input="Tell me about streaming answers to many frontends", background=True
    )
    assert started.status == "in_progress"
    message_id = str(uuid.UUID(started.id.removeprefix("resp_")))
    session_id = started.id  # a new conversation's session is named like its first response

    native: list[Json] = []
    ready = tmp_path / "ai-sdk-reading"
    following = asyncio.create_task(follow_native(service.url, session_id, message_id, native))
    resuming = asyncio.create_task(follow_ai_sdk(node, service.url, session_id, ready))

    async def both_reading() -> bool:
        return ready.exists() and any(event["type"] == "chunk" for event in native)

    await eventually(both_reading, "the SSE and AI SDK clients both read the answer")

    async with httpx.AsyncClient(base_url=service.url, timeout=10) as http:
        stopped = (await http.post(f"/chat/{message_id}/cancel")).json()
        await asyncio.wait_for(following, timeout=30)
        ai_sdk = await resuming
        turns = (await http.get(f"/history/{session_id}")).json()["messages"]
    retrieved = await client.responses.retrieve(started.id)
    replayed = [event async for event in await client.responses.retrieve(started.id, stream=True)]
    await client.close()

    stored = next(t for t in turns if t["role"] == "assistant" and t["message_id"] == message_id)
    content = stored["content"]
    assert content
    assert stored["finish_reason"] == "cancelled"
    assert stopped["status"] == "cancelled"
    # The native stream: the whole answer, ended as stored.
    assert native[-1]["type"] == "end"
    assert (native[-1]["finish_reason"], native[-1]["content"]) == ("cancelled", content)
    # The AI SDK: the resumed stream ends with `abort`, its message holds the same text.
    chunks = [chunk for exchange in ai_sdk["exchanges"] for chunk in exchange["chunks"]]
    assert chunks[-1]["type"] == "abort"
    message = ai_sdk["messages"][-1]
    assert "".join(p["text"] for p in message["parts"] if p["type"] == "text") == content
    # The Responses API: the object and its replayed stream say the same.
    assert (retrieved.status, retrieved.output_text) == ("cancelled", content)
    assert replayed[-1].type == "response.incomplete"
    assert replayed[-1].response.status == "cancelled"
