"""The Conversations API (protocols/conversations.py) in-process: a user's conversations from the SQL
record, paged, searched, renamed, pinned, archived and deleted in both tiers; ownership as for sessions;
every bad input a 4xx naming the field, with nothing written."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import select

from config import Settings
from records.database import create_engine
from records.schema import feedback
from testkit.redis_server import RedisServer
from testkit.waiting import eventually
from tests.chat_harness import Json
from tests.conftest import AppClient, CaughtArchiver, wait_for_history
from tests.record_backends import database_url

__all__ = ["database_url"]

ALICE_KEY = "alice-key-0123456789abcdef"
BOB_KEY = "bob-key-0123456789abcdef00"
ALICE = {"Authorization": f"Bearer {ALICE_KEY}"}
BOB = {"Authorization": f"Bearer {BOB_KEY}"}


@pytest.fixture
async def client(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(make_settings()) as client:
        yield client


async def chat(
    client: httpx.AsyncClient, session: str, message: str, *, user: str = "u1", headers: Json | None = None
) -> None:
    body = {"session_id": session, "message": message, "user_id": user}
    response = await client.post("/chat", json=body, headers=headers or {})
    assert response.status_code == 202, response.text
    if headers is None:  # with keys, `archived` waits for the answer
        await wait_for_history(client, session)


async def archived(
    client: httpx.AsyncClient, count: int, *, user: str = "u1", headers: Json | None = None
) -> list[Json]:
    """Wait until the user's list holds `count` conversations with both turns archived; return it."""

    async def listed() -> list[Json] | None:
        response = await client.get(
            "/conversations", params={"user_id": user, "limit": 100}, headers=headers or {}
        )
        found: list[Json] = response.json()["conversations"]
        done = len(found) == count and all(item["message_count"] == 2 for item in found)
        return found if done else None

    result = await eventually(listed, f"{count} conversations archived")
    assert result is not None
    return result


def assert_invalid(response: httpx.Response, field: str, status: int = 422) -> None:
    assert response.status_code == status, response.text
    assert field in [item["field"] for item in response.json()["error"]["fields"]]


async def test_conversations_are_listed_newest_first_a_page_at_a_time(
    make_settings: Callable[..., Settings], app_client: AppClient, database_url: str
) -> None:
    async with app_client(make_settings(database_url=database_url)) as client:
        for number in range(3):
            await chat(client, f"s{number}", f"Question number {number}?")
        await chat(client, "other", "Not mine", user="u2")
        listed = await archived(client, 3)
        assert [item["id"] for item in listed] == ["s2", "s1", "s0"]
        assert listed[0]["title"] == "Question number 2?"
        assert (listed[0]["pinned"], listed[0]["archived"]) == (False, False)
        first = (await client.get("/conversations", params={"user_id": "u1", "limit": 2})).json()
        assert [item["id"] for item in first["conversations"]] == ["s2", "s1"]
        second = (
            await client.get(
                "/conversations", params={"user_id": "u1", "limit": 2, "cursor": first["next_cursor"]}
            )
        ).json()
        assert [item["id"] for item in second["conversations"]] == ["s0"]
        assert second.get("next_cursor") is None


async def test_search_finds_the_conversations_whose_messages_have_the_words(
    make_settings: Callable[..., Settings], app_client: AppClient, database_url: str
) -> None:
    async with app_client(make_settings(database_url=database_url)) as client:
        await chat(client, "bikes", "How do I fix a bicycle puncture?")
        await chat(client, "bread", "A recipe for sourdough bread")
        await archived(client, 2)
        found = (await client.get("/conversations/search", params={"user_id": "u1", "q": "sourdough"})).json()
        assert [item["id"] for item in found["conversations"]] == ["bread"]
        assert "sourdough" in found["conversations"][0]["snippet"]
        odd = await client.get("/conversations/search", params={"user_id": "u1", "q": 'NEAR( "x AND *'})
        assert odd.status_code == 200  # what a user types is words, never query syntax
        assert odd.json()["conversations"] == []


async def test_a_conversation_has_its_messages_and_active_branch(client: httpx.AsyncClient) -> None:
    await chat(client, "s1", "Hello there")
    await archived(client, 1)
    body = (await client.get("/conversations/s1")).json()
    assert [message["turn"]["role"] for message in body["messages"]] == ["user", "assistant"]
    assert body["messages"][0]["turn"]["content"] == "Hello there"
    assert body["active_branch"] == [message["id"] for message in body["messages"]]
    history = (await client.get("/history/s1")).json()["messages"]
    assert [message["turn"] for message in body["messages"]] == history


async def test_rename_pin_and_archive(client: httpx.AsyncClient) -> None:
    await chat(client, "s1", "Hello there")
    await archived(client, 1)
    changed = await client.patch("/conversations/s1", json={"title": "  My   chat ", "pinned": True})
    assert changed.status_code == 200, changed.text
    assert (changed.json()["title"], changed.json()["pinned"]) == ("My chat", True)
    await client.patch("/conversations/s1", json={"archived": True})
    assert (await client.get("/conversations", params={"user_id": "u1"})).json()["conversations"] == []
    shelved = (await client.get("/conversations", params={"user_id": "u1", "archived": True})).json()
    assert [(item["id"], item["title"], item["pinned"]) for item in shelved["conversations"]] == [
        ("s1", "My chat", True)
    ]


async def test_bad_input_is_refused_naming_the_field_and_nothing_is_written(
    client: httpx.AsyncClient,
) -> None:
    await chat(client, "s1", "Hello there")
    await archived(client, 1)
    assert_invalid(await client.patch("/conversations/s1", json={"title": "x" * 201}), "title")
    assert_invalid(await client.patch("/conversations/s1", json={"title": "   "}), "body")
    assert_invalid(await client.patch("/conversations/s1", json={}), "body")
    assert_invalid(await client.patch("/conversations/s1", json={"pinned": "maybe"}), "pinned")
    assert_invalid(await client.patch("/conversations/s1", json={"owner": "me"}), "owner")
    assert_invalid(
        await client.get("/conversations", params={"user_id": "u1", "cursor": "bm90LWEtY3Vyc29y"}), "cursor"
    )
    assert_invalid(await client.get("/conversations", params={"user_id": "u1", "cursor": "a b"}), "cursor")
    assert_invalid(await client.get("/conversations", params={"user_id": "a b"}), "user_id")
    assert_invalid(await client.get("/conversations"), "user_id")
    assert_invalid(await client.get("/conversations/search", params={"user_id": "u1", "q": "  "}), "q")
    assert_invalid(await client.get(f"/conversations/{'x' * 129}"), "conversation_id")
    assert (await client.patch("/conversations/missing", json={"title": "t"})).status_code == 404
    body = (await client.get("/conversations/s1")).json()
    assert (body["title"], body["pinned"], body["archived"]) == ("Hello there", False, False)


async def test_deleting_a_conversation_removes_it_from_both_tiers(client: httpx.AsyncClient) -> None:
    await chat(client, "s1", "Hello there")
    await chat(client, "s2", "Keep me")
    await archived(client, 2)
    assert (await client.delete("/conversations/s1")).status_code == 200
    assert (await client.get("/conversations/s1")).status_code == 404
    assert (await client.get("/history/s1")).json()["count"] == 0
    listed = (await client.get("/conversations", params={"user_id": "u1"})).json()["conversations"]
    assert [item["id"] for item in listed] == ["s2"]
    assert (await client.delete("/conversations/s1")).status_code == 404


async def test_all_of_a_users_conversations_are_deleted_in_one_call(client: httpx.AsyncClient) -> None:
    for session in ("a", "b"):
        await chat(client, session, "Mine")
    await chat(client, "c", "Theirs", user="u2")
    await archived(client, 2)
    await archived(client, 1, user="u2")
    response = await client.delete("/conversations", params={"user_id": "u1"})
    assert response.json() == {"status": "success", "deleted": 2}
    assert (await client.get("/conversations", params={"user_id": "u1"})).json()["conversations"] == []
    assert (await client.get("/history/a")).json()["count"] == 0
    assert len((await client.get("/conversations", params={"user_id": "u2"})).json()["conversations"]) == 1


async def test_deleting_a_user_takes_their_unarchived_conversations_and_their_ratings_too(
    make_settings: Callable[..., Settings],
    app_client: AppClient,
    redis_server: RedisServer,
    database_url: str,
) -> None:
    keys = f"alice:{ALICE_KEY},bob:{BOB_KEY}"
    settings = make_settings(
        api_keys=keys, redis_url=redis_server.url, database_url=database_url, archiver="loop"
    )
    caught = CaughtArchiver()
    redis = Redis.from_url(redis_server.url)
    try:
        async with app_client(settings, overrides=caught.overrides) as client:
            await chat(client, "a", "Mine", headers=ALICE)
            await chat(client, "c", "Theirs", user="u2", headers=ALICE)
            await archived(client, 1, headers=ALICE)
            await archived(client, 1, user="u2", headers=ALICE)
            answer = (await client.get("/history/c", headers=ALICE)).json()["messages"][-1]["message_id"]
            rating = {"user_id": "u1", "rating": "up"}  # u1's rating of u2's answer
            assert (
                await client.post(f"/chat/{answer}/feedback", json=rating, headers=ALICE)
            ).status_code == 200
            await caught.stop(client, ALICE)  # from here on, turns wait in the outbox
            await chat(client, "b", "Not archived yet", headers=ALICE)
            await chat(client, "theirs", "Bob's user u1", headers=BOB)

            async def answered() -> bool:  # both exchanges stored, neither archived
                return bool(await redis.xlen("chat:outbox") == 4)

            await eventually(answered, "the two answers wait in the outbox")

            response = await client.delete("/conversations", params={"user_id": "u1"}, headers=ALICE)
            assert response.json() == {"status": "success", "deleted": 2}
            for session in ("a", "b"):
                assert (await client.get(f"/history/{session}", headers=ALICE)).json()["count"] == 0
            assert await redis.xlen("chat:outbox") == 2  # Bob's session's turns: another key's
            # Each names its owner, the user's turn (as it was stored) and the answer's (as it ended).
            waiting: Any = await redis.xrange("chat:outbox")
            assert [(fields[b"s"], fields[b"o"]) for _, fields in waiting] == [(b"theirs", b"bob")] * 2
            for session in ("a", "b"):  # its history, replay log and outbox entries are gone; its owner
                # record stays until it expires, so the id stays the key's, beside the deletion's mark
                left = sorted(map(repr, await redis.keys(f"chat:{{{session}}}:*")))
                assert left == [repr(f"chat:{{{session}}}:{kind}".encode()) for kind in ("deleted", "owner")]
            # The answer states of a and b are released, archived (a) or not (b): only c's is Alice's.
            assert len(await redis.keys("chat:message:{alice/*")) == 1
            assert (await client.get("/history/theirs", headers=BOB)).json()["count"] == 2
            theirs = await client.get("/conversations/c", headers=ALICE)
            assert theirs.json()["message_count"] == 2
            engine = create_engine(settings)
            try:
                async with engine.connect() as connection:
                    rated = (await connection.execute(select(feedback.c.user_id))).scalars().all()
            finally:
                await engine.dispose()
            assert rated == []
    finally:
        await redis.aclose()


async def test_another_keys_conversation_is_not_found(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    keys = f"alice:{ALICE_KEY},bob:{BOB_KEY}"
    async with app_client(make_settings(api_keys=keys)) as client:
        await chat(client, "s1", "Alice's secret", headers=ALICE)
        await archived(client, 1, headers=ALICE)
        assert (await client.get("/conversations/s1", headers=BOB)).status_code == 404
        assert (await client.patch("/conversations/s1", json={"title": "x"}, headers=BOB)).status_code == 404
        assert (await client.delete("/conversations/s1", headers=BOB)).status_code == 404
        listed = await client.get("/conversations", params={"user_id": "u1"}, headers=BOB)
        assert listed.json()["conversations"] == []
        found = await client.get(
            "/conversations/search", params={"user_id": "u1", "q": "secret"}, headers=BOB
        )
        assert found.json()["conversations"] == []
        assert (await client.get("/conversations/s1", headers=ALICE)).status_code == 200


async def test_history_from_the_record_keeps_its_owner_after_redis_let_it_expire(
    make_settings: Callable[..., Settings], app_client: AppClient, redis_server: RedisServer
) -> None:
    keys = f"alice:{ALICE_KEY},bob:{BOB_KEY}"
    # The default archiver (a child process) may archive after the owner record's 1-s TTL: the outbox's
    # entries name their owner.
    settings = make_settings(api_keys=keys, chat_history_ttl=1, redis_url=redis_server.url, archiver="auto")
    redis = Redis.from_url(redis_server.url)
    try:
        async with app_client(settings) as client:
            await chat(client, "s1", "Alice's secret", headers=ALICE)
            await archived(client, 1, headers=ALICE)
            before = (await client.get("/history/s1", headers=ALICE)).json()

            async def expired() -> bool:
                return not await redis.exists("chat:{s1}:history", "chat:{s1}:owner")

            await eventually(expired, "the history and its owner record expired from Redis")
            # Only the SQL record knows whose it is now: the owner reads it as before, another key cannot.
            assert (await client.get("/history/s1", headers=ALICE)).json() == before
            assert (await client.get("/history/s1", headers=BOB)).status_code == 404

            # The id is free in Redis again, but the record knows it as Alice's: Bob may not take it up,
            # and Alice goes on in it.
            body = {"session_id": "s1", "message": "Bob's own question", "user_id": "u1"}
            refused = await client.post("/chat", json=body, headers=BOB)
            assert refused.status_code == 403, refused.text
            assert refused.json()["error"]["code"] == "session_forbidden"
            assert (await client.get("/conversations/s1", headers=BOB)).status_code == 404
            await chat(client, "s1", "Alice goes on", headers=ALICE)

            async def four() -> Json | None:
                found: Json = (await client.get("/conversations/s1", headers=ALICE)).json()
                return found if found["message_count"] == 4 else None

            mine = await eventually(four, "Alice's second exchange archived")
            assert {m["turn"]["user_id"] for m in mine["messages"]} == {"u1"}
            assert "Bob's own question" not in {m["turn"]["content"] for m in mine["messages"]}
    finally:
        await redis.aclose()
