"""The flow tests' SSE client: the app on a real socket, a chat posted, its events read as a client reads
them, and what was stored. Used by the streaming and cluster flows."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse

from app import create_app
from config import Settings
from testkit.asgi_server import serve

__all__ = ["chunk_text", "collect", "post_chat", "running", "seqs", "stored_answer"]


@asynccontextmanager
async def running(settings: Settings, *, timeout: float) -> AsyncIterator[httpx.AsyncClient]:
    """The app on a real uvicorn server (SSE needs a real socket), and a client bound to it."""
    with serve(create_app(settings)) as base:
        async with httpx.AsyncClient(base_url=base, timeout=timeout) as client:
            yield client


async def post_chat(client: httpx.AsyncClient, session_id: str, **extra: Any) -> dict[str, Any]:
    body = {
        "session_id": session_id,
        "message": "How do streams survive dropped connections?",
        "user_id": "u1",
    }
    response = await client.post("/chat", json={**body, **extra})
    assert response.status_code in (200, 202), response.text
    result: dict[str, Any] = response.json()
    return result


async def collect(
    client: httpx.AsyncClient,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    until: Callable[[ServerSentEvent], bool] = lambda event: event.event in ("end", "answer_error"),
) -> list[ServerSentEvent]:
    """Read SSE events from `url` until `until` says stop (by default, an answer's terminal event)."""
    events: list[ServerSentEvent] = []
    async with asyncio.timeout(30), aconnect_sse(client, "GET", url, headers=dict(headers or {})) as source:
        assert source.response.headers["content-type"].startswith("text/event-stream")
        async for event in source.aiter_sse():
            events.append(event)
            if until(event):
                break
    return events


async def stored_answer(client: httpx.AsyncClient, session_id: str, message_id: str) -> dict[str, Any]:
    history = (await client.get(f"/history/{session_id}")).json()
    for turn in history["messages"]:
        if turn["role"] == "assistant" and turn["message_id"] == message_id:
            found: dict[str, Any] = turn
            return found
    raise AssertionError(f"no stored answer {message_id} in {history}")


def seqs(events: list[ServerSentEvent]) -> list[int]:
    return [int(event.json()["seq"]) for event in events if event.event != "reset"]


def chunk_text(events: list[ServerSentEvent]) -> str:
    return "".join(event.json()["content"] for event in events if event.event == "chunk")
