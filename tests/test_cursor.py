"""The transport-neutral cursor (cursor.py) against a real redis-server: replay after a position then
live, `Reset` when the log no longer reaches back, one answer from its `start` to its end, and `close()`.

Cursors are made as every protocol makes them, by `ChatService.follow`, on services from the builder.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

import pytest

from cursor import KEEPALIVE, CursorItem, EventCursor, Reset
from models import ChatRequest
from stores.replay_log import Entry
from testkit.redis_server import RedisServer
from testkit.waiting import eventually
from tests.chat_harness import KEYS, Harness, RunService, ScriptedSource

pytestmark = pytest.mark.redis

TIMEOUT = 10


@asynccontextmanager
async def iterating(cursor: EventCursor) -> AsyncIterator[AsyncGenerator[CursorItem, None]]:
    """Iterate the cursor; close it and its iteration (and so its listener) when the block ends."""
    items = aiter(cursor)
    try:
        yield items
    finally:
        cursor.close()
        await items.aclose()


async def take(items: AsyncIterator[CursorItem], count: int) -> list[CursorItem]:
    """The next `count` items, keepalives left out."""
    taken: list[CursorItem] = []
    async with asyncio.timeout(TIMEOUT):
        while len(taken) < count:
            item = await anext(items)
            if item is not KEEPALIVE:
                taken.append(item)
    return taken


async def rest(items: AsyncIterator[CursorItem]) -> list[CursorItem]:
    """Every item until the cursor ends, keepalives left out (fails if it does not end)."""
    async with asyncio.timeout(TIMEOUT):
        return [item async for item in items if item is not KEEPALIVE]


def entries(items: list[CursorItem]) -> list[Entry]:
    assert all(isinstance(item, Entry) for item in items), items
    return cast(list[Entry], items)


async def log_ids(harness: Harness, session_id: str) -> list[str]:
    """The ids of the session's log entries, oldest first, read from Redis itself."""
    reply = cast(list[tuple[bytes, object]], await harness.redis.xrange(KEYS.events(session_id)))
    return [entry_id.decode() for entry_id, _ in reply]


async def submit(harness: Harness, session_id: str, message: str = "Again") -> str:
    accepted, _ = await harness.service.submit(
        ChatRequest(session_id=session_id, message=message, user_id="user1")
    )
    return accepted.message_id


async def test_after_a_position_replays_exactly_what_follows_it_then_live_events(
    run_service: RunService, redis_server: RedisServer
) -> None:
    async with run_service(ScriptedSource(["one", " two", " three"]), redis_url=redis_server.url) as harness:
        first, _ = await harness.chat(session_id="s1")
        ids = await log_ids(harness, "s1")
        assert len(ids) == 5  # start, three chunks, end
        cursor = await harness.service.follow("s1", after=ids[1])
        async with iterating(cursor) as items:
            replay = entries(await take(items, 3))
            assert [entry.id for entry in replay] == ids[2:]
            assert [entry.type for entry in replay] == ["chunk", "chunk", "end"]
            assert {entry.message_id for entry in replay} == {first}
            # Nothing more is in the log: what comes next is live, after what was replayed.
            second = await submit(harness, "s1")
            (live,) = entries(await take(items, 1))
        assert (live.type, live.message_id) == ("start", second)
        assert live.key > replay[-1].key
        assert live.id == (await log_ids(harness, "s1"))[5]


async def test_after_a_position_the_log_no_longer_holds_yields_reset_first(
    run_service: RunService, redis_server: RedisServer
) -> None:
    async with run_service(ScriptedSource(["one", " two", " three"]), redis_url=redis_server.url) as harness:
        await harness.chat(session_id="s1")
        ids = await log_ids(harness, "s1")
        # Trim the log's oldest two entries, as STREAM_MAXLEN does once the log is long enough.
        assert await harness.redis.xtrim(KEYS.events("s1"), minid=ids[2], approximate=False) == 2
        cursor = await harness.service.follow("s1", after=ids[0])
        async with iterating(cursor) as items:
            (reset,) = await take(items, 1)
            second = await submit(harness, "s1")
            (live,) = entries(await take(items, 1))
    assert reset == Reset("s1", ids[-1])  # resume from the newest entry, after reloading the history
    assert (live.type, live.message_id) == ("start", second)


async def test_following_a_finished_answer_yields_its_events_then_ends(
    run_service: RunService, redis_server: RedisServer
) -> None:
    async with run_service(ScriptedSource(["one", " two"]), redis_url=redis_server.url) as harness:
        message_id, events = await harness.chat(session_id="s1")
        await harness.chat("Another", session_id="s1")  # later entries of the session are not its own
        async with iterating(await harness.service.follow("s1", message_id=message_id)) as items:
            followed = entries(await rest(items))
        ids = await log_ids(harness, "s1")
        # Resumed after its terminal entry: the client has it all, and the cursor ends with nothing.
        async with iterating(
            await harness.service.follow("s1", message_id=message_id, after=followed[-1].id)
        ) as items:
            resumed = await rest(items)
    assert [entry.type for entry in followed] == [event["type"] for event in events]
    assert [entry.type for entry in followed] == ["start", "chunk", "chunk", "end"]
    assert {entry.message_id for entry in followed} == {message_id}
    assert [entry.id for entry in followed] == ids[:4]
    assert resumed == []


async def test_close_ends_an_idle_cursor_and_lets_go_of_the_session(
    run_service: RunService, redis_server: RedisServer
) -> None:
    async with run_service(ScriptedSource(["unused"]), redis_url=redis_server.url) as harness:

        async def subscribers(count: int) -> bool:
            reply = await harness.redis.pubsub_numsub(KEYS.channel("idle"))
            return int(reply[0][1]) == count

        cursor = await harness.service.follow("idle")
        iteration = asyncio.create_task(rest(aiter(cursor)))
        await eventually(lambda: subscribers(1), "the cursor follows the session")
        assert not iteration.done()  # nothing to send: it waits
        cursor.close()
        async with asyncio.timeout(TIMEOUT):
            assert await iteration == []
        await eventually(lambda: subscribers(0), "the session is let go")


async def test_what_piles_up_while_a_client_is_not_taking_comes_in_one_batch(
    run_service: RunService, redis_server: RedisServer
) -> None:
    """A transport sends each batch in one write: the replay is one batch, and so is everything that
    arrived live while the client's task was busy (here: not iterating)."""
    async with run_service(ScriptedSource(["one", " two", " three"]), redis_url=redis_server.url) as harness:
        await harness.chat(session_id="s1")
        ids = await log_ids(harness, "s1")
        slow = await harness.service.follow("s1", after=ids[0])
        probe = await harness.service.follow("s1", after=ids[-1])
        async with contextlib.aclosing(slow.batches()) as batches, iterating(probe) as items:
            replay = await anext(batches)
            assert [entry.id for entry in entries(replay)] == ids[1:]
            second = await submit(harness, "s1")
            # The probe follows the same session: once it has the answer's end, the hub has handed the
            # whole answer to the slow cursor's inbox as well.
            live = entries(await take(items, 5))
            assert (live[0].type, live[-1].type) == ("start", "end")
            async with asyncio.timeout(TIMEOUT):
                piled = entries(await anext(batches))
    assert [entry.id for entry in piled] == [entry.id for entry in live]
    assert {entry.message_id for entry in piled} == {second}
