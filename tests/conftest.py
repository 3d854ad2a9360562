"""Shared fixtures: settings, the app in-process, real redis-server processes and the service process.

The helpers behind them (servers, topologies, the upstream, `eventually`) live in `testkit/`, which the
benchmark uses too.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import fakeredis
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import Request
from playwright.sync_api import expect
from redis.asyncio import Redis

from app import create_app
from archiver import Archiver, ArchiveRunner
from config import Settings
from protocols.deps import get_archiver, services_of
from providers.simulated import SimulatedAnswerSource
from redis_client import RedisClient
from redis_wire import RedisPipe, open_pipe
from services import build_services
from testkit.asgi_server import serve
from testkit.openai_server import OpenAIServer
from testkit.redis_server import RedisServer, start_redis
from testkit.service import SETTINGS_VARIABLES, ServiceProcess
from testkit.waiting import eventually
from tests.chat_harness import Harness, Json, RunService, ScriptedSource
from tests.openai_backends import Backend

# The browser tests' `expect` waits for its condition 5 s by default; on a loaded two-core CI machine a
# rename's answer once took longer (most likely its SQLite commit). The condition must still come true:
# only the budget is larger.
expect.set_options(timeout=15_000)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a real redis-server (a `*_redis` fixture), so `-m "not redis"` works."""
    for item in items:
        if any(name.endswith("_redis") for name in getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.redis)


@pytest.fixture(scope="session")
def shared_redis() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.cleanup()


@pytest.fixture
def redis_server(shared_redis: RedisServer) -> RedisServer:
    """The session's redis-server, emptied for this test."""
    shared_redis.cli("FLUSHALL")
    return shared_redis


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server for this test alone, for tests that stop, pause or fill it."""
    server = start_redis()
    yield server
    server.cleanup()


@pytest.fixture
async def fake() -> AsyncIterator[Redis]:
    """A fakeredis client on a server of its own, for fast unit tests of what talks to Redis."""
    redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    yield redis
    await redis.aclose()


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No service variable in the environment and no `.env` in the working directory."""
    monkeypatch.chdir(tmp_path)  # a developer's .env in the checkout must not leak into tests
    for name in list(os.environ):
        if name.startswith(("REDIS_", "AI_", "OPENAI_", "API_KEYS", "RATE_", "MAX_")) or (
            name.upper() in SETTINGS_VARIABLES
        ):
            monkeypatch.delenv(name)


@pytest.fixture
def make_settings(clean_env: None) -> Callable[..., Settings]:
    """Settings for a test: fast pacing, no `.env`, embedded Redis unless a URL is given, and the
    archiver on the loop: the in-process tests reach it there, and start no child process each (the
    default with a Redis server, which `test_archiver_process.py` and the tests of the service as a
    process run)."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "stream_delay": 0,
            "chunk_delay": 0,
            "shutdown_grace_seconds": 2,
            "archiver": "loop",
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)

    return build


@pytest.fixture
def settings_for(make_settings: Callable[..., Settings]) -> Callable[[RedisServer], Settings]:
    """Settings pointing at a real server, with a short REDIS_TIMEOUT so outages show quickly."""
    return lambda server: make_settings(redis_url=server.url, redis_timeout=0.5)


class AppClient(Protocol):
    """Starts the app in-process for some settings, optionally with dependencies swapped."""

    def __call__(
        self, settings: Settings, *, overrides: Mapping[Callable[..., Any], Callable[..., Any]] | None = None
    ) -> AbstractAsyncContextManager[httpx.AsyncClient]: ...


@pytest.fixture
def app_client() -> AppClient:
    """Run the app in-process with its lifespan entered; yield an HTTP client bound to it."""

    @asynccontextmanager
    async def run(
        settings: Settings, *, overrides: Mapping[Callable[..., Any], Callable[..., Any]] | None = None
    ) -> AsyncIterator[httpx.AsyncClient]:
        app = create_app(settings)
        app.dependency_overrides.update(overrides or {})
        async with (
            LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=manager.app), base_url="http://test"
            ) as client,
        ):
            yield client

    return run


@pytest.fixture
def run_service(make_settings: Callable[..., Settings]) -> RunService:
    """The service as the application builds it, answering from `source`: on the
    embedded Redis unless the overrides give a `redis_url`."""

    @asynccontextmanager
    async def run(
        source: ScriptedSource | SimulatedAnswerSource,
        *,
        pipes: Callable[[RedisClient], RedisPipe] = open_pipe,
        end_retry_seconds: float = 15.0,
        **overrides: object,
    ) -> AsyncIterator[Harness]:
        settings = make_settings(**overrides)
        async with build_services(
            settings, source=source, pipes=pipes, end_retry_seconds=end_retry_seconds
        ) as services:
            yield Harness(services)

    return run


# --- Helpers shared by the flow tests ------------------------------------------------------------

CHAT = {"session_id": "test123", "message": "Hello!", "user_id": "user1"}


async def wait_for_history(
    client: httpx.AsyncClient, session_id: str, turns: int = 2, timeout: float = 30
) -> Json:
    """Wait until the session's history has `turns` turns (an answer has landed); return it."""

    async def landed() -> Json | None:
        body: Json = (await client.get(f"/history/{session_id}")).json()
        return body if body["count"] >= turns else None

    return await eventually(landed, f"session {session_id} has {turns} turns", timeout=timeout)


async def wait_for_answer(
    client: httpx.AsyncClient, session_id: str, message_id: str, timeout: float = 30
) -> Json:
    """Wait until the assistant turn of `message_id` is stored; return the history."""

    async def stored() -> Json | None:
        body: Json = (await client.get(f"/history/{session_id}")).json()
        answered = any(m["role"] == "assistant" and m["message_id"] == message_id for m in body["messages"])
        return body if answered else None

    return await eventually(stored, f"the answer {message_id} is stored", timeout=timeout)


@pytest.fixture
def start_service() -> Iterator[Callable[..., ServiceProcess]]:
    """Start the service with these variables and wait until /health is 200; cleaned up after the test."""
    started: list[ServiceProcess] = []

    def start(*, workers: int = 1, **variables: str) -> ServiceProcess:
        service = ServiceProcess(variables, workers=workers)
        started.append(service)
        service.start(ready="/health")
        return service

    yield start
    for service in started:
        service.cleanup()


@pytest.fixture(scope="session")
def shared_model_server() -> Iterator[OpenAIServer]:
    server = OpenAIServer()
    with serve(server, lifespan="off") as url:
        server.url = f"{url}/v1"
        yield server


@pytest.fixture
def model_server(shared_model_server: OpenAIServer) -> OpenAIServer:
    """The OpenAI-compatible model server, with nothing scripted and nothing recorded yet."""
    shared_model_server.reset()
    return shared_model_server


@pytest.fixture
def openai_settings(
    make_settings: Callable[..., Settings], model_server: OpenAIServer
) -> Callable[..., Settings]:
    """Settings for AI_PROVIDER=openai against the test model server; no retries unless asked for."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "ai_provider": "openai",
            "openai_base_url": model_server.url,
            "openai_api_key": model_server.api_key,
            "ai_model": "test-model",
            "ai_timeout": 5,
            "ai_max_retries": 0,
        }
        values.update(overrides)
        return make_settings(**values)

    return build


@pytest.fixture(params=["simulated", "upstream"])
def backend(
    request: pytest.FixtureRequest,
    make_settings: Callable[..., Settings],
    openai_settings: Callable[..., Settings],
    redis_server: RedisServer,
) -> Iterator[Backend]:
    """The app served on a port, answering from the simulated model, then from the scriptable one."""
    if request.param == "simulated":
        settings, model, server = make_settings(redis_url=redis_server.url), "simulated", None
    else:
        settings = openai_settings(redis_url=redis_server.url)
        model, server = "test-model", request.getfixturevalue("model_server")
    with serve(create_app(settings)) as url:
        yield Backend(url, model, server)


class CaughtArchiver:
    """`overrides` for `app_client` that catch the service's own archiver (ARCHIVER=loop) as a route
    resolves it, so that a test can stop it: `await caught.stop(client)`; turns then wait in the outbox,
    and the archiver sends Redis nothing more."""

    def __init__(self) -> None:
        self._running: list[ArchiveRunner] = []
        self.overrides = {get_archiver: self._catch}

    def _catch(self, request: Request) -> ArchiveRunner:
        self._running.append(services_of(request).archiver)
        return self._running[-1]

    async def stop(self, client: httpx.AsyncClient, headers: Json | None = None) -> None:
        """Have a route resolve the archiver (the DELETE of a missing conversation), then close it."""
        assert (await client.delete("/conversations/none", headers=headers or {})).status_code == 404
        archiver = self._running[0]
        assert isinstance(archiver, Archiver)
        await archiver.close()
