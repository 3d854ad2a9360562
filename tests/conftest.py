"""Shared fixtures: settings, the app in-process, real redis-server processes on free ports, and a
scriptable OpenAI-compatible model server on loopback."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from app import create_app
from config import Settings
from tests.openai_server import OpenAIServer, serve

IN_CI = os.environ.get("CI", "").lower() == "true"
ROOT = Path(__file__).resolve().parent.parent


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

    def __init__(self, *extra_args: str) -> None:
        self.port = free_port()
        self.extra_args = extra_args
        self.directory = tempfile.mkdtemp(prefix="redis-test-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

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
        result = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return result.stdout.strip()

    def cleanup(self) -> None:
        self.stop(kill=True)
        shutil.rmtree(self.directory, ignore_errors=True)


def start_redis(*extra_args: str) -> RedisServer:
    need(shutil.which("redis-server") is not None, "redis-server is not installed")
    server = RedisServer(*extra_args)
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
def make_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Settings]:
    """Settings for a test: fast pacing, no `.env`, embedded Redis unless a URL is given."""
    monkeypatch.chdir(tmp_path)  # a developer's .env in the checkout must not leak into tests
    for name in list(os.environ):
        if name.startswith(("REDIS_", "AI_", "OPENAI_", "API_KEYS", "RATE_", "MAX_")):
            monkeypatch.delenv(name)

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {"stream_delay": 0, "chunk_delay": 0, "shutdown_grace_seconds": 2}
        values.update(overrides)
        return Settings(_env_file=None, **values)

    return build


AppClient = Callable[[Settings], AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def app_client() -> AppClient:
    """Run the app in-process with its lifespan entered; yield an HTTP client bound to it."""

    @asynccontextmanager
    async def run(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
        app = create_app(settings)
        async with (
            LifespanManager(app, startup_timeout=10, shutdown_timeout=30) as manager,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=manager.app), base_url="http://test"
            ) as client,
        ):
            yield client

    return run


class ServiceProcess:
    """`python app.py` as a separate process, the way users and the Dockerfile start it."""

    def __init__(self, **env: str) -> None:
        self.port = free_port()
        self.env = {**os.environ, "PORT": str(self.port), "HOST": "127.0.0.1", **env}
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"
        # A file, not a pipe: a pipe nobody reads fills up and blocks the service's logging.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by the service_process fixture

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "app.py")],
            env=self.env,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"app.py exited with {self.process.returncode}: {self.output()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("app.py did not become healthy within 20s")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def output(self) -> str:
        """Everything the service has logged so far."""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")


@pytest.fixture
def service_process() -> Iterator[Callable[..., ServiceProcess]]:
    """Start `python app.py` processes; every one is stopped when the test ends."""
    started: list[ServiceProcess] = []

    def start(**env: str) -> ServiceProcess:
        service = ServiceProcess(**env)
        started.append(service)
        service.start()
        return service

    yield start
    for service in started:
        if service.process is not None and service.process.poll() is None:
            service.stop(signal.SIGKILL)
        service.log.close()


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
