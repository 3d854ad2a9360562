"""`GET /stream/{session_id}` on the wire: one client's Server-Sent Events, and the response sending them.

A client's stream is what it missed from the session's replay log, then live events from the process's
`StreamHub`, with a keepalive comment when nothing is sent for a while. The response runs the stream in
the request's own task, plus one small task that waits for the client to leave: an idle client costs
what its connection costs and little more (issue #6, f; sse-starlette's response ran four tasks in a
task group per client, about 20 KB of the 52 KB an idle client held).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Protocol

import orjson
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from streaming import TERMINAL, Entry, Listener, StreamHub, parse_entry_id

__all__ = ["EventStreamResponse", "SessionStream"]

PING = b": ping\r\n\r\n"


def encode(entry: Entry) -> bytes:
    """`id:` the log entry id, `event:` the type, `data:` the event's JSON (which has no newline)."""
    return b"id: %s\r\nevent: %s\r\ndata: %s\r\n\r\n" % (
        entry.id.encode(),
        entry.type.encode(),
        entry.payload,
    )


def encode_reset(session_id: str, newest: str | None) -> bytes:
    data = orjson.dumps(
        {"type": "reset", "session_id": session_id, "reason": "events were missed: reload the history"}
    )
    head = b"id: %s\r\n" % newest.encode() if newest else b""
    return head + b"event: reset\r\ndata: %s\r\n\r\n" % data


class SessionStream:
    """A session's events for one SSE client: what it missed from the log, then live ones.

    - `last_event_id`: resume exactly after that entry; when the log no longer reaches back that far,
      a `reset` event tells the client to reload history, then live events follow.
    - `message_id` (with `message_since`, the log entry after which its events begin): only that
      answer, from its `start`, closing after its end.
    - neither: the running answers from their `start`, then everything live.

    The listener is registered before the log is read, so every entry is either in the replay or
    arrives live; entries are sent in log order, each at most once. `close()` ends the stream. While
    nothing is sent, the hub asks for a keepalive comment every `SSE_PING_SECONDS`.
    """

    def __init__(
        self,
        hub: StreamHub,
        session_id: str,
        *,
        last_event_id: str | None = None,
        message_id: str | None = None,
        message_since: str | None = None,
        message_finished: bool = False,
    ) -> None:
        self._hub = hub
        self._session_id = session_id
        self._last_event_id = last_event_id
        self._message_id = message_id
        self._message_since = message_since
        self._message_finished = message_finished
        self._closed = False
        self._listener: Listener | None = None

    def close(self) -> None:
        self._closed = True
        if self._listener is not None:
            self._listener.close()

    def _wanted(self, entry: Entry) -> bool:
        return self._message_id is None or entry.message_id == self._message_id

    async def __aiter__(self) -> AsyncIterator[bytes]:
        hub, session_id, message_id = self._hub, self._session_id, self._message_id
        loop = asyncio.get_running_loop()
        async with hub.listen(session_id) as listener:
            self._listener = listener
            if self._closed:
                return
            oldest, newest = await hub.bounds(session_id)
            replay: list[Entry] = []
            # Entries up to `last_sent` are never sent: what the client had, or what came before it.
            last_sent = (0, 0)
            reset = False
            if self._last_event_id is not None:
                if oldest is None or parse_entry_id(self._last_event_id) < parse_entry_id(oldest):
                    reset = True
                else:
                    replay = await hub.read_after(session_id, self._last_event_id)
            elif self._message_since is not None:
                replay = [e for e in await hub.read_after(session_id, self._message_since) if self._wanted(e)]
                # Its events are in the log but not its start (trimmed), or the log no longer has it.
                reset = (bool(replay) and replay[0].type != "start") or (
                    not replay and self._message_finished
                )
                if reset:
                    replay = []
            else:
                starts = await hub.active_starts(session_id)
                if starts:
                    replay = await hub.read_after(session_id, min(starts, key=parse_entry_id))
                elif newest is not None:
                    last_sent = parse_entry_id(newest)
            if reset:
                yield encode_reset(session_id, newest)
                if message_id is not None and self._message_finished:
                    return
                if newest is not None:
                    last_sent = parse_entry_id(newest)
            pending = replay
            while True:
                for entry in pending:
                    if entry.key <= last_sent or not self._wanted(entry):
                        continue
                    last_sent = entry.key
                    yield encode(entry)
                    if message_id is not None and entry.type in TERMINAL:
                        return
                listener.active = loop.time()
                await listener.wait()
                if listener.closed:
                    return
                if listener.ping_due:
                    listener.ping_due = False
                    yield PING
                if listener.lagged:
                    listener.lagged = False
                    listener.entries.clear()
                    pending = await hub.read_after(session_id, f"{last_sent[0]}-{last_sent[1]}")
                else:
                    pending = list(listener.entries)
                    listener.entries.clear()


class Counting(Protocol):
    def inc(self) -> None: ...

    def dec(self) -> None: ...


class EventStreamResponse(StreamingResponse):
    """Sends a `SessionStream` as `text/event-stream`, and ends it when the client leaves."""

    def __init__(
        self,
        stream: SessionStream,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        *,
        clients: Counting | None = None,
    ) -> None:
        """`clients`: a gauge (metrics) counting the clients whose stream is open."""
        self._stream = stream
        self._clients = clients
        super().__init__(aiter(stream), status_code, headers, media_type="text/event-stream")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            self._stream.close()

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
