"""The scenarios of `make bench` (issue #6, a to f), run from the load-generator process.

Every loop here is bounded in time and count, and sends traffic only to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import orjson

from bench.processes import ROOT, RedisServer, Server
from bench.wire import HttpConnection, SseConnection, Subscriber, post_request
from testkit.processes import ServerProcess

MESSAGE = "How do I stream chat answers from Redis to thousands of browsers at once?"
DEFAULT_STREAM_DELAY = 0.1
DEFAULT_CHUNK_DELAY = 0.05


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def chat_body(session_id: str) -> bytes:
    return orjson.dumps({"session_id": session_id, "message": MESSAGE, "user_id": "bench"})


@dataclass
class Run:
    """What a scenario needs: the run's Redis, where logs go, how long to load, smoke or full."""

    redis: RedisServer
    logs: Any
    smoke: bool
    servers: list[Server] = field(default_factory=list)
    others: list[ServerProcess] = field(default_factory=list)  # g and h: the upstream, LiteLLM

    def seconds(self, full: float) -> float:
        return 0.5 if self.smoke else full

    def service(self, workers: int = 1, **env: str) -> Server:
        values = {"REDIS_URL": self.redis.url, "STREAM_DELAY": "0", "CHUNK_DELAY": "0"}
        # Each service starts on an empty record, as on an empty Redis: a file left by earlier runs (in
        # the working directory, the default) grew with every run, and each run measured a bigger one.
        values["DATABASE_PATH"] = str(self.logs / f"record-{len(self.servers)}-{time.monotonic_ns()}.db")
        values.update({"SHUTDOWN_GRACE_SECONDS": "2", **env})
        return self._start("bench.service:create", values, workers)

    def ceiling(self, workers: int = 1) -> Server:
        return self._start("bench.ceiling:create", {}, workers)

    def _start(self, target: str, env: dict[str, str], workers: int) -> Server:
        self.redis.cli("FLUSHALL")
        server = Server(target, env, self.logs / f"{target.split(':')[0]}.log", workers=workers)
        self.servers.append(server)
        server.start()
        return server

    def stop(self, server: Server) -> None:
        server.stop()
        self.servers.remove(server)

    def stop_all(self) -> None:
        for server in list(self.servers):
            self.stop(server)
        while self.others:
            self.others.pop().stop()


async def service_stats(server: Server, *, collect: bool = False) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=30) as client:
        response = await client.get("/_bench/stats", params={"collect": collect})
        stats: dict[str, Any] = response.json()
        return stats


async def restart_lag(server: Server) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=30) as client:
        await client.post("/_bench/lag")


async def wait_idle(server: Server, baseline_tasks: int) -> None:
    """Until the answers a scenario started have all ended (30 s at most)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if (await service_stats(server))["tasks"] <= baseline_tasks:
            return
        await asyncio.sleep(0.1)


async def open_connections(port: int, count: int) -> list[HttpConnection]:
    connections: list[HttpConnection] = []
    for start in range(0, count, 100):
        connections += await asyncio.gather(
            *(HttpConnection.open(port) for _ in range(start, min(count, start + 100)))
        )
    return connections


# --- a. POST /chat against the HTTP ceiling ------------------------------------------------------


async def post_load(
    port: int, concurrency: int, seconds: float, warmup: float, server: Server, redis: RedisServer
) -> dict[str, float]:
    """`concurrency` keep-alive connections POSTing /chat back to back for `seconds` after a warm-up."""
    connections = await open_connections(port, concurrency)
    latencies: list[float] = []
    failures = 0
    recording = False
    started = time.perf_counter()
    stop_at = started + warmup + seconds
    # Each worker cycles through 20 sessions, so histories grow as in a conversation, not forever.
    bodies = [[post_request("/chat", chat_body(f"w{w}s{n}")) for n in range(20)] for w in range(concurrency)]

    async def worker(index: int, connection: HttpConnection) -> None:
        nonlocal failures
        sent = 0
        while time.perf_counter() < stop_at and sent < 1_000_000:
            before = time.perf_counter()
            status, _ = await connection.request(bodies[index][sent % 20])
            if recording:
                latencies.append(time.perf_counter() - before)
                failures += status not in (200, 202)
            sent += 1

    cpu: dict[str, float] = {}

    def cpu_now() -> tuple[float, float, float]:
        return server.cpu_seconds(), redis.cpu_seconds(), time.process_time()

    async def clock() -> float:
        nonlocal recording
        await asyncio.sleep(warmup)
        recording = True
        measured_from = time.perf_counter()
        before = await asyncio.to_thread(cpu_now)
        await asyncio.sleep(seconds)
        after = await asyncio.to_thread(cpu_now)
        recording = False
        window = time.perf_counter() - measured_from
        # Cores each process kept busy: on a 2-core machine they add up to at most 2.
        for name, start, end in zip(
            ("server_cores", "redis_cores", "loadgen_cores"), before, after, strict=True
        ):
            cpu[name] = round((end - start) / window, 2)
        return window

    workers = [asyncio.create_task(worker(i, c)) for i, c in enumerate(connections)]
    window = await clock()
    await asyncio.gather(*workers)
    for connection in connections:
        connection.close()
    return {
        "concurrency": concurrency,
        "requests_per_s": round(len(latencies) / window, 1),
        "p50_ms": ms(quantile(latencies, 0.5)),
        "p99_ms": ms(quantile(latencies, 0.99)),
        "failures": failures,
        **cpu,
    }


async def scenario_a(run: Run, levels: list[int], workers: int = 1) -> dict[str, Any]:
    seconds, warmup = run.seconds(3), run.seconds(1)
    result: dict[str, Any] = {"service": [], "ceiling": [], "workers": workers}
    ceiling = run.ceiling(workers)
    try:
        for level in levels:
            result["ceiling"].append(
                await post_load(ceiling.port, level, seconds, warmup, ceiling, run.redis)
            )
    finally:
        run.stop(ceiling)
    # One short chunk per answer: this scenario measures the request path; b to f measure streaming.
    service = run.service(workers, BENCH_CHUNKS="1")
    try:
        for level in levels:
            result["service"].append(
                await post_load(service.port, level, seconds, warmup, service, run.redis)
            )
            await asyncio.sleep(0.5)  # let the last answers end
    finally:
        run.stop(service)
    top_service, top_ceiling = result["service"][-1], result["ceiling"][-1]
    result["ratio"] = round(top_service["requests_per_s"] / top_ceiling["requests_per_s"], 3)
    return result


# --- b. Chunk throughput against the client ceiling ----------------------------------------------


class ChunkCounter:
    def __init__(self) -> None:
        self.times: list[float] = []
        self.done = asyncio.Event()
        self.expected = 0

    def __call__(self, now: float, channel: bytes, data: bytes) -> None:
        if b'"type":"chunk"' in data:
            self.times.append(now)
            if len(self.times) >= self.expected:
                self.done.set()

    def rate(self) -> float | None:
        """Chunks per second in the steady middle of the run (10% to 90% of the chunks), or over the
        whole run when the middle came in at once (a smoke run's few chunks can arrive in one read);
        None when no time passed at all."""
        count = len(self.times)
        for low, high in ((int(count * 0.1), int(count * 0.9) - 1), (0, count - 1)):
            if high > low and self.times[high] > self.times[low]:
                return (high - low) / (self.times[high] - self.times[low])
        return None


def chunk_rate(counter: ChunkCounter) -> int | None:
    rate = counter.rate()
    return None if rate is None else round(rate)


async def publish_ceiling(
    counter: ChunkCounter, port: int, answers: int, chunks: int, *flags: str
) -> dict[str, Any]:
    """Run `bench.publisher` (the client ceiling) to a subscribed counter; return its figures."""
    command = [sys.executable, "-m", "bench.publisher", str(port), str(answers), str(chunks), *flags]
    output = await asyncio.to_thread(
        subprocess.run, command, cwd=ROOT, capture_output=True, text=True, timeout=180, check=True
    )
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(counter.done.wait(), 10)
    return {
        "chunks_per_s": chunk_rate(counter),
        "received": len(counter.times),
        "publisher_seconds": float(output.stdout),
    }


def rate_ratio(result: dict[str, Any]) -> float | None:
    """The service's chunks per second over the ceiling's, when both were measured."""
    service, ceiling = result["service"]["chunks_per_s"], result["ceiling"]["chunks_per_s"]
    return None if service is None or not ceiling else round(service / ceiling, 3)


async def scenario_b(run: Run, answers: int, chunks: int) -> dict[str, Any]:
    result: dict[str, Any] = {"answers": answers, "chunks_per_answer": chunks}
    # The client ceiling: another process publishes the same events; this one counts them.
    counter = ChunkCounter()
    counter.expected = answers * chunks
    subscriber = await Subscriber.open(run.redis.port, "chat:*", counter)
    try:
        result["ceiling"] = await publish_ceiling(counter, run.redis.port, answers, chunks)
    finally:
        subscriber.close()

    service = run.service(BENCH_CHUNKS=str(chunks))
    counter = ChunkCounter()
    counter.expected = answers * chunks
    subscriber = await Subscriber.open(run.redis.port, "chat:*", counter)
    try:
        connections = await open_connections(service.port, 16)

        async def post(index: int) -> None:
            for n in range(index, answers, len(connections)):
                await connections[index].request(post_request("/chat", chat_body(f"b{n}")))

        await restart_lag(service)
        baseline = (await service_stats(service))["tasks"]
        await asyncio.gather(*(post(i) for i in range(len(connections))))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(counter.done.wait(), 120)
        stats = await service_stats(service)
        result["service"] = {
            "chunks_per_s": chunk_rate(counter),
            "received": len(counter.times),
            "loop_lag_p99_ms": stats["lag"].get("p99_ms"),
        }
        for connection in connections:
            connection.close()
        await wait_idle(service, baseline)
        result["replay_log_entries"] = sum(
            int(run.redis.cli("XLEN", f"chat:{{b{n}}}:events")) for n in range(min(answers, 5))
        ) // min(answers, 5)
    finally:
        subscriber.close()
        run.stop(service)
    result["ratio"] = rate_ratio(result)
    return result


# --- c. Time to first chunk ----------------------------------------------------------------------


class SessionWaiters:
    """Routes each PubSub event to the session's current waiter: one answer in flight per session."""

    def __init__(self) -> None:
        self.handlers: dict[bytes, Callable[[float, dict[str, Any]], None]] = {}

    def __call__(self, now: float, channel: bytes, data: bytes) -> None:
        handler = self.handlers.get(channel)
        if handler is not None:
            handler(now, orjson.loads(data))


async def ttfc_level(
    run: Run, service: Server, sessions: int, seconds: float, think: float
) -> dict[str, Any]:
    waiters = SessionWaiters()
    subscriber = await Subscriber.open(run.redis.port, "chat:*", waiters)
    connections = await open_connections(service.port, sessions)
    to_start: list[float] = []
    to_chunk: list[float] = []
    stop_at = time.perf_counter() + seconds
    tag = f"c{sessions}x"

    # Sessions are people: they do not all send at the same instant. Each starts at a random point of
    # the first pause and pauses 0.5x to 1.5x `think` after each answer (seeded: runs compare).
    randomness = random.Random(sessions)

    async def session(index: int) -> None:
        session_id = f"{tag}{index}"
        channel = f"chat:{session_id}".encode()
        loop = asyncio.get_running_loop()
        rounds = 0
        if think:
            await asyncio.sleep(randomness.uniform(0, think))
        while time.perf_counter() < stop_at and rounds < 100_000:
            times: dict[str, float] = {}
            ended = loop.create_future()

            def on_event(
                now: float,
                event: dict[str, Any],
                times: dict[str, float] = times,
                ended: asyncio.Future[None] = ended,
            ) -> None:
                kind = event["type"]
                if kind not in times:
                    times[kind] = now
                if kind in ("end", "error") and not ended.done():
                    ended.set_result(None)

            waiters.handlers[channel] = on_event
            sent = time.perf_counter()
            status, _ = await connections[index].request(post_request("/chat", chat_body(session_id)))
            if status != 202:
                raise RuntimeError(f"POST /chat answered {status}")
            await asyncio.wait_for(ended, 30)
            to_start.append(times["start"] - sent)
            to_chunk.append(times["chunk"] - sent)
            rounds += 1
            if think:
                await asyncio.sleep(randomness.uniform(0.5 * think, 1.5 * think))

    started = time.perf_counter()
    await asyncio.gather(*(session(i) for i in range(sessions)))
    elapsed = time.perf_counter() - started
    subscriber.close()
    for connection in connections:
        connection.close()
    return {
        "sessions": sessions,
        "answers_per_s": round(len(to_chunk) / elapsed, 1),
        "start_p50_ms": ms(quantile(to_start, 0.5)),
        "start_p99_ms": ms(quantile(to_start, 0.99)),
        "chunk_p50_ms": ms(quantile(to_chunk, 0.5)),
        "chunk_p99_ms": ms(quantile(to_chunk, 0.99)),
        "samples": len(to_chunk),
    }


async def scenario_c(run: Run, levels: list[int], think: float) -> dict[str, Any]:
    service = run.service()
    try:
        await ttfc_level(run, service, 1, run.seconds(1), 0)  # warm-up
        result: dict[str, Any] = {"think_s": think, "levels": []}
        for sessions in levels:
            result["levels"].append(
                await ttfc_level(run, service, sessions, run.seconds(4), think if sessions > 1 else 0)
            )
        return result
    finally:
        run.stop(service)


# --- d. Paced answers: lateness against their schedule, loop lag, memory per answer -------------


async def scenario_d(run: Run, answers: int) -> dict[str, Any]:
    service = run.service(
        STREAM_DELAY=str(DEFAULT_STREAM_DELAY),
        CHUNK_DELAY=str(DEFAULT_CHUNK_DELAY),
        SHUTDOWN_GRACE_SECONDS="30",
    )
    lateness: list[float] = []
    lateness_after_posting: list[float] = []
    posted_at = float("inf")
    starts: dict[bytes, float] = {}
    schedule: dict[bytes, float] = {}
    ends = 0
    all_ended = asyncio.Event()

    def on_message(now: float, channel: bytes, data: bytes) -> None:
        nonlocal ends
        if channel.startswith(b"chat:dwarm"):  # the warm-up's answers are not measured
            return
        event = orjson.loads(data)
        kind = event["type"]
        if kind == "start":
            starts[channel] = schedule[channel] = now
        elif kind == "chunk" and channel in starts:
            words = len(event["content"].split())
            schedule[channel] += DEFAULT_STREAM_DELAY * words + DEFAULT_CHUNK_DELAY
            lateness.append(now - schedule[channel])
            if now > posted_at:
                lateness_after_posting.append(now - schedule[channel])
        elif kind in ("end", "error"):
            ends += 1
            if ends >= answers:
                all_ended.set()

    subscriber = await Subscriber.open(run.redis.port, "chat:*", on_message)
    try:
        # Warm up (first requests, first answers) so the baseline holds what every answer shares.
        warm = await open_connections(service.port, 8)
        for index, connection in enumerate(warm):
            await connection.request(post_request("/chat", chat_body(f"dwarm{index}")))
        await asyncio.sleep(run.seconds(6))  # until the warm-up answers have ended
        idle = await service_stats(service, collect=True)
        ends = 0
        lateness.clear()
        connections = await open_connections(service.port, 64)

        async def post(index: int) -> None:
            for n in range(index, answers, len(connections)):
                await connections[index].request(post_request("/chat", chat_body(f"d{n}")))

        await restart_lag(service)
        posting_started = time.perf_counter()
        await asyncio.gather(*(post(i) for i in range(len(connections))))
        posted_at = time.perf_counter()
        posting = posted_at - posting_started
        running = await service_stats(service)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_ended.wait(), 60)
        stats = await service_stats(service)
        for connection in warm + connections:
            connection.close()
    finally:
        subscriber.close()
        run.stop(service)
    in_flight = running["tasks"] - idle["tasks"]
    return {
        "answers": answers,
        "ended": ends,
        "posting_s": round(posting, 2),
        "chunks": len(lateness),
        "lateness_p50_ms": ms(quantile(lateness, 0.5)),
        "lateness_p99_ms": ms(quantile(lateness, 0.99)),
        "lateness_max_ms": ms(max(lateness, default=float("nan"))),
        # Once every answer is running: the cost of streaming alone, without the POSTs beside it.
        "lateness_p99_after_posting_ms": ms(quantile(lateness_after_posting, 0.99)),
        "loop_lag_p50_ms": stats["lag"].get("p50_ms"),
        "loop_lag_p99_ms": stats["lag"].get("p99_ms"),
        "loop_lag_max_ms": stats["lag"].get("max_ms"),
        "gc_max_ms": stats["lag"].get("gc_max_ms"),
        "gc_full_collections": stats["lag"].get("gc_full_collections"),
        "running_answers_measured": in_flight,
        "bytes_per_running_answer": round((running["rss_bytes"] - idle["rss_bytes"]) / max(in_flight, 1)),
    }


# --- e. Many SSE clients: delivery, latency, Redis connections, memory ---------------------------


async def scenario_e(run: Run, clients: int, sessions: int) -> dict[str, Any]:
    before_service = run.redis.connected_clients()
    # No cap on the service's side (MAX_SSE_CLIENTS=0): a stream it refused would be counted, not measured.
    service = run.service(
        STREAM_DELAY=str(DEFAULT_STREAM_DELAY), CHUNK_DELAY=str(DEFAULT_CHUNK_DELAY), MAX_SSE_CLIENTS="0"
    )
    latencies: list[float] = []
    ends = 0
    all_ended = asyncio.Event()
    peak_connections = 0

    def on_event(now: float, kind: bytes, data: bytes) -> None:
        nonlocal ends
        event = orjson.loads(data)
        latencies.append(now - datetime.fromisoformat(event["timestamp"]).timestamp())
        if kind in (b"end", b"answer_error"):
            ends += 1
            if ends >= clients:
                all_ended.set()

    async def watch_connections(stop: asyncio.Event) -> None:
        nonlocal peak_connections
        while not stop.is_set():
            count = await asyncio.to_thread(run.redis.connected_clients)
            peak_connections = max(peak_connections, count - before_service)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)

    stop_watching = asyncio.Event()
    watcher = asyncio.create_task(watch_connections(stop_watching))
    streams: list[SseConnection] = []
    try:
        # Warm-up: a few clients come and go, so the baseline holds what every client shares.
        warm = [
            await SseConnection.open(service.port, f"/stream/ewarm{i}", lambda *_: None) for i in range(20)
        ]
        for stream in warm:
            stream.close()
        await asyncio.sleep(1)
        idle = await service_stats(service, collect=True)
        for start in range(0, clients, 100):
            streams += await asyncio.gather(
                *(
                    SseConnection.open(service.port, f"/stream/e{i % sessions}", on_event)
                    for i in range(start, min(clients, start + 100))
                )
            )
        refused = sum(stream.status != 200 for stream in streams)
        await asyncio.sleep(1)
        connected = await service_stats(service, collect=True)
        post = await HttpConnection.open(service.port)
        started = time.perf_counter()
        for index in range(sessions):
            await post.request(post_request("/chat", chat_body(f"e{index}")))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_ended.wait(), 60)
        elapsed = time.perf_counter() - started
        post.close()
        # Stopped before the logs are counted: each count is a `redis-cli` connection of the bench's own.
        stop_watching.set()
        await watcher
        # What every client should have received: its session's log, from the answer's `start` on.
        lengths = [
            int(await asyncio.to_thread(run.redis.cli, "XLEN", f"chat:{{e{index}}}:events"))
            for index in range(sessions)
        ]
        expected = sum(lengths[index % sessions] for index in range(clients))
    finally:
        stop_watching.set()
        await watcher
        for stream in streams:
            stream.close()
        run.stop(service)
    return {
        "clients": clients,
        "sessions": sessions,
        "clients_refused": refused,
        "clients_finished": ends,
        "deliveries": len(latencies),
        "deliveries_expected": expected,
        "deliveries_per_s": round(len(latencies) / elapsed, 1),
        "delivery_p50_ms": ms(quantile(latencies, 0.5)),
        "delivery_p99_ms": ms(quantile(latencies, 0.99)),
        "redis_connections": peak_connections,
        "bytes_per_idle_client": round((connected["rss_bytes"] - idle["rss_bytes"]) / clients),
        "rss_mb_with_clients": round(connected["rss_bytes"] / 2**20, 1),
    }


Scenario = Callable[[], Awaitable[dict[str, Any]]]
