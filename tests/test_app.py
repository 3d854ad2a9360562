"""The HTTP API end to end, in-process, on the embedded Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx

from config import Settings
from tests.conftest import AppClient


async def wait_for_answer(client: httpx.AsyncClient, session_id: str, turns: int = 2) -> dict[str, object]:
    for _ in range(500):
        body: dict[str, object] = (await client.get(f"/history/{session_id}")).json()
        if body["count"] == turns:
            return body
        await asyncio.sleep(0.01)
    raise AssertionError(f"history of {session_id} never reached {turns} turns")


async def test_seed_walkthrough_health_chat_history(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    async with app_client(make_settings()) as client:
        health = await client.get("/health")
        assert health.status_code == 200
        assert health.json()["status"] == "healthy"
        assert health.json()["redis"]["mode"] == "embedded"

        accepted = await client.post(
            "/chat", json={"session_id": "test123", "message": "Hello!", "user_id": "user1"}
        )
        assert accepted.status_code == 202
        body = accepted.json()
        assert body["status"] == "streaming"
        assert body["session_id"] == "test123"
        assert body["channel"] == "chat:test123"

        history = await wait_for_answer(client, "test123")
        messages = history["messages"]
        assert isinstance(messages, list)
        assert [m["role"] for m in messages] == ["user", "assistant"]
        assert messages[0]["content"] == "Hello!"
        assert messages[1]["message_id"] == body["message_id"]
        assert messages[1]["finish_reason"] == "stop"
