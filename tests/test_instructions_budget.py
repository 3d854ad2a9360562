"""A client's system messages count toward MAX_CONTEXT_CHARS on every entry that takes them (issue #13,
item 3): what cannot fit beside the newest message is refused, naming the field, before any answer
starts; what fits is answered."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from config import Settings
from conversation import ConversationMessage, InstructionsTooLong, check_instructions, pinned_size
from tests.conftest import AppClient

HUGE = "Always answer in French. " * 40_000  # a million characters
QUESTION = "What is the capital of France?"


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    # A body large enough to carry the megabyte: the context budget, not the body limit, must refuse it.
    return make_settings(max_body_bytes=4_000_000, max_context_chars=32_000)


def chat(system: str) -> dict[str, Any]:
    return {
        "model": "simulated",
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": QUESTION}],
    }


def agui(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "threadId": "t1",
        "runId": "r1",
        "state": {},
        "messages": [{"id": "m1", "role": "user", "content": QUESTION}],
        "tools": [],
        "context": [],
        "forwardedProps": {},
    }
    return {**body, **fields}


async def test_a_megabyte_system_message_on_v1_chat_is_a_400_naming_it(
    settings: Settings, app_client: AppClient
) -> None:
    async with app_client(settings) as client:
        refused = await client.post("/v1/chat/completions", json=chat(HUGE))
        two = await client.post(
            "/v1/chat/completions",
            json={
                **chat("x" * 20_000),
                "messages": [{"role": "developer", "content": "y" * 20_000}, *chat("x" * 20_000)["messages"]],
            },
        )
        fits = await client.post("/v1/chat/completions", json=chat("x" * (32_000 - len(QUESTION))))
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", "messages.0.content")
    assert "MAX_CONTEXT_CHARS" in error["message"]
    # Several system messages count together.
    assert two.status_code == 400
    assert two.json()["error"]["param"] == "messages"
    assert fits.status_code == 200


async def test_responses_instructions_and_system_input_count_toward_the_budget(
    settings: Settings, app_client: AppClient
) -> None:
    async with app_client(settings) as client:
        instructions = await client.post(
            "/v1/responses", json={"model": "simulated", "input": QUESTION, "instructions": "i" * 40_000}
        )
        system_item = await client.post(
            "/v1/responses",
            json={
                "model": "simulated",
                "input": [
                    {"role": "system", "content": "s" * 40_000},
                    {"role": "user", "content": QUESTION},
                ],
            },
        )
        fits = await client.post(
            "/v1/responses", json={"model": "simulated", "input": QUESTION, "instructions": "i" * 30_000}
        )
    assert instructions.status_code == 400
    assert instructions.json()["error"]["param"] == "instructions"
    assert system_item.status_code == 400
    assert system_item.json()["error"]["param"] == "input"
    assert fits.status_code == 200


async def test_agui_system_messages_and_context_count_toward_the_budget(
    settings: Settings, app_client: AppClient
) -> None:
    system = {"id": "s1", "role": "system", "content": "s" * 40_000}
    user = {"id": "m1", "role": "user", "content": QUESTION}
    async with app_client(settings) as client:
        by_message = await client.post("/agui", json=agui(messages=[system, user]))
        by_context = await client.post(
            "/agui", json=agui(context=[{"description": "notes", "value": "c" * 40_000}])
        )
        nothing_stored = await client.get("/history/t1")
    assert by_message.status_code == 422
    assert by_message.json()["error"]["fields"][0]["field"] == "messages.0.content"
    assert by_context.status_code == 422
    assert by_context.json()["error"]["fields"][0]["field"] == "context"
    # Refused before the turn was stored.
    assert nothing_stored.json()["count"] == 0


def test_instructions_fit_beside_what_is_always_sent() -> None:
    turns = [
        ConversationMessage("user", "an old question that may be dropped"),
        ConversationMessage("assistant", "an old answer"),
        ConversationMessage("user", "0123456789"),
    ]
    assert pinned_size(turns) == 10
    check_instructions("x" * 90, pinned=pinned_size(turns), max_chars=100)
    with pytest.raises(InstructionsTooLong, match="at most 90 fit"):
        check_instructions("x" * 91, pinned=pinned_size(turns), max_chars=100)
