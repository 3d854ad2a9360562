"""`/metrics` in the Prometheus text format, read back with Prometheus's own parser (issue #5, item 5)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from config import Settings
from testkit.redis_server import RedisServer
from testkit.service import ServiceProcess
from testkit.waiting import eventually_sync
from tests.conftest import AppClient

KEY = "metrics-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}


def samples(text: str) -> list[Sample]:
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 when there are none)."""
    return sum(
        sample.value
        for sample in samples(text)
        if sample.name == name and labels.items() <= sample.labels.items()
    )


async def test_metrics_parse_and_count_requests_answers_chunks_and_errors(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    async with app_client(make_settings(api_keys=f"ops:{KEY}")) as client:
        accepted = await client.post(
            "/chat", json={"session_id": "m1", "message": "Hello metrics", "user_id": "u"}, headers=AUTH
        )
        assert accepted.status_code == 202
        url = f"/stream/m1?message_id={accepted.json()['message_id']}"
        body = (await client.get(url, headers=AUTH)).text
        chunks = body.count("event: chunk")
        assert (await client.get("/history/bad id!", headers=AUTH)).status_code == 422
        assert (await client.get("/metrics")).status_code == 401
        response = await client.get("/metrics", headers=AUTH)

    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert value(text, "chat_http_requests_total", method="POST", route="/chat", status="202") == 1
    # Ids never become labels: every session's requests share the route template.
    assert value(text, "chat_http_requests_total", route="/history/{session_id}", status="422") == 1
    assert "bad id" not in text
    # An event stream runs after its route has returned: still counted under its route's template.
    assert value(text, "chat_http_requests_total", route="/stream/{session_id}", status="200") == 1
    assert value(text, "chat_http_request_duration_seconds_count", route="/chat") == 1
    assert value(text, "chat_chunks_published_total") == chunks > 0
    assert value(text, "chat_time_to_first_chunk_seconds_count") == 1
    assert value(text, "chat_answer_duration_seconds_count", finish_reason="stop") == 1
    assert value(text, "chat_active_answers") == 0
    assert value(text, "chat_sse_clients") == 0
    assert value(text, "chat_errors_total", source="http", code="invalid_request") == 1
    assert value(text, "chat_errors_total", source="http", code="unauthorized") == 1


async def test_a_made_up_method_is_counted_as_other_not_as_a_series_of_its_own(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    # h11, the default parser, takes any token as a method: each made-up one must not add a series.
    async with app_client(make_settings()) as client:
        for method in ("FOOBAR1", "FOOBAR2"):
            assert (await client.request(method, "/health")).status_code == 405
        assert (await client.request("PUT", "/health")).status_code == 405
        text = (await client.get("/metrics")).text

    assert "FOOBAR" not in text
    assert value(text, "chat_http_requests_total", method="OTHER", route="/health", status="405") == 2
    assert value(text, "chat_http_requests_total", method="PUT", route="/health", status="405") == 1


@pytest.mark.redis
async def test_metrics_count_redis_errors_and_failed_health(
    make_settings: Callable[..., Settings], app_client: AppClient, own_redis: RedisServer
) -> None:
    async with app_client(make_settings(redis_url=own_redis.url, redis_timeout=0.5)) as client:
        own_redis.stop(kill=True)
        failed = await client.post("/chat", json={"session_id": "m", "message": "hi", "user_id": "u"})
        assert failed.status_code == 503
        assert (await client.get("/health")).status_code == 503
        text = (await client.get("/metrics")).text
    assert value(text, "chat_redis_errors_total", where="request") == 1
    assert value(text, "chat_redis_errors_total", where="health") == 1
    assert value(text, "chat_errors_total", source="http", code="redis_unavailable") == 1


@pytest.fixture
def multiproc_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    return directory


@pytest.mark.redis
def test_metrics_add_up_every_worker_with_several_uvicorn_workers(
    redis_server: RedisServer, multiproc_dir: Path
) -> None:
    service = ServiceProcess(
        {
            "REDIS_URL": redis_server.url,
            "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir),
            "LOG_LEVEL": "WARNING",
        },
        workers=2,
    )
    try:
        service.start()

        def get(_: int) -> int:
            # A new connection each time, several at once, so that both workers get some.
            return httpx.get(f"{service.url}/health", headers={"Connection": "close"}, timeout=5).status_code

        def shares() -> list[float]:
            """Each worker's own count of /health, from its own file."""
            found = []
            for path in multiproc_dir.glob("counter_*.db"):
                merged = MultiProcessCollector.merge([str(path)], accumulate=True)  # type: ignore[no-untyped-call]
                found.append(value(_exposition(merged), "chat_http_requests_total", route="/health"))
            return found

        # Which worker accepts a connection is the kernel's choice (and the second may still be starting):
        # rounds of requests until both have counted some (a budget of rounds, not a wait for time).
        sent = 0
        with ThreadPoolExecutor(max_workers=6) as pool:
            for _ in range(10):
                assert set(pool.map(get, range(60))) == {200}
                sent += 60
                if sorted(share > 0 for share in shares()) == [True, True]:
                    break
        # Each worker counted its own share, and /metrics (answered by one of them) added them up.
        assert sorted(share > 0 for share in shares()) == [True, True]
        text = httpx.get(f"{service.url}/metrics", timeout=5).text
        assert value(text, "chat_http_requests_total", route="/health", status="200") == sent
    finally:
        service.terminate()
        service.cleanup()


def test_sse_clients_gauge_follows_clients_that_come_and_go() -> None:
    service = ServiceProcess({"LOG_LEVEL": "WARNING"})
    try:
        service.start()
        with httpx.Client(base_url=service.url, timeout=5) as client:
            with (
                client.stream("GET", "/stream/gauge") as first,
                client.stream("GET", "/stream/gauge") as second,
            ):
                assert (first.status_code, second.status_code) == (200, 200)
                eventually_sync(
                    lambda: value(client.get("/metrics").text, "chat_sse_clients") == 2,
                    "chat_sse_clients counts both clients",
                )
            eventually_sync(
                lambda: value(client.get("/metrics").text, "chat_sse_clients") == 0,
                "chat_sse_clients is back to 0 once both left",
            )
    finally:
        service.terminate()
        service.cleanup()


def _exposition(metrics: object) -> str:
    registry = CollectorRegistry()

    class Fixed:
        def collect(self) -> object:
            return metrics

    registry.register(Fixed())  # type: ignore[arg-type]
    return generate_latest(registry).decode()
