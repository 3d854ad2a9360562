"""Answer sources against a real OpenAI-compatible server on loopback: the context they send, retries,
failures, usage, and cancellation, as the chat pipeline (ChatService on the embedded Redis) sees them."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
from pydantic import ValidationError

from ai_service import ChatService
from config import Settings, format_validation_error
from models import (
    ChatRequest,
    ChatTurn,
    ChunkEvent,
    EndEvent,
    ErrorEvent,
    StartEvent,
    StreamEvent,
)
from parts import Usage
from providers import PROVIDERS, create_answer_source
from providers.base import AIHealth
from providers.openai_compatible import model_location
from services import build_services
from stores.history import HistoryStore
from testkit.openai_server import OpenAIServer, Reply
from testkit.processes import ROOT
from testkit.redis_server import RedisServer
from tests.conftest import AppClient, wait_for_history

SettingsFactory = Callable[..., Settings]


@dataclass
class Chat:
    """The chat pipeline as the app wires it, with an in-process listener on each answer."""

    service: ChatService
    history: HistoryStore

    async def start(self, message: str, session_id: str = "s1") -> asyncio.Queue[StreamEvent | None]:
        """Send a message; return the queue its answer's events arrive on."""
        events: asyncio.Queue[StreamEvent | None] = asyncio.Queue()
        request = ChatRequest(session_id=session_id, message=message, user_id="u1")
        await self.service.submit(request, listener=events)
        return events

    async def ask(self, message: str, session_id: str = "s1") -> list[StreamEvent]:
        """Send a message and return every event of its answer."""
        return await collect(await self.start(message, session_id))

    async def turns(self, session_id: str = "s1") -> list[ChatTurn]:
        return await self.history.read(session_id)


async def collect(events: asyncio.Queue[StreamEvent | None]) -> list[StreamEvent]:
    received: list[StreamEvent] = []
    async with asyncio.timeout(20):
        while (event := await events.get()) is not None:
            received.append(event)
    return received


@asynccontextmanager
async def chat_pipeline(settings: Settings) -> AsyncIterator[Chat]:
    async with build_services(settings) as services:
        yield Chat(services.chat, services.history)


def error_of(events: list[StreamEvent]) -> ErrorEvent:
    assert isinstance(events[0], StartEvent)
    last = events[-1]
    assert isinstance(last, ErrorEvent), f"the answer did not fail: {events}"
    return last


def text_of(events: list[StreamEvent]) -> str:
    return "".join(event.content for event in events if isinstance(event, ChunkEvent))


def sent(model_server: OpenAIServer, index: int = -1) -> list[dict[str, str]]:
    messages: list[dict[str, str]] = model_server.requests[index].body["messages"]
    return messages


# --- Context -------------------------------------------------------------------------------------


async def test_model_receives_system_prompt_earlier_turns_and_new_message(
    openai_settings: SettingsFactory, model_server: OpenAIServer
) -> None:
    model_server.script(Reply(tokens=("Answer", " one.")), Reply(tokens=("Answer two.",)))
    async with chat_pipeline(openai_settings(system_prompt="Answer in haiku.")) as chat:
        await chat.ask("First question")
        await chat.ask("Second question")
        events = await chat.ask("Third question")
    assert isinstance(events[-1], EndEvent)
    assert sent(model_server) == [
        {"role": "system", "content": "Answer in haiku."},
        {"role": "user", "content": "First question"},
        {"role": "assistant", "content": "Answer one."},
        {"role": "user", "content": "Second question"},
        {"role": "assistant", "content": "Answer two."},
        {"role": "user", "content": "Third question"},
    ]
    body = model_server.requests[-1].body
    assert body["model"] == "test-model"
    assert body["stream"] is True


@pytest.mark.parametrize(
    ("max_messages", "expected_earlier"),
    [
        (2, ["Second question", "Answer two."]),
        # The newest three turns begin with an answer whose question is gone: it is dropped too.
        (3, ["Second question", "Answer two."]),
        (0, []),
    ],
)
async def test_context_holds_at_most_max_context_messages_newest_turns(
    openai_settings: SettingsFactory,
    model_server: OpenAIServer,
    max_messages: int,
    expected_earlier: list[str],
) -> None:
    model_server.script(Reply(tokens=("Answer one.",)), Reply(tokens=("Answer two.",)))
    async with chat_pipeline(
        openai_settings(system_prompt="Be brief.", max_context_messages=max_messages)
    ) as chat:
        await chat.ask("First question")
        await chat.ask("Second question")
        await chat.ask("Third question")
    messages = sent(model_server)
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert [m["content"] for m in messages[1:-1]] == expected_earlier
    assert messages[-1] == {"role": "user", "content": "Third question"}


async def test_character_budget_drops_the_oldest_turns_first(
    openai_settings: SettingsFactory, model_server: OpenAIServer
) -> None:
    model_server.script(Reply(tokens=("Answer one.",)), Reply(tokens=("Answer two.",)))
    # "S" + "Second question" + "Answer two." + "Third question" is 41 characters; one more turn is not.
    settings = openai_settings(system_prompt="S", max_context_chars=45)
    async with chat_pipeline(settings) as chat:
        await chat.ask("First question")
        await chat.ask("Second question")
        await chat.ask("Third question")
    assert [m["content"] for m in sent(model_server)] == [
        "S",
        "Second question",
        "Answer two.",
        "Third question",
    ]


async def test_system_prompt_and_new_message_are_sent_even_over_the_budget(
    openai_settings: SettingsFactory, model_server: OpenAIServer
) -> None:
    settings = openai_settings(system_prompt="A system prompt longer than the budget.", max_context_chars=10)
    async with chat_pipeline(settings) as chat:
        await chat.ask("An earlier question")
        await chat.ask("A question that alone is over the budget")
    assert sent(model_server) == [
        {"role": "system", "content": "A system prompt longer than the budget."},
        {"role": "user", "content": "A question that alone is over the budget"},
    ]


async def test_an_answer_that_failed_before_its_first_token_is_left_out_of_the_context(
    openai_settings: SettingsFactory, model_server: OpenAIServer
) -> None:
    model_server.script(Reply(status=500))
    async with chat_pipeline(openai_settings(system_prompt="S")) as chat:
        await chat.ask("First question")
        await chat.ask("Second question")
        turns = await chat.turns()
    assert [(turn.content, turn.finish_reason) for turn in turns[:2]] == [
        ("First question", None),
        ("", "error"),
    ]
    assert sent(model_server) == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "First question"},
        {"role": "user", "content": "Second question"},
    ]


@pytest.mark.parametrize(("max_messages", "refers_back"), [(20, True), (0, False)])
async def test_simulated_model_sees_earlier_turns_only_within_the_limit(
    make_settings: SettingsFactory, max_messages: int, refers_back: bool
) -> None:
    async with chat_pipeline(make_settings(max_context_messages=max_messages)) as chat:
        await chat.ask("Tell me about kubernetes")
        events = await chat.ask("And what about databases?")
    assert ("Earlier you asked about kubernetes" in text_of(events)) is refers_back


# --- Retries and failures ------------------------------------------------------------------------


async def test_rate_limit_is_retried_after_retry_after(
    openai_settings: SettingsFactory, model_server: OpenAIServer
) -> None:
    model_server.script(Reply(status=429, headers={"Retry-After": "1"}))
    async with chat_pipeline(openai_settings(ai_max_retries=2)) as chat:
        events = await chat.ask("Hello?")
    end = events[-1]
    assert isinstance(end, EndEvent)
    assert end.content == "Hello there, friend."
    first, second = model_server.requests
    # The client's own first backoff is at most 0.5 s: waiting a second is the server's Retry-After.
    assert second.at - first.at >= 0.95


async def test_server_errors_before_the_first_token_are_retried(
    openai_settings: SettingsFactory, model_server: OpenAIServer
) -> None:
    quick = {"retry-after-ms": "10"}
    model_server.script(Reply(status=500, headers=quick), Reply(status=503, headers=quick))
    async with chat_pipeline(openai_settings(ai_max_retries=2)) as chat:
        events = await chat.ask("Hello?")
        turns = await chat.turns()
    assert len(model_server.requests) == 3
    assert isinstance(events[-1], EndEvent)
    assert turns[-1].content == "Hello there, friend."
    assert turns[-1].finish_reason == "stop"


@pytest.mark.parametrize(
    ("status", "code"), [(429, "rate_limited"), (500, "upstream_error"), (502, "upstream_error")]
)
async def test_failure_once_retries_are_spent_ends_with_its_error_code(
    openai_settings: SettingsFactory, model_server: OpenAIServer, status: int, code: str
) -> None:
    quick = {"retry-after-ms": "10"}
    model_server.script(Reply(status=status, headers=quick), Reply(status=status, headers=quick))
    async with chat_pipeline(openai_settings(ai_max_retries=1)) as chat:
        events = await chat.ask("Hello?")
        turns = await chat.turns()
    assert len(model_server.requests) == 2
    assert error_of(events).error.code == code
    assert [turn.role for turn in turns] == ["user", "assistant"]
    assert turns[-1].content == ""
    assert turns[-1].finish_reason == "error"


async def test_connection_dropped_mid_answer_is_not_retried_and_keeps_the_partial_answer(
    openai_settings: SettingsFactory, model_server: OpenAIServer
) -> None:
    model_server.script(Reply(tokens=("One", " two", " three", " four"), drop_after=2))
    async with chat_pipeline(openai_settings(ai_max_retries=3)) as chat:
        events = await chat.ask("Count to four")
        turns = await chat.turns()
    assert len(model_server.requests) == 1
    assert text_of(events) == "One two"
    assert error_of(events).error.code == "upstream_error"
    assert turns[-1].content == "One two"
    assert turns[-1].finish_reason == "error"


async def test_stalled_stream_times_out_and_keeps_the_partial_answer(
    openai_settings: SettingsFactory, model_server: OpenAIServer
) -> None:
    model_server.script(Reply(tokens=("Slow", " answer"), delay=5))
    async with chat_pipeline(openai_settings(ai_timeout=0.5, ai_max_retries=2)) as chat:
        started = time.monotonic()
        events = await chat.ask("Take your time")
        elapsed = time.monotonic() - started
        turns = await chat.turns()
    assert elapsed < 3
    assert len(model_server.requests) == 1
    assert error_of(events).error.code == "upstream_timeout"
    assert turns[-1].content == "Slow"
    assert turns[-1].finish_reason == "error"


async def test_stream_closed_before_its_finish_is_an_incomplete_answer(
    openai_settings: SettingsFactory, model_server: OpenAIServer
) -> None:
    model_server.script(Reply(tokens=("Half", " an answer"), finish_reason=None))
    async with chat_pipeline(openai_settings()) as chat:
        events = await chat.ask("Hello?")
        turns = await chat.turns()
    assert error_of(events).error.code == "upstream_error"
    assert turns[-1].content == "Half an answer"
    assert turns[-1].finish_reason == "error"


async def test_wrong_api_key_is_a_clear_error_and_never_logged(
    openai_settings: SettingsFactory, model_server: OpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong_key = "sk-wrong-secret-4242"
    async with chat_pipeline(openai_settings(openai_api_key=wrong_key, ai_max_retries=2)) as chat:
        events = await chat.ask("Hello?")
        turns = await chat.turns()
    assert len(model_server.requests) == 1  # a refused key is not retried
    error = error_of(events).error
    assert error.code == "upstream_auth"
    assert any(
        record.levelno == logging.ERROR and "OPENAI_API_KEY" in record.getMessage()
        for record in caplog.records
    )
    # The model server quoted the key back: it must reach neither the logs, nor the stream, nor history.
    assert wrong_key in str(model_server.requests[0].headers)
    assert wrong_key not in caplog.text
    assert wrong_key not in error.message
    assert all(wrong_key not in turn.content for turn in turns)


async def test_unknown_model_is_a_clear_error(
    openai_settings: SettingsFactory, model_server: OpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with chat_pipeline(openai_settings(ai_model="no-such-model")) as chat:
        events = await chat.ask("Hello?")
    assert error_of(events).error.code == "model_not_found"
    assert any(
        record.levelno == logging.ERROR
        and "AI_MODEL" in record.getMessage()
        and "no-such-model" in record.getMessage()
        for record in caplog.records
    )


# --- Usage ---------------------------------------------------------------------------------------


async def test_token_usage_reaches_the_end_event_and_history(
    openai_settings: SettingsFactory, model_server: OpenAIServer
) -> None:
    model_server.script(Reply(usage=(12, 5)))
    async with chat_pipeline(openai_settings()) as chat:
        events = await chat.ask("Hello?")
        turns = await chat.turns()
    assert model_server.requests[0].body["stream_options"] == {"include_usage": True}
    expected = Usage(prompt_tokens=12, completion_tokens=5, total_tokens=17)
    end = events[-1]
    assert isinstance(end, EndEvent)
    assert end.usage == expected
    assert turns[-1].usage == expected
    assert not model_server.disconnected.is_set()  # a finished stream is not a hang-up


async def test_usage_is_not_asked_for_when_disabled(
    openai_settings: SettingsFactory, model_server: OpenAIServer
) -> None:
    model_server.script(Reply(usage=(12, 5)))
    async with chat_pipeline(openai_settings(ai_stream_usage=False)) as chat:
        events = await chat.ask("Hello?")
    assert "stream_options" not in model_server.requests[0].body
    end = events[-1]
    assert isinstance(end, EndEvent)
    assert end.usage is None


# --- Cancellation --------------------------------------------------------------------------------


async def test_shutdown_closes_the_upstream_stream_at_once(
    openai_settings: SettingsFactory, model_server: OpenAIServer
) -> None:
    model_server.script(Reply(tokens=("First", " second"), delay=30))
    async with chat_pipeline(openai_settings(shutdown_grace_seconds=0)) as chat:
        events = await chat.start("Write a long essay")
        received: list[StreamEvent] = []
        async with asyncio.timeout(5):
            while not any(isinstance(event, ChunkEvent) for event in received):
                event = await events.get()
                assert event is not None
                received.append(event)
        cancelled = time.monotonic()
        await chat.service.shutdown()
        closed = await asyncio.to_thread(model_server.disconnected.wait, 5)
        elapsed = time.monotonic() - cancelled
        received += await collect(events)
        turns = await chat.turns()
    assert closed, "the model server never saw the client hang up"
    assert elapsed < 1.5
    assert error_of(received).error.code == "shutdown"
    assert turns[-1].content == "First"
    assert turns[-1].finish_reason == "shutdown"


async def test_listener_hears_the_end_of_an_answer_even_when_redis_goes_away(
    openai_settings: SettingsFactory, model_server: OpenAIServer, own_redis: RedisServer
) -> None:
    model_server.script(Reply(tokens=("One", " two", " three"), delay=0.5))
    settings = openai_settings(redis_url=own_redis.url, redis_timeout=0.5)
    async with chat_pipeline(settings) as chat:
        events = await chat.start("Count")
        first = [await events.get(), await events.get()]
        own_redis.stop(kill=True)
        rest = await collect(events)
    assert [type(event) for event in first] == [StartEvent, ChunkEvent]
    received = [event for event in first if event is not None] + rest
    assert error_of(received).error.code == "redis_unavailable"


# --- Wiring --------------------------------------------------------------------------------------


async def test_app_answers_from_the_configured_model_server(
    openai_settings: SettingsFactory, model_server: OpenAIServer, app_client: AppClient
) -> None:
    model_server.script(Reply(usage=(7, 3)))
    async with app_client(openai_settings(system_prompt="Be kind.")) as client:
        health = (await client.get("/health")).json()
        accepted = await client.post("/chat", json={"session_id": "wired", "message": "Hi!", "user_id": "u1"})
        assert accepted.status_code == 202
        history = await wait_for_history(client, "wired")
    assert health["ai"] == {"provider": "openai", "model": "test-model", "base_url": model_server.url}
    answer = history["messages"][1]
    assert answer["content"] == "Hello there, friend."
    assert answer["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert sent(model_server) == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hi!"},
    ]


# --- The registry ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PROVIDERS))
async def test_every_registered_provider_loads_and_names_itself_and_its_model(
    make_settings: SettingsFactory, name: str
) -> None:
    # A local model server, so that the openai provider needs no key; no request is made.
    source = create_answer_source(
        make_settings(ai_provider=name, openai_base_url="http://localhost:11434/v1")
    )
    try:
        health = source.health()
        assert source.name == name
        assert source.model
        assert isinstance(health, AIHealth)
        assert (health.provider, health.model) == (name, source.model)
    finally:
        await source.aclose()


def test_reading_the_settings_loads_no_provider_module() -> None:
    # `config` checks AI_PROVIDER against the registry; the provider modules import `config`. Were one
    # loaded with it, the two would import each other.
    code = "import sys, config; print(*sys.modules, sep='\\n')"
    loaded = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30
    )
    modules = set(loaded.stdout.split())
    assert "providers" in modules
    assert not modules & set(PROVIDERS.values())


@pytest.mark.parametrize("provider", ["simulated", "openai"])
async def test_health_and_models_name_the_provider_and_model_that_answer(
    make_settings: SettingsFactory, openai_settings: SettingsFactory, app_client: AppClient, provider: str
) -> None:
    settings = openai_settings() if provider == "openai" else make_settings()
    model = "test-model" if provider == "openai" else "simulated"
    async with app_client(settings) as client:
        health = (await client.get("/health")).json()
        models = (await client.get("/v1/models")).json()
    assert (health["ai"]["provider"], health["ai"]["model"]) == (provider, model)
    assert [(card["id"], card["owned_by"]) for card in models["data"]] == [(model, provider)]


async def test_health_names_the_simulated_model_by_default(
    make_settings: SettingsFactory, app_client: AppClient
) -> None:
    async with app_client(make_settings()) as client:
        health = (await client.get("/health")).json()
    assert health["ai"] == {"provider": "simulated", "model": "simulated"}


def test_openai_without_a_key_for_api_openai_com_stops_start_up(make_settings: SettingsFactory) -> None:
    with pytest.raises(ValidationError) as raised:
        make_settings(ai_provider="openai")
    assert format_validation_error(raised.value) == (
        "invalid configuration: OPENAI_API_KEY must be set when AI_PROVIDER=openai talks to api.openai.com"
    )
    # A local server needs no key.
    assert (
        make_settings(ai_provider="openai", openai_base_url="http://localhost:11434/v1").openai_api_key
        is None
    )


def test_the_model_server_location_shown_carries_no_credentials_or_query() -> None:
    assert model_location("https://user:pw@models.example:8443/v1?api-version=1") == (
        "https://models.example:8443/v1"
    )


def test_api_key_stays_out_of_the_settings_repr(make_settings: SettingsFactory) -> None:
    settings = make_settings(ai_provider="openai", openai_api_key="sk-do-not-print")
    assert "sk-do-not-print" not in repr(settings)
