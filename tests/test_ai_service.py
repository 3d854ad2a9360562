"""ChatService (ai_service.py) on fakeredis: an answer's events, its stored turns, failures, shutdown,
clearing and stateless answers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import pytest
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError

from ai_service import ServiceUnavailable
from generation import GenerationOptions
from models import ChatRequest, EndEvent, ErrorEvent, StartEvent, StreamEvent
from providers.base import AnswerError
from providers.simulated import SimulatedAnswerSource, compose_answer
from redis_client import Command, RedisClient
from redis_wire import RedisPipe, open_pipe
from testkit.waiting import eventually
from tests.chat_harness import (
    KEYS,
    RunService,
    ScriptedSource,
    assert_well_formed,
    read_answers,
    user,
)


async def test_an_answer_streams_start_chunks_end_and_lands_in_history(run_service: RunService) -> None:
    async with run_service(ScriptedSource(["Hel", "lo", "", " world"])) as harness:
        message_id, events = await harness.chat()
        turns = await harness.history.read("s1")
    assert_well_formed(events, message_id)
    chunks = [event["content"] for event in events if event["type"] == "chunk"]
    assert chunks == ["Hel", "lo", " world"]  # an empty delta publishes nothing
    assert events[-1]["content"] == "Hello world"
    assert events[-1]["finish_reason"] == "stop"
    assert [(t.role, t.content, t.finish_reason) for t in turns] == [
        ("user", "Hello!", None),
        ("assistant", "Hello world", "stop"),
    ]
    assert turns[1].message_id == message_id


async def test_the_source_sees_the_whole_conversation(run_service: RunService) -> None:
    source = ScriptedSource(["ok"])
    async with run_service(source, system_prompt="Be brief.") as harness:
        await harness.chat("first")
        await harness.chat("second")
    assert [(m.role, m.content) for m in source.conversations[1]] == [
        ("system", "Be brief."),
        ("user", "first"),
        ("assistant", "ok"),
        ("user", "second"),
    ]


async def test_a_source_error_ends_the_stream_and_keeps_the_partial_answer(run_service: RunService) -> None:
    source = ScriptedSource(["Partial"], fail=AnswerError("upstream_timeout", "the model timed out"))
    async with run_service(source) as harness:
        message_id, events = await harness.chat()
        turns = await harness.history.read("s1")
    assert_well_formed(events, message_id)
    assert events[-1]["error"] == {"code": "upstream_timeout", "message": "the model timed out"}
    assert (turns[-1].content, turns[-1].finish_reason) == ("Partial", "error")


async def test_an_unexpected_failure_is_an_internal_error_without_its_details(
    run_service: RunService,
) -> None:
    source = ScriptedSource(["Partial"], fail=RuntimeError("password=hunter2 at /srv/app"))
    async with run_service(source) as harness:
        message_id, events = await harness.chat()
    assert_well_formed(events, message_id)
    assert events[-1]["error"]["code"] == "internal_error"
    assert "hunter2" not in str(events)


async def test_shutdown_ends_running_answers_after_the_grace_period(run_service: RunService) -> None:
    hold = asyncio.Event()  # never set: the answer would run forever
    async with run_service(
        ScriptedSource(["Half an ans", "wer"], hold=hold), shutdown_grace_seconds=0.2
    ) as harness:
        async with harness.redis.pubsub() as pubsub:
            await pubsub.subscribe(KEYS.channel("s1"))
            accepted, _ = await harness.service.submit(
                ChatRequest(session_id="s1", message="Hi", user_id="user1")
            )
            async with asyncio.timeout(10):
                await harness.service.shutdown()
            events = (await read_answers(pubsub, {accepted.message_id}))[accepted.message_id]
        turns = await harness.history.read("s1")
        assert harness.service.active_answers == 0
    assert_well_formed(events, accepted.message_id)
    assert events[-1]["error"]["code"] == "shutdown"
    assert (turns[-1].content, turns[-1].finish_reason) == ("Half an answer", "shutdown")


async def test_shutdown_lets_answers_finish_within_the_grace_period(run_service: RunService) -> None:
    source = ScriptedSource(["a", "b", "c"], delay=0.05)
    async with (
        run_service(source, shutdown_grace_seconds=30) as harness,
        harness.redis.pubsub() as pubsub,
    ):
        await pubsub.subscribe(KEYS.channel("s1"))
        accepted, _ = await harness.service.submit(
            ChatRequest(session_id="s1", message="Hi", user_id="user1")
        )
        started = time.monotonic()
        await harness.service.shutdown()
        waited = time.monotonic() - started
        events = (await read_answers(pubsub, {accepted.message_id}))[accepted.message_id]
    assert events[-1]["type"] == "end"
    assert events[-1]["content"] == "abc"
    assert waited < 10  # it returned once the answer ended, not after the 30s grace


async def test_shutdown_counts_one_grace_period_from_when_the_streams_began_to_drain(
    run_service: RunService, caplog: pytest.LogCaptureFixture
) -> None:
    """The streams' drain and the answers' share one SHUTDOWN_GRACE_SECONDS (issue #13, item 6): an
    answer still running when the drain has used the whole grace period is ended at once."""
    hold = asyncio.Event()  # never set: the answer would run forever
    events: asyncio.Queue[StreamEvent | None] = asyncio.Queue()
    caplog.set_level("INFO", logger="ai_service")
    async with asyncio.timeout(10):  # a guard: the grace period below is 30 s
        async with run_service(
            ScriptedSource(["Half an ans", "wer"], hold=hold), shutdown_grace_seconds=30
        ) as harness:
            await harness.service.submit(
                ChatRequest(session_id="s1", message="Hi", user_id="u1"), listener=events
            )
            assert isinstance(await events.get(), StartEvent)  # it runs
            streams = harness.services.admission.sse_clients
            streams.end_all(within=15)  # the server begins to drain: its streams end within 15 s
            began = streams.draining_since
            assert began is not None
            streams.end_all(within=1)
            assert streams.draining_since == began  # the drain began once
            # As if the drain had begun a whole grace period ago: the clock's reading, not a wait.
            streams.draining_since = began - 30
    received = []
    while (event := events.get_nowait()) is not None:
        received.append(event)
    assert isinstance(received[-1], ErrorEvent)
    assert received[-1].error.code == "shutdown"
    assert "waiting up to 0.0s for 1 running answers" in caplog.messages


def slow_history_reply(redis: RedisClient) -> RedisPipe:
    """A pipe whose reply to the first assistant-turn write comes back 0.5s late, as from a busy Redis
    (the lateness is the subject of the test, not a wait)."""
    pipe = open_pipe(redis)
    real_round_trip = pipe.round_trip
    slowed = False

    async def round_trip(commands: Sequence[Command]) -> list[Any]:
        nonlocal slowed
        replies = await real_round_trip(commands)
        if not slowed and any(
            command[0] == "RPUSH" and '"assistant"' in str(command[2]) for command in commands
        ):
            slowed = True
            await asyncio.sleep(0.5)  # the late reply under test, not a wait
        return replies

    pipe.round_trip = round_trip  # type: ignore[method-assign]
    return pipe


MARKER = b"marker: nothing follows"


async def messages_until(pubsub: PubSub, marker: bytes, timeout: float = 10) -> list[bytes]:
    """What the subscription receives before `marker`."""
    before: list[bytes] = []
    async with asyncio.timeout(timeout):
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None:
                continue
            if message["data"] == marker:
                return before
            before.append(message["data"])


async def test_an_answer_finishing_as_the_grace_period_ends_is_stored_once(run_service: RunService) -> None:
    # The grace period (0.2s) runs out while the complete answer's history write is in flight.
    async with (
        run_service(
            ScriptedSource(["Hello", " world"]),
            pipes=slow_history_reply,
            shutdown_grace_seconds=0.2,
        ) as harness,
        harness.redis.pubsub() as pubsub,
    ):
        await pubsub.subscribe(KEYS.channel("s1"))
        accepted, _ = await harness.service.submit(
            ChatRequest(session_id="s1", message="Hi", user_id="user1")
        )
        async with asyncio.timeout(10):
            await harness.service.shutdown()
        events = (await read_answers(pubsub, {accepted.message_id}))[accepted.message_id]
        # A marker published now, after shutdown returned, arrives after anything the answer published
        # before it: whatever comes between the terminal event and the marker followed the end.
        await harness.redis.publish(KEYS.channel("s1"), MARKER)
        late = await messages_until(pubsub, MARKER)
        turns = await harness.history.read("s1")
    assert_well_formed(events, accepted.message_id)
    assert late == [], "no event may follow an answer's end"
    assistant = [turn for turn in turns if turn.role == "assistant"]
    assert len(assistant) == 1, [(turn.content, turn.finish_reason) for turn in assistant]
    assert events[-1]["type"] == "end"
    assert (assistant[0].content, assistant[0].finish_reason) == ("Hello world", "stop")


async def test_no_chat_is_accepted_after_shutdown(run_service: RunService) -> None:
    async with run_service(ScriptedSource(["ok"])) as harness:
        await harness.service.shutdown()
        with pytest.raises(ServiceUnavailable):
            await harness.service.submit(ChatRequest(session_id="s1", message="Hi", user_id="user1"))
        assert await harness.history.read("s1") == []


async def test_the_simulated_source_streams_through_the_service(run_service: RunService) -> None:
    async with run_service(SimulatedAnswerSource(stream_delay=0, chunk_delay=0)) as harness:
        message_id, events = await harness.chat("How do I configure Kubernetes autoscaling?")
        turns = await harness.history.read("s1")
    assert_well_formed(events, message_id)
    expected = compose_answer([user("How do I configure Kubernetes autoscaling?")])
    assert "".join(e["content"] for e in events if e["type"] == "chunk") == expected
    assert events[-1]["content"] == expected == turns[-1].content


async def test_clear_deletes_the_history_and_the_replay_log(run_service: RunService) -> None:
    async with run_service(ScriptedSource(["ok"])) as harness:
        await harness.chat()
        assert await harness.redis.exists(KEYS.history("s1"), KEYS.events("s1")) == 2
        await harness.service.clear("s1")
        assert await harness.history.read("s1") == []
        assert await harness.redis.exists(KEYS.history("s1"), KEYS.events("s1")) == 0
        await harness.service.clear("s1")  # clearing an empty session is fine


async def test_a_stateless_answer_runs_through_the_service_and_writes_nothing(
    run_service: RunService,
) -> None:
    hold = asyncio.Event()
    async with run_service(ScriptedSource(["Hel", "lo"], hold=hold)) as harness:
        events: asyncio.Queue[StreamEvent | None] = asyncio.Queue()
        harness.service.submit_stateless([user("Hi")], GenerationOptions(), user_id="u1", listener=events)
        assert harness.service.active_answers == 1  # counted like every answer, against the caps
        hold.set()
        received = []
        async with asyncio.timeout(10):
            while (event := await events.get()) is not None:
                received.append(event)
        assert [event.type for event in received] == ["start", "chunk", "chunk", "end"]
        assert harness.service.active_answers == 0
        # No history, no log, no answer state: only its usage, which every answer adds to its key's.
        assert [key for key in await harness.redis.keys("*") if b":usage:" not in key] == []
        registry = harness.services.metrics.registry
        assert registry.get_sample_value("chat_chunks_published_total") == 2


async def test_shutdown_ends_a_running_stateless_answer(run_service: RunService) -> None:
    async with run_service(
        ScriptedSource(["partial"], hold=asyncio.Event()), shutdown_grace_seconds=0
    ) as harness:
        events: asyncio.Queue[StreamEvent | None] = asyncio.Queue()
        harness.service.submit_stateless([user("Hi")], GenerationOptions(), user_id="u1", listener=events)
        async with asyncio.timeout(10):
            assert (await events.get()) is not None  # start
            assert (await events.get()) is not None  # the chunk: it is running
            await harness.service.shutdown()
        rest = []
        while (event := events.get_nowait()) is not None:
            rest.append(event)
    assert [event.type for event in rest] == ["error"]
    assert isinstance(rest[0], ErrorEvent)
    assert rest[0].error.code == "shutdown"


async def test_an_end_that_cannot_be_stored_is_given_up_after_the_retry_budget(
    run_service: RunService,
) -> None:
    # Redis goes away for good just as the answer ends: it retries storing its end within its budget
    # (injected: 0.3 s, not the default 15 s), then gives up, and its in-process listener still learns
    # how it ended. Nothing hangs.
    down = asyncio.Event()

    def failing(redis: RedisClient) -> RedisPipe:
        pipe = open_pipe(redis)
        real_round_trip = pipe.round_trip

        async def round_trip(commands: Sequence[Command]) -> list[Any]:
            if down.is_set():
                raise RedisConnectionError("Connection refused")
            return await real_round_trip(commands)

        pipe.round_trip = round_trip  # type: ignore[method-assign]
        return pipe

    hold = asyncio.Event()
    async with run_service(
        ScriptedSource(["partial"], hold=hold), pipes=failing, end_retry_seconds=0.3
    ) as harness:
        events: asyncio.Queue[StreamEvent | None] = asyncio.Queue()
        accepted, _ = await harness.service.submit(
            ChatRequest(session_id="s1", message="Hi", user_id="user1"), listener=events
        )
        received: list[StreamEvent | None] = [await events.get(), await events.get()]  # start, a chunk
        # Its retries after the first are transactions of their own (WATCH), on the client's connections.
        real_pipeline = harness.redis.pipeline

        def pipeline(*args: Any, **kwargs: Any) -> Any:
            if down.is_set():
                raise RedisConnectionError("Connection refused")
            return real_pipeline(*args, **kwargs)

        harness.redis.pipeline = pipeline  # type: ignore[method-assign]

        async def chunk_stored() -> bool:
            return int(await harness.redis.xlen(KEYS.events("s1"))) == 2

        await eventually(chunk_stored, "the start and the chunk are in the log")
        down.set()
        hold.set()
        async with asyncio.timeout(10):
            while (event := await events.get()) is not None:
                received.append(event)
        assert harness.service.active_answers == 0
        down.clear()
        turns = await harness.history.read("s1")
    last = received[-1]
    assert isinstance(last, EndEvent)
    assert (last.message_id, last.content) == (accepted.message_id, "partial")
    assert [event.type if event else None for event in received] == ["start", "chunk", "end"]
    assert [turn.role for turn in turns] == ["user"]  # the answer's turn never reached Redis
