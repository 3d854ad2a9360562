"""The Redis client's helpers (redis_client.py): key names, every call's deadline, and failure reasons
that name no host."""

from __future__ import annotations

import asyncio

import pytest
from redis.crc import key_slot
from redis.exceptions import AuthenticationError, OutOfMemoryError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from redis_client import KeySpace, RedisUnavailable, bounded, describe

KEYS = KeySpace("chat")


def test_history_key_carries_the_session_as_a_cluster_hash_tag() -> None:
    key = KEYS.history("test123")
    assert key == "chat:{test123}:history"
    assert key_slot(key.encode()) == key_slot(b"test123")


def test_channel_and_its_pattern_follow_the_prefix() -> None:
    keys = KeySpace("tenant-a")
    assert keys.channel("test123") == "tenant-a:test123"
    assert keys.channel_pattern == "tenant-a:{session_id}"
    assert keys.history("s").startswith("tenant-a:")


async def test_bounded_turns_a_deadline_into_redis_unavailable() -> None:
    with pytest.raises(RedisUnavailable) as caught:
        async with bounded(0.05):
            await asyncio.sleep(10)  # the call that overruns its deadline: the subject, not a wait
    assert caught.value.reason == "Redis did not answer in time"


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (
            RedisConnectionError("Error 111 connecting to db.internal:6379. Connection refused."),
            "cannot connect",
        ),
        (ResponseError("OOM command not allowed when used memory > 'maxmemory'."), "out of memory"),
        (ResponseError("WRONGPASS invalid username-password pair"), "refused the credentials"),
        (TimeoutError(), "did not answer in time"),
        # What redis-py really raises for OOM and WRONGPASS replies: the code is gone from the text.
        (OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), "out of memory"),
        (
            AuthenticationError("invalid username-password pair or user is disabled."),
            "refused the credentials",
        ),
    ],
)
def test_failure_reasons_are_short_and_name_no_host(error: Exception, reason: str) -> None:
    text = describe(error)
    assert reason in text
    assert "internal" not in text
    assert "6379" not in text
