"""The simulated model (providers/simulated.py): what it says, and how it paces its chunks."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence

import pytest

from conversation import ConversationMessage
from generation import GenerationOptions
from providers.base import Completion
from providers.simulated import SimulatedAnswerSource, compose_answer
from tests.chat_harness import (
    user,
)


def sentences(text: str) -> list[str]:
    return [part for part in re.split(r"(?<=[.!?])\s+", text.strip()) if part]


async def collect(source: SimulatedAnswerSource, conversation: Sequence[ConversationMessage]) -> list[str]:
    deltas = [delta async for delta in source.stream(conversation, GenerationOptions(), Completion())]
    assert all(isinstance(delta, str) for delta in deltas)
    return [str(delta) for delta in deltas]


@pytest.mark.parametrize(
    ("message", "topic"),
    [
        ("How do I configure Kubernetes autoscaling?", "autoscaling"),
        ("Why is PostgreSQL replication lagging?", "replication"),
        ("What is a vector database?", "database"),
        ("I love gardening tomatoes", "gardening"),
    ],
)
def test_the_answer_is_about_the_message_and_several_sentences_long(message: str, topic: str) -> None:
    answer = compose_answer([user(message)])
    assert topic in answer.lower()
    assert len(sentences(answer)) >= 3


def test_a_greeting_gets_a_greeting_back() -> None:
    answer = compose_answer([user("Hello!")])
    assert answer.startswith(("Hello", "Hi"))
    assert len(sentences(answer)) >= 2


def test_different_messages_get_different_answers() -> None:
    messages = ["How do I bake bread?", "Why do cats purr?", "What is Redis?", "Tell me about volcanoes"]
    answers = {compose_answer([user(message)]) for message in messages}
    assert len(answers) == len(messages)


def test_the_same_conversation_gets_the_same_answer() -> None:
    conversation = [user("Explain Redis streams")]
    assert compose_answer(conversation) == compose_answer(list(conversation))


def test_a_later_answer_refers_back_to_earlier_turns() -> None:
    first = "Tell me about PostgreSQL replication"
    conversation = [
        user(first),
        ConversationMessage(role="assistant", content=compose_answer([user(first)])),
        user("And what about backups?"),
    ]
    answer = compose_answer(conversation)
    assert "backups" in answer
    assert "replication" in answer  # the earlier question
    assert answer != compose_answer([user("And what about backups?")])


async def test_chunks_concatenate_to_the_composed_answer() -> None:
    conversation = [user("How do I configure Kubernetes autoscaling?")]
    chunks = await collect(SimulatedAnswerSource(stream_delay=0, chunk_delay=0), conversation)
    assert len(chunks) > 3
    assert "".join(chunks) == compose_answer(conversation)
    assert all(1 <= len(chunk.split()) <= 3 for chunk in chunks)


async def test_each_chunk_waits_stream_delay_per_word_plus_chunk_delay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pauses: list[float] = []
    real_sleep = asyncio.sleep

    async def recording_sleep(seconds: float) -> None:
        pauses.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr("providers.simulated.asyncio.sleep", recording_sleep)
    source = SimulatedAnswerSource(stream_delay=0.1, chunk_delay=0.05)
    chunks = await collect(source, [user("Why is PostgreSQL replication lagging?")])
    assert pauses == pytest.approx([0.1 * len(chunk.split()) + 0.05 for chunk in chunks])


async def test_with_both_delays_zero_nothing_sleeps(monkeypatch: pytest.MonkeyPatch) -> None:
    pauses: list[float] = []

    async def recording_sleep(seconds: float) -> None:
        pauses.append(seconds)

    monkeypatch.setattr("providers.simulated.asyncio.sleep", recording_sleep)
    conversation = [user("What is a vector database?")]
    chunks = await collect(SimulatedAnswerSource(stream_delay=0, chunk_delay=0), conversation)
    assert "".join(chunks) == compose_answer(conversation)
    assert pauses == []


async def test_pacing_really_takes_the_configured_time() -> None:
    source = SimulatedAnswerSource(stream_delay=0.005, chunk_delay=0.01)
    conversation = [user("How do I configure Kubernetes autoscaling?")]
    words = len(compose_answer(conversation).split(" "))
    chunks = -(-words // source.words_per_chunk)
    started = time.monotonic()
    await collect(source, conversation)
    # A lower bound only: a busy machine may be slower, never faster.
    assert time.monotonic() - started >= 0.9 * (0.005 * words + 0.01 * chunks)
