"""ARCHIVER=process (archiver_process.py): the archiver in a child process of the service, on SQLite and
PostgreSQL: it archives what the service stores, reports to `/health` and `/metrics`, is started again
when it dies (nothing lost), and ends with the service."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import pytest
from pydantic import ValidationError

from archiver_process import ArchiverProcess
from config import Settings
from testkit.redis_server import RedisServer
from testkit.waiting import eventually
from tests.chat_harness import RunService, ScriptedSource
from tests.record_backends import database_url

__all__ = ["database_url"]


def test_a_process_archiver_needs_a_redis_server(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ValidationError, match="ARCHIVER=process needs a Redis server"):
        make_settings(archiver="process")
    assert make_settings(archiver="process", redis_url="redis://127.0.0.1:6399").archiver == "process"


def test_the_default_archiver_is_a_process_with_a_redis_server_and_a_task_with_the_embedded_one(
    make_settings: Callable[..., Settings],
) -> None:
    assert Settings(_env_file=None).archiver == "auto"
    assert Settings(_env_file=None).archiver_mode == "loop"
    assert make_settings(redis_url="redis://127.0.0.1:6399", archiver="auto").archiver_mode == "process"
    assert make_settings(redis_host="redis.internal", archiver="auto").archiver_mode == "process"
    assert make_settings(redis_url="redis://127.0.0.1:6399", archiver="loop").archiver_mode == "loop"
    assert make_settings(redis_url="redis://127.0.0.1:6399", archiver="process").archiver_mode == "process"


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_the_archiver_process_archives_reports_and_is_restarted_after_a_kill(
    run_service: RunService, redis_server: RedisServer, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The child's settings are the parent's: a variable the parent's overrode (here one that would fail
    # validation without OPENAI_API_KEY) does not reach it.
    monkeypatch.setenv("AI_PROVIDER", "openai")
    settings = {
        "redis_url": redis_server.url,
        "database_url": database_url,
        "archiver": "process",
        "ai_provider": "simulated",
    }
    async with run_service(ScriptedSource(["Hello", " there"]), **settings) as harness:
        archiver, records = harness.services.archiver, harness.services.records
        assert isinstance(archiver, ArchiverProcess)
        await harness.chat("first", session_id="s1")

        async def archived(count: int) -> bool:
            return len(await records.turns("s1")) == count

        await eventually(lambda: archived(2), "the first exchange is in the record")
        await eventually(
            lambda: _true(archiver.state.archived >= 2), "the child reported what it archived", timeout=30
        )
        registry = harness.services.metrics.registry
        assert (registry.get_sample_value("chat_archived_turns_total") or 0) >= 2
        assert archiver.state.error is None

        first = archiver.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await eventually(
            lambda: _true(archiver.pid not in (None, first)), "another archiver process runs", timeout=30
        )
        assert archiver.starts == 2
        await harness.chat("second", session_id="s1")
        await eventually(lambda: archived(4), "the second exchange is in the record too")
        # The exit was reported to /health until the new child's first report.
        await eventually(lambda: _true(archiver.state.error is None), "the new child reports")
        # Both children's counts add up in the parent's figures.
        await eventually(lambda: _true(archiver.state.archived >= 4), "four turns counted")
        assert registry.get_sample_value("chat_archived_turns_total") == archiver.state.archived
        last = archiver.pid
        assert last is not None
        assert [turn["content"] for turn in await records.turns("s1")] == [
            "first",
            "Hello there",
            "second",
            "Hello there",
        ]
    assert gone(last)  # it ended with the service


async def _true(value: bool) -> bool:
    return value
