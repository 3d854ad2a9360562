"""Liveness and readiness that tell the truth (issue #5, item 6)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from config import Settings
from testkit.redis_server import RedisServer
from testkit.waiting import eventually
from tests.conftest import AppClient

pytestmark = pytest.mark.redis


async def wait_for_status(
    client: httpx.AsyncClient, path: str, status: int, seconds: float
) -> httpx.Response:
    """Wait until `path` answers `status` (each call bounded to 2 s); return that response."""

    async def answers() -> httpx.Response | None:
        response = await client.get(path, timeout=2.0)
        return response if response.status_code == status else None

    return await eventually(answers, f"{path} answers {status}", timeout=seconds)


async def test_liveness_needs_no_redis_while_readiness_reports_it_down_and_recovers(
    make_settings: Callable[..., Settings], app_client: AppClient, own_redis: RedisServer
) -> None:
    async with app_client(make_settings(redis_url=own_redis.url)) as client:
        ready = await client.get("/health")
        assert ready.status_code == 200
        assert ready.json()["redis"] == {**ready.json()["redis"], "status": "connected", "pubsub": "ok"}

        own_redis.stop(kill=True)
        live = await client.get("/health/live")
        assert live.status_code == 200
        assert live.json()["status"] == "alive"
        # httpx gives up after 2 s: /health must have answered by then.
        down = await client.get("/health", timeout=2.0)
        assert down.status_code == 503
        assert down.json()["status"] == "unhealthy"
        assert down.json()["redis"]["status"] == "disconnected"

        own_redis.start()
        back = await wait_for_status(client, "/health", 200, seconds=5)
        assert back.status_code == 200, back.text


async def test_readiness_turns_red_when_redis_hangs(
    make_settings: Callable[..., Settings], app_client: AppClient, own_redis: RedisServer
) -> None:
    async with app_client(make_settings(redis_url=own_redis.url, redis_timeout=5)) as client:
        assert (await client.get("/health")).status_code == 200
        own_redis.cli("CLIENT", "PAUSE", "2500", "ALL")
        # Even with REDIS_TIMEOUT at 5 s, /health answers within 2 s.
        response = await client.get("/health", timeout=2.0)
        assert response.status_code == 503
        assert (await client.get("/health/live", timeout=2.0)).status_code == 200
        assert (await wait_for_status(client, "/health", 200, seconds=6)).status_code == 200


async def test_readiness_turns_red_when_the_subscriber_is_dead_though_ping_works(
    make_settings: Callable[..., Settings], app_client: AppClient, own_redis: RedisServer
) -> None:
    async with app_client(make_settings(redis_url=own_redis.url)) as client:
        assert (await client.get("/health")).status_code == 200
        # The subscriber's connection dies and cannot subscribe again; PING and PUBLISH still work.
        own_redis.cli("ACL", "SETUSER", "default", "-subscribe", "-psubscribe", "-ssubscribe")
        own_redis.cli("CLIENT", "KILL", "TYPE", "pubsub")
        assert own_redis.cli("PING") == "PONG"
        response = await wait_for_status(client, "/health", 503, seconds=3)
        assert response.status_code == 503
        assert response.json()["redis"]["error"]

        own_redis.cli("ACL", "SETUSER", "default", "+subscribe", "+psubscribe", "+ssubscribe")
        assert (await wait_for_status(client, "/health", 200, seconds=5)).status_code == 200
