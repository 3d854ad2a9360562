"""Server-Sent Events on the wire: the native stream's encoder over an `EventCursor`, and the response
that sends it.

The response runs the stream in the request's own task, plus one small task that waits for the client
to leave: an idle client costs what its connection costs and little more (issue #6, f; sse-starlette's
response ran four tasks in a task group per client, about 20 KB of the 52 KB an idle client held).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Protocol

import orjson
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from cursor import CursorItem, EventCursor, Keepalive, Reset

__all__ = ["EventStreamResponse", "encode", "native_events"]

PING = b": ping\r\n\r\n"


def encode(item: CursorItem) -> bytes:
    """An entry as `id:` its log position, `event:` its type, `data:` the event's JSON (which has no
    newline); a reset as a `reset` event; a keepalive as a comment."""
    if isinstance(item, Keepalive):
        return PING
    if isinstance(item, Reset):
        data = orjson.dumps(
            {
                "type": "reset",
                "session_id": item.session_id,
                "reason": "events were missed: reload the history",
            }
        )
        head = b"id: %s\r\n" % item.position.encode() if item.position else b""
        return head + b"event: reset\r\ndata: %s\r\n\r\n" % data
    return b"id: %s\r\nevent: %s\r\ndata: %s\r\n\r\n" % (item.id.encode(), item.type.encode(), item.payload)


async def native_events(cursor: EventCursor) -> AsyncIterator[bytes]:
    """The service's own SSE stream: every item of the cursor, encoded."""
    async for item in cursor:
        yield encode(item)


class Counting(Protocol):
    def inc(self) -> None: ...

    def dec(self) -> None: ...


class EventStreamResponse(StreamingResponse):
    """Sends a cursor's events as `text/event-stream`, and closes the cursor when the client leaves."""

    def __init__(
        self,
        cursor: EventCursor,
        body: AsyncIterator[bytes] | None = None,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        *,
        clients: Counting | None = None,
    ) -> None:
        """`body`: the cursor's events in a protocol's encoding (the native one by default); `clients`:
        a gauge (metrics) counting the clients whose stream is open."""
        self._cursor = cursor
        self._clients = clients
        super().__init__(
            body if body is not None else native_events(cursor),
            status_code,
            {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})},
            media_type="text/event-stream",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            self._cursor.close()

        watcher = asyncio.create_task(watch(), name="sse-disconnect")
        events = self.body_iterator
        if self._clients is not None:
            self._clients.inc()
        try:
            async for chunk in events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            if self._clients is not None:
                self._clients.dec()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            if hasattr(events, "aclose"):
                await events.aclose()
