"""The SSE response: a client that leaves is let go, and SIGTERM ends the open streams."""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Callable

import httpx
import pytest
from httpx_sse import aconnect_sse
from starlette.requests import Request

from app import create_app
from config import Settings
from testkit.asgi_server import serve
from testkit.redis_server import RedisServer
from testkit.service import ServiceProcess
from testkit.waiting import eventually

pytestmark = pytest.mark.redis


async def subscribed(redis_server: RedisServer, channel: str, count: int) -> None:
    """Wait until `channel` has `count` subscribers."""

    async def holds() -> bool:
        return int(redis_server.cli("PUBSUB", "NUMSUB", channel).split()[-1]) == count

    await eventually(holds, f"{channel} has {count} subscribers")


async def test_a_client_that_leaves_is_let_go(
    make_settings: Callable[..., Settings], redis_server: RedisServer
) -> None:
    settings = make_settings(redis_url=redis_server.url)
    with serve(create_app(settings)) as base:
        async with httpx.AsyncClient(base_url=base, timeout=20) as client:
            async with client.stream("GET", "/stream/leaving") as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                await subscribed(redis_server, "chat:leaving", 1)
            # The hub follows a session only while a client does: once the client is gone, so is the
            # subscription, and everything the client held with it.
            await subscribed(redis_server, "chat:leaving", 0)


def requests_for(path: str) -> list[Request]:
    """The `Request` objects still alive in this process for `path`."""
    gc.collect()
    return [found for found in gc.get_objects() if isinstance(found, Request) and found.url.path == path]


async def test_an_open_stream_holds_nothing_of_the_route_that_opened_it(
    make_settings: Callable[..., Settings], redis_server: RedisServer
) -> None:
    """Issue #14, e: once its headers are sent, a stream runs from outside the route, so an idle client
    does not keep the route's frames, its `Request` and its dependencies alive; it still streams."""
    settings = make_settings(redis_url=redis_server.url)
    with serve(create_app(settings)) as base:
        async with httpx.AsyncClient(base_url=base, timeout=20) as client:
            async with aconnect_sse(client, "GET", "/stream/held") as source:
                assert source.response.status_code == 200
                await subscribed(redis_server, "chat:held", 1)
                assert requests_for("/stream/held") == []
                body = {"session_id": "held", "user_id": "u1", "message": "hi"}
                sent = await client.post("/chat", json=body)
                assert sent.status_code == 202
                types = []
                async for event in source.aiter_sse():
                    types.append(event.event)
                    if event.event == "end":
                        break
                assert types[0] == "start"
                assert "chunk" in types
            await subscribed(redis_server, "chat:held", 0)

            # The layers outside the route still see the matched route, not a raw path.
            async def counted() -> bool:
                metrics = (await client.get("/metrics")).text
                return 'method="GET",route="/stream/{session_id}",status="200"' in metrics

            await eventually(counted, "the stream is counted under its route")


async def test_sigterm_ends_open_streams_and_the_service_exits(
    redis_server: RedisServer, start_service: Callable[..., ServiceProcess]
) -> None:
    service = start_service(REDIS_URL=redis_server.url)
    async with httpx.AsyncClient(base_url=service.url, timeout=20) as client:
        async with client.stream("GET", "/stream/open") as response:
            assert response.status_code == 200
            await subscribed(redis_server, "chat:open", 1)
            service.terminate()
            body = b"".join([piece async for piece in response.aiter_bytes()])
        assert b"event:" not in body
    assert service.wait(timeout=15) in (0, -signal.SIGTERM)
    assert "stopped" in service.output()


async def test_a_message_stream_resumed_after_its_end_closes_at_once(
    make_settings: Callable[..., Settings], redis_server: RedisServer
) -> None:
    # As an EventSource does: follow the answer to its `end`, then reconnect with that event's id. The
    # client has everything: the server ends the response at once instead of holding it open with pings.
    settings = make_settings(redis_url=redis_server.url, sse_ping_seconds=0.2)
    with serve(create_app(settings)) as base:
        async with httpx.AsyncClient(base_url=base, timeout=20) as client:
            body = {"session_id": "resumed", "message": "Tell me about streams", "user_id": "u1"}
            accepted = (await client.post("/chat", json=body)).json()
            url = accepted["stream_url"]
            async with aconnect_sse(client, "GET", url) as source:
                events = [event async for event in source.aiter_sse()]
            assert events[-1].event == "end"
            for resumed_from in (events[-1].id, events[-2].id):
                async with (
                    asyncio.timeout(15),
                    aconnect_sse(client, "GET", url, headers={"Last-Event-ID": resumed_from}) as source,
                ):
                    rest = [event async for event in source.aiter_sse()]
                # After the end: nothing, the response just ends. After the last chunk: the end.
                assert [event.event for event in rest] == ([] if resumed_from == events[-1].id else ["end"])
