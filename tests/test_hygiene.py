"""Error hygiene: after Redis and provider failures, no response body or log line holds a traceback,
the Redis password or an API key (issue #5, tests)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator

import httpx
import pytest

from config import Settings
from testkit.openai_server import OpenAIServer, Reply
from testkit.redis_server import RedisServer, start_redis
from testkit.waiting import eventually
from tests.conftest import AppClient

pytestmark = pytest.mark.redis

PASSWORD = "redis-password-Zq8x"
KEY = "hygiene-key-0123456789abcdef"
OTHER_KEY = "hygiene-other-0123456789abcd"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def locked_redis() -> Iterator[RedisServer]:
    # A user of its own with a password; the default user stays open for the fixture's redis-cli.
    server = start_redis("--user", "app", "on", f">{PASSWORD}", "~*", "&*", "+@all")
    yield server
    server.cleanup()


async def test_failures_leave_no_traceback_password_or_key_in_bodies_or_logs(
    openai_settings: Callable[..., Settings],
    model_server: OpenAIServer,
    app_client: AppClient,
    locked_redis: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The model provider fails: refuses outright, then drops the stream mid-answer.
    model_server.script(
        Reply(status=500, message="upstream exploded"),
        Reply(tokens=("Partial", " answer", " never", " finished"), delay=0.05, drop_after=2),
    )
    url = f"redis://app:{PASSWORD}@127.0.0.1:{locked_redis.port}/0"
    settings = openai_settings(
        api_keys=f"main:{KEY},other:{OTHER_KEY}",
        redis_url=url,
        redis_timeout=0.5,
        rate_limit="100/minute",
        max_streams_per_user=50,
    )
    bodies: list[str] = []

    async def call(client: httpx.AsyncClient, method: str, path: str, **kwargs: object) -> httpx.Response:
        response = await client.request(method, path, **kwargs)  # type: ignore[arg-type]
        bodies.append(f"{response.status_code} {response.headers} {response.text}")
        return response

    caplog.set_level(logging.DEBUG)
    async with app_client(settings) as client:
        chat = {"session_id": "h1", "message": "please fail", "user_id": "u"}

        async def stored(turns: int) -> bool:
            return bool((await client.get("/history/h1", headers=AUTH)).json()["count"] >= turns)

        for attempt in (1, 2):
            assert (await call(client, "POST", "/chat", json=chat, headers=AUTH)).status_code == 202
            # The provider fails and the answer ends: its turn is stored.
            await eventually(functools.partial(stored, 2 * attempt), f"failed answer {attempt} is stored")
        history = await call(client, "GET", "/history/h1", headers=AUTH)
        assert [turn.get("finish_reason") for turn in history.json()["messages"]][1::2] == ["error", "error"]
        await call(client, "GET", "/history/h1", headers={"Authorization": f"Bearer {KEY[:-1]}"})
        await call(client, "GET", "/history/h1", headers={"X-API-Key": OTHER_KEY})

        # Redis dies with answers running, and requests keep coming.
        running = [
            await call(client, "POST", "/chat", json={**chat, "message": f"long {n}"}, headers=AUTH)
            for n in range(3)
        ]
        locked_redis.stop(kill=True)
        for method, path in [
            ("POST", "/chat"),
            ("GET", "/history/h1"),
            ("GET", "/health"),
            ("GET", "/metrics"),
        ]:
            kwargs: dict[str, object] = {"headers": AUTH}
            if method == "POST":
                kwargs["json"] = chat
            await call(client, method, path, **kwargs)
        await call(client, "POST", f"/chat/{running[0].json()['message_id']}/cancel", headers=AUTH)
        locked_redis.start()

        # Ready again means the stream hub noticed its lost connection and subscribed again: the
        # failures and the recovery have been logged, and the last response is the recovered one.
        async def recovered() -> bool:
            return (await call(client, "GET", "/health")).status_code == 200

        await eventually(recovered, "ready again once Redis is back")

    assert any(body.startswith("503") for body in bodies)
    assert any(record.levelno >= logging.WARNING for record in caplog.records)
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    # The service runs in-process here, so uvicorn's records are the fake model server's own.
    lines = [formatter.format(record) for record in caplog.records if not record.name.startswith("uvicorn")]
    for text in bodies + lines:
        assert "Traceback" not in text, text
        assert PASSWORD not in text, text
        assert KEY not in text, text
        assert OTHER_KEY not in text, text
        assert KEY[:-1] not in text, text
        assert model_server.api_key not in text, text
