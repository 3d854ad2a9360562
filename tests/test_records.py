"""The conversation record (records/): migrations up and down, and archiving that stores each turn once,
on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

import records.history
from archiver import Archiver
from config import Settings
from models import ChatTurn
from records.database import create_engine, current_revision, migrate
from records.history import owner_in_record
from records.schema import messages
from records.store import ROWS_PER_STATEMENT, ConversationStore
from redis_client import KeySpace
from stores.outbox import Outbox, OutboxEntry, outbox_append, outbox_branch
from testkit.processes import ROOT
from testkit.service import service_environment
from testkit.waiting import eventually
from tests.record_backends import database_url

__all__ = ["database_url"]

TABLES = {"conversations", "messages", "feedback"}


async def tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        names = await connection.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    return names & TABLES


def entry(number: int, turn: ChatTurn, session: str = "s1") -> OutboxEntry:
    return OutboxEntry(
        "chat:outbox", f"{1_700_000_000_000 + number}-0", session, turn.model_dump(mode="json")
    )


@pytest.fixture
async def store(
    make_settings: Callable[..., Settings], database_url: str
) -> AsyncIterator[ConversationStore]:
    """A migrated record on each backend, its engine disposed after the test."""
    engine = create_engine(make_settings(database_url=database_url))
    try:
        await migrate(engine)
        yield ConversationStore(engine, model="m")
    finally:
        await engine.dispose()


async def test_migrations_go_up_and_down(make_settings: Callable[..., Settings], database_url: str) -> None:
    engine = create_engine(make_settings(database_url=database_url))
    try:
        assert await migrate(engine) is True
        assert await tables(engine) == TABLES
        assert await current_revision(engine) == "0004"
        assert await migrate(engine) is False  # current: nothing to do
        assert await migrate(engine, "base", downgrade=True) is True
        assert await tables(engine) == set()
        assert await current_revision(engine) is None
        assert await migrate(engine) is True
        assert await tables(engine) == TABLES
    finally:
        await engine.dispose()


async def test_make_migrates_command_brings_the_configured_database_up_and_down(
    make_settings: Callable[..., Settings], database_url: str
) -> None:
    """`make migrate` runs `python -m records.database upgrade head`, configured as the service is."""
    environment = {**service_environment(), "DATABASE_URL": database_url}

    async def run(*arguments: str) -> str:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "records.database", *arguments, cwd=ROOT, env=environment,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await process.communicate()
        assert process.returncode == 0, output.decode()
        return output.decode()

    engine = create_engine(make_settings(database_url=database_url))
    try:
        assert "migrated to head" in await run("upgrade", "head")
        assert (await tables(engine), await current_revision(engine)) == (TABLES, "0004")
        assert "schema is current" in await run("upgrade", "head")
        assert "migrated to 0003" in await run("downgrade", "0003")
        assert await current_revision(engine) == "0003"
        await run("downgrade", "base")
        assert await tables(engine) == set()
    finally:
        await engine.dispose()


async def test_an_entry_archived_twice_is_stored_once(store: ConversationStore) -> None:
    question = ChatTurn.model_validate(
        {"message_id": "m1", "role": "user", "content": "What is  a\nstream?", "user_id": "u1",
         "created_at": "2026-01-01T00:00:00Z"}
    )  # fmt: skip
    answer = ChatTurn.assistant("m1", "A log.", "u1", "stop")
    batch = [entry(1, question), entry(2, answer)]
    assert await store.archive(batch, {"s1": "key-a"}) == 2
    await store.archive(batch[1:], {"s1": "key-a"})  # a retry after a timeout, or a claim
    row = await store.conversation("key-a", "s1")
    assert row is not None
    assert (row["title"], row["message_count"], row["user_id"]) == ("What is a stream?", 2, "u1")
    history = await store.history("s1")
    assert [ChatTurn.model_validate(turn) for turn in history] == [question, answer]
    assert await store.conversation("key-b", "s1") is None  # another key's is not found


def turn(message_id: str, role: str, at: str) -> ChatTurn:
    return ChatTurn.model_validate(
        {"message_id": message_id, "role": role, "content": message_id, "user_id": "u1", "created_at": at}
    )


async def test_later_batches_add_to_the_count_and_move_updated_at_forward_only(
    store: ConversationStore,
) -> None:
    await store.archive([entry(1, turn("m1", "user", "2026-01-01T00:00:00Z"))], {"s1": "k"})
    await store.archive([entry(2, turn("m1", "assistant", "2026-01-01T00:00:05Z"))], {"s1": "k"})
    # A turn archived late (another consumer's claimed entry) with an older time, and a repeat.
    late = [
        entry(3, turn("m0", "user", "2025-12-31T00:00:00Z")),
        entry(2, turn("m1", "assistant", "2026-01-01T00:00:05Z")),
    ]
    await store.archive(late, {"s1": "k"})
    row = await store.conversation("k", "s1")
    assert row is not None
    assert row["message_count"] == 3
    assert row["updated_at"].replace(tzinfo=UTC) == datetime(2026, 1, 1, 0, 0, 5, tzinfo=UTC)


async def test_a_batch_longer_than_one_statement_is_stored_whole_and_once(store: ConversationStore) -> None:
    turns = [
        entry(n, turn(f"m{n}", "user", "2026-01-01T00:00:00Z"), f"s{n % 3}")
        for n in range(ROWS_PER_STATEMENT * 2 + 5)
    ]
    assert await store.archive(turns, {}) == len(turns)
    await store.archive(turns[ROWS_PER_STATEMENT - 3 :], {})  # a repeat across statements' bounds
    counts = [
        (row["message_count"] if (row := await store.conversation("", f"s{n}")) else 0) for n in range(3)
    ]
    assert counts == [len(turns[n::3]) for n in range(3)]
    assert [len(await store.messages(f"s{n}")) for n in range(3)] == counts


async def append(
    redis: Redis, keys: KeySpace, stored: ChatTurn, session: str = "s1", owner: str | None = None
) -> None:
    """The outbox entry the service writes for a stored turn of `session`, owned by `owner`."""
    _, stream, _, *fields = outbox_append(keys, session, stored.model_dump_json(exclude_none=True), owner)
    await redis.xadd(
        str(stream), {str(name): value for name, value in zip(fields[::2], fields[1::2], strict=True)}
    )


async def test_the_archiver_goes_on_at_once_after_a_full_batch_and_waits_after_a_partial_one(
    store: ConversationStore, fake: Redis
) -> None:
    keys = KeySpace("chat")
    for n in range(5):
        await append(fake, keys, turn(f"m{n}", "user", "2026-01-01T00:00:00Z"))
    # Batches of 2 and a pause of an hour: the five turns are archived only if full batches do not wait.
    archiver = Archiver(
        Outbox(fake, keys, timeout=1),
        store,
        CollectorRegistry(),
        batch=2,
        claim_seconds=30,
        poll_seconds=3600,
    )
    archiver.start()

    def archived(count: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            row = await store.conversation("", "s1")
            return (
                row is not None and row["message_count"] == count and await fake.xlen(keys.outbox("s1")) == 0
            )

        return check

    try:
        await eventually(archived(5), "every turn is archived and acknowledged")
        await append(fake, keys, turn("m5", "user", "2026-01-01T00:00:00Z"))
        archiver.wake()  # after a partial batch it waits for more to gather (an hour here) or a wake-up
        await eventually(archived(6), "the woken archiver takes the new turn")
    finally:
        await archiver.close()


async def test_an_unexpected_error_pauses_the_archiver_and_it_goes_on(
    store: ConversationStore, fake: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not only an outage: whatever a cycle raises is counted, reported and retried; the task lives on."""
    keys = KeySpace("chat")
    archiver = Archiver(
        Outbox(fake, keys, timeout=1),
        store,
        CollectorRegistry(),
        batch=10,
        claim_seconds=30,
        poll_seconds=0.05,
    )
    archive = store.archive
    raised: list[Exception] = []

    async def broken_once(entries: Sequence[OutboxEntry], owners: Mapping[str, str]) -> int:
        if not raised:
            raised.append(RuntimeError("a bug"))
            raise raised[0]
        return await archive(entries, owners)

    monkeypatch.setattr(store, "archive", broken_once)
    await append(fake, keys, turn("m0", "user", "2026-01-01T00:00:00Z"))
    archiver.start()
    try:

        async def archived() -> bool:
            return [row["message_id"] for row in await store.messages("s1")] == ["m0"]

        await eventually(archived, "the turn is archived after the failed cycle")

        # The cycle that stored it clears the error once it has ended (acknowledged, measured): a
        # moment after the turn is in the record.
        async def cleared() -> bool:
            return archiver.state.error is None

        await eventually(cleared, "the error cleared by the cycle that worked")
        assert archiver.state.failures == 1
    finally:
        await archiver.close()
    assert len(raised) == 1


def refusing(store: ConversationStore, refused: set[str]) -> Callable[..., Awaitable[int]]:
    """The store's archive, refusing (as a constraint would) any batch holding one of these turns."""
    archive = store.archive

    async def archive_unless_refused(entries: Sequence[OutboxEntry], owners: Mapping[str, str]) -> int:
        if any(entry.turn and entry.turn["message_id"] in refused for entry in entries):
            raise ValueError("refused")
        return await archive(entries, owners)

    return archive_unless_refused


async def test_a_turn_keeps_its_owner_however_late_it_is_archived(
    store: ConversationStore, fake: Redis
) -> None:
    keys = KeySpace("chat")
    archiver = Archiver(Outbox(fake, keys, timeout=1), store, CollectorRegistry(), batch=10, claim_seconds=30)
    # The entry names its owner: archived after the owner record expired (here: never written), it
    # is still the key's.
    await append(fake, keys, turn("m0", "user", "2026-01-01T00:00:00Z"), owner="key-a")
    # An entry that names none (an open service's, or one written before entries named owners) takes
    # its owner record's.
    await fake.set(keys.owner("s2"), "key-b")
    await append(fake, keys, turn("m1", "user", "2026-01-01T00:00:01Z"), session="s2")
    assert await archiver.cycle() == 2
    assert await store.owner_of("s1") == "key-a"
    assert await store.owner_of("s2") == "key-b"
    assert await store.conversation("key-a", "s1") is not None
    assert await store.conversation("", "s1") is None


async def test_a_session_id_another_key_takes_up_again_never_adds_to_the_first_keys_conversation(
    store: ConversationStore, fake: Redis
) -> None:
    keys = KeySpace("chat")
    registry = CollectorRegistry()
    archiver = Archiver(Outbox(fake, keys, timeout=1), store, registry, batch=10, claim_seconds=30)
    await append(fake, keys, turn("m0", "user", "2026-01-01T00:00:00Z"), owner="key-a")
    await append(fake, keys, turn("m0", "assistant", "2026-01-01T00:00:01Z"), owner="key-a")
    assert await archiver.cycle() == 2
    # s1's history and owner record expired from Redis, and another key sent to s1 (a switch of
    # branch names no key: its owner record tells), beside a session of its own.
    await fake.set(keys.owner("s1"), "key-b")
    await append(fake, keys, turn("m1", "user", "2026-01-02T00:00:00Z"), owner="key-b")
    _, stream, _, *fields = outbox_branch(keys, "s1", "m1")
    await fake.xadd(str(stream), {str(fields[0]): fields[1], str(fields[2]): fields[3]})
    await append(fake, keys, turn("m2", "user", "2026-01-02T00:00:01Z"), session="s2", owner="key-b")
    assert await archiver.cycle() == 1

    assert [row["message_id"] for row in await store.messages("s1")] == ["m0", "m0"]
    assert await store.owner_of("s1") == "key-a"
    assert await store.owner_of("s2") == "key-b"
    assert await store.active_id("s1") == "m0"
    rejected: Any = await fake.xrange(keys.outbox_rejected(str(stream)))
    assert [(fields[b"s"], fields[b"r"]) for _, fields in rejected] == [
        (b"s1", b"another key's conversation")
    ] * 2
    assert archiver.state.set_aside == 2
    assert registry.get_sample_value("chat_archive_set_aside_entries_total") == 2
    assert await fake.xpending(str(stream), "archiver") == {
        "pending": 0,
        "min": None,
        "max": None,
        "consumers": [],
    }


async def test_admission_asks_the_record_whose_a_session_is_and_never_waits_on_it(
    store: ConversationStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.archive([entry(1, turn("m1", "user", "2026-01-01T00:00:00Z"))], {"s1": "key-a"})
    assert await owner_in_record(store, "s1") == "key-a"
    assert await owner_in_record(store, "s2") is None

    async def refused(session_id: str) -> str | None:
        raise OperationalError("SELECT", {}, OSError("connection refused"))

    monkeypatch.setattr(store, "owner_of", refused)
    assert await owner_in_record(store, "s1") is None  # the chat goes on; the archiver guards the record
    never = asyncio.Event()

    async def hangs(session_id: str) -> str | None:
        await never.wait()
        return None

    monkeypatch.setattr(store, "owner_of", hangs)
    monkeypatch.setattr(records.history, "RECORD_OWNER_SECONDS", 0.05)
    async with asyncio.timeout(10):  # a guard: the bound above is what answers
        assert await owner_in_record(store, "s1") is None


async def test_a_conversation_deleted_while_its_batch_is_stored_stays_deleted(
    store: ConversationStore, fake: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = KeySpace("chat")
    outbox = Outbox(fake, keys, timeout=1)
    archiver = Archiver(outbox, store, CollectorRegistry(), batch=10, claim_seconds=30)
    await append(fake, keys, turn("m0", "user", "2026-01-01T00:00:00Z"))
    await append(fake, keys, turn("m0", "assistant", "2026-01-01T00:00:01Z"))
    archive = store.archive

    async def deleted_meanwhile(entries: Sequence[OutboxEntry], owners: Mapping[str, str]) -> int:
        # DELETE /conversations/s1, between the batch's read and its rows' commit, as the route does it
        await outbox.mark_deleted("s1")
        await outbox.forget("s1")
        await store.delete("", ["s1"])
        return await archive(entries, owners)

    monkeypatch.setattr(store, "archive", deleted_meanwhile)
    await archiver.cycle()
    assert await store.messages("s1") == []
    assert await store.conversation("", "s1") is None

    # A new exchange under the same id after the deletion is archived as any other.
    monkeypatch.setattr(store, "archive", archive)
    await append(fake, keys, turn("m1", "user", "2026-01-02T00:00:00Z"))
    assert await archiver.cycle() == 1
    assert [row["message_id"] for row in await store.messages("s1")] == ["m1"]
    assert await store.conversation("", "s1") is not None


async def test_an_entry_the_record_refuses_is_set_aside_and_the_rest_of_its_batch_archived(
    store: ConversationStore, fake: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = KeySpace("chat")
    registry = CollectorRegistry()
    outbox = Outbox(fake, keys, timeout=1)
    archiver = Archiver(outbox, store, registry, batch=10, claim_seconds=30)
    for n, message_id in enumerate(["m0", "bad", "m2"]):
        await append(fake, keys, turn(message_id, "user", f"2026-01-01T00:00:0{n}Z"))
    monkeypatch.setattr(store, "archive", refusing(store, {"bad"}))

    assert await archiver.cycle() == 2
    assert [row["message_id"] for row in await store.messages("s1")] == ["m0", "m2"]
    assert await fake.xlen(keys.outbox("s1")) == 0  # nothing holds back the turns after it
    kept: Any = await fake.xrange(keys.outbox_rejected(keys.outbox("s1")))
    assert len(kept) == 1
    fields = kept[0][1]
    assert (fields[b"s"], fields[b"r"]) == (b"s1", b"ValueError")
    assert orjson.loads(fields[b"t"])["message_id"] == "bad"
    assert archiver.state.set_aside == 1
    assert registry.get_sample_value("chat_archive_set_aside_entries_total") == 1
    await outbox.forget("s1")  # the conversation is deleted: what was set aside of it goes too
    assert await fake.xlen(keys.outbox_rejected(keys.outbox("s1"))) == 0


async def test_when_the_record_refuses_every_entry_nothing_is_set_aside_and_the_batch_waits(
    store: ConversationStore, fake: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every entry refused: the fault is not in them (a schema out of date, a bug). They stay."""
    keys = KeySpace("chat")
    archiver = Archiver(Outbox(fake, keys, timeout=1), store, CollectorRegistry(), batch=10, claim_seconds=30)
    for n, message_id in enumerate(["a", "b"]):
        await append(fake, keys, turn(message_id, "user", f"2026-01-01T00:00:0{n}Z"))
    monkeypatch.setattr(store, "archive", refusing(store, {"a", "b"}))

    with pytest.raises(ValueError, match="refused"):
        await archiver.cycle()
    assert await fake.xlen(keys.outbox("s1")) == 2
    assert await fake.exists(keys.outbox_rejected(keys.outbox("s1"))) == 0
    assert archiver.state.set_aside == 0


class CountingOutbox(Outbox):
    """An outbox that records which reads the archiver makes: its own unacknowledged entries, or new ones."""

    def __init__(self, redis: Redis, keys: KeySpace) -> None:
        super().__init__(redis, keys, timeout=1)
        self.reads: list[str] = []

    async def read(self, stream: str, count: int, *, new: bool) -> list[OutboxEntry]:
        self.reads.append("new" if new else "unacknowledged")
        return await super().read(stream, count, new=new)


async def test_an_idle_archiver_reads_only_new_entries_and_rereads_what_a_failure_left(
    store: ConversationStore, fake: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle cycle is one read of the outbox; entries read by a cycle that failed are read again."""
    keys = KeySpace("chat")
    outbox = CountingOutbox(fake, keys)
    archiver = Archiver(outbox, store, CollectorRegistry(), batch=10, claim_seconds=30, clock=lambda: 0.0)

    async def reads_of_one_cycle() -> list[str]:
        outbox.reads.clear()
        await archiver.cycle()
        return list(outbox.reads)

    await append(fake, keys, turn("m0", "user", "2026-01-01T00:00:00Z"))
    assert await reads_of_one_cycle() == ["unacknowledged", "new"]  # at start: what an earlier run left
    assert await reads_of_one_cycle() == ["new"]

    archive = store.archive

    async def down(entries: Sequence[OutboxEntry], owners: Mapping[str, str]) -> int:
        raise OperationalError("INSERT", {}, ConnectionRefusedError())

    await append(fake, keys, turn("m1", "user", "2026-01-01T00:00:01Z"))
    monkeypatch.setattr(store, "archive", down)
    with pytest.raises(OperationalError):
        await archiver.cycle()
    monkeypatch.setattr(store, "archive", archive)
    assert await reads_of_one_cycle() == ["unacknowledged"]  # m1, read before the failure
    assert [row["message_id"] for row in await store.messages("s1")] == ["m0", "m1"]
    assert await reads_of_one_cycle() == ["new"]
    assert await fake.xlen(keys.outbox("s1")) == 0


async def test_conversations_past_their_retention_are_deleted(
    make_settings: Callable[..., Settings], fake: Redis
) -> None:
    engine = create_engine(make_settings())
    try:
        await migrate(engine)
        store = ConversationStore(engine)
        old = {"message_id": "m1", "role": "user", "content": "Old", "user_id": "u1",
               "created_at": "2026-01-01T00:00:00Z"}  # fmt: skip
        recent = {**old, "message_id": "m2", "content": "Recent", "created_at": "2026-03-01T00:00:00Z"}
        await store.archive(
            [
                entry(1, ChatTurn.model_validate(old), "old"),
                entry(2, ChatTurn.model_validate(recent), "recent"),
            ],
            {},
        )
        now = datetime(2026, 3, 2, tzinfo=UTC).timestamp()
        archiver = Archiver(
            Outbox(fake, KeySpace("chat"), timeout=1), store, CollectorRegistry(),
            batch=10, claim_seconds=30, retention_days=30, clock=lambda: now,
        )  # fmt: skip
        await archiver.cycle()
        assert await store.conversation("", "old") is None
        assert await store.conversation("", "recent") is not None
        assert await store.history("old") == []
    finally:
        await engine.dispose()


async def row_ids(engine: AsyncEngine) -> list[tuple[str, str]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(messages.c.conversation_id, messages.c.id).order_by("position")
        )
    return [(str(conversation), str(row_id)) for conversation, row_id in rows.all()]


async def test_two_keys_turns_of_one_message_id_are_both_archived_and_migrate_down_and_up(
    make_settings: Callable[..., Settings], database_url: str
) -> None:
    """Message ids are each key's own (issue #13, item 7): the record keeps both keys' turns, each in
    its conversation and found by its own key only; a turn's id in the API is as before."""
    engine = create_engine(make_settings(database_url=database_url))
    try:
        await migrate(engine)
        store = ConversationStore(engine, model="m")
        question = ChatTurn.model_validate(
            {"message_id": "m1", "role": "user", "content": "Hi", "user_id": "u1",
             "created_at": "2026-01-01T00:00:00Z"}
        )  # fmt: skip
        answer = ChatTurn.assistant("m1", "Hello.", "u1", "stop")
        alices = [entry(1, question, "alice-s"), entry(2, answer, "alice-s")]
        bobs = [entry(3, question, "bob-s"), entry(4, answer, "bob-s")]
        assert await store.archive(alices, {"alice-s": "alice"}) == 2
        assert await store.archive(bobs, {"bob-s": "bob"}) == 2
        await store.archive([*alices, *bobs], {})  # replayed: nothing changes
        assert await row_ids(engine) == [
            ("alice-s", "alice-s/m1:user"),
            ("alice-s", "alice-s/m1:assistant"),
            ("bob-s", "bob-s/m1:user"),
            ("bob-s", "bob-s/m1:assistant"),
        ]
        found = {owner: await store.answer_of("m1", owner) for owner in ("alice", "bob", "carol")}
        assert {owner: row and row["conversation_id"] for owner, row in found.items()} == {
            "alice": "alice-s",
            "bob": "bob-s",
            "carol": None,
        }

        # Down to bare ids (only one conversation's turns of a shared id can stay), and up again.
        assert await migrate(engine, "0002", downgrade=True) is True
        assert await row_ids(engine) == [("alice-s", "m1:user"), ("alice-s", "m1:assistant")]
        assert await migrate(engine) is True
        assert await row_ids(engine) == [("alice-s", "alice-s/m1:user"), ("alice-s", "alice-s/m1:assistant")]
        assert [turn["content"] for turn in await store.history("alice-s")] == ["Hi", "Hello."]
        assert [hit["id"] for hit in await store.search("alice", "u1", "Hello", 10)] == ["alice-s"]
    finally:
        await engine.dispose()


async def test_turn_counts_survive_the_migration_that_counts_them_when_read(
    make_settings: Callable[..., Settings], database_url: str
) -> None:
    """0004 drops the stored count (SQLite in place: a rebuilt table would cascade to its messages);
    going down stores each conversation's count again."""
    engine = create_engine(make_settings(database_url=database_url))
    try:
        await migrate(engine)
        store = ConversationStore(engine, model="m")
        at = "2026-01-01T00:00:00Z"
        batch = [entry(1, turn("m1", "user", at)), entry(2, turn("m1", "assistant", at))]
        await store.archive([*batch, entry(3, turn("m2", "user", at), "s2")], {})
        assert await migrate(engine, "0003", downgrade=True) is True
        async with engine.connect() as connection:
            stored = await connection.execute(text("SELECT id, message_count FROM conversations ORDER BY id"))
            assert [tuple(row) for row in stored.all()] == [("s1", 2), ("s2", 1)]
        assert await migrate(engine) is True
        assert [len(await store.messages(session)) for session in ("s1", "s2")] == [2, 1]
        row = await store.conversation("", "s1")
        assert row is not None
        assert row["message_count"] == 2
    finally:
        await engine.dispose()


async def test_the_active_branch_moves_with_user_turns_and_switches_but_not_with_answers(
    store: ConversationStore,
) -> None:
    """In one batch or across several, with the conversation new or already there (issue #15)."""
    at = "2026-01-01T00:00:00Z"
    await store.archive([entry(1, turn("m1", "user", at)), entry(2, turn("m1", "assistant", at))], {})
    assert await store.active_id("s1") == "m1"
    await store.archive([entry(3, turn("m2", "user", at))], {})
    await store.archive([entry(4, turn("m2", "assistant", at))], {})  # an answer: the end stays
    assert await store.active_id("s1") == "m2"
    switch = OutboxEntry("chat:outbox", "1700000000005-0", "s1", None, branch="m1")
    await store.archive([switch], {})  # a switch alone
    assert await store.active_id("s1") == "m1"
    late_answer = entry(6, ChatTurn.assistant("m3", "A.", "u1", "stop"))
    await store.archive([entry(5, turn("m3", "user", at)), late_answer, switch], {})
    assert await store.active_id("s1") == "m1"  # the switch came after the user turn
    row = await store.conversation("", "s1")
    assert row is not None
    assert row["message_count"] == 6
