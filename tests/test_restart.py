"""Conversations outlive the service (issue #15, "Done when"): `python app.py` with nothing configured
(the embedded Redis, the SQLite file in its working directory) keeps them across a restart, and so does
the same with DATABASE_URL naming a PostgreSQL database. The embedded Redis ends with its process, so
what the new process shows can only come from the record."""

from __future__ import annotations

import shutil

import httpx

from testkit.service import ServiceProcess
from testkit.waiting import eventually
from tests.chat_harness import Json
from tests.record_backends import postgres_url

__all__ = ["postgres_url"]

BODY = {"session_id": "kept", "message": "Remember the blue door", "user_id": "u1"}


async def listed(client: httpx.AsyncClient) -> list[Json]:
    response = await client.get("/conversations", params={"user_id": "u1"})
    assert response.status_code == 200, response.text
    conversations: list[Json] = response.json()["conversations"]
    return conversations


async def conversations_outlive_a_restart(variables: dict[str, str]) -> None:
    first = ServiceProcess(variables)
    second = ServiceProcess(variables)
    own_folder, second.folder = second.folder, first.folder  # the working directory of the SQLite file
    try:
        first.start()
        async with httpx.AsyncClient(base_url=first.url) as client:
            assert (await client.post("/chat", json=BODY)).status_code == 202

            async def archived() -> bool:
                return [(item["id"], item["message_count"]) for item in await listed(client)] == [("kept", 2)]

            await eventually(archived, f"the exchange is archived:\n{first.output()}")
            history = (await client.get("/history/kept")).json()
        assert [turn["role"] for turn in history["messages"]] == ["user", "assistant"]
        first.stop()
        second.start()
        async with httpx.AsyncClient(base_url=second.url) as client:
            again = await listed(client)
            assert [(item["id"], item["title"], item["message_count"]) for item in again] == [
                ("kept", "Remember the blue door", 2)
            ]
            assert (await client.get("/history/kept")).json() == history
    finally:
        second.kill()
        first.cleanup()
        shutil.rmtree(own_folder, ignore_errors=True)  # the second's log


async def test_the_run_commands_defaults_keep_conversations_across_a_restart() -> None:
    await conversations_outlive_a_restart({"STREAM_DELAY": "0", "CHUNK_DELAY": "0"})


async def test_a_postgresql_record_keeps_conversations_across_a_restart(postgres_url: str) -> None:
    await conversations_outlive_a_restart(
        {"STREAM_DELAY": "0", "CHUNK_DELAY": "0", "DATABASE_URL": postgres_url}
    )
