"""The error table (protocols/errors.py): every error under /v1 reaches the official OpenAI client as
its matching exception, in OpenAI's shape; every other route keeps the service's own body."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import httpx
import openai
import pytest
from openai import AsyncOpenAI

from config import Settings
from testkit.waiting import eventually
from tests.conftest import CHAT, AppClient

KEY = "alice-key-0123456789abcdef"
HELLO: list[Any] = [{"role": "user", "content": "Hello!"}]
OPENAI_ERROR_KEYS = {"message", "type", "param", "code"}


@asynccontextmanager
async def openai_client(
    app_client: AppClient, settings: Settings, api_key: str = KEY
) -> AsyncIterator[tuple[AsyncOpenAI, httpx.AsyncClient]]:
    """The official client, talking to the app in-process (lifespan entered), and the raw HTTP client."""
    async with app_client(settings) as http:
        # The SDK is typed for httpx2's client but takes an httpx one, as bound to the app here.
        client = AsyncOpenAI(
            http_client=cast(Any, http), base_url="http://test/v1", api_key=api_key, max_retries=0
        )
        yield client, http


def assert_openai_shape(error: openai.APIStatusError, status: int, kind: str, code: str) -> None:
    assert error.status_code == status
    body = error.response.json()
    assert set(body["error"]) == OPENAI_ERROR_KEYS, body
    assert error.type == kind
    assert error.code == code


async def test_a_missing_key_on_v1_is_an_authentication_error(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    async with openai_client(app_client, make_settings(api_keys=f"alice:{KEY}"), api_key="sk-wrong") as (
        client,
        http,
    ):
        with pytest.raises(openai.AuthenticationError) as raised:
            await client.chat.completions.create(model="simulated", messages=HELLO)
        none_sent = await http.get("/v1/models")
    assert_openai_shape(raised.value, 401, "authentication_error", "unauthorized")
    assert raised.value.response.headers["WWW-Authenticate"].startswith("Bearer")
    assert none_sent.status_code == 401
    assert set(none_sent.json()["error"]) == OPENAI_ERROR_KEYS


async def test_an_unknown_v1_path_and_a_wrong_method_answer_in_openai_shape(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    async with openai_client(app_client, make_settings()) as (client, _):
        with pytest.raises(openai.NotFoundError) as missing:
            await client.get("/no/such/endpoint", cast_to=object)
        with pytest.raises(openai.APIStatusError) as wrong_method:
            await client.get("/chat/completions", cast_to=object)
    assert_openai_shape(missing.value, 404, "invalid_request_error", "not_found")
    assert_openai_shape(wrong_method.value, 405, "invalid_request_error", "method_not_allowed")
    assert wrong_method.value.response.headers["allow"] == "POST"


async def test_an_unknown_model_is_not_found(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    async with openai_client(app_client, make_settings()) as (client, _):
        with pytest.raises(openai.NotFoundError) as raised:
            await client.models.retrieve("gpt-4o")
    assert_openai_shape(raised.value, 404, "invalid_request_error", "model_not_found")
    assert raised.value.param == "model"


async def test_an_invalid_body_is_a_bad_request_naming_the_field(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    async with openai_client(app_client, make_settings()) as (client, _):
        with pytest.raises(openai.BadRequestError) as raised:
            await client.chat.completions.create(model="simulated", messages=[])
    assert_openai_shape(raised.value, 400, "invalid_request_error", "invalid_request")
    assert raised.value.param == "messages"


async def test_a_too_large_body_is_413_in_openai_shape(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    async with openai_client(app_client, make_settings(max_body_bytes=1024)) as (client, _):
        with pytest.raises(openai.APIStatusError) as raised:
            await client.chat.completions.create(
                model="simulated", messages=[{"role": "user", "content": "x" * 4096}]
            )
    assert_openai_shape(raised.value, 413, "invalid_request_error", "payload_too_large")


async def test_the_rate_limit_is_a_rate_limit_error_with_retry_after(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    async with openai_client(app_client, make_settings(rate_limit="1/minute")) as (client, _):
        await client.chat.completions.create(model="simulated", messages=HELLO)
        with pytest.raises(openai.RateLimitError) as raised:
            await client.chat.completions.create(model="simulated", messages=HELLO)
    assert_openai_shape(raised.value, 429, "rate_limit_error", "rate_limited")
    assert 1 <= int(raised.value.response.headers["Retry-After"]) <= 60


async def test_at_capacity_v1_is_a_503_server_error_with_retry_after(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    # One answer may run, and one runs (slowly): a completion is refused before it starts.
    settings = make_settings(max_active_streams=1, chunk_delay=10)
    async with openai_client(app_client, settings) as (client, http):
        running = await http.post("/chat", json=CHAT)
        assert running.status_code == 202
        with pytest.raises(openai.InternalServerError) as raised:
            await client.chat.completions.create(model="simulated", messages=HELLO)
        refused_chat = await http.post("/chat", json={**CHAT, "session_id": "other"})
        await http.post(f"/chat/{running.json()['message_id']}/cancel")
    assert_openai_shape(raised.value, 503, "server_error", "overloaded")
    assert raised.value.response.headers["Retry-After"] == "1"
    # The native route refuses the same way, in its own shape.
    assert refused_chat.status_code == 503
    assert refused_chat.json() == {
        "error": {"code": "overloaded", "message": "The service is at capacity; try again shortly"}
    }


@pytest.mark.parametrize(
    ("method", "path", "status", "body"),
    [
        ("GET", "/nope", 404, {"error": {"code": "not_found", "message": "Not Found"}}),
        ("PUT", "/chat", 405, {"error": {"code": "method_not_allowed", "message": "Method Not Allowed"}}),
        (
            "POST",
            "/chat",
            413,
            {"error": {"code": "payload_too_large", "message": "The request body is larger than 1024 bytes"}},
        ),
    ],
)
async def test_native_routes_keep_the_services_own_bodies(
    make_settings: Callable[..., Settings],
    app_client: AppClient,
    method: str,
    path: str,
    status: int,
    body: dict[str, Any],
) -> None:
    # Only the 413 case sends a body (over the limit); the others send none.
    content = {**CHAT, "message": "x" * 2000} if status == 413 else None
    async with app_client(make_settings(max_body_bytes=1024)) as http:
        response = await http.request(method, path, json=content)
    assert response.status_code == status
    assert response.json() == body


async def active_answers(http: httpx.AsyncClient, count: int) -> bool:
    return f"chat_active_answers {count}.0" in (await http.get("/metrics")).text


async def test_a_running_stateless_completion_counts_against_max_active_streams(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    # From the attacker's side (issue #10): stateless completions used to bypass the cap entirely.
    settings = make_settings(max_active_streams=1, chunk_delay=10)
    async with openai_client(app_client, settings) as (client, http):
        first = asyncio.create_task(client.chat.completions.create(model="simulated", messages=HELLO))
        await eventually(lambda: active_answers(http, 1), "the first answer is running")
        with pytest.raises(openai.InternalServerError) as raised:
            await client.chat.completions.create(model="simulated", messages=HELLO)
        refused_chat = await http.post("/chat", json=CHAT)
        first.cancel()  # the caller leaves: its stateless answer is stopped
        with contextlib.suppress(asyncio.CancelledError):
            await first
        await eventually(lambda: active_answers(http, 0), "the stopped answer is no longer counted")
    assert_openai_shape(raised.value, 503, "server_error", "overloaded")
    assert refused_chat.status_code == 503
