"""The answer-source seam: the registry, what `/health` and `/v1/models` say of the source, and the chat
pipeline harness (ChatService on the embedded Redis, a listener on each answer) that the provider tests
share. The OpenAI-compatible provider's own tests are in `test_providers_openai_compatible.py`."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import ValidationError

from ai_service import ChatService
from config import Settings, format_validation_error
from models import (
    ChatRequest,
    ChatTurn,
    ChunkEvent,
    ErrorEvent,
    StartEvent,
    StreamEvent,
)
from parts import ToolResult
from providers import PROVIDERS, create_answer_source
from providers.base import AIHealth
from services import build_services
from stores.history import HistoryStore
from testkit.openai_server import OpenAIServer
from testkit.processes import ROOT
from tests.conftest import AppClient

SettingsFactory = Callable[..., Settings]


@dataclass
class Chat:
    """The chat pipeline as the app wires it, with an in-process listener on each answer."""

    service: ChatService
    history: HistoryStore

    async def start(
        self, message: str, session_id: str = "s1", **options: Any
    ) -> asyncio.Queue[StreamEvent | None]:
        """Send a message with these `ChatRequest` options; return the queue its answer's events reach."""
        request = ChatRequest(session_id=session_id, message=message, user_id="u1", **options)
        return await self.submit(request)

    async def ask(self, message: str, session_id: str = "s1", **options: Any) -> list[StreamEvent]:
        """Send a message and return every event of its answer."""
        return await collect(await self.start(message, session_id, **options))

    async def answer_calls(
        self, results: dict[str, str], session_id: str = "s1", **options: Any
    ) -> list[StreamEvent]:
        """Send the results of tool calls (by call id); return every event of the answer that follows."""
        tool_results = [
            ToolResult(tool_call_id=call_id, content=content) for call_id, content in results.items()
        ]
        request = ChatRequest(session_id=session_id, tool_results=tool_results, user_id="u1", **options)
        return await collect(await self.submit(request))

    async def submit(self, request: ChatRequest) -> asyncio.Queue[StreamEvent | None]:
        events: asyncio.Queue[StreamEvent | None] = asyncio.Queue()
        await self.service.submit(request, listener=events)
        return events

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


def sent(model_server: OpenAIServer, index: int = -1) -> list[dict[str, Any]]:
    """The messages of a request the model server received, the last by default."""
    messages: list[dict[str, Any]] = model_server.requests[index].body["messages"]
    return messages


# --- Context -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("max_messages", "refers_back"), [(20, True), (0, False)])
async def test_simulated_model_sees_earlier_turns_only_within_the_limit(
    make_settings: SettingsFactory, max_messages: int, refers_back: bool
) -> None:
    async with chat_pipeline(make_settings(max_context_messages=max_messages)) as chat:
        await chat.ask("Tell me about kubernetes")
        events = await chat.ask("And what about databases?")
    assert ("Earlier you asked about kubernetes" in text_of(events)) is refers_back


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


def test_api_key_stays_out_of_the_settings_repr(make_settings: SettingsFactory) -> None:
    settings = make_settings(ai_provider="openai", openai_api_key="sk-do-not-print")
    assert "sk-do-not-print" not in repr(settings)
