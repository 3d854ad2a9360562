"""Server-Sent Events on the wire: the native encoder of an `EventCursor`'s items, and the response that
sends a cursor through an encoder.

The response runs the stream in the request's own task, plus one small task that waits for the client
to leave: an idle client costs what its connection costs and little more (issue #6, f; sse-starlette's
response ran four tasks in a task group per client, about 20 KB of the 52 KB an idle client held).

Once the headers are sent, the edge layer (`protocols/edge.py`) runs the stream from outside the route:
the router's, FastAPI's and the endpoint's frames, the request and its dependencies are freed while the
client stays connected, and an idle client holds its connection, its cursor and its listener (issue #14,
e).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Protocol

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from cursor import CursorItem, EventCursor, Keepalive, Reset
from stores.replay_log import Entry

__all__ = ["ANSWER_ERROR", "HANDOFF", "EventStreamResponse", "encode", "encode_v1"]

PING = b": ping\r\n\r\n"
# The scope key under which the edge layer takes a response whose headers are sent.
HANDOFF = "sse.handoff"


# An answer's `error` event is `answer_error` on the wire: `error` is also the name under which a browser's
# EventSource reports its own connection failures, so a listener for one got both (issue #13, item 8).
ANSWER_ERROR = "answer_error"


def encode(item: CursorItem) -> bytes:
    """An entry as `id:` its log position, `event:` its type (`answer_error` for an answer's `error`),
    `data:` the event's JSON (which has no newline, and keeps `"type": "error"`); a reset as a `reset`
    event; a keepalive as a comment."""
    if isinstance(item, Entry) and item.type == "error":
        return _named(item, ANSWER_ERROR)
    return encode_v1(item)


def encode_v1(item: CursorItem) -> bytes:
    """The stream as it was before `answer_error`: an answer's error event is named `error` (`events=1`,
    for clients not yet updated)."""
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
    return _named(item, item.type)


def _named(entry: Entry, name: str) -> bytes:
    return b"id: %s\r\nevent: %s\r\ndata: %s\r\n\r\n" % (entry.id.encode(), name.encode(), entry.payload)


class Clients(Protocol):
    """The process's open streams (`admission.SseClients`): `check` refuses one more at the limit; each
    stream's deadline is registered while it is open, and brought forward when the server stops."""

    @property
    def ending(self) -> bool: ...

    def check(self) -> None: ...

    def opened(self, deadline: asyncio.Timeout) -> None: ...

    def closed(self, deadline: asyncio.Timeout) -> None: ...


class EventStreamResponse(Response):
    """Sends a cursor's items as `text/event-stream`, each through `encoder`, and closes the cursor when
    the client leaves. A protocol that streams over SSE is an encoder: `encode` is the native one."""

    def __init__(
        self,
        cursor: EventCursor,
        status_code: int = 200,
        *,
        encoder: Callable[[CursorItem], bytes] = encode,
        headers: Mapping[str, str] | None = None,
        clients: Clients | None = None,
        expires_in: float | None = None,
    ) -> None:
        """`clients`: the process's open streams, which may refuse this one (`MAX_SSE_CLIENTS`: the
        route answers 503 before anything is sent). `expires_in`: the stream ends after this many
        seconds (the stream token it was opened with expires then). (`status_code` is how FastAPI's
        OpenAPI document learns a response class's status.)"""
        if clients is not None:
            clients.check()
        self._cursor = cursor
        self._encoder = encoder
        self._clients = clients
        self._expires_in = expires_in
        # As StreamingResponse does, but with no body iterator around the cursor (an idle client's
        # memory is a budget, issue #6 f) and no Content-Length.
        self.status_code = status_code
        self.media_type = "text/event-stream"
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        handoff: Callable[[EventStreamResponse], None] | None = scope.get(HANDOFF)
        if handoff is not None:  # the route returns; the edge layer runs the stream from outside it
            handoff(self)
            return
        await self.run(receive, send)

    async def run(self, receive: Receive, send: Send) -> None:
        """Send the stream's body: its items until the cursor ends, the client leaves or the deadline
        comes (the headers are sent)."""

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            self._cursor.close()

        watcher = asyncio.create_task(watch(), name="sse-disconnect")
        batches = self._cursor.batches()
        try:
            if not await self._send_items(batches, send) and not (self._clients and self._clients.ending):
                # The token expired: end the response as usual. At shutdown a client too slow to take
                # the stream is not waited for: the server closes its connection.
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await batches.aclose()

    async def _send_items(self, batches: AsyncIterator[list[CursorItem]], send: Send) -> bool:
        """Send the cursor's items, all that are ready at once in one message (a client whose task waited
        behind thousands of others gets what piled up in one write, not one each), then the end of the
        response, until the stream's deadline: the expiry of the token it was opened with (issue #13,
        item 7), brought forward when the server stops (item 6). A cursor step or a send in progress
        then (a send waits while the client reads nothing) is cancelled before any of its bytes are
        written. False if the deadline came first."""
        encoder, clients = self._encoder, self._clients
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._expires_in) as deadline:
                if clients is not None:
                    clients.opened(deadline)
                try:
                    async for batch in batches:
                        body = encoder(batch[0]) if len(batch) == 1 else b"".join(map(encoder, batch))
                        await send({"type": "http.response.body", "body": body, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return True
                finally:
                    if clients is not None:
                        clients.closed(deadline)
        return False
