"""No client value reaches a Redis key name unvalidated (issue #13, item 1).

Every value a request carries that becomes part of a key (a session id, a user id, a message id, a
response id, a thread or run id), on every protocol, is sent as 1 MB against a real redis-server with
every limit that writes keys turned on: each is refused with a 4xx naming the field in its protocol's
shape, and Redis holds no key afterwards and has grown by far less than the value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from config import Settings
from testkit.redis_server import RedisServer
from tests.conftest import AppClient

KEY = "alice-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
HUGE = "u" * 1_000_000
# A URL may be at most 64 KiB long in httpx (and in most servers and proxies): as much as gets through.
LONG = "u" * 60_000
MESSAGE_ID = "5f0c2f3e-8a1b-4c5d-9e6f-7a8b9c0d1e2f"
USER_TEXT = {"role": "user", "content": "Hello"}
UI_MESSAGE = {"id": "m1", "role": "user", "parts": [{"type": "text", "text": "Hello"}]}
AGUI_MESSAGE = {"id": "m1", "role": "user", "content": "Hello"}


def agui_input(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "threadId": "t1",
        "runId": "r1",
        "state": {},
        "messages": [AGUI_MESSAGE],
        "tools": [],
        "context": [],
        "forwardedProps": {},
    }
    return {**body, **fields}


# (what is attacked, method, path, JSON body, extra headers, the status expected)
ATTACKS: list[tuple[str, str, str, dict[str, Any] | None, dict[str, str], int]] = [
    (
        "POST /chat session_id",
        "POST",
        "/chat",
        {"session_id": HUGE, "message": "hi", "user_id": "u"},
        {},
        422,
    ),
    ("POST /chat user_id", "POST", "/chat", {"session_id": "s", "message": "hi", "user_id": HUGE}, {}, 422),
    (
        "POST /chat message_id",
        "POST",
        "/chat",
        {"session_id": "s", "message": "hi", "user_id": "u", "message_id": HUGE},
        {},
        422,
    ),
    ("GET /history", "GET", f"/history/{LONG}", None, {}, 422),
    ("DELETE /history", "DELETE", f"/history/{LONG}", None, {}, 422),
    ("GET /stream", "GET", f"/stream/{LONG}", None, {}, 422),
    ("POST /chat/{id}/cancel", "POST", f"/chat/{LONG}/cancel", None, {}, 422),
    (
        "/v1/chat/completions user",
        "POST",
        "/v1/chat/completions",
        {"model": "simulated", "messages": [USER_TEXT], "user": HUGE},
        {},
        400,
    ),
    (
        "/v1/chat/completions X-Session-Id",
        "POST",
        "/v1/chat/completions",
        {"model": "simulated", "messages": [USER_TEXT]},
        {"X-Session-Id": LONG},
        400,
    ),
    (
        "/v1/responses user",
        "POST",
        "/v1/responses",
        {"model": "simulated", "input": "hi", "user": HUGE},
        {},
        400,
    ),
    (
        "/v1/responses previous_response_id",
        "POST",
        "/v1/responses",
        {"model": "simulated", "input": "hi", "previous_response_id": HUGE},
        {},
        400,
    ),
    ("GET /v1/responses/{id}", "GET", f"/v1/responses/resp_{LONG}", None, {}, 400),
    ("GET /v1/responses/{id}/input_items", "GET", f"/v1/responses/resp_{LONG}/input_items", None, {}, 400),
    ("POST /api/chat id", "POST", "/api/chat", {"id": HUGE, "messages": [UI_MESSAGE]}, {}, 422),
    (
        "POST /api/chat user_id",
        "POST",
        "/api/chat",
        {"id": "c1", "messages": [UI_MESSAGE], "user_id": HUGE},
        {},
        422,
    ),
    (
        "POST /api/chat messageId",
        "POST",
        "/api/chat",
        {"id": "c1", "messages": [UI_MESSAGE], "messageId": HUGE},
        {},
        422,
    ),
    ("GET /api/chat/{id}/stream", "GET", f"/api/chat/{LONG}/stream", None, {}, 422),
    ("POST /api/chat/{id}/stop", "POST", f"/api/chat/{LONG}/stop", None, {}, 422),
    ("POST /agui threadId", "POST", "/agui", agui_input(threadId=HUGE), {}, 422),
    (
        "POST /agui forwardedProps.userId",
        "POST",
        "/agui",
        agui_input(forwardedProps={"userId": HUGE}),
        {},
        422,
    ),
    ("POST /agui/connect threadId", "POST", "/agui/connect", agui_input(threadId=HUGE), {}, 422),
]


def used_memory(server: RedisServer) -> int:
    info = server.cli("INFO", "memory")
    line = next(line for line in info.splitlines() if line.startswith("used_memory:"))
    return int(line.partition(":")[2])


async def test_a_megabyte_in_any_keyed_field_is_refused_before_redis_holds_a_key(
    make_settings: Callable[..., Settings], app_client: AppClient, redis_server: RedisServer
) -> None:
    settings = make_settings(
        api_keys=f"alice:{KEY}",
        redis_url=redis_server.url,
        rate_limit="1000/minute",
        rate_limit_per_key="1000/minute",
        max_streams_per_user=10,
        max_streams_per_key=10,
        max_body_bytes=8_000_000,
    )
    async with app_client(settings) as client:
        before = used_memory(redis_server)
        for name, method, path, body, headers, expected in ATTACKS:
            response = await client.request(method, path, json=body, headers={**AUTH, **headers})
            assert response.status_code == expected, (name, response.status_code, response.text[:300])
            error = response.json()["error"]
            if path.startswith("/v1"):
                assert error["type"] == "invalid_request_error", name
            assert redis_server.cli("DBSIZE") == "0", (name, redis_server.cli("KEYS", "*")[:200])
        # Nothing of the 22 megabytes stayed in Redis: not as keys, not in its buffers.
        assert used_memory(redis_server) - before < 500_000


@pytest.mark.parametrize("user", ["", "a b", "x" * 129, "ü"])
async def test_v1_user_is_checked_like_user_id_in_openais_shape(
    make_settings: Callable[..., Settings], app_client: AppClient, user: str
) -> None:
    async with app_client(make_settings(rate_limit="10/minute")) as client:
        response = await client.post(
            "/v1/chat/completions", json={"model": "simulated", "messages": [USER_TEXT], "user": user}
        )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert response.json()["error"]["param"] == "user"
