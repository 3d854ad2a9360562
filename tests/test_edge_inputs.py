"""What a client sends at the edge, against a real `python app.py` (issue #13, item 7): resume positions
Redis would refuse, message ids without entropy, control characters meant for the log, stream tokens
with a short secret or a re-spelt expiry, and the chat page's policy on every static file."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable

import httpx
import pytest

from admission import StreamTokens
from testkit.processes import ROOT
from testkit.redis_server import RedisServer
from testkit.service import ServiceProcess, service_environment
from testkit.waiting import eventually_sync

pytestmark = pytest.mark.redis

KEY = "alice-key-0123456789abcdef"
SECRET = "a-stream-token-secret-of-at-least-32-bytes"

# The nil and max UUIDs, a time- and MAC-based one (v1) and a name-based one (v5): guessable ids.
WEAK_IDS = {
    "nil": "00000000-0000-0000-0000-000000000000",
    "max": "ffffffff-ffff-ffff-ffff-ffffffffffff",
    "v1": "c232ab00-9414-11ec-b3c8-9f6bdeced846",
    "v5": str(uuid.uuid5(uuid.NAMESPACE_URL, "https://example.com/")),
}


@pytest.fixture
def service(redis_server: RedisServer, start_service: Callable[..., ServiceProcess]) -> ServiceProcess:
    return start_service(REDIS_URL=redis_server.url, STREAM_DELAY="0", CHUNK_DELAY="0")


def chat(service: ServiceProcess, session_id: str, **extra: str) -> httpx.Response:
    body = {"session_id": session_id, "message": "Hello", "user_id": "u1", **extra}
    return httpx.post(f"{service.url}/chat", json=body, timeout=10)


# Past 2**64 - 1 in either part, or the largest id itself as an exclusive start: Redis refuses each.
REFUSED_POSITIONS = [
    "99999999999999999999-0",
    "0-99999999999999999999",
    "18446744073709551616-0",
    "18446744073709551615-18446744073709551615",
]


def test_a_resume_position_redis_would_refuse_is_a_422_before_the_stream_starts(
    service: ServiceProcess,
) -> None:
    assert chat(service, "resume").status_code == 202
    with httpx.Client(base_url=service.url, timeout=10) as client:
        for position in REFUSED_POSITIONS:
            by_header = client.get("/stream/resume", headers={"Last-Event-ID": position})
            by_query = client.get(f"/stream/resume?last_event_id={position}")
            for response, field in ((by_header, "Last-Event-ID"), (by_query, "last_event_id")):
                assert response.status_code == 422, (position, response.text)
                assert response.headers["content-type"] == "application/json"
                assert field in response.text
    assert "Traceback" not in service.output()


def test_the_largest_position_redis_takes_resumes_the_stream(service: ServiceProcess) -> None:
    # Above every entry: nothing to replay, and the stream stays open for live events.
    with httpx.stream(
        "GET",
        f"{service.url}/stream/ahead",
        headers={"Last-Event-ID": "18446744073709551615-18446744073709551614"},
        timeout=10,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
    assert "Traceback" not in service.output()


def test_message_ids_without_entropy_are_refused_everywhere_a_client_sends_one(
    service: ServiceProcess,
) -> None:
    accepted = chat(service, "ids", message_id=str(uuid.uuid4()))
    assert accepted.status_code == 202
    v7 = uuid.UUID(int=(int(time.time() * 1000) << 80) | (0x7 << 76) | (0b10 << 62) | 12345)
    assert chat(service, "ids7", message_id=str(v7)).status_code == 202
    for name, weak in WEAK_IDS.items():
        sent = chat(service, "ids", message_id=weak)
        assert sent.status_code == 422, name
        assert "message_id" in sent.text
        cancelled = httpx.post(f"{service.url}/chat/{weak}/cancel", timeout=10)
        assert cancelled.status_code == 422, name
        followed = httpx.get(f"{service.url}/stream/ids?message_id={weak}", timeout=10)
        assert followed.status_code == 422, name


def test_a_control_character_in_a_path_cannot_forge_a_text_log_line(service: ServiceProcess) -> None:
    forged = "2026-11-30 08:00:00,000 INFO chat.access [-] GET /admin 200 1.0ms"
    path = "/x%0A" + forged.replace(" ", "%20") + "%1B[2J"
    assert httpx.get(f"{service.url}{path}", timeout=10).status_code == 404
    eventually_sync(lambda: "/x\\x0a2026" in service.output(), "the request's access line is written")
    lines = service.output().splitlines()
    assert not any(line.startswith("2026-11-30 08:00:00,000") for line in lines)
    assert "\x1b" not in service.output()
    (access,) = [line for line in lines if "/x\\x0a" in line]
    assert access.endswith("\\x1b[2J 404 " + access.rsplit(" ", 1)[-1])


def test_a_control_character_in_a_path_stays_inside_its_json_log_line(
    redis_server: RedisServer, start_service: Callable[..., ServiceProcess]
) -> None:
    service = start_service(REDIS_URL=redis_server.url, LOG_FORMAT="json")
    assert httpx.get(f"{service.url}/x%0Aforged%0D%1B", timeout=10).status_code == 404
    eventually_sync(lambda: "/x" in service.output(), "the request's access line is written")
    records = [json.loads(line) for line in service.output().splitlines() if line.startswith("{")]
    (access,) = [record for record in records if record.get("path", "").startswith("/x")]
    assert access["path"] == "/x\nforged\r\x1b"  # the field as it was, escaped by JSON itself
    assert access["message"] == "GET /x\\x0aforged\\x0d\\x1b 404 " + access["message"].rsplit(" ", 1)[-1]


@pytest.mark.parametrize("secret", ["Z", "31-bytes-is-one-byte-too-short!"])
def test_a_short_stream_token_secret_stops_start_up_with_one_line_naming_it(
    redis_server: RedisServer, secret: str
) -> None:
    env = service_environment(
        REDIS_URL=redis_server.url, API_KEYS=f"alice:{KEY}", STREAM_TOKEN_SECRET=secret, PORT="1"
    )
    done = subprocess.run(
        [sys.executable, str(ROOT / "app.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("invalid configuration: STREAM_TOKEN_SECRET: ")
    assert "32 bytes" in line
    assert secret not in line


def test_a_stream_token_with_its_expiry_respelt_is_refused(
    redis_server: RedisServer, start_service: Callable[..., ServiceProcess]
) -> None:
    service = start_service(
        REDIS_URL=redis_server.url, API_KEYS=f"alice:{KEY}", STREAM_TOKEN_SECRET=SECRET, STREAM_DELAY="0"
    )
    accepted = httpx.post(
        f"{service.url}/chat",
        json={"session_id": "tok", "message": "Hello", "user_id": "u1"},
        headers={"X-API-Key": KEY},
        timeout=10,
    ).json()
    token = accepted["stream_token"]
    assert httpx.get(f"{service.url}/stream/tok?token=0{token}", timeout=10).status_code == 401
    assert httpx.get(f"{service.url}/stream/tok?token=00{token}", timeout=10).status_code == 401
    url = f"{service.url}/stream/tok?message_id={accepted['message_id']}&token={token}"
    with httpx.stream("GET", url, timeout=10) as response:
        assert response.status_code == 200


def test_an_open_stream_ends_when_its_token_expires(
    redis_server: RedisServer, start_service: Callable[..., ServiceProcess]
) -> None:
    # Answers that run far longer than the token lives (13 chunks, 6.5 s); the token is minted with the
    # clock moved on, so it has two to three seconds left (verified with the same secret): time for
    # the request to be let in on a loaded machine, and for the token to run out mid-answer.
    service = start_service(
        REDIS_URL=redis_server.url,
        API_KEYS=f"alice:{KEY}",
        STREAM_TOKEN_SECRET=SECRET,
        STREAM_TOKEN_TTL="60",
        STREAM_DELAY="0",
        CHUNK_DELAY="0.5",
    )
    accepted = httpx.post(
        f"{service.url}/chat",
        json={"session_id": "expiring", "message": "Tell me a long story", "user_id": "u1"},
        headers={"X-API-Key": KEY},
        timeout=10,
    ).json()
    token = StreamTokens(SECRET.encode(), ttl=60).issue("expiring", "alice", now=time.time() - 57.5)
    expires = int(token.split(".")[0])
    events: list[str] = []
    with httpx.stream("GET", f"{service.url}/stream/expiring?token={token}", timeout=30) as response:
        assert response.status_code == 200
        for line in response.iter_lines():  # ends when the server ends the response
            if line.startswith("event: "):
                events.append(line.removeprefix("event: "))
                # An event the server sent after expiry would arrive here; allow the second's rounding.
                assert time.time() < expires + 1.0, "an event arrived after the token expired"
    assert time.time() >= expires - 0.5
    assert "start" in events
    assert "end" not in events  # the answer was still running: the stream ended with the token
    state = httpx.get(f"{service.url}/history/expiring", headers={"X-API-Key": KEY}, timeout=10).json()
    assert state["count"] >= 1
    assert accepted["message_id"]


def test_every_static_file_carries_the_pages_content_policy(service: ServiceProcess) -> None:
    page = httpx.get(f"{service.url}/ui", timeout=10)
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy
    for name in ("chat.html", "chat.js", "render.js", "answer.js", "chat.css"):
        response = httpx.get(f"{service.url}/ui/{name}", timeout=10)
        assert response.status_code == 200, name
        assert response.headers["content-security-policy"] == policy, name
        assert response.headers["x-content-type-options"] == "nosniff", name
        assert response.headers["referrer-policy"] == "no-referrer", name
