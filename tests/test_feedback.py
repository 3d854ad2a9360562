"""Ratings of answers (protocols/feedback.py): one per answer, key and user, replaced by a new one,
counted by model in /metrics; bad input and other keys' answers refused with nothing written. On both
backends of the record (SQLite and PostgreSQL: the upsert is each dialect's own)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

import httpx
from sqlalchemy import select

from config import Settings
from records.database import create_engine
from records.schema import feedback
from testkit.waiting import eventually
from tests.conftest import AppClient
from tests.record_backends import database_url

__all__ = ["database_url"]

ALICE_KEY = "alice-key-0123456789abcdef"
BOB_KEY = "bob-key-0123456789abcdef00"
ALICE = {"Authorization": f"Bearer {ALICE_KEY}"}
BOB = {"Authorization": f"Bearer {BOB_KEY}"}


async def ratings(settings: Settings) -> list[tuple[str, str, str | None]]:
    engine = create_engine(settings)
    try:
        async with engine.connect() as connection:
            query = select(feedback.c.user_id, feedback.c.rating, feedback.c.comment)
            rows = (await connection.execute(query.order_by(feedback.c.user_id))).all()
    finally:
        await engine.dispose()
    return [(str(user), str(rating), comment) for user, rating, comment in rows]


async def answered(client: httpx.AsyncClient, headers: dict[str, str]) -> str:
    """An archived answer of Alice's; its message_id."""
    body = {"session_id": "s1", "message": "Rate me", "user_id": "u1"}
    message_id: str = (await client.post("/chat", json=body, headers=headers)).json()["message_id"]

    async def archived() -> bool:
        response = await client.get("/conversations/s1", headers=headers)
        return response.status_code == 200 and response.json()["message_count"] == 2

    await eventually(archived, "the answer is archived")
    return message_id


async def test_a_rating_is_stored_once_per_user_replaced_and_counted_by_model(
    make_settings: Callable[..., Settings], app_client: AppClient, database_url: str
) -> None:
    settings = make_settings(database_url=database_url, api_keys=f"alice:{ALICE_KEY},bob:{BOB_KEY}")
    async with app_client(settings) as client:
        message_id = await answered(client, ALICE)
        url = f"/chat/{message_id}/feedback"
        first = await client.post(
            url, json={"user_id": "u1", "rating": "up", "tags": ["helpful"]}, headers=ALICE
        )
        assert first.status_code == 200, first.text
        assert (first.json()["rating"], first.json()["model"], first.json()["tags"]) == (
            "up",
            "simulated",
            ["helpful"],
        )
        again = {"user_id": "u1", "rating": "down", "comment": "Wrong"}
        assert (await client.post(url, json=again, headers=ALICE)).status_code == 200
        assert (
            await client.post(url, json={"user_id": "u2", "rating": "up"}, headers=ALICE)
        ).status_code == 200
        assert await ratings(settings) == [("u1", "down", "Wrong"), ("u2", "up", None)]
        metrics = (await client.get("/metrics", headers=ALICE)).text
        assert re.search(r'^chat_feedback_total\{model="simulated",rating="up"\} 2\.0$', metrics, re.M)
        assert re.search(r'^chat_feedback_total\{model="simulated",rating="down"\} 1\.0$', metrics, re.M)


async def test_bad_feedback_is_refused_and_nothing_is_written(
    make_settings: Callable[..., Settings], app_client: AppClient, database_url: str
) -> None:
    settings = make_settings(database_url=database_url, api_keys=f"alice:{ALICE_KEY},bob:{BOB_KEY}")
    async with app_client(settings) as client:
        message_id = await answered(client, ALICE)
        url = f"/chat/{message_id}/feedback"
        for body, field in (
            ({"user_id": "u1", "rating": "meh"}, "rating"),
            ({"user_id": "u1", "rating": "up", "comment": "x" * 2001}, "comment"),
            ({"user_id": "u1", "rating": "up", "tags": ["ok"] * 17}, "tags"),
            ({"user_id": "u1", "rating": "up", "tags": ["<b>"]}, "tags.0"),
            ({"user_id": "a b", "rating": "up"}, "user_id"),
            ({"rating": "up"}, "user_id"),
        ):
            response = await client.post(url, json=body, headers=ALICE)
            assert response.status_code == 422, response.text
            assert field in [item["field"] for item in response.json()["error"]["fields"]]
        bad_id = await client.post(
            "/chat/not-a-uuid/feedback", json={"user_id": "u1", "rating": "up"}, headers=ALICE
        )
        assert bad_id.status_code == 422
        unknown = await client.post(
            f"/chat/{uuid.uuid4()}/feedback", json={"user_id": "u1", "rating": "up"}, headers=ALICE
        )
        assert unknown.status_code == 404
        assert [field["field"] for field in unknown.json()["error"]["fields"]] == ["message_id"]
        theirs = await client.post(url, json={"user_id": "u1", "rating": "down"}, headers=BOB)
        assert theirs.status_code == 404  # another key's answer: the same as a missing one
        assert theirs.json()["error"] == unknown.json()["error"]
        assert await ratings(settings) == []
