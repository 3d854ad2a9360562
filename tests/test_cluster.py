"""The main flows on a real three-master Redis Cluster, with sharded PubSub."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest
from redis.asyncio.cluster import RedisCluster

from config import Settings
from testkit.prerequisites import need
from testkit.service import ServiceProcess
from testkit.topologies import ClusterServers
from testkit.waiting import ConditionNotMet, eventually
from tests.sse_flows import chunk_text, collect, post_chat, running, seqs, stored_answer

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def shared_cluster() -> Iterator[ClusterServers]:
    need(shutil.which("redis-server") is not None, "redis-server is not installed")
    cluster = ClusterServers()
    try:
        cluster.start()
    except (OSError, RuntimeError, subprocess.SubprocessError, ConditionNotMet) as error:
        cluster.cleanup()
        need(False, f"cannot start a Redis Cluster: {error}")
    yield cluster
    cluster.cleanup()


@pytest.fixture
def cluster(shared_cluster: ClusterServers) -> ClusterServers:
    shared_cluster.flush()
    return shared_cluster


async def test_walkthrough_on_a_cluster_streams_on_the_sessions_shard(
    make_settings: Callable[..., Settings], cluster: ClusterServers
) -> None:
    settings = make_settings(redis_url=cluster.url, redis_cluster=True, stream_delay=0.01)
    client = RedisCluster.from_url(cluster.url)
    try:
        pubsub = client.pubsub()
        # The README's cluster contract: SSUBSCRIBE to the returned channel, on the node owning its slot.
        await client.initialize()
        await pubsub.ssubscribe("chat:{walk}")
        async with running(settings, timeout=20) as http:
            assert (await http.get("/health")).json()["status"] == "healthy"
            accepted = await post_chat(http, "walk")
            assert accepted["channel"] == "chat:{walk}"
            events: list[dict[str, object]] = []
            async with asyncio.timeout(20):
                while not events or events[-1]["type"] != "end":
                    message = await pubsub.get_sharded_message(ignore_subscribe_messages=True, timeout=1)
                    if message is not None:
                        events.append(json.loads(message["data"]))
            stored = await stored_answer(http, "walk", accepted["message_id"])
            history = (await http.get("/history/walk")).json()
        assert [event["seq"] for event in events] == list(range(len(events)))
        assert "".join(str(event["content"]) for event in events[1:-1]) == stored["content"]
        assert [turn["role"] for turn in history["messages"]] == ["user", "assistant"]
        # Set when the answer was stored: a second may have ticked by since (86399 is not a failure).
        ttl = settings.chat_history_ttl
        assert ttl - 10 < await client.ttl("chat:{walk}:history") <= ttl
        assert 0 < await client.ttl("chat:{walk}:events") <= settings.chat_history_ttl
        await pubsub.aclose()
    finally:
        await client.aclose()


async def test_sse_resume_and_stop_on_a_cluster(
    make_settings: Callable[..., Settings], cluster: ClusterServers
) -> None:
    settings = make_settings(redis_url=cluster.url, redis_cluster=True, stream_delay=0.03)
    async with running(settings, timeout=20) as client:
        message_id = (await post_chat(client, "resume"))["message_id"]
        url = f"/stream/resume?message_id={message_id}"
        first = await collect(
            client, url, until=lambda event: event.event == "chunk" and event.json()["seq"] == 2
        )
        cancelled = await client.post(f"/chat/{message_id}/cancel")
        assert cancelled.json().get("status") == "cancelled", cancelled.text
        rest = await collect(client, url, headers={"Last-Event-ID": first[-1].id})

        assert seqs(first + rest) == list(range(len(first + rest)))
        assert rest[-1].event == "end"
        assert rest[-1].json()["finish_reason"] == "cancelled"
        stored = await stored_answer(client, "resume", message_id)
        assert stored["content"] == chunk_text(first + rest)


async def test_two_instances_on_a_cluster(
    cluster: ClusterServers, start_service: Callable[..., ServiceProcess]
) -> None:
    env = {"REDIS_URL": cluster.url, "REDIS_CLUSTER": "true", "STREAM_DELAY": "0.05", "CHUNK_DELAY": "0"}
    first, second = start_service(**env), start_service(**env)
    async with (
        httpx.AsyncClient(base_url=first.url, timeout=20) as one,
        httpx.AsyncClient(base_url=second.url, timeout=20) as two,
    ):
        sessions = [f"pair{i}" for i in range(4)]  # spread over the shards
        ids = [(await post_chat(one, session))["message_id"] for session in sessions]
        streams = [
            await collect(two, f"/stream/{session}?message_id={message_id}")
            for session, message_id in zip(sessions[1:], ids[1:], strict=True)
        ]
        for events in streams:
            assert events[-1].event == "end"
            assert seqs(events) == list(range(len(events)))

        message_id = (await post_chat(one, "stop"))["message_id"]
        await collect(
            two, f"/stream/stop?message_id={message_id}", until=lambda event: event.event == "chunk"
        )
        cancelled = await two.post(f"/chat/{message_id}/cancel")
        assert cancelled.status_code == 200
        assert cancelled.json()["status"] == "cancelled"
        assert (await stored_answer(one, "stop", message_id))["finish_reason"] == "cancelled"

        repeated = str(uuid.uuid4())
        body = {"session_id": "idem", "message": "Hi", "user_id": "u1", "message_id": repeated}
        a, b = await asyncio.gather(one.post("/chat", json=body), two.post("/chat", json=body))
        assert sorted([a.status_code, b.status_code]) == [200, 202]  # one answer, on one instance
        await collect(one, f"/stream/idem?message_id={repeated}")
        history = (await two.get("/history/idem")).json()
        assert [turn["role"] for turn in history["messages"]] == ["user", "assistant"]


async def test_limits_ownership_and_health_on_a_cluster(
    make_settings: Callable[..., Settings], cluster: ClusterServers
) -> None:
    key, other = "alice-key-0123456789", "bob-key-0123456789ab"
    settings = make_settings(
        redis_url=cluster.url, redis_cluster=True, api_keys=f"alice:{key},bob:{other}", rate_limit="3/minute"
    )
    alice = {"Authorization": f"Bearer {key}"}
    body = {"session_id": "limited", "message": "Hi", "user_id": "u1"}
    async with running(settings, timeout=20) as client:
        health = (await client.get("/health")).json()
        codes = [(await client.post("/chat", json=body, headers=alice)).status_code for _ in range(4)]
        foreign = await client.get("/history/limited", headers={"Authorization": f"Bearer {other}"})
        own = await client.get("/history/limited", headers=alice)
    assert health["status"] == "healthy"
    assert health["redis"]["pubsub"] == "ok"  # the round trip through the relay's sharded subscription
    assert codes == [202, 202, 202, 429]  # the moving window lives on the cluster
    assert foreign.status_code == 404  # the owner record lives on the cluster
    assert own.status_code == 200


async def test_turns_are_archived_and_accounted_from_each_sessions_answers_on_a_cluster(
    make_settings: Callable[..., Settings], cluster: ClusterServers
) -> None:
    # Issue #15: each session's outbox lives in its slot (`chat:{s}:outbox`), written in the same
    # transaction as its history; the archiver finds them all and drains them into the SQL record.
    settings = make_settings(redis_url=cluster.url, redis_cluster=True, stream_delay=0)
    client = RedisCluster.from_url(cluster.url)
    sessions = ["arch-a", "arch-b", "arch-c"]
    try:
        async with running(settings, timeout=20) as http:
            answers = [(await post_chat(http, session))["message_id"] for session in sessions]

            async def archived() -> bool:
                listed = (await http.get("/conversations", params={"user_id": "u1"})).json()["conversations"]
                return sorted((item["id"], item["message_count"]) for item in listed) == [
                    (s, 2) for s in sessions
                ]

            await eventually(archived, "every session's turns archived")

            async def accounted() -> bool:  # the usage ledger goes through the cluster's event writer
                return bool((await http.get("/usage")).json()["totals"]["answers"] == len(sessions))

            await eventually(accounted, "every answer's usage recorded")

            async def drained() -> bool:  # acknowledged and deleted a moment after the rows' commit
                return all([await client.xlen(f"chat:{{{session}}}:outbox") == 0 for session in sessions])

            await eventually(drained, "every session's outbox emptied")

            # A user's deletion erases both tiers, the answers' states among them (each in its own slot).
            states = [f"chat:message:{{{message_id}}}" for message_id in answers]
            assert all([await client.exists(state) for state in states])
            erased = await http.delete("/conversations", params={"user_id": "u1"})
            assert erased.json() == {"status": "success", "deleted": len(sessions)}
            assert not any([await client.exists(state) for state in states])
            assert (await http.get("/conversations", params={"user_id": "u1"})).json()["conversations"] == []
    finally:
        await client.aclose()
