"""`POST /chat` off FastAPI's per-request machinery (protocols/direct.py): it answers as the route does,
and every request it cannot answer so reaches the route, body intact."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from app import create_app
from config import Settings
from protocols.deps import get_history
from protocols.direct import chat_route

KEY = "direct-key-0123456789abcdef0"
AUTH = {"Authorization": f"Bearer {KEY}"}
# A JSON type FastAPI reads (a `+json` subtype) and the direct path leaves to the route: the reference.
ROUTE_ONLY = {"Content-Type": "application/vnd.chat+json"}


class RouteCalls:
    """Counts the requests the `POST /chat` route itself handles (its `handle`, wrapped for the test)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        route = chat_route()
        handle = route.handle

        async def counted(scope: Any, receive: Any, send: Any) -> None:
            self.count += 1
            await handle(scope, receive, send)

        monkeypatch.setattr(route, "handle", counted)


@asynccontextmanager
async def service(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[httpx.AsyncClient, RouteCalls]]:
    app = create_app(settings)
    calls = RouteCalls(monkeypatch)
    async with (
        LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://test") as client,
    ):
        yield client, calls


@pytest.fixture
async def keyed(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[httpx.AsyncClient, RouteCalls]]:
    settings = make_settings(api_keys=f"team:{KEY}", max_message_length=100)
    async with service(settings, monkeypatch) as running:
        yield running


def body(session_id: str, **extra: object) -> dict[str, object]:
    return {"session_id": session_id, "message": "Hello!", "user_id": "u1", **extra}


async def test_a_valid_chat_is_answered_without_the_route_and_as_the_route_answers_it(
    keyed: tuple[httpx.AsyncClient, RouteCalls],
) -> None:
    client, calls = keyed
    direct = await client.post("/chat", json=body("d1"), headers=AUTH)
    assert direct.status_code == 202, direct.text
    assert calls.count == 0
    routed = await client.post(
        "/chat", content=httpx.Request("POST", "/", json=body("d2")).content, headers=AUTH | ROUTE_ONLY
    )
    assert routed.status_code == 202, routed.text
    assert calls.count == 1
    assert direct.headers["content-type"] == routed.headers["content-type"] == "application/json"
    answered, expected = direct.json(), routed.json()
    assert answered.keys() == expected.keys()
    for name in ("session_id", "channel", "stream_url", "message_id"):
        # The id first: a random id may itself hold "d1".
        mine = answered[name].replace(answered["message_id"], "ID").replace("d1", "d2")
        assert mine == expected[name].replace(expected["message_id"], "ID")
    assert answered["status"] == expected["status"] == "streaming"
    # A stream token is signed for its session: the same form, for the same key.
    token, reference = answered["stream_token"].split("."), expected["stream_token"].split(".")
    assert (len(token), token[-1]) == (len(reference), reference[-1]) == (3, "team")


async def test_a_repeated_message_id_is_200_with_its_state_on_the_direct_path(
    keyed: tuple[httpx.AsyncClient, RouteCalls],
) -> None:
    client, calls = keyed
    message_id = str(uuid.uuid4())
    first = await client.post("/chat", json=body("r1", message_id=message_id), headers=AUTH)
    again = await client.post("/chat", json=body("r1", message_id=message_id), headers=AUTH)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["message_id"] == first.json()["message_id"] == message_id
    # The same message id in another session: the error table's 409, as the route gives it.
    conflict = await client.post("/chat", json=body("r2", message_id=message_id), headers=AUTH)
    routed = await client.post(
        "/chat",
        content=httpx.Request("POST", "/", json=body("r2", message_id=message_id)).content,
        headers=AUTH | ROUTE_ONLY,
    )
    assert calls.count == 1
    assert conflict.status_code == routed.status_code == 409
    assert conflict.json() == routed.json()
    assert conflict.json()["error"]["code"] == "message_id_conflict"


async def test_an_error_of_the_work_itself_is_the_routes_error(
    keyed: tuple[httpx.AsyncClient, RouteCalls],
) -> None:
    """The body validates, but the message is over MAX_MESSAGE_LENGTH: the direct path answers it,
    through the same table."""
    client, calls = keyed
    long = body("l1", message="x" * 101)
    direct = await client.post("/chat", json=long, headers=AUTH)
    routed = await client.post(
        "/chat", content=httpx.Request("POST", "/", json=long).content, headers=AUTH | ROUTE_ONLY
    )
    assert calls.count == 1
    assert direct.status_code == routed.status_code == 422
    assert direct.json() == routed.json()


@pytest.mark.parametrize(
    ("content", "headers", "status", "code"),
    [
        (
            b'{"session_id": "f1", "message": "Hello!", "user_id": "u1"}',
            {"Content-Type": "text/plain"},
            422,
            None,
        ),
        (b'{"session_id": "f1", "message": ', {"Content-Type": "application/json"}, 422, "invalid_request"),
        (b'{"session_id": "f 1", "message": "Hello!", "user_id": "u1"}', {}, 422, "invalid_request"),
        (
            b'{"session_id": "f1", "message": "Hello!", "user_id": "u1", "extra": 1}',
            {},
            422,
            "invalid_request",
        ),
        (b"\xff\xfe", {"Content-Type": "application/json"}, 422, "invalid_request"),
        (b"[]", {"Content-Type": "application/json"}, 422, "invalid_request"),
    ],
)
async def test_a_body_the_route_would_refuse_reaches_the_route_intact(
    keyed: tuple[httpx.AsyncClient, RouteCalls],
    content: bytes,
    headers: dict[str, str],
    status: int,
    code: str | None,
) -> None:
    client, calls = keyed
    response = await client.post(
        "/chat", content=content, headers={"Content-Type": "application/json", **headers, **AUTH}
    )
    assert calls.count == 1
    assert response.status_code == status, response.text
    if code is not None:
        assert response.json()["error"]["code"] == code


@pytest.mark.parametrize("auth", [{}, {"Authorization": "Bearer not-a-key"}, {"X-API-Key": "not-a-key"}])
async def test_a_caller_without_a_valid_key_reaches_the_route_and_its_401(
    keyed: tuple[httpx.AsyncClient, RouteCalls], auth: dict[str, str]
) -> None:
    client, calls = keyed
    response = await client.post("/chat", json=body("k1"), headers=auth)
    assert calls.count == 1
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


async def test_the_key_is_read_from_either_header_as_the_route_reads_it(
    keyed: tuple[httpx.AsyncClient, RouteCalls],
) -> None:
    client, calls = keyed
    for index, auth in enumerate(
        [
            {"X-API-Key": KEY},
            {"Authorization": f"bearer {KEY}"},
            {"Authorization": "Basic x", "X-API-Key": KEY},
        ]
    ):
        response = await client.post("/chat", json=body(f"h{index}"), headers=auth)
        assert response.status_code == 202, (auth, response.text)
    assert calls.count == 0


async def test_with_dependency_overrides_the_route_answers(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replaced dependencies (an embedder's, a test's) are the route's: the direct path steps aside."""
    app = create_app(make_settings())
    calls = RouteCalls(monkeypatch)
    app.dependency_overrides[get_history] = get_history
    async with (
        LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://test") as client,
    ):
        response = await client.post("/chat", json=body("o1"))
    assert response.status_code == 202
    assert calls.count == 1


async def test_another_method_reaches_the_route_and_its_405(
    keyed: tuple[httpx.AsyncClient, RouteCalls],
) -> None:
    client, calls = keyed
    response = await client.get("/chat", headers=AUTH)
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert calls.count == 1
