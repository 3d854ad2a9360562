"""Liveness and readiness that tell the truth (issue #5, item 6; issue #13, item 2)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError

from config import Settings
from health import Readiness
from redis_client import RedisUnavailable
from testkit.ports import free_port
from testkit.redis_server import RedisServer
from testkit.waiting import eventually
from tests.chat_harness import RunService, ScriptedSource
from tests.conftest import AppClient

pytestmark = pytest.mark.redis


async def wait_for_status(
    client: httpx.AsyncClient, path: str, status: int, seconds: float = 30
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
        back = await wait_for_status(client, "/health", 200)
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
        assert (await wait_for_status(client, "/health", 200)).status_code == 200


async def test_readiness_turns_red_when_the_subscriber_is_dead_though_ping_works(
    make_settings: Callable[..., Settings], app_client: AppClient, own_redis: RedisServer
) -> None:
    async with app_client(make_settings(redis_url=own_redis.url)) as client:
        assert (await client.get("/health")).status_code == 200
        # The subscriber's connection dies and cannot subscribe again; PING and PUBLISH still work.
        own_redis.cli("ACL", "SETUSER", "default", "-subscribe", "-psubscribe", "-ssubscribe")
        own_redis.cli("CLIENT", "KILL", "TYPE", "pubsub")
        assert own_redis.cli("PING") == "PONG"
        response = await wait_for_status(client, "/health", 503)
        assert response.status_code == 503
        assert response.json()["redis"]["error"]

        own_redis.cli("ACL", "SETUSER", "default", "+subscribe", "+psubscribe", "+ssubscribe")
        assert (await wait_for_status(client, "/health", 200)).status_code == 200


@asynccontextmanager
async def filled(server: RedisServer) -> AsyncIterator[None]:
    """Give Redis a little room above what it uses, with noeviction, and fill it until it refuses
    writes (the filling client stays connected: its buffers count too); empty it on the way out."""
    used = int(server.info("memory", "used_memory"))
    server.cli("CONFIG", "SET", "maxmemory-policy", "noeviction")
    server.cli("CONFIG", "SET", "maxmemory", str(used + 2_000_000))
    filler = Redis.from_url(server.url)
    try:
        refused = False
        for index in range(1000):
            try:
                await filler.set(f"filler:{index}", b"x" * 100_000)
            except OutOfMemoryError:
                refused = True
                break
        assert refused
        yield
    finally:
        server.cli("FLUSHALL")
        await filler.aclose()


async def test_readiness_is_503_when_redis_is_out_of_memory_though_ping_and_pubsub_work(
    make_settings: Callable[..., Settings], app_client: AppClient, own_redis: RedisServer
) -> None:
    async with app_client(make_settings(redis_url=own_redis.url)) as client:
        ready = (await client.get("/health")).json()
        assert ready["redis"] == {**ready["redis"], "writes": "ok", "pubsub": "ok"}

        async with filled(own_redis):
            assert own_redis.cli("PING") == "PONG"
            refused = await wait_for_status(client, "/health", 503)
            assert refused.json()["status"] == "unhealthy"
            assert "out of memory" in refused.json()["redis"]["error"]

        assert (await wait_for_status(client, "/health", 200)).json()["redis"]["writes"] == "ok"


async def test_readiness_is_503_when_redis_is_a_read_only_replica(
    make_settings: Callable[..., Settings], app_client: AppClient, own_redis: RedisServer
) -> None:
    async with app_client(make_settings(redis_url=own_redis.url)) as client:
        assert (await client.get("/health")).status_code == 200
        # A replica of a master that is not there: it answers PING and relays PUBLISH, refuses writes.
        own_redis.cli("CONFIG", "SET", "replica-read-only", "yes")
        own_redis.cli("REPLICAOF", "127.0.0.1", str(free_port()))
        refused = await wait_for_status(client, "/health", 503)
        assert "read-only" in refused.json()["redis"]["error"]

        own_redis.cli("REPLICAOF", "NO", "ONE")
        assert (await wait_for_status(client, "/health", 200)).status_code == 200


def set_calls(server: RedisServer) -> int:
    """How many SET commands the server has been sent (run or refused) since its stats were reset."""
    try:
        stats = dict(item.split("=") for item in server.info("commandstats", "cmdstat_set").split(","))
    except KeyError:
        return 0
    return int(stats["calls"]) + int(stats.get("rejected_calls", 0)) + int(stats.get("failed_calls", 0))


async def test_readiness_writes_and_publishes_at_most_once_a_second_whatever_the_callers(
    run_service: RunService, redis_server: RedisServer
) -> None:
    now = [1000.0]
    async with run_service(ScriptedSource([]), redis_url=redis_server.url) as harness:
        services = harness.services
        readiness = Readiness(
            services.redis, services.keys, services.probe.round_trip, timeout=1.0, clock=lambda: now[0]
        )
        redis_server.cli("CONFIG", "RESETSTAT")
        await asyncio.gather(*(readiness.check() for _ in range(20)))
        now[0] += 0.9
        await readiness.check()
        assert set_calls(redis_server) == 1

        now[0] += 0.2
        await readiness.check()
        assert set_calls(redis_server) == 2
        assert redis_server.cli("PTTL", services.keys.health) not in {"-1", "-2"}  # it expires


async def test_a_failed_readiness_check_is_remembered_for_a_second_too(
    run_service: RunService, own_redis: RedisServer
) -> None:
    now = [1000.0]
    async with run_service(ScriptedSource([]), redis_url=own_redis.url) as harness:
        services = harness.services
        readiness = Readiness(
            services.redis, services.keys, services.probe.round_trip, timeout=1.0, clock=lambda: now[0]
        )
        own_redis.cli("REPLICAOF", "127.0.0.1", str(free_port()))
        own_redis.cli("CONFIG", "RESETSTAT")
        for _ in range(5):
            with pytest.raises(RedisUnavailable, match="read-only"):
                await readiness.check()
        assert set_calls(own_redis) == 1
        own_redis.cli("REPLICAOF", "NO", "ONE")
        with pytest.raises(RedisUnavailable):
            await readiness.check()  # still the remembered failure
        now[0] += 1.0
        await readiness.check()
