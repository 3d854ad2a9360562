"""Sentinel: the service finds the master through the sentinels and follows a failover."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from pydantic import ValidationError

from config import Settings
from testkit.prerequisites import need
from testkit.service import ServiceProcess
from testkit.topologies import SentinelServers
from testkit.waiting import ConditionNotMet, eventually

pytestmark = pytest.mark.redis


@pytest.fixture
def sentinel() -> Iterator[SentinelServers]:
    need(shutil.which("redis-server") is not None, "redis-server is not installed")
    servers = SentinelServers()
    try:
        servers.start()
    except (OSError, RuntimeError, subprocess.SubprocessError, ConditionNotMet) as error:
        servers.cleanup()
        need(False, f"cannot start Redis with sentinels: {error}")
    yield servers
    servers.cleanup()


async def test_failover_loses_no_accepted_turn_and_service_recovers(
    sentinel: SentinelServers, start_service: Callable[..., ServiceProcess]
) -> None:
    service = start_service(
        REDIS_SENTINELS=sentinel.sentinel_addresses,
        REDIS_SENTINEL_MASTER=sentinel.master_name,
        REDIS_WAIT_REPLICAS="1",
        REDIS_TIMEOUT="1",
        STREAM_DELAY="0.02",
        CHUNK_DELAY="0",
    )
    accepted: list[str] = []  # message ids answered with 202
    refused = 0
    health: list[tuple[float, int]] = []
    stop = asyncio.Event()

    async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:

        async def send_chats() -> None:
            nonlocal refused
            number = 0
            while not stop.is_set():
                number += 1
                body = {"session_id": f"s{number % 5}", "message": f"message {number}", "user_id": "u1"}
                try:
                    response = await client.post("/chat", json=body)
                except httpx.HTTPError:
                    refused += 1
                else:
                    if response.status_code == 202:
                        accepted.append(response.json()["message_id"])
                    else:
                        assert response.status_code == 503, response.text
                        refused += 1
                await asyncio.sleep(0.05)  # the load's pace (20 chats a second), not a wait for anything

        async def watch_health() -> None:
            while not stop.is_set():
                try:
                    status = (await client.get("/health")).status_code
                except httpx.HTTPError:
                    status = 0
                health.append((time.monotonic(), status))
                await asyncio.sleep(0.1)  # the sampling period of the health record, not a wait

        tasks = [asyncio.create_task(send_chats()), asyncio.create_task(watch_health())]

        async def serving() -> bool:
            return len(accepted) >= 5 and any(status == 200 for _, status in health)

        await eventually(serving, "chats are accepted and /health is 200 before the failover")
        before = len(accepted)
        old_master = sentinel.master.port
        assert sentinel.master.process is not None
        sentinel.master.process.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()

        # The sentinels promote the replica; the service must accept chats again within 30 s of it.
        async def failed_over() -> bool:
            return await asyncio.to_thread(sentinel.current_master_port) != old_master

        await eventually(
            failed_over, "the sentinels failed over", timeout=60, ignoring=(subprocess.SubprocessError,)
        )
        failed_over_at = time.monotonic()

        async def recovered() -> bool:
            ready = any(at > failed_over_at and status == 200 for at, status in health)
            return ready and len(accepted) > before

        await eventually(recovered, "the service recovered within 30 s of the failover", timeout=30)
        count_after_recovery = len(accepted)

        async def accepting() -> bool:
            return len(accepted) >= count_after_recovery + 5

        await eventually(accepting, "the service goes on accepting chats")
        stop.set()
        await asyncio.gather(*tasks)

        assert before > 0
        assert any(status == 503 for at, status in health if at > killed_at), "the outage never showed"
        stored: set[str] = set()
        for session in (f"s{i}" for i in range(5)):
            history = (await client.get(f"/history/{session}")).json()
            stored |= {turn["message_id"] for turn in history["messages"] if turn["role"] == "user"}
        missing = set(accepted) - stored
        assert not missing, f"{len(missing)} of {len(accepted)} accepted turns were lost in the failover"


def test_sentinel_settings_parse_host_port_pairs(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(redis_sentinels="10.0.0.1:26379, sentinel-b:26380")
    assert settings.redis_sentinels == [("10.0.0.1", 26379), ("sentinel-b", 26380)]
    assert not settings.embedded_redis
    assert settings.redis_location() == "sentinel://10.0.0.1:26379,sentinel-b:26380/mymaster/0"


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"redis_sentinels": "nohost"}, "host:port"),
        ({"redis_sentinels": "a:99999"}, "host:port"),
        ({"redis_cluster": True}, "REDIS_CLUSTER needs"),
        ({"redis_cluster": True, "redis_host": "a", "redis_sentinels": "a:1"}, "cannot be used together"),
        ({"redis_cluster": True, "redis_host": "a", "redis_wait_replicas": 1}, "not supported"),
    ],
)
def test_inconsistent_topology_settings_are_refused(
    make_settings: Callable[..., Settings], values: dict[str, object], complaint: str
) -> None:
    with pytest.raises(ValidationError, match=complaint):
        make_settings(**values)
