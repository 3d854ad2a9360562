"""SIGTERM with answers running and SSE clients connected, on a real uvicorn process (issue #5, item 8)."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import pytest
import redis

from testkit.redis_server import RedisServer
from testkit.service import ServiceProcess
from testkit.waiting import eventually_sync

pytestmark = pytest.mark.redis

GRACE = 2.0


def test_sigterm_with_sse_clients_exits_within_grace_and_stores_every_answer(
    redis_server: RedisServer,
) -> None:
    service = ServiceProcess(
        {
            "REDIS_URL": redis_server.url,
            "SHUTDOWN_GRACE_SECONDS": str(GRACE),
            # About twelve seconds per answer: far longer than the grace period.
            "STREAM_DELAY": "0",
            "CHUNK_DELAY": "1",
            "SSE_PING_SECONDS": "1",
        }
    )
    closed: list[str] = []
    connected: set[str] = set()

    def follow(path: str) -> None:
        try:
            with httpx.stream("GET", f"{service.url}{path}", timeout=30) as response:
                connected.add(path)
                for _ in response.iter_lines():
                    pass
        except httpx.HTTPError:
            pass
        closed.append(path)

    try:
        service.start()
        accepted = [
            httpx.post(
                f"{service.url}/chat",
                json={"session_id": f"bye{index}", "message": "Tell me a long story", "user_id": "u"},
                timeout=5,
            ).json()
            for index in range(4)
        ]
        paths = [body["stream_url"] for body in accepted] + [f"/stream/bye{index}" for index in range(4)]
        readers = [threading.Thread(target=follow, args=(path,), daemon=True) for path in paths]
        for reader in readers:
            reader.start()

        def midway() -> bool:
            with redis.Redis.from_url(redis_server.url) as client:
                for body in accepted:
                    events = client.xrange(f"chat:{{{body['session_id']}}}:events")
                    if not any(json.loads(fields[b"e"])["type"] == "chunk" for _, fields in events):
                        return False
            return True

        eventually_sync(lambda: connected == set(paths), "every SSE client is connected")
        eventually_sync(midway, "every answer has written a chunk")

        started = time.monotonic()
        service.terminate()
        code = service.wait(timeout=GRACE + 10)
        elapsed = time.monotonic() - started
        for reader in readers:
            reader.join(timeout=5)
        log = service.output()
    finally:
        service.cleanup()

    # uvicorn re-raises the signal once it has shut down, so the exit status is SIGTERM's.
    assert code in (0, -signal.SIGTERM), log
    assert "ai-chat-service stopped" in log
    assert "Traceback" not in log
    assert "Task was destroyed" not in log
    # Within the grace period, and the seconds a process takes to exit on a loaded machine; waiting for
    # the answers would take ten more at least (each has twelve chunks a second apart, one written).
    assert elapsed <= GRACE + 5, f"took {elapsed:.1f}s to exit"
    assert sorted(closed) == sorted(paths), "an SSE client was left hanging"
    with redis.Redis.from_url(redis_server.url) as client:
        for body in accepted:
            session_id = body["session_id"]
            turns = [json.loads(raw) for raw in client.lrange(f"chat:{{{session_id}}}:history", 0, -1)]
            assert [turn["role"] for turn in turns] == ["user", "assistant"]
            assert turns[1]["finish_reason"] == "shutdown"
            assert turns[1]["content"]  # what was written before the end is kept
            events = [
                json.loads(fields[b"e"]) for _, fields in client.xrange(f"chat:{{{session_id}}}:events")
            ]
            assert events[-1]["type"] == "error"
            assert events[-1]["error"]["code"] == "shutdown"
            assert client.hget(f"chat:message:{{{body['message_id']}}}", "status") == b"failed"
