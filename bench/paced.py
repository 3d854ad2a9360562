"""Scenario h of `make bench` (issue #14): the most paced answers (50 tokens/s each) a relay carries at
once with chunk lateness p99 and loop lag p99 within 50 ms, the service's `/v1` against LiteLLM's proxy,
with the upstream alone as the floor. The relays and their clients are `bench.relay`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from typing import Any

from bench.processes import Server
from bench.relay import (
    ChatChannels,
    Client,
    Relay,
    open_clients,
    start_relays,
    start_upstream,
)
from bench.scenarios import Run, ms, quantile, restart_lag, service_stats
from bench.wire import HttpConnection, get_request

PACE = 0.02  # 50 tokens/s per answer
BOUND_MS = 50.0  # chunk lateness p99 and loop lag p99


def lateness_of(arrivals: list[tuple[float, int]], interval: float) -> list[tuple[float, float]]:
    """Each token's arrival and how late it came against a schedule of one token per `interval`,
    anchored where the answer's tokens came earliest against it: how far a relay fell behind the model
    while relaying, not how long it took to start (that is g's first chunk). Tokens that came in one
    read share its time."""
    if not arrivals:
        return []
    times: list[float] = []
    for now, count in arrivals:
        times.extend([now] * count)
    anchor = min(now - index * interval for index, now in enumerate(times))
    return [(now, now - (anchor + index * interval)) for index, now in enumerate(times)]


async def probe(port: int, path: str, stop: asyncio.Event) -> list[float]:
    """How long a small GET takes, every 50 ms until `stop`: the loop lag seen from outside."""
    connection = await HttpConnection.open(port)
    times: list[float] = []
    try:
        while not stop.is_set() and len(times) < 100_000:
            started = time.perf_counter()
            await connection.request(get_request(path))
            times.append(time.perf_counter() - started)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)
    finally:
        connection.close()
    return times


async def paced_level(
    relay: Relay, count: int, chunks: int, channels: ChatChannels, probe_path: str
) -> dict[str, Any]:
    """`count` clients, each asking for paced answers back to back, their first starts spread over one
    answer's length: from then on `count` answers run at once, new ones starting as others end. Their
    tokens' lateness, the loop lag and the failures over the next answer's length."""
    clients = await open_clients(relay, count, channels)
    span = chunks * PACE  # one answer's length
    loop = asyncio.get_running_loop()
    started = loop.time()
    window = (time.perf_counter() + span, time.perf_counter() + 2 * span)
    lateness: list[float] = []
    failures = 0
    answers = 0

    async def one(client: Client) -> None:
        nonlocal failures, answers
        await asyncio.sleep(span * client.index / count)  # people arrive, they do not all come at once
        while loop.time() < started + 2 * span:
            try:
                _, arrivals = await client.answer()
            except (RuntimeError, ConnectionError, TimeoutError):
                failures += 1
                return
            answers += 1
            failures += sum(n for _, n in arrivals) != chunks
            lateness.extend(late for now, late in lateness_of(arrivals, PACE) if window[0] <= now < window[1])

    async def measure() -> tuple[list[float], dict[str, Any], float]:
        await asyncio.sleep(span)
        service = relay.process if isinstance(relay.process, Server) else None
        if service is not None:
            await restart_lag(service)
        stop = asyncio.Event()
        prober = asyncio.create_task(probe(relay.port, probe_path, stop))
        cpu = await asyncio.to_thread(relay.process.cpu_seconds)
        await asyncio.sleep(span)
        cpu = await asyncio.to_thread(relay.process.cpu_seconds) - cpu
        stop.set()
        lag = (await service_stats(service))["lag"] if service is not None else {}
        return await prober, lag, cpu

    measuring = asyncio.create_task(measure())
    await asyncio.gather(*(one(client) for client in clients))
    probes, lag, cpu = await measuring
    # CPU per token while answers start and end as they would: it bounds the answers per core whatever
    # else shares the machine, which the lateness and the lag do not.
    cpu_per_token = cpu / len(lateness) if lateness else float("nan")
    for client in clients:
        client.connection.close()
    lag_p99 = lag.get("p99_ms")
    probe_p99 = ms(quantile(probes, 0.99))
    # The service's own loop lag; LiteLLM has no such figure, so its probe's latency stands for it.
    bounded_lag = lag_p99 if lag_p99 is not None else probe_p99
    late_p99 = ms(quantile(lateness, 0.99))
    return {
        "answers": count,
        "answers_run": answers,
        "failures": failures,
        "tokens_measured": len(lateness),
        "cpu_us_per_token": round(cpu_per_token * 1e6, 1),
        "answers_per_core": round(1 / (cpu_per_token / PACE)) if lateness and cpu else None,
        "lateness_p50_ms": ms(quantile(lateness, 0.5)),
        "lateness_p99_ms": late_p99,
        "loop_lag_p99_ms": lag_p99,
        "probe_p99_ms": probe_p99,
        "within": failures == 0 and bool(lateness) and late_p99 <= BOUND_MS and bounded_lag <= BOUND_MS,
    }


async def sustained(
    relay: Relay, levels: list[int], chunks: int, channels: ChatChannels, probe_path: str
) -> dict[str, Any]:
    """Levels upwards until one exceeds a bound: the last one within them is what the relay sustains."""
    await paced_level(relay, min(levels[0], 10), chunks, channels, probe_path)  # warm-up: first requests
    rows = []
    best = 0
    for level in levels:
        row = await paced_level(relay, level, chunks, channels, probe_path)
        rows.append(row)
        sys.stderr.write(f"bench: h {relay.name} {level}: {row}\n")
        if not row["within"]:
            break
        best = level
    per_core = rows[0].get("answers_per_core") if rows else None
    return {"sustained": best, "answers_per_core": per_core, "levels": rows}


async def scenario_h(run: Run, levels: dict[str, list[int]], chunks: int) -> dict[str, Any]:
    upstream = start_upstream(run, chunks, PACE)
    result: dict[str, Any] = {
        "tokens_per_s": round(1 / PACE),
        "chunks_per_answer": chunks,
        "bound_ms": BOUND_MS,
    }
    try:
        relays, note = await start_relays(run, upstream, modes=("upstream", "v1", "litellm"))
        if note:
            result["litellm"] = note
        channels = ChatChannels()
        result["relays"] = {}
        for relay in relays:
            if relay.name == "upstream":
                # The floor: the upstream's own lateness, read by this load generator with no relay
                # between them, at the service's first level; on a busy machine it is not zero.
                row = await paced_level(relay, levels["v1"][0], chunks, channels, "/health")
                result["upstream_alone"] = row
                sys.stderr.write(f"bench: h upstream alone: {row}\n")
                continue
            if relay.name not in levels:
                continue
            path = "/health/liveliness" if relay.name == "litellm" else "/health/live"
            result["relays"][relay.name] = await sustained(relay, levels[relay.name], chunks, channels, path)
    finally:
        run.stop_all()
    return result
