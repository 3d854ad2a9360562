"""Scenarios g and h of `make bench` (issue #14): the service relaying a real model's stream, side by side
with LiteLLM's proxy, in front of the same local upstream (`bench.upstream`).

- g. CPU per relayed chunk of each relay process (its own and its children's, from /proc), with 16
  clients streaming 300-chunk answers, and the first chunk's delay over the upstream's own; rounds
  alternate between the relays, and the figures are the medians of the rounds.
- h (`bench.paced`). The most paced answers (50 tokens/s each) a relay carries at once with chunk
  lateness p99 and loop lag p99 within 50 ms.

The service runs in each of its modes: `/v1` stateless, `/v1` with `X-Session-Id` (stored, published,
replayable) and `POST /chat` (its events read from Redis PubSub). LiteLLM is installed by the benchmark
into its own virtualenv (`bench.litellm`); when it cannot be, the scenario says so and runs without it.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench.litellm import LiteLLMProxy, litellm_python
from bench.processes import RedisServer
from bench.scenarios import Run
from bench.wire import StreamingConnection, Subscriber, post_request
from testkit.processes import ServerProcess

MODEL = "bench-upstream"
# One upstream token as every relay writes it: orjson and pydantic write no space after the colon.
TOKEN = re.compile(rb'"content": ?"tok')
FIRST_GAP = 0.02  # g: the upstream's pause after its first token, then the rest of the answer at once


class UpstreamServer(ServerProcess):
    """`bench.upstream` on a free port: CHUNKS tokens per answer, INTERVAL seconds apart, or the first
    one alone and the rest GAP seconds later."""

    def __init__(self, log: Path, chunks: int, interval: float = 0.0, gap: float = 0.0) -> None:
        super().__init__(log)
        self.args = [str(chunks), str(interval), str(gap)]

    def command(self) -> list[str]:
        return [sys.executable, "-m", "bench.upstream", str(self.port), *self.args]


@dataclass
class Relay:
    """One way of getting the upstream's answer to a client: how to ask, and which processes to bill."""

    name: str
    port: int
    path: str
    process: ServerProcess
    headers: Callable[[int, int], dict[str, str]] = field(default=lambda client, n: {})
    pubsub: bool = False  # POST /chat: the answer comes on the session's channel, not in the response
    redis: RedisServer | None = None  # billed beside the process when the relay writes to Redis

    def request(self, client: int, n: int) -> bytes:
        if self.pubsub:
            chat = {"session_id": _session(client, n), "message": "Count for me.", "user_id": "bench"}
            return post_request(self.path, orjson.dumps(chat))
        body: dict[str, object] = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Count for me."}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        return post_request(self.path, orjson.dumps(body), self.headers(client, n))


def _session(client: int, n: int) -> str:
    # Each client cycles through 20 sessions, so histories grow as in a conversation, not forever.
    return f"g{client}s{n % 20}"


class ChatChannels:
    """POST /chat's answers, read from PubSub: per session, when each chunk came and when it ended."""

    def __init__(self) -> None:
        self.waiting: dict[bytes, tuple[list[tuple[float, int]], asyncio.Future[None]]] = {}

    def expect(self, session_id: str) -> tuple[list[tuple[float, int]], asyncio.Future[None]]:
        entry: tuple[list[tuple[float, int]], asyncio.Future[None]] = (
            [],
            asyncio.get_running_loop().create_future(),
        )
        self.waiting[f"chat:{session_id}".encode()] = entry
        return entry

    def __call__(self, now: float, channel: bytes, data: bytes) -> None:
        entry = self.waiting.get(channel)
        if entry is None:
            return
        if b'"type":"chunk"' in data:
            entry[0].append((now, 1))
        elif (b'"type":"end"' in data or b'"type":"error"' in data) and not entry[1].done():
            entry[1].set_result(None)


class Client:
    """One client of a relay: a keep-alive connection, and for POST /chat the PubSub channels."""

    def __init__(
        self, relay: Relay, index: int, connection: StreamingConnection, channels: ChatChannels
    ) -> None:
        self.relay = relay
        self.index = index
        self.connection = connection
        self.channels = channels
        self.sent = 0
        self.reopened = 0

    async def answer(self) -> tuple[float, list[tuple[float, int]]]:
        """One answer: when it was asked for, and its tokens' arrivals."""
        n = self.sent
        self.sent += 1
        if self.connection.closed.done():  # the relay closed it, idle between two answers
            self.reopened += 1
            self.connection = await StreamingConnection.open_streaming(self.relay.port, TOKEN)
        raw = self.relay.request(self.index, n)
        asked = time.perf_counter()
        if self.relay.pubsub:
            arrivals, ended = self.channels.expect(_session(self.index, n))
            status, _ = await self.connection.stream(raw)
            if status != 202:
                raise RuntimeError(f"{self.relay.name} answered {status}")
            await asyncio.wait_for(ended, 60)
            return asked, arrivals
        status, arrivals = await self.connection.stream(raw)
        if status != 200:
            raise RuntimeError(f"{self.relay.name} answered {status}: {self.connection._body[:300]!r}")
        return asked, arrivals


async def open_clients(relay: Relay, count: int, channels: ChatChannels) -> list[Client]:
    clients: list[Client] = []
    for start in range(0, count, 100):
        connections = await asyncio.gather(
            *(
                StreamingConnection.open_streaming(relay.port, TOKEN)
                for _ in range(start, min(count, start + 100))
            )
        )
        clients += [Client(relay, start + i, c, channels) for i, c in enumerate(connections)]
    return clients


# --- g. CPU per relayed chunk, first-chunk overhead ----------------------------------------------


async def cpu_round(relay: Relay, clients: list[Client], answers: int, chunks: int) -> dict[str, float]:
    """`answers` answers per client, back to back: the relay's CPU per token that reached a client."""

    def cpu() -> tuple[float, float]:
        return relay.process.cpu_seconds(), relay.redis.cpu_seconds() if relay.redis else 0.0

    tokens = 0

    async def client_loop(client: Client) -> None:
        nonlocal tokens
        for _ in range(answers):
            _, arrivals = await client.answer()
            tokens += sum(count for _, count in arrivals)

    before = await asyncio.to_thread(cpu)
    started = time.perf_counter()
    await asyncio.gather(*(client_loop(client) for client in clients))
    elapsed = time.perf_counter() - started
    after = await asyncio.to_thread(cpu)
    expected = answers * len(clients) * chunks
    if tokens != expected:
        raise RuntimeError(f"{relay.name}: {tokens} tokens arrived, {expected} were sent")
    return {
        "cpu_us_per_chunk": round((after[0] - before[0]) / tokens * 1e6, 1),
        "redis_cpu_us_per_chunk": round((after[1] - before[1]) / tokens * 1e6, 1),
        "chunks_per_s": round(tokens / elapsed),
    }


async def first_chunk(relay: Relay, client: Client, samples: int) -> float:
    """The median time from sending the request to the first token, one answer at a time (ms)."""
    delays = []
    for _ in range(samples):
        asked, arrivals = await client.answer()
        delays.append(arrivals[0][0] - asked)
    return statistics.median(delays) * 1000


async def scenario_g(
    run: Run, rounds: int, answers: int, chunks: int = 300, clients: int = 16
) -> dict[str, Any]:
    upstream = start_upstream(run, chunks, gap=FIRST_GAP)
    result: dict[str, Any] = {
        "chunks_per_answer": chunks,
        "clients": clients,
        "rounds": rounds,
        "first_token_gap_ms": FIRST_GAP * 1000,
    }
    try:
        relays, note = await start_relays(run, upstream)
        if note:
            result["litellm"] = note
        channels = ChatChannels()
        subscriber = await Subscriber.open(run.redis.port, "chat:g*", channels)
        samples = 5 if run.smoke else 30
        figures: dict[str, list[dict[str, float]]] = {relay.name: [] for relay in relays}

        async def measure(relay: Relay, answers: int, samples: int) -> dict[str, float]:
            # Connections of the round's own: a relay closes those left idle while another is measured.
            pool = await open_clients(relay, clients, channels)
            try:
                figure = await cpu_round(relay, pool, answers, chunks)
                if samples:
                    figure["first_chunk_ms"] = await first_chunk(relay, pool[0], samples)
                return figure
            finally:
                for client in pool:
                    client.connection.close()

        try:
            for relay in relays:  # warm-up: connections, first answers, imports on first use
                await measure(relay, 1, 0)
            for _ in range(rounds):
                for relay in relays:
                    figures[relay.name].append(await measure(relay, answers, samples))
        finally:
            subscriber.close()
    finally:
        run.stop_all()
    upstream_first = statistics.median(f["first_chunk_ms"] for f in figures["upstream"])
    result["relays"] = {}
    for name, rows in figures.items():
        median = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
        median["first_chunk_over_upstream_ms"] = median["first_chunk_ms"] - upstream_first
        result["relays"][name] = {key: round(value, 2) for key, value in median.items()}
    del result["relays"]["upstream"]["cpu_us_per_chunk"]  # its own figure would read as a relay's
    return result


# --- the relays ----------------------------------------------------------------------------------


def start_upstream(run: Run, chunks: int, interval: float = 0.0, gap: float = 0.0) -> UpstreamServer:
    upstream = UpstreamServer(run.logs / "upstream.log", chunks, interval, gap)
    run.others.append(upstream)
    upstream.start("/health")
    return upstream


async def start_relays(
    run: Run,
    upstream: UpstreamServer,
    modes: tuple[str, ...] = ("upstream", "v1", "v1-session", "chat", "litellm"),
) -> tuple[list[Relay], str]:
    """The upstream alone, the service in each mode, and LiteLLM's proxy when it can be installed."""
    service = run.service(
        AI_PROVIDER="openai",
        OPENAI_BASE_URL=f"{upstream.url}/v1",
        OPENAI_API_KEY="bench-upstream-key",
        AI_MODEL=MODEL,
        SHUTDOWN_GRACE_SECONDS="2",
    )
    relays = {
        "upstream": Relay("upstream", upstream.port, "/v1/chat/completions", upstream),
        "v1": Relay("v1", service.port, "/v1/chat/completions", service),
        "v1-session": Relay(
            "v1-session",
            service.port,
            "/v1/chat/completions",
            service,
            headers=lambda client, n: {"X-Session-Id": _session(client, n)},
            redis=run.redis,
        ),
        "chat": Relay("chat", service.port, "/chat", service, pubsub=True, redis=run.redis),
    }
    chosen = [relays[mode] for mode in modes if mode in relays]
    note = ""
    if "litellm" in modes:
        python, note = await asyncio.to_thread(litellm_python, run.smoke)
        if python is not None:
            proxy = LiteLLMProxy(python, run.logs / "litellm.log", f"{upstream.url}/v1", MODEL)
            run.others.append(proxy)
            await asyncio.to_thread(proxy.start)
            chosen.append(
                Relay(
                    "litellm",
                    proxy.port,
                    "/v1/chat/completions",
                    proxy,
                    headers=lambda client, n: {"Authorization": f"Bearer {proxy.master_key}"},
                )
            )
        if note:
            sys.stderr.write(f"bench: {note}\n")
    return chosen, note
