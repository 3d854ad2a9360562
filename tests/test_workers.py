"""`python app.py` with WEB_CONCURRENCY: several worker processes on one port, every feature intact."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable

import httpx
import pytest
from httpx_sse import aconnect_sse

from tests.conftest import ROOT, RedisServer, ServiceProcess

pytestmark = pytest.mark.redis

BODY = {"message": "How do workers share a stream?", "user_id": "u1"}


async def answer_events(client: httpx.AsyncClient, session_id: str, message_id: str) -> list[str]:
    kinds: list[str] = []
    url = f"/stream/{session_id}?message_id={message_id}"
    async with asyncio.timeout(30), aconnect_sse(client, "GET", url) as source:
        async for event in source.aiter_sse():
            kinds.append(event.event)
            if event.event in ("end", "error"):
                break
    return kinds


async def test_two_workers_stream_stop_and_deduplicate_across_processes(
    redis_server: RedisServer, start_service: Callable[..., ServiceProcess]
) -> None:
    service = start_service(REDIS_URL=redis_server.url, WEB_CONCURRENCY="2", STREAM_DELAY="0.02")
    limits = httpx.Limits(max_keepalive_connections=0)  # a new connection each time: either worker
    async with httpx.AsyncClient(base_url=service.url, timeout=20, limits=limits) as client:
        accepted = [
            (await client.post("/chat", json={**BODY, "session_id": f"w{n}"})).json() for n in range(6)
        ]
        streams = await asyncio.gather(
            *(answer_events(client, f"w{n}", item["message_id"]) for n, item in enumerate(accepted))
        )
        for kinds in streams:
            assert kinds[0] == "start"
            assert kinds[-1] == "end"

        slow = (await client.post("/chat", json={**BODY, "session_id": "stop"})).json()
        stopped = await client.post(f"/chat/{slow['message_id']}/cancel")
        assert stopped.status_code == 200
        assert stopped.json()["status"] == "cancelled"

        body = {**BODY, "session_id": "twice", "message_id": "6f1c3f7e-8a49-4d0e-9b8e-2f7f5a1c9d10"}
        replies = await asyncio.gather(*(client.post("/chat", json=body) for _ in range(4)))
        statuses = sorted(reply.status_code for reply in replies)
        assert statuses == [200, 200, 200, 202]

    # Both workers served: each logs its own start.
    assert service.output().count("ai-chat-service 1.0.0 started") == 2


def test_more_than_one_worker_needs_a_redis_server() -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith(("REDIS_", "WEB_"))}
    result = subprocess.run(
        [sys.executable, str(ROOT / "app.py")],
        env={**env, "WEB_CONCURRENCY": "2"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "WEB_CONCURRENCY" in result.stderr
    assert "Traceback" not in result.stderr
