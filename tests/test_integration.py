"""Whole flows against a real redis-server: streaming, history, TTLs, outages, and shutdown.

The app runs in-process where only Redis matters, and as a real `python app.py` (uvicorn) where the
process itself does: the seed's walkthrough over HTTP and shutdown on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError

from config import Settings
from models import ChatTurn
from testkit.redis_server import RedisServer, start_redis
from testkit.service import ServiceProcess
from testkit.waiting import eventually
from tests.chat_harness import Json, assert_well_formed, read_answers
from tests.conftest import (
    CHAT,
    AppClient,
    wait_for_answer,
    wait_for_history,
)

HISTORY_KEY = "chat:{test123}:history"
QUESTION = "How do I configure Kubernetes autoscaling?"


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    """A plain client of the test's redis-server, as another process (a frontend relay) would have."""
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def stored_turns(redis: Redis, session_id: str) -> list[ChatTurn]:
    return [
        ChatTurn.model_validate_json(raw)
        for raw in await redis.lrange(f"chat:{{{session_id}}}:history", 0, -1)
    ]


# --- The walkthrough, over real HTTP --------------------------------------------------------------


async def walkthrough(service: ServiceProcess) -> tuple[Json, Json]:
    """The seed's three curl commands; returns the /health body and the history after the answer."""
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as http:
        health = await http.get("/health")
        assert health.status_code == 200
        accepted = await http.post("/chat", json=CHAT)
        assert accepted.status_code == 202
        assert accepted.json()["channel"] == "chat:test123"
        history = await wait_for_history(http, "test123")
    assert [message["role"] for message in history["messages"]] == ["user", "assistant"]
    assert history["messages"][1]["message_id"] == accepted.json()["message_id"]
    return health.json(), history


async def test_seed_walkthrough_on_the_embedded_default(start_service: Callable[..., ServiceProcess]) -> None:
    service = start_service(STREAM_DELAY="0", CHUNK_DELAY="0")
    health, _ = await walkthrough(service)
    assert health["redis"]["mode"] == "embedded"
    assert service.stderr.count("embedded in-process Redis") == 1  # warned once, at start-up


async def test_seed_walkthrough_on_real_redis(
    start_service: Callable[..., ServiceProcess], redis_server: RedisServer, redis: Redis
) -> None:
    service = start_service(REDIS_URL=redis_server.url, STREAM_DELAY="0", CHUNK_DELAY="0")
    health, history = await walkthrough(service)
    assert health["redis"]["mode"] == "redis"
    assert [turn.content for turn in await stored_turns(redis, "test123")] == [
        message["content"] for message in history["messages"]
    ]
    assert await redis.ttl(HISTORY_KEY) > 86_400 - 10  # the default CHAT_HISTORY_TTL


# --- Streaming -----------------------------------------------------------------------------------


async def test_a_subscriber_reassembles_the_answer_which_is_in_history_before_end(
    make_settings: Callable[..., Settings], app_client: AppClient, own_redis: RedisServer
) -> None:
    # Keyspace notifications show when the history list is written, in the same order as the
    # answer's events on the same connection: the assistant turn's RPUSH must come before `end`.
    own_redis.cli("CONFIG", "SET", "notify-keyspace-events", "Kl")
    keyspace_channel = f"__keyspace@0__:{HISTORY_KEY}"
    async with (
        app_client(make_settings(redis_url=own_redis.url)) as client,
        Redis.from_url(own_redis.url) as subscriber,
        subscriber.pubsub() as pubsub,
    ):
        await pubsub.subscribe("chat:test123", keyspace_channel)
        accepted = (await client.post("/chat", json={**CHAT, "message": QUESTION})).json()
        events: list[Json] = []
        history_writes = 0
        writes_before_end = -1
        history_on_end: Json = {}
        async with asyncio.timeout(20):
            while not events or events[-1]["type"] not in {"end", "error"}:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is None:
                    continue
                if message["channel"] == keyspace_channel.encode():
                    history_writes += message["data"] == b"rpush"
                    continue
                events.append(json.loads(message["data"]))
                if events[-1]["type"] == "end":
                    writes_before_end = history_writes
                    history_on_end = (await client.get("/history/test123")).json()

    assert_well_formed(events, accepted["message_id"])
    assert events[-1]["type"] == "end"
    assert events[-1]["finish_reason"] == "stop"
    chunks = [event for event in events if event["type"] == "chunk"]
    assert len(chunks) > 3
    answer = "".join(chunk["content"] for chunk in chunks)
    assert writes_before_end == 2, "the user turn and the assistant turn are stored before `end`"
    assert history_on_end["count"] == 2
    assert history_on_end["messages"][1]["content"] == answer == events[-1]["content"]
    assert history_on_end["messages"][1]["message_id"] == accepted["message_id"]


async def test_many_concurrent_answers_each_stream_in_order(
    make_settings: Callable[..., Settings], app_client: AppClient, redis_server: RedisServer, redis: Redis
) -> None:
    sessions = [f"load-{n}" for n in range(12)]
    async with app_client(make_settings(redis_url=redis_server.url)) as client, redis.pubsub() as pubsub:
        await pubsub.psubscribe("chat:*")
        replies = await asyncio.gather(
            *(
                client.post("/chat", json={**CHAT, "session_id": s, "message": f"Tell me about {s}"})
                for s in sessions
            )
        )
        ids = {reply.json()["message_id"]: reply.json()["session_id"] for reply in replies}
        answers = await read_answers(pubsub, set(ids))
    for message_id, events in answers.items():
        assert_well_formed(events, message_id)
        assert events[-1]["type"] == "end"
        turns = await stored_turns(redis, ids[message_id])
        assert turns[-1].content == events[-1]["content"]
        assert ids[message_id] in turns[-1].content  # each answer is about its own message


# --- History in Redis ----------------------------------------------------------------------------


async def test_history_key_ttl_is_chat_history_ttl_and_every_key_has_one(
    make_settings: Callable[..., Settings], app_client: AppClient, redis_server: RedisServer, redis: Redis
) -> None:
    async with app_client(make_settings(redis_url=redis_server.url, chat_history_ttl=3600)) as client:
        for session in ("test123", "other"):
            await client.post("/chat", json={**CHAT, "session_id": session})
            await wait_for_history(client, session)
    assert 3600 - 10 < await redis.ttl(HISTORY_KEY) <= 3600
    keys = {key async for key in redis.scan_iter()}
    assert {b"chat:{other}:history", b"chat:{test123}:history"} <= keys
    assert {b"chat:{other}:events", b"chat:{test123}:events"} <= keys  # the replay logs
    # Every key but the outbox, which is durable until the archiver has copied its turns (issue #15).
    for key in keys - {b"chat:outbox"}:
        assert await redis.ttl(key) > 0, key


async def test_history_expires_from_redis_after_ttl_then_comes_from_the_record(
    make_settings: Callable[..., Settings], app_client: AppClient, redis_server: RedisServer, redis: Redis
) -> None:
    async with app_client(make_settings(redis_url=redis_server.url, chat_history_ttl=1)) as client:
        await client.post("/chat", json=CHAT)
        before = await wait_for_history(client, "test123")
        assert before["count"] == 2

        async def expired() -> bool:
            return not await redis.exists(HISTORY_KEY)

        await eventually(expired, "the history has expired from Redis")

        # Issue #15: the same history, in the same shape, now from the SQL conversation record (once
        # the archiver has stored it: with a TTL of 1 s, that may come after the history expired).
        async def from_the_record() -> object:
            after = (await client.get("/history/test123")).json()
            return after if after["count"] else None

        assert await eventually(from_the_record, "the history comes from the record") == before


async def test_history_is_trimmed_at_max_history_messages(
    make_settings: Callable[..., Settings], app_client: AppClient, redis_server: RedisServer, redis: Redis
) -> None:
    async with app_client(make_settings(redis_url=redis_server.url, max_history_messages=4)) as client:
        ids = []
        for number in range(3):
            accepted = await client.post("/chat", json={**CHAT, "message": f"question {number}"})
            ids.append(accepted.json()["message_id"])
            history = await wait_for_answer(client, "test123", ids[-1])
    assert await redis.llen(HISTORY_KEY) == 4
    assert [(m["role"], m["message_id"]) for m in history["messages"]] == [
        ("user", ids[1]),
        ("assistant", ids[1]),
        ("user", ids[2]),
        ("assistant", ids[2]),
    ]


# --- Redis outages -------------------------------------------------------------------------------


def assert_redis_unavailable(response: httpx.Response, server: RedisServer) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "redis_unavailable"
    assert str(server.port) not in response.text  # no Redis location in a client's answer


async def test_503_while_redis_is_down_and_recovery_when_it_is_back(
    make_settings: Callable[..., Settings], app_client: AppClient, own_redis: RedisServer
) -> None:
    async with app_client(make_settings(redis_url=own_redis.url, redis_timeout=1)) as client:
        assert (await client.get("/health")).status_code == 200
        own_redis.stop()
        async with asyncio.timeout(20):  # each call is bounded by REDIS_TIMEOUT: nothing hangs
            assert_redis_unavailable(await client.post("/chat", json=CHAT), own_redis)
            assert_redis_unavailable(await client.get("/history/test123"), own_redis)
            assert_redis_unavailable(await client.delete("/history/test123"), own_redis)
            health = await client.get("/health")
        assert health.status_code == 503
        assert health.json()["status"] == "unhealthy"
        assert health.json()["redis"]["status"] == "disconnected"
        assert health.json()["redis"]["error"]

        own_redis.start()  # the same port

        async def ready() -> bool:
            return (await client.get("/health")).status_code == 200

        await eventually(ready, "ready once Redis is back, with no restart")
        async with asyncio.timeout(20):
            assert (await client.post("/chat", json=CHAT)).status_code == 202
            history = await wait_for_history(client, "test123")
        assert history["messages"][1]["finish_reason"] == "stop"


async def test_a_stalled_redis_gives_503_within_the_timeout(
    make_settings: Callable[..., Settings], app_client: AppClient, own_redis: RedisServer
) -> None:
    async with app_client(make_settings(redis_url=own_redis.url, redis_timeout=0.5)) as client:
        assert (await client.get("/health")).status_code == 200
        own_redis.cli("CLIENT", "PAUSE", "30000", "ALL")  # accepts connections, answers nothing for 30s
        started = time.monotonic()
        health = await client.get("/health")
        chat = await client.post("/chat", json=CHAT)
        elapsed = time.monotonic() - started
    assert health.status_code == 503
    assert health.json()["redis"]["error"] == "Redis did not answer in time"
    assert_redis_unavailable(chat, own_redis)
    assert elapsed < 10  # not the 30s pause


@pytest.fixture
def locked_redis() -> Iterator[RedisServer]:
    """A redis-server that requires a password, for this test alone."""
    server = start_redis(password="right-pw")
    yield server
    server.cleanup()


async def test_redis_host_port_password_and_db_reach_a_protected_server(
    make_settings: Callable[..., Settings], app_client: AppClient, locked_redis: RedisServer
) -> None:
    settings = make_settings(
        redis_host="127.0.0.1", redis_port=locked_redis.port, redis_password="right-pw", redis_db=2
    )
    async with app_client(settings) as client:
        assert (await client.get("/health")).json()["redis"]["mode"] == "redis"
        await client.post("/chat", json=CHAT)
        await wait_for_history(client, "test123")
    assert locked_redis.cli("-n", "2", "LLEN", HISTORY_KEY) == "2"


async def test_a_wrong_password_is_503_and_never_shown(
    make_settings: Callable[..., Settings],
    app_client: AppClient,
    locked_redis: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"redis://:wrong-pw@127.0.0.1:{locked_redis.port}/0"
    async with app_client(make_settings(redis_url=url, redis_timeout=1)) as client:
        health = await client.get("/health")
        chat = await client.post("/chat", json=CHAT)
    assert health.status_code == 503
    assert health.json()["redis"]["error"] == "Redis refused the credentials"
    assert_redis_unavailable(chat, locked_redis)
    for text in (health.text, chat.text, caplog.text):
        assert "wrong-pw" not in text


@pytest.fixture
def small_redis() -> Iterator[RedisServer]:
    """A redis-server with 4 MB of memory that refuses writes when full, for this test alone."""
    server = start_redis("--maxmemory", "4mb", "--maxmemory-policy", "noeviction")
    yield server
    server.cleanup()


async def fill_up(redis: Redis) -> None:
    """Write 200 kB values until Redis refuses one for lack of memory, then keep it full.

    Right after the refusal Redis still counts the refused value's 200 kB input buffer; when its
    cron gives that back (every 100 ms or so), small writes fit again. A lower limit keeps it full.
    """
    for number in range(1000):
        try:
            await redis.set(f"filler:{number}", b"x" * 200_000)
        except OutOfMemoryError:
            await redis.config_set("maxmemory", "1mb")
            return
    raise AssertionError("Redis never ran out of memory")


async def test_a_full_redis_refuses_the_chat_with_503_and_stores_nothing(
    make_settings: Callable[..., Settings], app_client: AppClient, small_redis: RedisServer
) -> None:
    async with Redis.from_url(small_redis.url) as redis:
        await fill_up(redis)
        async with app_client(make_settings(redis_url=small_redis.url)) as client:
            chat = await client.post("/chat", json=CHAT)
            health = await client.get("/health")
        assert await redis.exists(HISTORY_KEY) == 0  # MULTI/EXEC: no half-written turn
    assert_redis_unavailable(chat, small_redis)
    assert "out of memory" in chat.json()["error"]["message"]
    # Redis answers, but refuses writes: not ready (#13, item 2), and it says why.
    assert health.status_code == 503
    assert "out of memory" in health.json()["redis"]["error"]


async def test_json_logs_carry_the_request_id_and_never_the_password(
    start_service: Callable[..., ServiceProcess], locked_redis: RedisServer
) -> None:
    service = start_service(
        REDIS_URL=locked_redis.url, LOG_FORMAT="json", LOG_LEVEL="DEBUG", STREAM_DELAY="0", CHUNK_DELAY="0"
    )
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as http:
        accepted = await http.post("/chat", json=CHAT, headers={"X-Request-ID": "trace-me-42"})
        await wait_for_history(http, "test123")
    assert accepted.status_code == 202
    lines = [json.loads(line) for line in service.stderr.splitlines() if line.strip()]
    access = [line for line in lines if line["name"] == "chat.access" and line["request_id"] == "trace-me-42"]
    assert len(access) == 1
    assert (access[0]["method"], access[0]["path"], access[0]["status"]) == ("POST", "/chat", 202)
    answer_lines = [line["message"] for line in lines if accepted.json()["message_id"] in line["message"]]
    assert any("answer started" in message for message in answer_lines)
    assert any("answer ended" in message and "chunks=" in message for message in answer_lines)
    assert "right-pw" not in service.stderr


# --- Shutdown of a real process ------------------------------------------------------------------


async def post_chats(service: ServiceProcess, count: int) -> dict[str, str]:
    """POST one chat per session; return message id -> session id."""
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as http:
        replies = [
            await http.post("/chat", json={**CHAT, "session_id": f"shut-{n}", "message": QUESTION})
            for n in range(count)
        ]
    assert [reply.status_code for reply in replies] == [202] * count
    return {reply.json()["message_id"]: reply.json()["session_id"] for reply in replies}


def has_chunk(events: list[Json]) -> bool:
    return any(event["type"] == "chunk" for event in events)


async def stop_and_wait(service: ServiceProcess, timeout: float) -> float:
    """SIGTERM the service; return how long it took to exit, which it must do within `timeout`."""
    started = time.monotonic()
    service.terminate()
    returncode = await asyncio.to_thread(service.wait, timeout)
    # uvicorn re-raises the signal it handled once shutdown is complete, so a clean stop reads as
    # "terminated by SIGTERM" (exit status 143 in a container); anything else is a crash.
    assert returncode in {0, -signal.SIGTERM}, service.stderr
    assert "Task was destroyed but it is pending" not in service.stderr
    assert "Traceback" not in service.stderr
    return time.monotonic() - started


async def test_sigterm_ends_answers_in_flight_with_shutdown_and_keeps_them(
    start_service: Callable[..., ServiceProcess], redis_server: RedisServer, redis: Redis
) -> None:
    # A chunk every 1.2s and about 14 chunks: each answer needs well over 10s, the grace is 1s.
    service = start_service(
        REDIS_URL=redis_server.url, STREAM_DELAY="0.4", CHUNK_DELAY="0", SHUTDOWN_GRACE_SECONDS="1"
    )
    async with redis.pubsub() as pubsub:
        await pubsub.psubscribe("chat:*")
        sessions = await post_chats(service, 3)
        before = await read_answers(pubsub, set(sessions), until=has_chunk)
        took = await stop_and_wait(service, timeout=30)
        after = await read_answers(pubsub, set(sessions))
    assert took < 8, "the grace period is 1s; the answers would have needed over 10s more"
    for message_id, session_id in sessions.items():
        events = before[message_id] + after[message_id]
        assert_well_formed(events, message_id)
        assert events[-1]["type"] == "error"
        assert events[-1]["error"]["code"] == "shutdown"
        written = "".join(event["content"] for event in events if event["type"] == "chunk")
        assert written
        turns = await stored_turns(redis, session_id)
        assert [turn.role for turn in turns] == ["user", "assistant"]
        assert turns[1].message_id == message_id
        assert turns[1].finish_reason == "shutdown"
        assert turns[1].content == written


async def test_sigterm_lets_answers_finish_within_the_grace_period(
    start_service: Callable[..., ServiceProcess], redis_server: RedisServer, redis: Redis
) -> None:
    # Each answer takes about 1s; the grace period is 30s.
    service = start_service(
        REDIS_URL=redis_server.url, STREAM_DELAY="0.02", CHUNK_DELAY="0.01", SHUTDOWN_GRACE_SECONDS="30"
    )
    async with redis.pubsub() as pubsub:
        await pubsub.psubscribe("chat:*")
        sessions = await post_chats(service, 3)
        took = await stop_and_wait(service, timeout=45)
        answers = await read_answers(pubsub, set(sessions))
    assert took < 20, "shutdown returns once the answers end, not after the whole grace period"
    for message_id, session_id in sessions.items():
        events = answers[message_id]
        assert_well_formed(events, message_id)
        assert events[-1]["type"] == "end"
        assert events[-1]["finish_reason"] == "stop"
        turns = await stored_turns(redis, session_id)
        assert (turns[1].content, turns[1].finish_reason) == (events[-1]["content"], "stop")
