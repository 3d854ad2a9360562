"""Admission (admission/): API keys, stream tokens and session ownership, as callers meet them (issue #5,
items 1 to 3)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

import httpx
import pytest

from admission import StreamTokens
from config import Settings
from testkit.redis_server import RedisServer
from testkit.waiting import eventually
from tests.conftest import AppClient

ALICE_KEY = "alice-key-0123456789abcdef"
BOB_KEY = "bob-key-0123456789abcdef00"
KEYS = f"alice:{ALICE_KEY},bob:{BOB_KEY}"
SECRET = "stream-token-secret-for-the-tests-0123456789"
OTHER_SECRET = b"some-other-instance-secret-of-32-bytes"
ALICE = {"Authorization": f"Bearer {ALICE_KEY}"}
BOB = {"X-API-Key": BOB_KEY}
ANSWER_ID = "6f1c3f7e-8a49-4d0e-9b8e-2f7f5a1c9d10"

PROTECTED = [
    ("POST", "/chat"),
    ("POST", f"/chat/{ANSWER_ID}/cancel"),
    ("GET", "/stream/s1"),
    ("GET", "/history/s1"),
    ("DELETE", "/history/s1"),
    ("GET", "/metrics"),
]
OPEN = ["/", "/health", "/health/live", "/docs", "/redoc", "/openapi.json", "/schema/events"]


def chat_body(session_id: str = "s1", **extra: object) -> dict[str, object]:
    return {"session_id": session_id, "message": "Tell me about keys", "user_id": "u1", **extra}


async def send(
    client: httpx.AsyncClient, method: str, path: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    body = chat_body() if path == "/chat" else None
    return await client.request(method, path, json=body, headers=headers)


async def finished(client: httpx.AsyncClient, session_id: str, headers: dict[str, str]) -> None:
    async def stored() -> bool:
        return bool((await client.get(f"/history/{session_id}", headers=headers)).json().get("count") == 2)

    await eventually(stored, "the answer finished")


@pytest.mark.parametrize(("method", "path"), PROTECTED)
async def test_protected_routes_refuse_missing_and_wrong_keys(
    make_settings: Callable[..., Settings], app_client: AppClient, method: str, path: str
) -> None:
    async with app_client(make_settings(api_keys=KEYS)) as client:
        for headers in (
            None,
            {"Authorization": "Bearer wrong-key-0123456789abcdef"},
            {"Authorization": f"Bearer {ALICE_KEY[:-1]}"},  # a prefix of a real key
            {"X-API-Key": ALICE_KEY + "x"},
            {"Authorization": f"Basic {ALICE_KEY}"},
        ):
            response = await send(client, method, path, headers)
            assert response.status_code == 401, (headers, response.text)
            assert response.json()["error"]["code"] == "unauthorized"
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert ALICE_KEY not in response.text


@pytest.mark.parametrize(("method", "path"), PROTECTED)
async def test_protected_routes_accept_the_right_key_either_way(
    make_settings: Callable[..., Settings], app_client: AppClient, method: str, path: str
) -> None:
    async with app_client(make_settings(api_keys=KEYS)) as client:
        # Create the session first, so that the session routes find it.
        created = await client.post("/chat", json=chat_body(), headers=ALICE)
        assert created.status_code == 202
        await finished(client, "s1", ALICE)
        for headers in (ALICE, {"X-API-Key": ALICE_KEY}):
            if path.startswith("/stream"):
                url = f"{path}?message_id={created.json()['message_id']}"
                async with client.stream(method, url, headers=headers) as response:
                    assert response.status_code == 200
                    assert "event: end" in (await response.aread()).decode()
                continue
            response = await send(client, method, path, headers)
            assert response.status_code not in (401, 403), response.text
            assert response.status_code < 500


async def test_public_routes_need_no_key(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    async with app_client(make_settings(api_keys=KEYS)) as client:
        for path in OPEN:
            response = await client.get(path)
            assert response.status_code == 200, path


async def test_openapi_declares_the_keys_so_swagger_can_authorize(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    async with app_client(make_settings(api_keys=KEYS)) as client:
        document = (await client.get("/openapi.json")).json()
    schemes = document["components"]["securitySchemes"]
    assert {"type": "http", "scheme": "bearer"}.items() <= next(
        scheme for scheme in schemes.values() if scheme["type"] == "http"
    ).items()
    assert any(
        scheme.get("in") == "header" and scheme.get("name") == "X-API-Key" for scheme in schemes.values()
    )
    assert document["paths"]["/chat"]["post"]["security"]
    assert "security" not in document["paths"]["/health"]["get"]


async def test_open_service_says_so_once_and_serves_everyone(
    make_settings: Callable[..., Settings], app_client: AppClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        async with app_client(make_settings()) as client:
            accepted = await client.post("/chat", json=chat_body())
            assert accepted.status_code == 202
            assert "stream_token" not in accepted.json()
            assert (await client.get("/history/never-used")).json()["count"] == 0
    warnings = [
        record.getMessage() for record in caplog.records if "API_KEYS is not set" in record.getMessage()
    ]
    assert len(warnings) == 1


def test_a_bad_api_keys_value_stops_start_up_without_echoing_the_key(
    make_settings: Callable[..., Settings],
) -> None:
    from pydantic import ValidationError

    from config import format_validation_error

    for value in ("alice", "alice:short", "al ice:0123456789abcdef0", f"a:{ALICE_KEY},a:{BOB_KEY}"):
        with pytest.raises(ValidationError) as raised:
            make_settings(api_keys=value)
        message = format_validation_error(raised.value)
        assert message.startswith("invalid configuration: API_KEYS")
        assert ALICE_KEY not in message
        assert BOB_KEY not in message


# --- Ownership -----------------------------------------------------------------------------------


async def test_another_keys_session_is_indistinguishable_from_a_missing_one(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    async with app_client(make_settings(api_keys=KEYS)) as client:
        accepted = await client.post("/chat", json=chat_body("alices"), headers=ALICE)
        assert accepted.status_code == 202
        await finished(client, "alices", ALICE)
        message_id = accepted.json()["message_id"]

        for method, theirs, missing in [
            ("GET", "/history/alices", "/history/nobodys"),
            ("DELETE", "/history/alices", "/history/nobodys"),
            ("GET", "/stream/alices", "/stream/nobodys"),
            ("GET", f"/stream/alices?message_id={message_id}", f"/stream/nobodys?message_id={message_id}"),
            ("POST", f"/chat/{message_id}/cancel", f"/chat/{uuid.uuid4()}/cancel"),
        ]:
            foreign = await client.request(method, theirs, headers=BOB)
            absent = await client.request(method, missing, headers=BOB)
            assert foreign.status_code == absent.status_code == 404, (method, theirs)
            assert foreign.json() == absent.json()
            assert set(foreign.headers) - {"x-request-id"} == set(absent.headers) - {"x-request-id"}

        # Nothing of Alice's was touched: her history is intact.
        history = (await client.get("/history/alices", headers=ALICE)).json()
        assert history["count"] == 2


async def test_another_key_cannot_post_into_a_session(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    async with app_client(make_settings(api_keys=KEYS)) as client:
        assert (await client.post("/chat", json=chat_body("alices"), headers=ALICE)).status_code == 202
        await finished(client, "alices", ALICE)
        refused = await client.post("/chat", json=chat_body("alices"), headers=BOB)
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "session_forbidden"
        history = (await client.get("/history/alices", headers=ALICE)).json()
        assert [turn["content"] for turn in history["messages"]].count("Tell me about keys") == 1


@pytest.mark.redis
async def test_ownership_key_shares_the_session_slot_and_expires_with_history(
    make_settings: Callable[..., Settings], app_client: AppClient, redis_server: RedisServer
) -> None:
    settings = make_settings(api_keys=KEYS, redis_url=redis_server.url, chat_history_ttl=300)
    async with app_client(settings) as client:
        assert (await client.post("/chat", json=chat_body("tagged"), headers=ALICE)).status_code == 202
        await finished(client, "tagged", ALICE)
    assert redis_server.cli("GET", "chat:{tagged}:owner") == "alice"
    assert 290 <= int(redis_server.cli("TTL", "chat:{tagged}:owner")) <= 300
    assert redis_server.cli("CLUSTER", "KEYSLOT", "chat:{tagged}:owner") == redis_server.cli(
        "CLUSTER", "KEYSLOT", "chat:{tagged}:history"
    )


# --- Stream tokens -------------------------------------------------------------------------------


async def test_stream_token_opens_its_own_session_stream_without_the_key(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    async with app_client(make_settings(api_keys=KEYS, stream_token_secret=SECRET)) as client:
        accepted = (await client.post("/chat", json=chat_body("tok"), headers=ALICE)).json()
        token = accepted["stream_token"]
        url = f"/stream/tok?message_id={accepted['message_id']}&token={token}"
        async with client.stream("GET", url) as response:
            assert response.status_code == 200
            text = (await response.aread()).decode()
        assert "event: start" in text
        assert "event: end" in text


async def test_expired_foreign_and_forged_stream_tokens_are_refused(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    tokens = StreamTokens(SECRET.encode(), ttl=60)
    async with app_client(make_settings(api_keys=KEYS, stream_token_secret=SECRET)) as client:
        accepted = (await client.post("/chat", json=chat_body("tok"), headers=ALICE)).json()
        assert (await client.post("/chat", json=chat_body("other"), headers=ALICE)).status_code == 202
        good = accepted["stream_token"]
        expires, signature, name = good.split(".", 2)
        refused = {
            "expired": tokens.issue("tok", "alice", now=time.time() - 61),
            "another session": good,  # presented on /stream/other below
            "another secret": StreamTokens(OTHER_SECRET, ttl=60).issue("tok", "alice"),
            "another key's name": f"{expires}.{signature}.bob",
            "later expiry": f"{int(expires) + 1000}.{signature}.{name}",
            "garbage": "not-a-token",
        }
        for reason, token in refused.items():
            session = "other" if reason == "another session" else "tok"
            response = await client.get(f"/stream/{session}?token={token}")
            assert response.status_code == 401, reason
            assert response.json()["error"]["code"] == "unauthorized"


async def test_a_stream_token_from_another_instance_works_with_a_shared_secret(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    # Same secret, same key name: a token minted anywhere is good for the session's owner.
    token = StreamTokens(SECRET.encode(), ttl=60).issue("tok", "alice")
    async with app_client(make_settings(api_keys=KEYS, stream_token_secret=SECRET)) as client:
        accepted = (await client.post("/chat", json=chat_body("tok"), headers=ALICE)).json()
        url = f"/stream/tok?message_id={accepted['message_id']}&token={token}"
        async with client.stream("GET", url) as response:
            assert response.status_code == 200
            assert "event: end" in (await response.aread()).decode()


async def test_a_token_does_not_outlive_its_owners_claim(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    # A token names its key; a session of another key stays 404 even with a well-signed token.
    async with app_client(make_settings(api_keys=KEYS, stream_token_secret=SECRET)) as client:
        assert (await client.post("/chat", json=chat_body("bobs"), headers=BOB)).status_code == 202
        alices_token = StreamTokens(SECRET.encode(), ttl=60).issue("bobs", "alice")
        response = await client.get(f"/stream/bobs?token={alices_token}")
        assert response.status_code == 404


def test_missing_stream_token_secret_warns_about_other_instances(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    from admission import Admission
    from redis_client import KeySpace, create_redis

    settings = make_settings(api_keys=KEYS)
    with caplog.at_level(logging.WARNING):
        Admission(settings, create_redis(settings), KeySpace("chat"))
    assert any("STREAM_TOKEN_SECRET is not set" in record.getMessage() for record in caplog.records)
