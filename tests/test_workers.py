"""`python app.py` with WEB_CONCURRENCY: several worker processes on one port, every feature intact."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from httpx_sse import aconnect_sse
from prometheus_client.multiprocess import MultiProcessCollector

from testkit.processes import ROOT
from testkit.redis_server import RedisServer
from testkit.service import ServiceProcess
from testkit.waiting import eventually

pytestmark = pytest.mark.redis

BODY = {"message": "How do workers share a stream?", "user_id": "u1"}
STREAM_ROUTE = "/stream/{session_id}"


async def answer_events(client: httpx.AsyncClient, session_id: str, message_id: str) -> list[str]:
    kinds: list[str] = []
    url = f"/stream/{session_id}?message_id={message_id}"
    async with asyncio.timeout(30), aconnect_sse(client, "GET", url) as source:
        async for event in source.aiter_sse():
            kinds.append(event.event)
            if event.event in ("end", "answer_error"):
                break
    return kinds


def requests_served(counter_file: Path) -> dict[str, float]:
    """What one worker counted in its own prometheus-client file: HTTP requests by route template."""
    served: dict[str, float] = {}
    merged = MultiProcessCollector.merge([str(counter_file)], accumulate=True)  # type: ignore[no-untyped-call]
    for metric in merged:
        for sample in metric.samples:
            if sample.name == "chat_http_requests_total":
                route = sample.labels["route"]
                served[route] = served.get(route, 0) + sample.value
    return served


def served_by_worker(metrics_dir: Path) -> dict[int, dict[str, float]]:
    """Requests by route, for each worker process (prometheus-client names each file with its pid)."""
    return {
        int(path.stem.removeprefix("counter_")): requests_served(path)
        for path in metrics_dir.glob("counter_*.db")
    }


async def test_two_workers_stream_stop_and_deduplicate_across_processes(
    redis_server: RedisServer, start_service: Callable[..., ServiceProcess], tmp_path: Path
) -> None:
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    service = start_service(
        REDIS_URL=redis_server.url,
        WEB_CONCURRENCY="2",
        STREAM_DELAY="0.05",  # answers of about 2.5 s: the cancel below comes while one runs
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    )
    limits = httpx.Limits(max_keepalive_connections=0)  # a new connection each time: either worker
    async with httpx.AsyncClient(base_url=service.url, timeout=20, limits=limits) as client:

        async def answer_sessions(sessions: list[str]) -> None:
            """Chats for these sessions at once, then each answer followed to its end at once."""
            accepted = await asyncio.gather(
                *(client.post("/chat", json={**BODY, "session_id": session}) for session in sessions)
            )
            assert {reply.status_code for reply in accepted} == {202}
            streams = await asyncio.gather(
                *(
                    answer_events(client, session, reply.json()["message_id"])
                    for session, reply in zip(sessions, accepted, strict=True)
                )
            )
            for kinds in streams:
                assert kinds[0] == "start"
                assert kinds[-1] == "end"

        await answer_sessions([f"w{n}" for n in range(6)])

        slow = (await client.post("/chat", json={**BODY, "session_id": "stop"})).json()
        stopped = await client.post(f"/chat/{slow['message_id']}/cancel")
        assert stopped.status_code == 200
        assert stopped.json()["status"] == "cancelled"

        body = {**BODY, "session_id": "twice", "message_id": "6f1c3f7e-8a49-4d0e-9b8e-2f7f5a1c9d10"}
        replies = await asyncio.gather(*(client.post("/chat", json=body) for _ in range(4)))
        statuses = sorted(reply.status_code for reply in replies)
        assert statuses == [200, 200, 200, 202]

        # Both workers served: each counted, in its own file, chats it accepted and streams it served.
        # Which worker accepts a connection is the kernel's choice, so more rounds of fresh connections
        # are sent until both have (a budget of rounds, not a wait for time).
        rounds = iter(range(10))

        async def both_served() -> bool:
            served = served_by_worker(metrics_dir)
            if len(served) == 2 and all(
                routes.get("/chat") and routes.get(STREAM_ROUTE) for routes in served.values()
            ):
                return True
            round_ = next(rounds)
            await answer_sessions([f"r{round_}-{n}" for n in range(8)])
            return False

        await eventually(both_served, "both workers served chats and streams", timeout=60)

    served = served_by_worker(metrics_dir)
    assert set(served) <= set(service.worker_pids()), "the counts come from this service's workers"
    assert len(served) == 2
    # Each worker logs its own start.
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
