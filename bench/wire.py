"""Lean clients for the load generator: HTTP/1.1 over keep-alive connections, SSE, and a Redis subscriber.

They are small on purpose. A general client (httpx) spends more CPU per request than the service under
test, and on a 2-core machine that CPU is taken from the service: the load generator would measure
itself. These parse with the same C parsers the server uses (httptools, hiredis).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import cast

import hiredis
import httptools
import orjson


def post_request(path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def get_request(path: str, headers: dict[str, str] | None = None) -> bytes:
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()


class HttpConnection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._body = bytearray()
        self.closed = asyncio.get_running_loop().create_future()

    @classmethod
    async def open(cls, port: int) -> HttpConnection:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(cls, "127.0.0.1", port)
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError("connection lost"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self._parser.get_status_code(), bytes(self._body)))

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        assert self._transport is not None
        self._body = bytearray()
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(raw)
        return await self._waiter

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class SseConnection(asyncio.Protocol):
    """One Server-Sent Events stream: calls `on_event(receipt_time, event_type, data)` per event."""

    def __init__(self, on_event: Callable[[float, bytes, bytes], None]) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._on_event = on_event
        self.status = 0
        self.headers_done = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()

    @classmethod
    async def open(
        cls, port: int, path: str, on_event: Callable[[float, bytes, bytes], None]
    ) -> SseConnection:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(lambda: cls(on_event), "127.0.0.1", port)
        assert protocol._transport is not None
        protocol._transport.write(get_request(path, {"Accept": "text/event-stream"}))
        await protocol.headers_done
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.headers_done.done():
            self.headers_done.set_exception(ConnectionError("connection lost"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        if not self.headers_done.done():
            self.headers_done.set_result(None)

    def on_body(self, body: bytes) -> None:
        now = time.time()
        self._buffer += body
        *events, self._buffer = self._buffer.split(b"\r\n\r\n")
        for raw in events:
            kind = b"message"
            data = b""
            for line in raw.split(b"\r\n"):
                if line.startswith(b"event: "):
                    kind = line[7:]
                elif line.startswith(b"data: "):
                    data = line[6:]
            if data:
                self._on_event(now, kind, data)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class Subscriber(asyncio.Protocol):
    """A Redis PubSub subscriber on a raw connection, parsed with hiredis.

    Calls `on_message(receipt_perf_counter, channel, data)` for each message on the pattern.
    """

    def __init__(self, on_message: Callable[[float, bytes, bytes], None]) -> None:
        self._reader = hiredis.Reader()
        self._on_message = on_message
        self._transport: asyncio.Transport | None = None
        self.subscribed = asyncio.get_running_loop().create_future()

    @classmethod
    async def open(
        cls, port: int, pattern: str, on_message: Callable[[float, bytes, bytes], None]
    ) -> Subscriber:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(lambda: cls(on_message), "127.0.0.1", port)
        assert protocol._transport is not None
        protocol._transport.write(f"*2\r\n$10\r\nPSUBSCRIBE\r\n${len(pattern)}\r\n{pattern}\r\n".encode())
        await protocol.subscribed
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            assert isinstance(reply, list)
            if reply[0] == b"pmessage":
                self._on_message(now, reply[2], reply[3])
            elif reply[0] == b"psubscribe" and not self.subscribed.done():
                self.subscribed.set_result(None)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def event_of(data: bytes) -> dict[str, object]:
    event: dict[str, object] = orjson.loads(data)
    return event


MARKER_MIN = 14  # the shortest text a `StreamingConnection` marker matches


class StreamingConnection(HttpConnection):
    """A keep-alive connection for streamed answers (Server-Sent Events over a POST): per request, when
    each token arrived, read by counting `marker` in what came, so any relay's framing reads alike."""

    def __init__(self, marker: re.Pattern[bytes]) -> None:
        super().__init__()
        self._marker = marker
        self._tail = b""
        self.arrivals: list[tuple[float, int]] = []  # (perf_counter, tokens in that read)

    @classmethod
    async def open_streaming(cls, port: int, marker: re.Pattern[bytes]) -> StreamingConnection:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(lambda: cls(marker), "127.0.0.1", port)
        return protocol

    def on_body(self, body: bytes) -> None:
        # A marker may be split between two reads: search with the end of the last read before, too
        # short to hold a whole marker, so none is counted twice.
        searched = self._tail + body
        self._tail = searched[-(MARKER_MIN - 1) :]
        count = len(self._marker.findall(searched))
        if count:
            self.arrivals.append((time.perf_counter(), count))
        elif self._parser.get_status_code() >= 400:
            self._body += body  # an error's body, for its message

    async def stream(self, raw: bytes) -> tuple[int, list[tuple[float, int]]]:
        """Send one request; its status and its tokens' arrivals once the response has ended."""
        self.arrivals = []
        self._tail = b""
        status, _ = await self.request(raw)
        return status, self.arrivals
