"""A client that follows `stream_url` right after `POST /chat` gets the answer from its `start`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from config import Settings
from tests.conftest import AppClient


async def test_following_an_answer_between_its_start_and_first_chunk_gets_the_start(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    # The first chunk comes 0.25 s after `start`: the client arrives in between.
    async with app_client(make_settings(chunk_delay=0.25)) as client:
        accepted = (
            await client.post("/chat", json={"session_id": "early", "message": "Hi there", "user_id": "u"})
        ).json()
        await asyncio.sleep(0.1)
        body = (await client.get(accepted["stream_url"])).text
    events = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]
    assert [event["type"] for event in events][:2] == ["start", "chunk"]
    assert [event["seq"] for event in events] == list(range(len(events)))
    assert events[-1]["type"] == "end"
