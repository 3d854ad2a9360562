"""Answers end for certain, and sessions keep their owner while they live (issue #13, items 4 and 5):
against a real redis-server that refuses writes for a while, and a real service process killed
mid-answer."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from functools import partial
from typing import Any, cast

import httpx
import pytest

from admission.errors import SessionForbidden
from admission.keys import Principal
from ai_service import AnswerFinished
from models import ChatRequest
from stores.replay_log import Entry
from testkit.redis_server import RedisServer
from testkit.service import ServiceProcess
from testkit.waiting import eventually, eventually_sync
from tests.chat_harness import KEYS, Harness, RunService, ScriptedSource

pytestmark = pytest.mark.redis

KEY = "k" * 32


async def submit(harness: Harness, session_id: str, message_id: str | None = None) -> str:
    request = ChatRequest.model_validate(
        {"session_id": session_id, "message": "Hi", "user_id": "user1", "message_id": message_id}
    )
    accepted, _ = await harness.service.submit(request)
    return accepted.message_id


async def test_another_key_cannot_take_a_session_over_while_its_answer_outlasts_the_ttl(
    run_service: RunService, redis_server: RedisServer
) -> None:
    hold = asyncio.Event()
    async with run_service(
        ScriptedSource(["partial"], hold=hold),
        redis_url=redis_server.url,
        chat_history_ttl=3,  # renewed every second: a loaded machine's stall does not let it lapse
        api_keys={"alice": KEY, "mallory": KEY[::-1] + "m"},
    ) as harness:
        admission = harness.services.admission
        await admission.claim_session(Principal("alice"), "s1")
        message_id = await submit(harness, "s1")
        for _ in range(3):
            # A key written now with the session's TTL: once it is gone, so would be an owner record (or
            # a history) that nothing refreshed while the answer ran.
            await harness.redis.set("marker", b"1", ex=3)
            await eventually(
                lambda: _gone(harness, "marker"), "a key with the session's TTL has expired", timeout=30
            )
            with pytest.raises(SessionForbidden):
                await admission.claim_session(Principal("mallory"), "s1")
        hold.set()

        async def answered() -> bool:
            state = await harness.services.answers.get(message_id)
            return state is not None and state.status == "completed"

        await eventually(answered, "the answer is stored")
        assert [turn.role for turn in await harness.history.read("s1")] == ["user", "assistant"]
        assert await admission.owners.owns("s1", "alice")


async def _gone(harness: Harness, key: str) -> bool:
    return not await harness.redis.exists(key)


async def test_answers_that_could_not_write_their_end_while_redis_refused_writes_are_ended_as_lost(
    run_service: RunService, own_redis: RedisServer
) -> None:
    hold = asyncio.Event()
    async with run_service(
        ScriptedSource(["partial ", "answer"], hold=hold),
        redis_url=own_redis.url,
        redis_timeout=0.5,
        answer_lease_seconds=1,
        answer_sweep_seconds=0.1,
        end_retry_seconds=0.2,
    ) as harness:
        sessions = [f"s{index}" for index in range(5)]
        message_ids = [await submit(harness, session) for session in sessions]

        async def all_written() -> bool:
            lengths = [await harness.redis.xlen(KEYS.events(session)) for session in sessions]
            return all(length == 3 for length in lengths)  # start and both chunks

        await eventually(all_written, "every answer has written its chunks")
        # Redis refuses every write that needs memory (a full Redis with noeviction) while they end.
        own_redis.cli("CONFIG", "SET", "maxmemory-policy", "noeviction")
        own_redis.cli("CONFIG", "SET", "maxmemory", "1")
        hold.set()
        await eventually(lambda: _idle(harness), "the answers gave up storing their end")
        for session, message_id in zip(sessions, message_ids, strict=True):
            # Nothing of an end landed alone: still streaming, still among the session's running answers.
            state = await harness.services.answers.get(message_id)
            assert state is not None
            assert state.status == "streaming"
            assert await harness.redis.hexists(KEYS.active(session), message_id)
        own_redis.cli("CONFIG", "SET", "maxmemory", "0")

        async def all_lost() -> bool:
            states = [await harness.services.answers.get(message_id) for message_id in message_ids]
            return all(state is not None and state.status == "failed" for state in states)

        await eventually(all_lost, "every answer is ended by the sweep")
        for session in sessions:
            turns = await harness.history.read(session)
            assert [(turn.role, turn.content, turn.finish_reason) for turn in turns[1:]] == [
                ("assistant", "partial answer", "error")
            ]
            assert await harness.redis.hlen(KEYS.active(session)) == 0
            events = await log_events(harness, session)
            assert [event["type"] for event in events] == ["start", "chunk", "chunk", "error"]
            assert events[-1]["error"]["code"] == "answer_lost"
            assert events[-1]["seq"] == 3
        assert await harness.redis.zcard(KEYS.leases) == 0


async def log_events(harness: Harness, session_id: str) -> list[dict[str, Any]]:
    """The events in the session's replay log, oldest first."""
    entries = cast(
        list[tuple[bytes, dict[bytes, bytes]]], await harness.redis.xrange(KEYS.events(session_id))
    )
    return [json.loads(fields[b"e"]) for _, fields in entries]


async def _idle(harness: Harness) -> bool:
    return harness.service.active_answers == 0


async def test_a_cancel_a_resend_and_a_reader_each_end_a_lost_answer_without_the_sweep(
    run_service: RunService, own_redis: RedisServer
) -> None:
    hold = asyncio.Event()
    async with run_service(
        ScriptedSource(["partial"], hold=hold),
        redis_url=own_redis.url,
        redis_timeout=0.5,
        answer_lease_seconds=0.5,
        answer_sweep_seconds=3600,
        end_retry_seconds=0.2,
    ) as harness:
        sessions = ["cancelled", "resent", "followed"]
        message_ids = [await submit(harness, session) for session in sessions]

        async def written() -> bool:
            return all([await harness.redis.xlen(KEYS.events(session)) == 2 for session in sessions])

        await eventually(written, "every answer has written its chunk")
        own_redis.cli("CONFIG", "SET", "maxmemory-policy", "noeviction")
        own_redis.cli("CONFIG", "SET", "maxmemory", "1")
        hold.set()
        await eventually(lambda: _idle(harness), "the answers gave up storing their end")
        own_redis.cli("CONFIG", "SET", "maxmemory", "0")
        for message_id in message_ids:
            await eventually(partial(_expired, harness, message_id), "its lease has expired")

        with pytest.raises(AnswerFinished) as finished:
            await harness.service.cancel(message_ids[0])
        assert (finished.value.state.status, finished.value.state.finish_reason) == ("failed", "error")

        resent = ChatRequest(session_id="resent", message="Hi", user_id="user1", message_id=message_ids[1])
        accepted, started = await harness.service.submit(resent)
        assert (accepted.status, started) == ("failed", False)

        cursor = await harness.service.follow("followed", message_id=message_ids[2])
        entries = []
        async with asyncio.timeout(15):
            async for item in cursor:
                assert isinstance(item, Entry)
                entries.append(item)
        assert [entry.type for entry in entries] == ["start", "chunk", "error"]
        assert json.loads(entries[-1].payload)["error"]["code"] == "answer_lost"


async def _expired(harness: Harness, message_id: str) -> bool:
    score = await harness.redis.zscore(KEYS.leases, message_id)
    return score is None or score < (await harness.redis.time())[0] * 1000


def test_a_new_process_ends_the_answer_of_a_process_killed_mid_answer(
    start_service: Callable[..., ServiceProcess], redis_server: RedisServer
) -> None:
    variables = {
        "REDIS_URL": redis_server.url,
        "ANSWER_LEASE_SECONDS": "1",
        "ANSWER_SWEEP_SECONDS": "0.2",
        "STREAM_DELAY": "0.2",
        "CHUNK_DELAY": "0",
        "LOG_LEVEL": "WARNING",
    }
    first = start_service(**variables)
    chat = {"session_id": "killed", "message": "Tell me a long story", "user_id": "user1"}
    accepted = httpx.post(f"{first.url}/chat", json=chat, timeout=5).json()
    message_id = accepted["message_id"]
    eventually_sync(
        lambda: int(redis_server.cli("XLEN", KEYS.events("killed"))) >= 3, "the answer has written chunks"
    )
    first.kill()  # SIGKILL: nothing of the answer's end is written
    assert first.process is not None
    assert first.process.returncode == -signal.SIGKILL
    assert redis_server.cli("HGET", KEYS.message(message_id), "status") == "streaming"

    second = start_service(**variables)
    # A client following the answer on the new process gets its end: what was written, then the error.
    events: list[dict[str, object]] = []
    path = f"/stream/killed?message_id={message_id}"
    with httpx.stream("GET", f"{second.url}{path}", timeout=10) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
    assert events[0]["type"] == "start"
    assert events[-1]["type"] == "error"
    assert events[-1]["error"] == {**events[-1]["error"], "code": "answer_lost"}  # type: ignore[dict-item]
    assert [event["seq"] for event in events] == list(range(len(events)))
    written = "".join(str(event["content"]) for event in events if event["type"] == "chunk")
    history = httpx.get(f"{second.url}/history/killed", timeout=5).json()
    last = history["messages"][-1]
    assert (last["role"], last["content"], last["finish_reason"]) == ("assistant", written, "error")
    assert httpx.post(f"{second.url}/chat/{message_id}/cancel", timeout=5).status_code == 409


async def test_an_answer_ended_as_lost_elsewhere_is_stopped_by_its_instance_and_written_once(
    run_service: RunService, redis_server: RedisServer
) -> None:
    # Its instance could not renew the lease in time (writes refused) and another one ended it: when the
    # instance renews again, it learns so and stops the answer without writing a second end.
    hold = asyncio.Event()
    async with run_service(
        ScriptedSource(["partial"], hold=hold), redis_url=redis_server.url, answer_lease_seconds=1
    ) as harness:
        message_id = await submit(harness, "s1")
        await eventually(lambda: _logged(harness, "s1", 2), "the answer has written its chunk")
        assert await harness.services.keeper.ends.end_lost(message_id)  # as another instance would
        await eventually(lambda: _idle(harness), "the answer's task has stopped")
        events = await log_events(harness, "s1")
        assert [event["type"] for event in events] == ["start", "chunk", "error"]
        assert events[-1]["error"]["code"] == "answer_lost"
        turns = await harness.history.read("s1")
        assert [(turn.role, turn.finish_reason) for turn in turns] == [("user", None), ("assistant", "error")]


async def _logged(harness: Harness, session_id: str, count: int) -> bool:
    return int(await harness.redis.xlen(KEYS.events(session_id))) >= count
