"""The HTTP API in-process, on the embedded Redis: routes, validation, errors, headers and docs."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from fastapi import Request

from ai_service import ServiceUnavailable
from config import VERSION, Settings
from models import ChatAccepted, ChatRequest
from protocols.deps import get_history, get_services
from services import Services
from testkit.waiting import eventually
from tests.chat_harness import Json
from tests.conftest import CHAT, AppClient, wait_for_history

ID_129 = "x" * 129


@pytest.fixture
async def client(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(make_settings(max_message_length=100)) as client:
        yield client


def assert_invalid(response: httpx.Response, field: str) -> None:
    """A 422 with the stable error body, naming `field` among the bad ones."""
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert field in [item["field"] for item in error["fields"]], error
    assert field in error["message"]


# --- The seed's endpoints ------------------------------------------------------------------------


async def test_root_says_what_the_service_is_and_where_to_go(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    body = response.json()
    assert body["service"] == "ai-chat-service"
    assert body["version"] == VERSION
    assert body["channel_pattern"] == "chat:{session_id}"
    for link in ("docs", "redoc", "health", "openapi", "event_schema"):
        assert (await client.get(body[link])).status_code == 200, link


async def test_health_is_200_with_the_embedded_redis(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert body["version"] == VERSION
    assert body["redis"]["status"] == "connected"
    assert body["redis"]["mode"] == "embedded"
    assert body["redis"]["latency_ms"] >= 0


async def test_seed_walkthrough_health_chat_history(client: httpx.AsyncClient) -> None:
    accepted = await client.post("/chat", json=CHAT)
    assert accepted.status_code == 202
    body = accepted.json()
    assert body["status"] == "streaming"
    assert body["session_id"] == "test123"
    assert body["channel"] == "chat:test123"

    history = await wait_for_history(client, "test123")
    assert history["session_id"] == "test123"
    assert history["count"] == 2
    user, assistant = history["messages"]
    assert (user["role"], user["content"], user["user_id"]) == ("user", "Hello!", "user1")
    assert "finish_reason" not in user
    assert assistant["role"] == "assistant"
    assert assistant["message_id"] == body["message_id"]
    assert assistant["finish_reason"] == "stop"
    assert assistant["content"]
    assert assistant["created_at"].endswith("Z")


async def test_unknown_session_has_an_empty_history(client: httpx.AsyncClient) -> None:
    response = await client.get("/history/never-seen")
    assert response.status_code == 200
    assert response.json() == {"session_id": "never-seen", "messages": [], "count": 0}


async def test_limit_returns_the_most_recent_turns_oldest_first(client: httpx.AsyncClient) -> None:
    for number in range(3):
        await client.post("/chat", json={**CHAT, "message": f"question {number}"})
        await wait_for_history(client, "test123", turns=2 * (number + 1))
    everything = (await client.get("/history/test123")).json()["messages"]
    recent = (await client.get("/history/test123", params={"limit": 3})).json()
    assert recent["count"] == 3
    assert recent["messages"] == everything[-3:]
    assert recent["messages"][-2]["content"] == "question 2"
    assert (await client.get("/history/test123", params={"limit": 100})).json()["count"] == 6


async def test_delete_clears_the_history(client: httpx.AsyncClient) -> None:
    await client.post("/chat", json=CHAT)
    await wait_for_history(client, "test123")

    async def archived() -> bool:
        response = await client.get("/conversations/test123")
        return response.status_code == 200 and response.json()["message_count"] == 2

    # Cleared in both tiers: once Redis's copy is gone `GET /history` reads the record's, so the
    # record's goes too.
    await eventually(archived, "the exchange reached the record")
    response = await client.delete("/history/test123")
    assert response.status_code == 200
    assert response.json()["status"] == "success"
    assert "test123" in response.json()["message"]
    assert (await client.get("/history/test123")).json()["count"] == 0
    assert (await client.get("/conversations/test123")).status_code == 404
    # Deleting what is not there is not an error either.
    assert (await client.delete("/history/test123")).status_code == 200


async def test_event_schema_is_served(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/schema/events")).json()
    assert schema["discriminator"]["propertyName"] == "type"


# --- Bad input: 422 naming the field, never a 5xx ------------------------------------------------


@pytest.mark.parametrize("field", ["session_id", "user_id"])
@pytest.mark.parametrize(
    "value", ["", "a b", "a*", "x?", "[x]", "{x}", "a\r\nb", "nul\x00", "caf\u00e9", ID_129]
)
async def test_a_bad_id_in_the_body_is_422_naming_it(
    client: httpx.AsyncClient, field: str, value: str
) -> None:
    assert_invalid(await client.post("/chat", json={**CHAT, field: value}), field)


@pytest.mark.parametrize("method", ["GET", "DELETE"])
@pytest.mark.parametrize(
    "value", ["a%20b", "a*", "x%3F", "%5Bx%5D", "%7Bx%7D", "a%0D%0Ab", "caf%C3%A9", ID_129]
)
async def test_a_bad_session_id_in_the_path_is_422_naming_it(
    client: httpx.AsyncClient, method: str, value: str
) -> None:
    assert_invalid(await client.request(method, f"/history/{value}"), "session_id")


@pytest.mark.parametrize("message", ["", " ", "\n\t "])
async def test_an_empty_or_blank_message_is_422(client: httpx.AsyncClient, message: str) -> None:
    assert_invalid(await client.post("/chat", json={**CHAT, "message": message}), "message")


async def test_max_message_length_is_respected(client: httpx.AsyncClient) -> None:
    # The fixture sets MAX_MESSAGE_LENGTH=100.
    assert (await client.post("/chat", json={**CHAT, "message": "x" * 100})).status_code == 202
    too_long = await client.post("/chat", json={**CHAT, "message": "x" * 101})
    assert_invalid(too_long, "message")
    assert "100" in too_long.json()["error"]["message"]


@pytest.mark.parametrize("missing", ["session_id", "message", "user_id"])
async def test_a_missing_field_is_422_naming_it(client: httpx.AsyncClient, missing: str) -> None:
    body = {name: value for name, value in CHAT.items() if name != missing}
    assert_invalid(await client.post("/chat", json=body), missing)


async def test_an_unknown_field_is_422_naming_it(client: httpx.AsyncClient) -> None:
    assert_invalid(await client.post("/chat", json={**CHAT, "role": "system"}), "role")


@pytest.mark.parametrize(
    ("field", "value"), [("session_id", 5), ("message", ["Hello"]), ("user_id", None), ("message", {"a": 1})]
)
async def test_a_wrong_type_is_422_naming_it(client: httpx.AsyncClient, field: str, value: object) -> None:
    assert_invalid(await client.post("/chat", json={**CHAT, field: value}), field)


@pytest.mark.parametrize(
    "content", [b'{"session_id": ', b"not json", b"", b'{"session_id": "a",}', b"[1, 2]", b'"text"']
)
async def test_a_body_that_is_not_a_json_object_is_422_naming_the_body(
    client: httpx.AsyncClient, content: bytes
) -> None:
    response = await client.post("/chat", content=content, headers={"Content-Type": "application/json"})
    assert_invalid(response, "body")


@pytest.mark.parametrize("limit", ["0", "-1", "abc", "1.5", "100001"])
async def test_a_bad_limit_is_422_naming_it(client: httpx.AsyncClient, limit: str) -> None:
    assert_invalid(await client.get("/history/test123", params={"limit": limit}), "limit")


async def test_a_rejected_chat_stores_nothing(client: httpx.AsyncClient) -> None:
    await client.post("/chat", json={**CHAT, "message": " "})
    assert (await client.get("/history/test123")).json()["count"] == 0


# --- Other errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/nope", "/history", "/history/a/b", "/chat/extra"])
async def test_an_unknown_route_is_404_json(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_found", "message": "Not Found"}}


@pytest.mark.parametrize(("method", "path"), [("GET", "/chat"), ("PUT", "/chat"), ("POST", "/history/abc")])
async def test_a_wrong_method_is_405_json_with_allow(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await client.request(method, path)
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert response.headers["allow"]


async def test_an_unexpected_exception_is_a_500_json_without_internals(
    make_settings: Callable[..., Settings], app_client: AppClient, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_history() -> None:
        raise RuntimeError("boom: password=hunter2 in /srv/app/secret.py")

    async with app_client(make_settings(), overrides={get_history: broken_history}) as client:
        response = await client.get("/history/test123", headers={"X-Request-ID": "req-500"})
    assert response.status_code == 500
    assert response.json() == {"error": {"code": "internal_error", "message": "Internal server error"}}
    assert "hunter2" not in response.text
    assert "Traceback" not in response.text
    assert response.headers["x-request-id"] == "req-500"
    logged = [record for record in caplog.records if record.exc_info and record.levelno == logging.ERROR]
    assert logged, "the failure must be logged with its traceback"
    assert logged[0].exc_info is not None
    assert isinstance(logged[0].exc_info[1], RuntimeError)


class StoppingService:
    """A chat service that has begun shutting down."""

    active_answers = 0

    async def submit(self, request: ChatRequest, *, owner: str | None = None) -> ChatAccepted:
        raise ServiceUnavailable("the service is shutting down")


async def test_a_chat_during_shutdown_is_503_shutting_down(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    async def stopping(request: Request) -> Services:
        services: Services = request.state.services
        return dataclasses.replace(services, chat=StoppingService())  # type: ignore[arg-type]

    async with app_client(make_settings(), overrides={get_services: stopping}) as client:
        response = await client.post("/chat", json=CHAT)
    assert response.status_code == 503
    assert response.json() == {"error": {"code": "shutting_down", "message": "the service is shutting down"}}


# --- Headers -------------------------------------------------------------------------------------


async def test_a_valid_request_id_is_echoed(client: httpx.AsyncClient) -> None:
    response = await client.get("/health", headers={"X-Request-ID": "frontend-42.a_b"})
    assert response.headers["x-request-id"] == "frontend-42.a_b"


@pytest.mark.parametrize("junk", ["has space", "x" * 200, "semi;colon", "<script>"])
async def test_a_junk_request_id_is_replaced(client: httpx.AsyncClient, junk: str) -> None:
    response = await client.get("/health", headers={"X-Request-ID": junk})
    assert response.status_code == 200
    assert response.headers["x-request-id"] not in {"", junk}


async def test_a_request_id_is_generated_when_none_is_sent(client: httpx.AsyncClient) -> None:
    first = (await client.get("/health")).headers["x-request-id"]
    second = (await client.get("/health")).headers["x-request-id"]
    assert first
    assert second
    assert first != second


async def test_each_request_is_logged_once_with_status_and_request_id(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chat.access")
    await client.get("/history/test123", headers={"X-Request-ID": "req-log"})
    lines = [record for record in caplog.records if record.name == "chat.access"]
    assert len(lines) == 1
    record = lines[0]
    assert (record.__dict__["method"], record.__dict__["path"], record.__dict__["status"]) == (
        "GET",
        "/history/test123",
        200,
    )
    assert record.__dict__["duration_ms"] >= 0


async def test_no_cross_origin_access_unless_origins_are_configured(client: httpx.AsyncClient) -> None:
    response = await client.get("/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in response.headers


async def test_configured_origins_get_cors_and_others_do_not(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "Content-Type"}
    async with app_client(make_settings(cors_origins=["https://app.example"])) as client:
        allowed = await client.options("/chat", headers={"Origin": "https://app.example", **preflight})
        refused = await client.options("/chat", headers={"Origin": "https://evil.example", **preflight})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in refused.headers


# --- The documentation ---------------------------------------------------------------------------


async def test_openapi_documents_every_route_with_summary_and_errors(client: httpx.AsyncClient) -> None:
    document: Json = (await client.get("/openapi.json")).json()
    operations = {
        (method.upper(), path): operation
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    }
    assert set(operations) == {
        ("GET", "/"),
        ("GET", "/health"),
        ("GET", "/health/live"),
        ("GET", "/metrics"),
        ("GET", "/usage"),
        ("POST", "/chat"),
        ("GET", "/history/{session_id}"),
        ("DELETE", "/history/{session_id}"),
        ("GET", "/conversations"),
        ("DELETE", "/conversations"),
        ("GET", "/conversations/search"),
        ("GET", "/conversations/{conversation_id}"),
        ("PATCH", "/conversations/{conversation_id}"),
        ("DELETE", "/conversations/{conversation_id}"),
        ("GET", "/schema/events"),
        ("POST", "/chat/{message_id}/cancel"),
        ("POST", "/chat/{message_id}/feedback"),
        ("POST", "/chat/{message_id}/regenerate"),
        ("POST", "/conversations/{conversation_id}/branch"),
        ("GET", "/stream/{session_id}"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/{model_id}"),
        ("POST", "/agui"),
        ("POST", "/agui/connect"),
        ("POST", "/api/chat"),
        ("GET", "/api/chat/{chat_id}/stream"),
        ("POST", "/api/chat/{chat_id}/stop"),
        ("POST", "/v1/responses"),
        ("GET", "/v1/responses/{response_id}"),
        ("POST", "/v1/responses/{response_id}/cancel"),
        ("DELETE", "/v1/responses/{response_id}"),
        ("GET", "/v1/responses/{response_id}/input_items"),
    }
    for key, operation in operations.items():
        assert operation.get("summary"), key
    error_body = {"$ref": "#/components/schemas/ErrorResponse"}
    service_routes = [
        ("POST", "/chat"),
        ("POST", "/chat/{message_id}/cancel"),
        ("GET", "/stream/{session_id}"),
        ("GET", "/history/{session_id}"),
        ("DELETE", "/history/{session_id}"),
        ("POST", "/agui"),
        ("POST", "/agui/connect"),
    ]
    for key in service_routes:
        responses = operations[key]["responses"]
        for status in ("422", "503"):
            # The documented body is the one the service really sends, not FastAPI's default.
            assert responses[status]["content"]["application/json"]["schema"] == error_body, (key, status)
    assert "503" in operations[("GET", "/health")]["responses"]
    assert operations[("POST", "/chat")]["responses"]["202"]


async def test_openapi_shows_request_examples_and_the_id_rules(client: httpx.AsyncClient) -> None:
    schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]
    request = schemas["ChatRequest"]
    assert request["examples"] == [CHAT]
    assert request["properties"]["session_id"]["maxLength"] == 128
    assert request["properties"]["session_id"]["pattern"]


@pytest.mark.parametrize(("path", "marker"), [("/docs", "swagger-ui"), ("/redoc", "redoc")])
async def test_interactive_docs_are_served(client: httpx.AsyncClient, path: str, marker: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert marker in response.text.lower()
