"""Redis faults on a real redis-server: killed, restarted, paused, full, and subscribers dropped
(issue #5, item 7). Each test owns its server, so it may do anything to it."""

from __future__ import annotations

import asyncio
import functools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis

from config import Settings
from testkit.redis_server import RedisServer, start_redis
from testkit.service import ServiceProcess
from testkit.waiting import eventually, eventually_sync
from tests.conftest import AppClient

pytestmark = pytest.mark.redis


@pytest.fixture
def durable_redis() -> Iterator[RedisServer]:
    """A redis-server that keeps every write across a SIGKILL (append-only file, fsync always)."""
    server = start_redis("--appendonly", "yes", "--appendfsync", "always")
    yield server
    server.cleanup()


def chat(session_id: str, message: str = "Tell me about resilience") -> dict[str, str]:
    return {"session_id": session_id, "message": message, "user_id": "u1"}


def log_events(server: RedisServer, session_id: str) -> list[dict[str, Any]]:
    """Every event in the session's replay log, read straight from Redis."""
    with redis.Redis.from_url(server.url) as client:
        entries = client.xrange(f"chat:{{{session_id}}}:events")
    return [json.loads(fields[b"e"]) for _, fields in entries]


async def test_sigkill_and_restart_during_50_answers(
    make_settings: Callable[..., Settings], app_client: AppClient, durable_redis: RedisServer
) -> None:
    settings = make_settings(redis_url=durable_redis.url, redis_timeout=1.0, chunk_delay=0.05)
    async with app_client(settings) as client:
        accepted = await asyncio.gather(
            *(client.post("/chat", json=chat(f"k{index}")) for index in range(50))
        )
        assert [response.status_code for response in accepted] == [202] * 50

        durable_redis.stop(kill=True)
        started = time.monotonic()
        refused = await client.post("/chat", json=chat("during"))
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "redis_unavailable"
        # Bounded by REDIS_TIMEOUT, with a loaded machine's slack.
        assert time.monotonic() - started < settings.redis_timeout + 2.5
        durable_redis.start()

        async def healthy() -> bool:
            return (await client.get("/health")).status_code == 200

        await eventually(
            healthy, "ready again once Redis is back, no restart", timeout=30, ignoring=(httpx.HTTPError,)
        )
        assert (await client.post("/chat", json=chat("after"))).status_code == 202

        async def all_ended() -> bool:
            for response in accepted:
                state = (await client.get(f"/history/{response.json()['session_id']}")).json()
                if state["count"] < 2:
                    return False
            return True

        await eventually(all_ended, "every accepted answer ended", timeout=30, ignoring=(httpx.HTTPError,))
        for response in accepted:
            session_id = response.json()["session_id"]
            turns = (await client.get(f"/history/{session_id}")).json()["messages"]
            # The user turn of every accepted chat is there, and its answer ended one way or the other.
            assert turns[0]["role"] == "user"
            assert turns[0]["content"] == "Tell me about resilience"
            assert turns[1]["role"] == "assistant"
            assert turns[1]["finish_reason"] in ("stop", "error")
            events = [e for e in log_events(durable_redis, session_id) if e["type"] != "start"]
            assert events[-1]["type"] in ("end", "error")
            assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


async def test_oom_refuses_chats_with_503_and_leaves_no_half_written_turn(
    make_settings: Callable[..., Settings], app_client: AppClient, own_redis: RedisServer
) -> None:
    async with app_client(make_settings(redis_url=own_redis.url)) as client:
        assert (await client.post("/chat", json=chat("full"))).status_code == 202

        async def answered() -> bool:
            return bool((await client.get("/history/full")).json()["count"] == 2)

        await eventually(answered, "the first answer is stored")
        own_redis.cli("CONFIG", "SET", "maxmemory-policy", "noeviction")
        own_redis.cli("CONFIG", "SET", "maxmemory", "1")
        refused = await client.post("/chat", json=chat("full", "This one does not fit"))
        assert refused.status_code == 503
        assert refused.json()["error"] == {
            "code": "redis_unavailable",
            "message": "Service temporarily unavailable: Redis is out of memory",
        }
        history = (await client.get("/history/full")).json()
        assert history["count"] == 2
        assert "This one does not fit" not in json.dumps(history)

        own_redis.cli("CONFIG", "SET", "maxmemory", "0")
        assert (await client.post("/chat", json=chat("full", "Room again"))).status_code == 202


async def test_client_pause_is_ridden_out_or_ended_with_an_error_event(
    make_settings: Callable[..., Settings], app_client: AppClient, own_redis: RedisServer
) -> None:
    settings = make_settings(redis_url=own_redis.url, redis_timeout=1.0, chunk_delay=0.05)
    async with app_client(settings) as client:
        accepted = await asyncio.gather(
            *(client.post("/chat", json=chat(f"p{index}")) for index in range(10))
        )
        assert [response.status_code for response in accepted] == [202] * 10
        own_redis.cli("CLIENT", "PAUSE", "5000", "ALL")
        started = time.monotonic()
        refused = await client.post("/chat", json=chat("paused"))
        assert refused.status_code == 503
        assert time.monotonic() - started < settings.redis_timeout + 2.5, "waited out the 5-s pause"

        async def ready() -> bool:
            return (await client.get("/health")).status_code == 200

        await eventually(ready, "ready again after the pause", timeout=30, ignoring=(httpx.HTTPError,))
        assert (await client.post("/chat", json=chat("resumed"))).status_code == 202

        async def ended() -> bool:
            counts = [(await client.get(f"/history/p{index}")).json()["count"] for index in range(10)]
            return all(count == 2 for count in counts)

        await eventually(ended, "every answer ended", timeout=30, ignoring=(httpx.HTTPError,))
        for index in range(10):
            events = log_events(own_redis, f"p{index}")
            terminal = [e for e in events if e["type"] in ("end", "error")]
            assert len(terminal) == 1, events
            assert events[-1]["type"] in ("end", "error")


# --- Through SSE, with the service as a real process -----------------------------------------------


def sse_events(
    service: ServiceProcess, path: str, *, seconds: float = 20, opened: threading.Event | None = None
) -> list[dict[str, Any]]:
    """Read an SSE stream to its end; return each event's data. Sets `opened` once the response began."""
    events: list[dict[str, Any]] = []
    with httpx.stream("GET", f"{service.url}{path}", timeout=seconds) as response:
        assert response.status_code == 200
        if opened is not None:
            opened.set()
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: ") :]))
    return events


def assert_complete(events: list[dict[str, Any]], history: dict[str, Any]) -> None:
    """The stream has one answer, with contiguous seq, whose chunks add up to what history stored."""
    assert [event["seq"] for event in events] == list(range(len(events))), [e["type"] for e in events]
    assert events[0]["type"] == "start"
    assert events[-1]["type"] == "end"
    text = "".join(event["content"] for event in events if event["type"] == "chunk")
    assert text == events[-1]["content"] == history["messages"][-1]["content"]


def test_three_pubsub_kills_lose_no_event_for_sse_clients(own_redis: RedisServer) -> None:
    # Answers of over 3 s (11 chunks, 0.3 s apart): the three kills need the answers still running once
    # every client has connected, and at 0.1 s apart a loaded machine (CI) once connected them too late.
    service = ServiceProcess(
        {"REDIS_URL": own_redis.url, "STREAM_DELAY": "0", "CHUNK_DELAY": "0.3", "LOG_LEVEL": "WARNING"}
    )
    try:
        service.start()
        accepted = [
            httpx.post(f"{service.url}/chat", json=chat(f"kill{index}"), timeout=5).json()
            for index in range(5)
        ]

        opened = [threading.Event() for _ in accepted]

        def logged() -> int:
            return sum(len(log_events(own_redis, body["session_id"])) for body in accepted)

        async def reached(events: int) -> bool:
            return await asyncio.to_thread(logged) >= events

        async def killer() -> None:
            # Every client is following, then each kill lands while the answers are still being
            # written: after a few more events reached the logs, never after all of them ended.
            await eventually(
                lambda: asyncio.to_thread(lambda: all(event.is_set() for event in opened)),
                "every SSE client is connected",
            )
            for _ in range(3):
                target = await asyncio.to_thread(logged) + len(accepted)
                await eventually(
                    functools.partial(reached, target), "the answers have moved on since the last kill"
                )
                own_redis.cli("CLIENT", "KILL", "TYPE", "pubsub")

        async def follow_all() -> list[list[dict[str, Any]]]:
            results = await asyncio.gather(
                *(
                    asyncio.to_thread(sse_events, service, body["stream_url"], opened=event)
                    for body, event in zip(accepted, opened, strict=True)
                ),
                killer(),
            )
            return [result for result in results if result is not None]

        streams = asyncio.run(follow_all())
        for body, events in zip(accepted, streams, strict=True):
            history = httpx.get(f"{service.url}/history/{body['session_id']}", timeout=5).json()
            assert_complete(events, history)
        assert httpx.get(f"{service.url}/health", timeout=5).status_code == 200
    finally:
        service.terminate()
        service.cleanup()


def test_a_slow_sse_reader_past_the_pubsub_buffer_limit_gets_every_event(own_redis: RedisServer) -> None:
    # Redis drops a subscriber whose unread output passes 4 KB; the SSE client's own queue holds 10
    # events and its socket a few KB: both fall behind, and the replay log must make up for it.
    own_redis.cli("CONFIG", "SET", "client-output-buffer-limit", "pubsub 4kb 2kb 1")
    service = ServiceProcess(
        {
            "REDIS_URL": own_redis.url,
            "STREAM_DELAY": "0",
            "CHUNK_DELAY": "0",
            "SSE_QUEUE_LIMIT": "10",
            "SSE_PING_SECONDS": "0.2",
            "LOG_LEVEL": "WARNING",
        }
    )
    try:
        service.start()
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting, to count
            sock.connect(("127.0.0.1", service.port))
            sock.sendall(b"GET /stream/slow HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n")
            sock.settimeout(10)
            received = b""
            # The first ping comes from the stream's loop: from then on it follows the session live.
            while b": ping" not in received:
                received += sock.recv(4096)
            answers = 40
            for index in range(answers):
                message = f"Question {index} about throughput, buffers and backpressure in streaming"
                response = httpx.post(f"{service.url}/chat", json=chat("slow", message), timeout=10)
                assert response.status_code == 202
            # Not reading (the subject of this test) until every answer has ended and everything has
            # piled up behind us: in our socket, the service's queue and Redis's output buffer.
            eventually_sync(
                lambda: httpx.get(f"{service.url}/history/slow", timeout=5).json()["count"] == 2 * answers,
                "every answer is stored",
            )
            deadline = time.monotonic() + 30
            while received.count(b"event: end") < answers and time.monotonic() < deadline:
                received += sock.recv(65536)
            # The last `end` line may have come without its data line: read to the event's blank line.
            while not received.endswith(b"\r\n\r\n") and time.monotonic() < deadline:
                received += sock.recv(65536)
        history = httpx.get(f"{service.url}/history/slow", timeout=5).json()
        assert history["count"] == 2 * answers
        events = [
            json.loads(line[len(b"data: ") :])
            for line in received.split(b"\r\n")
            if line.startswith(b"data: ") and b'"type"' in line
        ]
        by_answer: dict[str, list[dict[str, Any]]] = {}
        for event in events:
            by_answer.setdefault(event["message_id"], []).append(event)
        assert len(by_answer) == answers
        answers_in_history = [turn for turn in history["messages"] if turn["role"] == "assistant"]
        for turn in answers_in_history:
            assert_complete(by_answer[turn["message_id"]], {"messages": [turn]})
    finally:
        service.terminate()
        service.cleanup()
