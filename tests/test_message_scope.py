"""Message ids are each API key's own (issue #13, item 7): a `message_id` that another key has used is,
to this key, a fresh one. Its answer, stream, stop, history, regeneration, rating and record rows are
this key's alone, and the other key's answer goes on untouched; a key reusing its own id in another of
its sessions still gets `409 message_id_conflict`."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from config import Settings
from testkit.redis_server import RedisServer
from testkit.waiting import eventually
from tests.sse_flows import collect, running

ALICE_KEY = "alice-key-0123456789abcdef"
BOB_KEY = "bob-key-0123456789abcdef00"
ALICE = {"Authorization": f"Bearer {ALICE_KEY}"}
BOB = {"Authorization": f"Bearer {BOB_KEY}"}

Json = dict[str, Any]


def chat(session_id: str, message_id: str) -> Json:
    body = {"session_id": session_id, "message": "Tell me about streams", "user_id": "u1"}
    return {**body, "message_id": message_id}


def shape(accepted: Json, session_id: str, message_id: str) -> Json:
    """The answer to `POST /chat` with the ids (and the per-key stream token) taken out."""
    return {
        name: value.replace(session_id, "<session>").replace(message_id, "<id>")
        if isinstance(value, str) and name != "stream_token"
        else type(value).__name__
        for name, value in accepted.items()
    }


async def history(client: httpx.AsyncClient, session_id: str, headers: dict[str, str]) -> list[Json]:
    response = await client.get(f"/history/{session_id}", headers=headers)
    assert response.status_code == 200, response.text
    messages: list[Json] = response.json()["messages"]
    return messages


async def archived(client: httpx.AsyncClient, session_id: str, headers: dict[str, str], count: int) -> None:
    async def done() -> bool:
        response = await client.get(f"/conversations/{session_id}", headers=headers)
        return response.status_code == 200 and response.json()["message_count"] >= count

    await eventually(done, f"{count} turns of {session_id} archived")


def record_rows(database: Path, message_id: str) -> set[tuple[str, str]]:
    with sqlite3.connect(database) as connection:
        rows = connection.execute(
            "SELECT conversation_id, role FROM messages WHERE message_id = ?", (message_id,)
        ).fetchall()
    return {(str(conversation), str(role)) for conversation, role in rows}


def ratings(database: Path) -> set[tuple[str, str, str]]:
    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT owner, conversation_id, rating FROM feedback").fetchall()
    return {(str(owner), str(conversation), str(rating)) for owner, conversation, rating in rows}


async def test_another_keys_message_id_is_a_fresh_id_with_an_answer_of_its_own(
    make_settings: Callable[..., Settings], redis_server: RedisServer, tmp_path: Path
) -> None:
    database = tmp_path / "record.db"
    settings = make_settings(
        redis_url=redis_server.url,
        api_keys=f"alice:{ALICE_KEY},bob:{BOB_KEY}",
        database_path=str(database),
        stream_delay=0.02,
    )
    async with running(settings, timeout=30) as client:
        shared = str(uuid.uuid4())
        alices = await client.post("/chat", json=chat("alice-s", shared), headers=ALICE)
        assert alices.status_code == 202, alices.text

        fresh_id = str(uuid.uuid4())
        fresh = await client.post("/chat", json=chat("bob-fresh", fresh_id), headers=BOB)
        bobs = await client.post("/chat", json=chat("bob-s", shared), headers=BOB)
        # To Bob, Alice's id is as new as one never used: the same status, the same answer.
        assert (bobs.status_code, fresh.status_code) == (202, 202), bobs.text
        assert shape(bobs.json(), "bob-s", shared) == shape(fresh.json(), "bob-fresh", fresh_id)
        assert bobs.json()["session_id"] == "bob-s"

        # Bob stops his answer; Alice's, of the same id, runs to its end.
        url = f"/stream/bob-s?message_id={shared}"
        await collect(client, url, headers=BOB, until=lambda event: event.event == "chunk")
        stopped = await client.post(f"/chat/{shared}/cancel", headers=BOB)
        assert stopped.status_code == 200, stopped.text
        assert (stopped.json()["session_id"], stopped.json()["status"]) == ("bob-s", "cancelled")
        bob_events = await collect(client, url, headers=BOB)
        assert {event.json()["session_id"] for event in bob_events if event.event != "reset"} == {"bob-s"}
        assert bob_events[-1].json()["finish_reason"] == "cancelled"
        alice_events = await collect(client, f"/stream/alice-s?message_id={shared}", headers=ALICE)
        assert alice_events[-1].event == "end"
        assert alice_events[-1].json()["finish_reason"] == "stop"
        again = await client.post(f"/chat/{shared}/cancel", headers=ALICE)
        assert again.status_code == 409
        assert again.json()["state"]["session_id"] == "alice-s"

        bob_turns = await history(client, "bob-s", BOB)
        alice_turns = await history(client, "alice-s", ALICE)
        assert [(t["message_id"], t["role"]) for t in bob_turns] == [(shared, "user"), (shared, "assistant")]
        assert bob_turns[-1]["finish_reason"] == "cancelled"
        assert alice_turns[-1]["finish_reason"] == "stop"

        # Each key's retry is its own: the same session answers 200, another session of the key 409.
        retry = await client.post("/chat", json=chat("bob-s", shared), headers=BOB)
        assert (retry.status_code, retry.json()["status"]) == (200, "cancelled")
        elsewhere = await client.post("/chat", json=chat("bob-other", shared), headers=BOB)
        assert elsewhere.status_code == 409
        assert elsewhere.json()["error"]["code"] == "message_id_conflict"

        # The record keeps both exchanges, each in its own conversation, and each key rates its own.
        await archived(client, "bob-s", BOB, 2)
        await archived(client, "alice-s", ALICE, 2)
        assert record_rows(database, shared) == {
            ("alice-s", "user"),
            ("alice-s", "assistant"),
            ("bob-s", "user"),
            ("bob-s", "assistant"),
        }
        rating = {"user_id": "u1", "rating": "down"}
        assert (await client.post(f"/chat/{shared}/feedback", json=rating, headers=BOB)).status_code == 200
        rating = {"user_id": "u1", "rating": "up"}
        assert (await client.post(f"/chat/{shared}/feedback", json=rating, headers=ALICE)).status_code == 200
        assert ratings(database) == {("bob", "bob-s", "down"), ("alice", "alice-s", "up")}
        detail = (await client.get("/conversations/bob-s", headers=BOB)).json()
        assert [m["id"] for m in detail["messages"]] == [f"{shared}:user", f"{shared}:assistant"]

        # Bob regenerates his answer: in his session, from his message.
        regenerated = await client.post(f"/chat/{shared}/regenerate", json={"user_id": "u1"}, headers=BOB)
        assert regenerated.status_code == 202, regenerated.text
        assert regenerated.json()["session_id"] == "bob-s"
        await collect(client, f"/stream/bob-s?message_id={regenerated.json()['message_id']}", headers=BOB)
        assert [t["role"] for t in await history(client, "alice-s", ALICE)] == ["user", "assistant"]
        assert alice_turns == await history(client, "alice-s", ALICE)
