"""What one `python app.py` lets in and how it stops, against the real process (issue #13, item 6):
clients that stop reading at shutdown, oversized and slow requests, and the caps on connections and
streams."""

from __future__ import annotations

import contextlib
import signal
import socket
import time
from collections.abc import Callable, Iterator

import httpx
import orjson
import pytest
import redis

from app import server_options
from config import Settings
from testkit.redis_server import RedisServer
from testkit.service import ServiceProcess
from testkit.waiting import eventually_sync

pytestmark = pytest.mark.redis

GRACE = 2
# For the test that tells one grace period from two added up: long enough that the process's own start
# of exit on a loaded machine (a second has been seen) stays well inside half of it.
LONG_GRACE = 4


def raw_connection(service: ServiceProcess, *, receive_buffer: int | None = None) -> socket.socket:
    """A TCP connection to the service; with `receive_buffer`, a small one, set before connecting."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", service.port))
    return sock


def read_reply(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@contextlib.contextmanager
def connections(count: int, open_one: Callable[[], socket.socket]) -> Iterator[list[socket.socket]]:
    socks = [open_one() for _ in range(count)]
    try:
        yield socks
    finally:
        for sock in socks:
            sock.close()


def fill_log(redis_url: str, session_id: str, *, entries: int, size: int) -> str:
    """A backlog in the session's replay log, as a long answer leaves it: `entries` chunk events of
    `size` bytes each after a first one. Returns the first entry's id, to resume after."""
    key = f"chat:{{{session_id}}}:events"
    message_id = "5f0c3a36-4f0e-4b43-9a8a-3d1c8f0b6b11"
    with redis.Redis.from_url(redis_url) as client:
        first = client.xadd(key, {"e": orjson.dumps({"type": "start", "message_id": message_id})})
        pipe = client.pipeline()
        for seq in range(entries):
            event = {"type": "chunk", "message_id": message_id, "seq": seq, "delta": "x" * size}
            pipe.xadd(key, {"e": orjson.dumps(event)})
        pipe.execute()
    return first.decode() if isinstance(first, bytes) else str(first)


def draining_service(
    start_service: Callable[..., ServiceProcess],
    redis_server: RedisServer,
    grace: int = GRACE,
    **settings: str,
) -> ServiceProcess:
    """A `python app.py` with a short grace period and room for a long backlog in the replay log."""
    return start_service(
        REDIS_URL=redis_server.url,
        SHUTDOWN_GRACE_SECONDS=str(grace),
        STREAM_MAXLEN="100000",
        SSE_POLL_SECONDS="0.2",
        **settings,
    )


def stalled_streams(
    service: ServiceProcess, redis_url: str, count: int
) -> contextlib.AbstractContextManager[list[socket.socket]]:
    """`count` SSE clients that read the response's head and then nothing of a 4 MB backlog each."""
    after = fill_log(redis_url, "backlog", entries=40, size=100_000)
    request = f"GET /stream/backlog HTTP/1.1\r\nHost: x\r\nLast-Event-ID: {after}\r\n\r\n".encode()

    def stalled_client() -> socket.socket:
        sock = raw_connection(service, receive_buffer=4096)
        sock.sendall(request)
        assert sock.recv(64).startswith(b"HTTP/1.1 200"), "the stream opened"
        return sock  # and it reads nothing more

    return connections(count, stalled_client)


def terminate(service: ServiceProcess, clients: int) -> tuple[int, float]:
    """SIGTERM once `clients` streams are open; the exit status and the seconds it took."""
    eventually_sync(
        lambda: f"chat_sse_clients {clients}.0" in httpx.get(f"{service.url}/metrics", timeout=5).text,
        "every stalled stream is open",
    )
    started = time.monotonic()
    service.terminate()
    code = service.wait(timeout=LONG_GRACE * 2 + 10)
    return code, time.monotonic() - started


def test_sigterm_ends_streams_whose_clients_stopped_reading_within_the_grace_period(
    redis_server: RedisServer, start_service: Callable[..., ServiceProcess]
) -> None:
    service = draining_service(start_service, redis_server)
    with stalled_streams(service, redis_server.url, 5):
        code, elapsed = terminate(service, 5)
    log = service.output()
    assert code in (0, -signal.SIGTERM), log
    # The grace period, and the seconds a process takes to exit on a loaded machine.
    assert elapsed <= GRACE + 5, f"took {elapsed:.1f}s to exit with clients that do not read"
    assert "ai-chat-service stopped" in log
    assert "Traceback" not in log


def test_sigterm_with_stalled_streams_and_running_answers_exits_within_one_grace_period(
    redis_server: RedisServer, start_service: Callable[..., ServiceProcess]
) -> None:
    # The streams' drain and the answers' grace are one period, counted from SIGTERM: before, the
    # answers had a whole grace period of their own after the drain (4.2 s with a 2-s grace, about two
    # periods). Each answer runs for longer than the grace period.
    service = draining_service(start_service, redis_server, LONG_GRACE, STREAM_DELAY="0", CHUNK_DELAY="1")
    with stalled_streams(service, redis_server.url, 3):
        accepted = [
            httpx.post(
                f"{service.url}/chat",
                json={"session_id": f"long{n}", "message": "Tell me a long story", "user_id": "u"},
                timeout=5,
            ).json()
            for n in range(2)
        ]
        code, elapsed = terminate(service, 3)
    log = service.output()
    assert code in (0, -signal.SIGTERM), log
    assert elapsed < LONG_GRACE * 1.5, f"took {elapsed:.1f}s to exit: more than one grace period"
    with redis.Redis.from_url(redis_server.url) as client:
        for body in accepted:
            status = client.hget(f"chat:message:{{{body['message_id']}}}", "status")
            assert status == b"failed", "the answer was ended with `shutdown`"


def test_a_request_head_over_max_header_bytes_is_refused_and_its_connection_closed(
    redis_server: RedisServer, start_service: Callable[..., ServiceProcess]
) -> None:
    service = start_service(REDIS_URL=redis_server.url, MAX_HEADER_BYTES="8192")
    before = service.rss_bytes()
    fits = httpx.get(f"{service.url}/health/live", headers={"X-Pad": "a" * 6000}, timeout=10)
    assert fits.status_code == 200

    def oversized() -> socket.socket:
        sock = raw_connection(service)
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
        return sock

    # Twenty clients each sending 2 MB of headers that never end: each is cut off at the limit.
    with connections(20, oversized) as socks:
        for sock in socks:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                for _ in range(32):
                    sock.sendall(b"X-Pad: " + b"a" * 65_536 + b"\r\n")
        replies = [read_reply(sock) for sock in socks]
    assert all(reply.startswith(b"HTTP/1.1 400") for reply in replies), replies[0][:200]
    assert service.rss_bytes() - before < 50 * 1024 * 1024
    assert httpx.get(f"{service.url}/health/live", timeout=10).status_code == 200


def test_a_body_that_does_not_arrive_within_request_body_timeout_is_refused_with_408(
    redis_server: RedisServer, start_service: Callable[..., ServiceProcess]
) -> None:
    service = start_service(REDIS_URL=redis_server.url, REQUEST_BODY_TIMEOUT="1")
    sock = raw_connection(service)
    with contextlib.closing(sock):
        sock.sendall(
            b"POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n" + b'{"session_id": "slow", '
        )
        reply = read_reply(sock)  # the server answers and closes; the client never sent the rest
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), reply[:300]
    assert b"connection: close" in head.lower()
    assert b"request_timeout" in body


def test_connections_beyond_max_connections_get_503(
    redis_server: RedisServer, start_service: Callable[..., ServiceProcess]
) -> None:
    service = start_service(REDIS_URL=redis_server.url, MAX_CONNECTIONS="8")

    def idle() -> socket.socket:  # a connection that has not sent its request yet
        return raw_connection(service)

    with connections(8, idle):
        eventually_sync(
            lambda: httpx.get(f"{service.url}/health/live", timeout=5).status_code == 503,
            "a request beyond the cap is refused",
        )
    eventually_sync(
        lambda: httpx.get(f"{service.url}/health/live", timeout=5).status_code == 200,
        "the service answers again once the connections close",
    )


def test_streams_beyond_max_sse_clients_get_503_with_retry_after(
    redis_server: RedisServer, start_service: Callable[..., ServiceProcess]
) -> None:
    service = start_service(REDIS_URL=redis_server.url, MAX_SSE_CLIENTS="2")
    with httpx.Client(base_url=service.url, timeout=10) as client:
        with (
            client.stream("GET", "/stream/one") as first,
            client.stream("GET", "/stream/two") as second,
        ):
            assert first.status_code == second.status_code == 200
            refused = client.get("/stream/three")
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "overloaded"
            assert int(refused.headers["retry-after"]) > 0
        # Both closed: their places are free again.
        eventually_sync(
            lambda: "chat_sse_clients 0.0" in client.get("/metrics").text, "the streams are closed"
        )
        with client.stream("GET", "/stream/three") as third:
            assert third.status_code == 200


def test_python_app_runs_uvicorn_with_the_edge_settings(make_settings: Callable[..., Settings]) -> None:
    options = server_options(
        make_settings(
            max_header_bytes=4096, max_connections=10, keepalive_timeout=7, shutdown_grace_seconds=2.5
        )
    )
    assert options["http"] == "h11"
    assert options["h11_max_incomplete_event_size"] == 4096
    assert options["limit_concurrency"] == 10
    assert options["timeout_keep_alive"] == 7
    assert options["timeout_graceful_shutdown"] == 3  # whole seconds, never less than the grace
    assert server_options(make_settings(http_parser="httptools"))["http"] == "httptools"
