"""A local OpenAI-compatible model server that costs little per chunk: the upstream of scenarios g and h.

    python -m bench.upstream PORT CHUNKS [INTERVAL [GAP]]

`POST /v1/chat/completions` streams CHUNKS one-token `chat.completion.chunk` events (then the finishing
chunk, the usage chunk when `stream_options.include_usage` asks for it, and `[DONE]`), INTERVAL seconds
apart; with INTERVAL 0, the first token at once and the rest together GAP seconds later (a model's
first token comes alone: a relay's first chunk is then its own, not the end of a burst it read whole).
Every chunk is encoded once, at start-up, with its HTTP chunked framing, so
that a relay in front of it is what a run measures, not this server. Paced answers are written by one
ticker per interval slot rather than a timer per answer. `GET /health` answers 200.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import cast

import httptools
import orjson
import uvloop

MODEL = "bench-upstream"
SLOTS = 4  # paced answers are spread over this many ticks per interval


def _framed(payload: bytes) -> bytes:
    """One HTTP/1.1 chunk (`Transfer-Encoding: chunked`) holding `payload`."""
    return b"%x\r\n%b\r\n" % (len(payload), payload)


def _event(body: object) -> bytes:
    return _framed(b"data: " + orjson.dumps(body) + b"\n\n")


def encoded_answer(chunks: int) -> tuple[list[bytes], bytes, bytes]:
    """The answer's token events, its ending (finish chunk, `[DONE]`, the chunked terminator), and the
    usage event sent before `[DONE]` when asked for."""
    head = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": MODEL,
    }
    tokens = []
    for index in range(chunks):
        delta: dict[str, str] = {"content": f"tok{index % 10} "}
        if index == 0:
            delta = {"role": "assistant", **delta}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
        tokens.append(_event({**head, "choices": [choice]}))
    finish = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    ending = _event({**head, "choices": [finish]})
    usage = {"prompt_tokens": 20, "completion_tokens": chunks, "total_tokens": 20 + chunks}
    usage_event = _event({**head, "choices": [], "usage": usage})
    return tokens, ending, usage_event


HEADERS = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
HEALTH = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n{"status":"ok"}'
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
DONE = _framed(b"data: [DONE]\n\n") + b"0\r\n\r\n"


class Upstream:
    def __init__(self, chunks: int, interval: float, gap: float) -> None:
        self.tokens, ending, self.usage = encoded_answer(chunks)
        self.gap = gap
        self.ending = ending
        self.interval = interval
        # The paced answers of each slot: [transport, next token, include usage].
        self.slots: list[list[list[object]]] = [[] for _ in range(SLOTS)]
        self._slot = 0  # the slot that ticked last: it ticks again one interval after it did

    def answer(self, transport: asyncio.Transport, usage: bool) -> None:
        if not self.interval:
            rest = b"".join([*self.tokens[1:], self._tail(usage)])
            if not self.gap:
                transport.write(HEADERS + self.tokens[0] + rest)
                return
            transport.write(HEADERS + self.tokens[0])
            asyncio.get_running_loop().call_later(self.gap, _write, transport, rest)
            return
        transport.write(HEADERS + self.tokens[0])
        self.slots[self._slot].append([transport, 1, usage])

    def _tail(self, usage: bool) -> bytes:
        return self.ending + (self.usage if usage else b"") + DONE

    async def tick(self) -> None:
        """Every interval / SLOTS: the next token of each answer in this tick's slot."""
        loop = asyncio.get_running_loop()
        step = self.interval / SLOTS
        due = loop.time()
        while True:
            due += step
            await asyncio.sleep(max(0.0, due - loop.time()))
            slot = self._slot = (self._slot + 1) % SLOTS
            answers = self.slots[slot]
            kept = []
            for answer in answers:
                transport = cast(asyncio.Transport, answer[0])
                if transport.is_closing():
                    continue
                index = cast(int, answer[1])
                if index < len(self.tokens):
                    transport.write(self.tokens[index])
                    answer[1] = index + 1
                    kept.append(answer)
                else:
                    transport.write(self._tail(bool(answer[2])))
            self.slots[slot] = kept


def _write(transport: asyncio.Transport, data: bytes) -> None:
    if not transport.is_closing():
        transport.write(data)


class Connection(asyncio.Protocol):
    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.body = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_message_begin(self) -> None:
        self.url = b""
        self.body = bytearray()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        assert self.transport is not None
        if self.url.startswith(b"/health"):
            self.transport.write(HEALTH)
        elif self.url.endswith(b"/chat/completions"):
            self.upstream.answer(self.transport, b'"include_usage":true' in self.body.replace(b" ", b""))
        else:
            self.transport.write(NOT_FOUND)


async def serve(port: int, chunks: int, interval: float, gap: float) -> None:
    upstream = Upstream(chunks, interval, gap)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(upstream), "127.0.0.1", port, backlog=4096)
    ticker = asyncio.create_task(upstream.tick()) if interval else None
    started = time.monotonic()
    async with server:
        # Bounded like every loop of the benchmark: the run stops it long before this.
        await asyncio.sleep(3600 - (time.monotonic() - started))
    if ticker is not None:
        ticker.cancel()


def main() -> None:
    port, chunks = int(sys.argv[1]), int(sys.argv[2])
    interval = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    gap = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    uvloop.run(serve(port, chunks, interval, gap))


if __name__ == "__main__":
    main()
