"""Shared fixtures: settings, the app in-process, and real redis-server processes on free ports."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest
from asgi_lifespan import LifespanManager
from redis.asyncio.client import PubSub

from app import create_app
from config import Settings
from tests.openai_server import OpenAIServer, serve

IN_CI = os.environ.get("CI", "").lower() == "true"
ROOT = Path(__file__).resolve().parent.parent
# Every variable the service reads: cleared for tests so the developer's environment cannot leak in.
SETTINGS_VARIABLES = frozenset(name.upper() for name in Settings.model_fields)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a real redis-server (a `*_redis` fixture), so `-m "not redis"` works."""
    for item in items:
        if any(name.endswith("_redis") for name in getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.redis)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def need(condition: bool, reason: str) -> None:
    """In CI a missing prerequisite fails the test; elsewhere it skips it, with the reason."""
    if not condition:
        if IN_CI:
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)


class RedisServer:
    """A real redis-server on a free loopback port, owned by one test or session."""

    def __init__(self, *extra_args: str, password: str | None = None) -> None:
        self.port = free_port()
        self.extra_args = extra_args
        self.password = password
        self.directory = tempfile.mkdtemp(prefix="redis-test-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.directory,
                "--logfile",
                "redis.log",
                *(["--requirepass", self.password] if self.password else []),
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = Path(self.directory, "redis.log").read_text(errors="replace").strip().splitlines()
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {log[-1:]}")
            try:
                if self.cli("PING") == "PONG":
                    return
            except subprocess.SubprocessError:
                pass
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start within 10s")

    def stop(self, kill: bool = False) -> None:
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        self.process.wait(timeout=10)
        self.process = None

    def cli(self, *args: str) -> str:
        # REDISCLI_AUTH rather than -a: the password stays off the command line and its warning.
        env = {**os.environ, "REDISCLI_AUTH": self.password} if self.password else None
        result = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
            env=env,
        )
        return result.stdout.strip()

    def cleanup(self) -> None:
        self.stop(kill=True)
        shutil.rmtree(self.directory, ignore_errors=True)


def start_redis(*extra_args: str, password: str | None = None) -> RedisServer:
    need(shutil.which("redis-server") is not None, "redis-server is not installed")
    server = RedisServer(*extra_args, password=password)
    try:
        server.start()
    except (OSError, RuntimeError) as error:
        server.cleanup()
        need(False, f"cannot start redis-server: {error}")
    return server


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
    """Settings for a test: fast pacing, no `.env`, embedded Redis unless a URL is given."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {"stream_delay": 0, "chunk_delay": 0, "shutdown_grace_seconds": 2}
        values.update(overrides)
        return Settings(_env_file=None, **values)

    return build


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
            LifespanManager(app, startup_timeout=10, shutdown_timeout=30) as manager,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=manager.app), base_url="http://test"
            ) as client,
        ):
            yield client

    return run


# --- Helpers shared by the flow tests ------------------------------------------------------------

Json = dict[str, Any]
CHAT = {"session_id": "test123", "message": "Hello!", "user_id": "user1"}


async def wait_for_history(
    client: httpx.AsyncClient, session_id: str, turns: int = 2, timeout: float = 10
) -> Json:
    """Poll the history API until the session has `turns` turns (an answer has landed); return it."""
    async with asyncio.timeout(timeout):
        while True:
            body: Json = (await client.get(f"/history/{session_id}")).json()
            if body["count"] >= turns:
                return body
            await asyncio.sleep(0.01)


async def wait_for_answer(
    client: httpx.AsyncClient, session_id: str, message_id: str, timeout: float = 10
) -> Json:
    """Poll the history API until the assistant turn of `message_id` is stored; return the history."""
    async with asyncio.timeout(timeout):
        while True:
            body: Json = (await client.get(f"/history/{session_id}")).json()
            if any(m["role"] == "assistant" and m["message_id"] == message_id for m in body["messages"]):
                return body
            await asyncio.sleep(0.01)


def ended(events: list[Json]) -> bool:
    return bool(events) and events[-1]["type"] in {"end", "error"}


async def read_answers(
    pubsub: PubSub,
    message_ids: set[str] | list[str],
    *,
    until: Callable[[list[Json]], bool] = ended,
    timeout: float = 20,
) -> dict[str, list[Json]]:
    """Collect the events of these answers from a subscribed PubSub until `until` holds for each.

    Returns each answer's events in arrival order; by default reads until each has ended.
    """
    events: dict[str, list[Json]] = {message_id: [] for message_id in message_ids}
    async with asyncio.timeout(timeout):
        while not all(until(answer) for answer in events.values()):
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None:
                continue
            event: Json = json.loads(message["data"])
            if event["message_id"] in events:
                events[event["message_id"]].append(event)
    return events


def assert_well_formed(events: list[Json], message_id: str) -> None:
    """One answer's events as the stream contract promises: start, chunks, then one end or error."""
    assert {event["message_id"] for event in events} == {message_id}
    assert [event["seq"] for event in events] == list(range(len(events))), "seq is not 0..n"
    assert events[0]["type"] == "start"
    assert [event["type"] for event in events[1:-1]] == ["chunk"] * (len(events) - 2)
    assert events[-1]["type"] in {"end", "error"}
    text = "".join(event["content"] for event in events if event["type"] == "chunk")
    if events[-1]["type"] == "end":
        assert events[-1]["content"] == text


def service_environment(**variables: str) -> dict[str, str]:
    """The process environment for a service child: ours without the service's variables."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name.upper() not in SETTINGS_VARIABLES and not name.startswith("PROMETHEUS_")
    }
    env.update(variables)
    return env


class ServiceProcess:
    """The service as a real process on a free port (`python app.py`, or uvicorn with several workers),
    run from an empty folder (no `.env` of the checkout is read) and logging to a file."""

    def __init__(self, variables: Mapping[str, str] | None = None, *, workers: int = 1) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.directory = Path(tempfile.mkdtemp(prefix="service-"))
        self.log_path = self.directory / "service.log"
        self.env = service_environment(HOST="127.0.0.1", PORT=str(self.port), **(variables or {}))
        if workers == 1:
            self.command = [sys.executable, str(ROOT / "app.py")]
        else:
            self.command = [
                sys.executable, "-m", "uvicorn", "app:create_app", "--factory", "--app-dir", str(ROOT),
                "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(workers), "--no-access-log",
            ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, ready: str = "/health/live", timeout: float = 20) -> None:
        """Start the process and wait until `ready` answers 200."""
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command, cwd=self.directory, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited with {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}{ready}", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{ready} did not answer 200 within {timeout}s:\n{self.output()}")

    def output(self) -> str:
        """Everything the service has logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def stderr(self) -> str:
        return self.output()

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


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
