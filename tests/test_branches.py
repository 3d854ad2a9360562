"""Edit, regenerate and branch (issue #15) against a real Redis, the conversation record on SQLite and a
real PostgreSQL, and the scriptable model server, which records what it is sent: the context of every
answer is the active branch's path only, a regenerated answer's `start` carries its parent, and every
bad input is a 4xx naming the field, with nothing written."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from config import Settings
from testkit.openai_server import OpenAIServer, Reply
from testkit.redis_server import RedisServer
from testkit.waiting import eventually
from tests.record_backends import database_url
from tests.sse_flows import collect, running
from tests.test_providers import sent

__all__ = ["database_url"]

pytestmark = pytest.mark.redis

SettingsFactory = Callable[..., Settings]
Json = dict[str, Any]

SESSION = "branchy"
ALICE_KEY = "alice-key-0123456789abcdef"
BOB_KEY = "bob-key-0123456789abcdef00"
ALICE = {"Authorization": f"Bearer {ALICE_KEY}"}
BOB = {"Authorization": f"Bearer {BOB_KEY}"}


def reply(text: str, delay: float = 0.0) -> Reply:
    return Reply(tokens=(text,), delay=delay)


async def ask(client: httpx.AsyncClient, message: str, **extra: Any) -> str:
    """Send a message and wait for its answer's end; return its message_id."""
    body = {"session_id": SESSION, "message": message, "user_id": "u1", **extra}
    response = await client.post("/chat", json=body)
    assert response.status_code == 202, response.text
    message_id: str = response.json()["message_id"]
    await collect(client, f"/stream/{SESSION}?message_id={message_id}")
    return message_id


async def start_of(client: httpx.AsyncClient, message_id: str) -> Json:
    events = await collect(client, f"/stream/{SESSION}?message_id={message_id}")
    assert events[0].event == "start" and events[-1].event == "end"
    start: Json = events[0].json()
    return start


async def history(client: httpx.AsyncClient, headers: Json | None = None) -> list[tuple[str, str]]:
    body = (await client.get(f"/history/{SESSION}", headers=headers or {})).json()
    return [(turn["role"], turn["content"]) for turn in body["messages"]]


def conversation_sent(model_server: OpenAIServer) -> list[tuple[str, str]]:
    """The last request's messages, as (role, content), without the system prompt."""
    return [(m["role"], m["content"]) for m in sent(model_server) if m["role"] != "system"]


async def archived_tree(client: httpx.AsyncClient, active_ends_with: str) -> Json:
    """GET /conversations/{id} once the record's active branch ends with `active_ends_with`'s turns."""

    async def caught_up() -> Json | None:
        response = await client.get(f"/conversations/{SESSION}")
        if response.status_code != 200:
            return None
        body: Json = response.json()
        branch = body["active_branch"]
        return body if branch and branch[-1] == f"{active_ends_with}:assistant" else None

    found: Json = await eventually(caught_up, "the record's active branch", timeout=10)
    return found


async def test_edit_regenerate_and_switch_send_the_model_the_active_branch_only(
    openai_settings: SettingsFactory,
    model_server: OpenAIServer,
    redis_server: RedisServer,
    database_url: str,
) -> None:
    model_server.script(
        reply("One."), reply("Two."), reply("Two, edited."), reply("Two, again."), reply("Three.")
    )
    settings = openai_settings(redis_url=redis_server.url, database_url=database_url)
    async with running(settings, timeout=20) as client:
        first = await ask(client, "First?")
        second = await ask(client, "Second?")
        assert (await start_of(client, second))["parent_id"] == first
        assert "parent_id" not in await start_of(client, first)

        # An edit of the second message: a branch from the first exchange.
        edited = await ask(client, "Second, edited?", parent_id=first)
        assert (await start_of(client, edited))["parent_id"] == first
        assert conversation_sent(model_server) == [
            ("user", "First?"),
            ("assistant", "One."),
            ("user", "Second, edited?"),
        ]
        assert await history(client) == [
            ("user", "First?"),
            ("assistant", "One."),
            ("user", "Second, edited?"),
            ("assistant", "Two, edited."),
        ]

        # Another answer to the edited message: its own id, its parent in `start`.
        response = await client.post(f"/chat/{edited}/regenerate", json={"user_id": "u1"})
        assert response.status_code == 202, response.text
        again = response.json()["message_id"]
        assert again != edited
        assert (await start_of(client, again))["parent_id"] == edited
        assert conversation_sent(model_server) == [
            ("user", "First?"),
            ("assistant", "One."),
            ("user", "Second, edited?"),
        ]
        assert await history(client) == [
            ("user", "First?"),
            ("assistant", "One."),
            ("user", "Second, edited?"),
            ("assistant", "Two, again."),
        ]

        # Back to the first branch, in one call; the next message follows it.
        switched = await client.post(f"/conversations/{SESSION}/branch", json={"message_id": second})
        assert switched.status_code == 200, switched.text
        assert [turn["content"] for turn in switched.json()["messages"]] == [
            "First?",
            "One.",
            "Second?",
            "Two.",
        ]
        third = await ask(client, "Third?")
        assert (await start_of(client, third))["parent_id"] == second
        assert conversation_sent(model_server) == [
            ("user", "First?"),
            ("assistant", "One."),
            ("user", "Second?"),
            ("assistant", "Two."),
            ("user", "Third?"),
        ]

        # The record has the tree, the active branch and where each turn stands among its alternatives.
        tree = await archived_tree(client, third)
        assert len(tree["messages"]) == 9
        parents = {(m["message_id"], m["turn"]["role"]): m.get("parent_id") for m in tree["messages"]}
        assert parents[(again, "assistant")] == edited
        assert parents[(edited, "user")] == first
        assert parents[(third, "user")] == second
        assert tree["active_branch"] == [
            f"{first}:user",
            f"{first}:assistant",
            f"{second}:user",
            f"{second}:assistant",
            f"{third}:user",
            f"{third}:assistant",
        ]
        positions = {p["id"]: (p["position"], p["count"], p["siblings"]) for p in tree["positions"]}
        assert positions[f"{second}:user"] == (1, 2, [second, edited])
        assert positions[f"{first}:user"] == (1, 1, [first])

        # The regenerated answer's branch, from the record: the edited message's answers are 2 / 2.
        await client.post(f"/conversations/{SESSION}/branch", json={"message_id": again})
        model_server.script(reply("Four."))
        fourth = await ask(client, "Fourth?")
        assert conversation_sent(model_server)[-3:] == [
            ("user", "Second, edited?"),
            ("assistant", "Two, again."),
            ("user", "Fourth?"),
        ]
        tree = await archived_tree(client, fourth)
        positions = {p["id"]: (p["position"], p["count"], p["siblings"]) for p in tree["positions"]}
        assert positions[f"{again}:assistant"] == (2, 2, [edited, again])
        assert positions[f"{edited}:user"] == (2, 2, [second, edited])

        # Once Redis has let the session go, history is the record's active branch, the same.
        expected = await history(client)
        redis_server.cli("DEL", f"chat:{{{SESSION}}}:history")
        assert await history(client) == expected
        assert expected[-2:] == [("user", "Fourth?"), ("assistant", "Four.")]
