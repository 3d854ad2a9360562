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
from tests.conftest import AppClient
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
    assert events[0].event == "start"
    assert events[-1].event == "end"
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

    found: Json = await eventually(caught_up, "the record's active branch")
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


# --- Bad input: a 4xx naming the field, and nothing written --------------------------------------


def assert_refused(response: httpx.Response, status: int, field: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    named = [item["field"] for item in error.get("fields", [])] or [error.get("param")]
    assert field in named, error


class Unchanged:
    """What a refused request must not have written: the session's history, and any state of the id it
    would have given its answer."""

    def __init__(self, redis_server: RedisServer) -> None:
        self._server = redis_server
        self._history = self._read()

    def _read(self) -> str:
        return self._server.cli("LRANGE", f"chat:{{{SESSION}}}:history", "0", "-1")

    def check(self, new_id: str) -> None:
        assert self._read() == self._history
        # Alice's answers' states are named by her key and the id (issue #13, item 7).
        assert self._server.cli("EXISTS", f"chat:message:{{alice/{new_id}}}") == "0"


async def test_bad_branches_are_refused_naming_the_field_and_write_nothing(
    openai_settings: SettingsFactory,
    model_server: OpenAIServer,
    redis_server: RedisServer,
    app_client: AppClient,
    tmp_path: Any,
) -> None:
    keys = f"alice:{ALICE_KEY},bob:{BOB_KEY}"
    settings = openai_settings(
        redis_url=redis_server.url, api_keys=keys, database_url=f"sqlite:///{tmp_path / 'record.db'}"
    )
    async with app_client(settings) as client:

        async def send(session: str, message: str, **extra: Any) -> str:
            body = {"session_id": session, "message": message, "user_id": "u1", **extra}
            response = await client.post("/chat", json=body, headers=ALICE)
            assert response.status_code == 202, response.text
            message_id: str = response.json()["message_id"]
            return message_id

        async def answered(session: str, count: int) -> None:
            async def done() -> bool:
                body: Json = (await client.get(f"/history/{session}", headers=ALICE)).json()
                return bool(body["count"] >= count) and body["messages"][-1]["role"] == "assistant"

            await eventually(done, f"{count} turns in {session}")

        first = await send(SESSION, "First?")
        await answered(SESSION, 2)
        elsewhere = await send("another", "Elsewhere?")
        await answered("another", 2)
        before = Unchanged(redis_server)

        def chat_body(**extra: Any) -> Json:
            return {
                "session_id": SESSION,
                "message": "Edited?",
                "user_id": "u1",
                "message_id": fresh,
                **extra,
            }

        fresh = str(uuid.uuid4())
        unknown = await client.post("/chat", json=chat_body(parent_id=str(uuid.uuid4())), headers=ALICE)
        assert_refused(unknown, 422, "parent_id")
        before.check(fresh)
        other_conversation = await client.post("/chat", json=chat_body(parent_id=elsewhere), headers=ALICE)
        assert_refused(other_conversation, 422, "parent_id")
        before.check(fresh)
        not_an_id = await client.post("/chat", json=chat_body(parent_id=f"{first}:user"), headers=ALICE)
        assert_refused(not_an_id, 422, "parent_id")
        before.check(fresh)
        with_results = {
            "session_id": SESSION,
            "user_id": "u1",
            "message_id": fresh,
            "parent_id": first,
            "tool_results": [{"tool_call_id": "call_1", "content": "{}"}],
        }
        assert_refused(await client.post("/chat", json=with_results, headers=ALICE), 422, "parent_id")
        before.check(fresh)

        regenerate = {"user_id": "u1", "message_id": fresh}
        for answer_id in (str(uuid.uuid4()), elsewhere):
            path = f"/chat/{answer_id}/regenerate"
            if answer_id == elsewhere:  # another conversation of the key is fine: another key's is not
                assert_refused(await client.post(path, json=regenerate, headers=BOB), 404, "message_id")
            else:
                assert_refused(await client.post(path, json=regenerate, headers=ALICE), 404, "message_id")
            before.check(fresh)
        bad_path = await client.post(f"/chat/{first}:user/regenerate", json=regenerate, headers=ALICE)
        assert_refused(bad_path, 422, "message_id")
        before.check(fresh)

        switch = f"/conversations/{SESSION}/branch"
        assert_refused(
            await client.post(switch, json={"message_id": elsewhere}, headers=ALICE), 422, "message_id"
        )
        assert_refused(
            await client.post(switch, json={"message_id": "not-an-id"}, headers=ALICE), 422, "message_id"
        )
        assert (await client.post(switch, json={"message_id": first}, headers=BOB)).status_code == 404
        before.check(fresh)

        # While an answer streams, a message that is not yet answered is no answer to regenerate, and
        # neither an edit nor a switch may change the branch under it.
        model_server.script(Reply(tokens=("slow", " answer", " indeed"), delay=2))
        streaming = await send(SESSION, "Second?")
        during = Unchanged(redis_server)
        busy = await client.post(f"/chat/{streaming}/regenerate", json=regenerate, headers=ALICE)
        assert_refused(busy, 409, "message_id")
        edit = await client.post("/chat", json=chat_body(parent_id=first), headers=ALICE)
        assert_refused(edit, 409, "parent_id")
        assert_refused(
            await client.post(switch, json={"message_id": first}, headers=ALICE), 409, "message_id"
        )
        during.check(fresh)
