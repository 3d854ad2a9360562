"""Server-Sent Events: replay, resume, reset, Stop, idempotent sends, and many clients."""

from __future__ import annotations

import asyncio
import resource
import uuid
from collections.abc import Callable

import httpx
import pytest
import redis.asyncio as aioredis
from httpx_sse import ServerSentEvent

from config import Settings
from testkit.redis_server import RedisServer
from testkit.service import ServiceProcess
from testkit.waiting import eventually
from tests.sse_flows import chunk_text, collect, post_chat, running, seqs, stored_answer

pytestmark = pytest.mark.redis


async def log_length(url: str, session_id: str, *, at_least: int) -> bool:
    """Whether the session's replay log holds `at_least` entries."""
    client = aioredis.Redis.from_url(url)
    try:
        return int(await client.xlen(f"chat:{{{session_id}}}:events")) >= at_least
    finally:
        await client.aclose()


async def test_resume_with_last_event_id_delivers_the_rest_exactly_once(
    make_settings: Callable[..., Settings], redis_server: RedisServer
) -> None:
    settings = make_settings(redis_url=redis_server.url, stream_delay=0.01)
    async with running(settings, timeout=20) as client:
        message_id = (await post_chat(client, "resume"))["message_id"]
        url = f"/stream/resume?message_id={message_id}"
        first = await collect(
            client, url, until=lambda event: event.event == "chunk" and event.json()["seq"] == 3
        )
        rest = await collect(client, url, headers={"Last-Event-ID": first[-1].id})

        assert seqs(first) == [0, 1, 2, 3]
        assert seqs(rest) == list(range(4, 4 + len(rest)))
        assert rest[-1].event == "end"
        stored = await stored_answer(client, "resume", message_id)
        assert chunk_text(first + rest) == stored["content"] == rest[-1].json()["content"]


async def test_resume_by_query_parameter_follows_the_session(
    make_settings: Callable[..., Settings], redis_server: RedisServer
) -> None:
    settings = make_settings(redis_url=redis_server.url, stream_delay=0.01)
    async with running(settings, timeout=20) as client:
        await post_chat(client, "follow")
        first = await collect(client, "/stream/follow", until=lambda event: event.event == "chunk")
        rest = await collect(client, f"/stream/follow?last_event_id={first[-1].id}")
        assert seqs(first + rest) == list(range(len(first + rest)))
        assert rest[-1].event == "end"


async def test_client_connecting_mid_answer_gets_it_from_its_start(
    make_settings: Callable[..., Settings], redis_server: RedisServer
) -> None:
    # An answer of about 2.5 s: still running when the client connects, on a loaded machine too.
    settings = make_settings(redis_url=redis_server.url, stream_delay=0.05)
    async with running(settings, timeout=20) as client:
        message_id = (await post_chat(client, "late"))["message_id"]
        await eventually(
            lambda: log_length(redis_server.url, "late", at_least=6), "the answer is part-way through"
        )
        events = await collect(client, "/stream/late")

        assert events[0].event == "start"
        assert seqs(events) == list(range(len(events)))
        stored = await stored_answer(client, "late", message_id)
        assert chunk_text(events) == stored["content"]


async def test_resume_from_an_id_the_log_no_longer_holds_sends_reset_then_live(
    make_settings: Callable[..., Settings], redis_server: RedisServer
) -> None:
    settings = make_settings(redis_url=redis_server.url, stream_delay=0.01)
    async with running(settings, timeout=20) as client:
        await post_chat(client, "old")
        await collect(client, "/stream/old")  # the first answer is in the log
        reset = asyncio.Event()

        def until_end(event: ServerSentEvent) -> bool:
            if event.event == "reset":
                reset.set()  # the server has read where the log ends: what follows is live
            return event.event == "end"

        second = asyncio.create_task(collect(client, "/stream/old?last_event_id=1-0", until=until_end))
        async with asyncio.timeout(10):
            await reset.wait()
        message_id = (await post_chat(client, "old"))["message_id"]
        events = await second

        assert events[0].event == "reset"
        live = events[1:]
        assert {event.json()["message_id"] for event in live} == {message_id}
        assert seqs(live) == list(range(len(live)))


async def test_leaving_listener_does_not_stop_the_answer(
    make_settings: Callable[..., Settings], redis_server: RedisServer
) -> None:
    settings = make_settings(redis_url=redis_server.url, stream_delay=0.01)
    async with running(settings, timeout=20) as client:
        message_id = (await post_chat(client, "leave"))["message_id"]
        await collect(
            client, f"/stream/leave?message_id={message_id}", until=lambda event: event.event == "chunk"
        )
        replay = await collect(client, f"/stream/leave?message_id={message_id}")
        stored = await stored_answer(client, "leave", message_id)
        assert stored["finish_reason"] == "stop"
        assert seqs(replay) == list(range(len(replay)))
        assert chunk_text(replay) == stored["content"]


async def test_stream_sends_keepalive_comments(
    make_settings: Callable[..., Settings], redis_server: RedisServer
) -> None:
    settings = make_settings(redis_url=redis_server.url, sse_ping_seconds=0.2)
    async with running(settings, timeout=20) as client:
        async with client.stream("GET", "/stream/quiet") as response:
            assert response.headers["cache-control"] == "no-cache"
            assert response.headers["x-accel-buffering"] == "no"
            text = ""
            async for piece in response.aiter_text():
                text += piece
                if text.count(": ping") >= 2:
                    break
        assert text.count(": ping") >= 2


async def test_stream_rejects_unknown_or_foreign_message_and_bad_event_ids(
    make_settings: Callable[..., Settings], redis_server: RedisServer
) -> None:
    settings = make_settings(redis_url=redis_server.url)
    async with running(settings, timeout=20) as client:
        message_id = (await post_chat(client, "mine"))["message_id"]
        assert (await client.get(f"/stream/mine?message_id={uuid.uuid4()}")).status_code == 404
        foreign = await client.get(f"/stream/other?message_id={message_id}")
        assert foreign.status_code == 404
        assert foreign.json()["error"]["code"] == "not_found"
        assert (await client.get("/stream/mine?last_event_id=abc")).status_code == 422
        assert (await client.get("/stream/mine", headers={"Last-Event-ID": "1-0 OR 1=1"})).status_code == 422
        assert (await client.get("/stream/mine?message_id=not-a-uuid")).status_code == 422


async def test_stop_stores_the_partial_answer_and_ends_the_stream(
    make_settings: Callable[..., Settings], redis_server: RedisServer
) -> None:
    settings = make_settings(redis_url=redis_server.url, stream_delay=0.05)
    async with running(settings, timeout=20) as client:
        message_id = (await post_chat(client, "stop"))["message_id"]
        url = f"/stream/stop?message_id={message_id}"
        await collect(client, url, until=lambda event: event.event == "chunk" and event.json()["seq"] == 2)
        cancelled = await client.post(f"/chat/{message_id}/cancel")
        assert cancelled.status_code == 200
        assert cancelled.json()["status"] == "cancelled"

        events = await collect(client, url)
        end = events[-1]
        assert end.event == "end"
        assert end.json()["finish_reason"] == "cancelled"
        stored = await stored_answer(client, "stop", message_id)
        assert stored["finish_reason"] == "cancelled"
        assert stored["content"] == end.json()["content"] == chunk_text(events)
        assert 0 < len(stored["content"]) < 200

        again = await client.post(f"/chat/{message_id}/cancel")
        assert again.status_code == 409
        assert again.json()["state"]["status"] == "cancelled"
        missing = await client.post(f"/chat/{uuid.uuid4()}/cancel")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"


async def test_same_message_id_sent_twice_at_once_starts_one_answer(
    make_settings: Callable[..., Settings], redis_server: RedisServer
) -> None:
    settings = make_settings(redis_url=redis_server.url, stream_delay=0.01)
    async with running(settings, timeout=20) as client:
        message_id = str(uuid.uuid4())
        body = {"session_id": "idem", "message": "Hello there", "user_id": "u1", "message_id": message_id}
        first, second = await asyncio.gather(client.post("/chat", json=body), client.post("/chat", json=body))
        assert sorted([first.status_code, second.status_code]) == [200, 202]
        assert first.json()["message_id"] == second.json()["message_id"] == message_id

        events = await collect(client, f"/stream/idem?message_id={message_id}")
        assert [event.event for event in events].count("start") == 1
        history = (await client.get("/history/idem")).json()
        assert [turn["role"] for turn in history["messages"]] == ["user", "assistant"]

        repeat = await client.post("/chat", json=body)
        assert repeat.status_code == 200
        assert repeat.json()["status"] == "completed"
        assert repeat.json()["finish_reason"] == "stop"
        elsewhere = await client.post("/chat", json={**body, "session_id": "other"})
        assert elsewhere.status_code == 409


async def test_sse_survives_pubsub_connections_being_killed(
    make_settings: Callable[..., Settings], own_redis: RedisServer
) -> None:
    settings = make_settings(redis_url=own_redis.url, stream_delay=0.03, sse_poll_seconds=0.5)
    async with running(settings, timeout=30) as client:
        sessions = [f"kill{i}" for i in range(5)]
        ids = [(await post_chat(client, session))["message_id"] for session in sessions]
        received = 0

        def counted(event: ServerSentEvent) -> bool:
            nonlocal received
            received += 1
            return event.event in ("end", "answer_error")

        readers = [
            asyncio.create_task(collect(client, f"/stream/{session}?message_id={message_id}", until=counted))
            for session, message_id in zip(sessions, ids, strict=True)
        ]
        for _ in range(3):
            # Kill the relay's subscription once it is back and events are flowing again since the
            # last kill: each kill lands mid-stream.
            seen = received

            async def flowing_and_subscribed(since: int = seen) -> bool:
                return received > since and bool(own_redis.cli("CLIENT", "LIST", "TYPE", "pubsub"))

            await eventually(flowing_and_subscribed, "events flow and the relay is subscribed again")
            assert int(own_redis.cli("CLIENT", "KILL", "TYPE", "pubsub")) >= 1
        results = await asyncio.gather(*readers)

        for session, message_id, events in zip(sessions, ids, results, strict=True):
            assert seqs(events) == list(range(len(events)))
            assert events[-1].event == "end"
            stored = await stored_answer(client, session, message_id)
            assert chunk_text(events) == stored["content"]


async def sse_clients(client: httpx.AsyncClient, count: int) -> bool:
    """Whether the service counts `count` open SSE streams."""
    metrics = (await client.get("/metrics")).text
    return f"\nchat_sse_clients {count:.1f}\n" in metrics


async def test_thousand_sse_clients_share_a_few_redis_connections(
    redis_server: RedisServer, start_service: Callable[..., ServiceProcess]
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    service = start_service(REDIS_URL=redis_server.url, STREAM_DELAY="0.01", CHUNK_DELAY="0")
    sessions = [f"crowd{i}" for i in range(10)]
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=service.url, timeout=60, limits=limits) as client:
        baseline = int(redis_server.cli("INFO", "clients").split("connected_clients:")[1].split()[0])
        readers = [
            asyncio.create_task(collect(client, f"/stream/{sessions[i % len(sessions)]}"))
            for i in range(1000)
        ]
        await eventually(lambda: sse_clients(client, 1000), "every client is connected", interval=0.2)
        ids = {session: (await post_chat(client, session))["message_id"] for session in sessions}
        results = await asyncio.gather(*readers)
        during = int(redis_server.cli("INFO", "clients").split("connected_clients:")[1].split()[0])

        for i, events in enumerate(results):
            session = sessions[i % len(sessions)]
            assert events[0].event == "start"
            assert {event.json()["message_id"] for event in events} == {ids[session]}
            assert seqs(events) == list(range(len(events)))
        assert during - baseline <= 4


async def test_two_instances_post_on_one_stream_and_cancel_on_the_other(
    redis_server: RedisServer, start_service: Callable[..., ServiceProcess]
) -> None:
    env = {"REDIS_URL": redis_server.url, "STREAM_DELAY": "0.05", "CHUNK_DELAY": "0"}
    first, second = start_service(**env), start_service(**env)
    async with (
        httpx.AsyncClient(base_url=first.url, timeout=20) as one,
        httpx.AsyncClient(base_url=second.url, timeout=20) as two,
    ):
        message_id = (await post_chat(one, "pair"))["message_id"]
        url = f"/stream/pair?message_id={message_id}"
        seen = await collect(
            two, url, until=lambda event: event.event == "chunk" and event.json()["seq"] == 2
        )
        assert seqs(seen) == [0, 1, 2]
        cancelled = await two.post(f"/chat/{message_id}/cancel")
        assert cancelled.status_code == 200
        assert cancelled.json()["status"] == "cancelled"
        events = await collect(two, url)
        assert events[-1].json()["finish_reason"] == "cancelled"
        assert (await stored_answer(one, "pair", message_id))["finish_reason"] == "cancelled"

        repeated = str(uuid.uuid4())
        body = {"session_id": "pair2", "message": "Hi", "user_id": "u1", "message_id": repeated}
        a, b = await asyncio.gather(one.post("/chat", json=body), two.post("/chat", json=body))
        assert sorted([a.status_code, b.status_code]) == [200, 202]
        await collect(one, f"/stream/pair2?message_id={repeated}")
        history = (await two.get("/history/pair2")).json()
        assert [turn["role"] for turn in history["messages"]] == ["user", "assistant"]
