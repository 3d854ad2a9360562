"""Scenario b on a Redis Cluster (issue #7): chunk throughput with sharded PubSub, against the client
ceiling measured on the same cluster in the same run (redis-py's cluster pipeline SPUBLISHing the same
events from one process). Each side's CPU per chunk is read from the kernel's per-process counters too:
on a busy machine the rates swing with what else runs, the CPU each chunk costs much less.

`python -m bench.cluster [--smoke]` starts three redis-server masters joined by `redis-cli --cluster
create` (testkit's `ClusterServers`, as the tests use), counts the chunks delivered to sharded
subscribers on every node, prints the figures and writes them to `bench/results/cluster.json`
(`cluster-smoke.json` for a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import hiredis
import httpx
import orjson
import uvloop
from redis.crc import key_slot

from bench.processes import ROOT, RedisServer, Server
from bench.scenarios import ChunkCounter, chunk_rate, publish_ceiling, rate_ratio
from testkit.topologies import ClusterServers

RESULTS = ROOT / "bench" / "results"


class ShardedCounter(asyncio.Protocol):
    """SSUBSCRIBEs one node to the given channels (one command per channel: a shard channel names one
    slot) and passes every `smessage` to `on_message(receipt_time, channel, data)`."""

    def __init__(self, on_message: Callable[[float, bytes, bytes], None], expected: int) -> None:
        self._reader = hiredis.Reader()
        self._on_message = on_message
        self._expected = expected
        self._transport: asyncio.Transport | None = None
        self.subscribed = asyncio.get_running_loop().create_future()
        self._confirmed = 0

    @classmethod
    async def open(
        cls, port: int, channels: list[str], on_message: Callable[[float, bytes, bytes], None]
    ) -> ShardedCounter:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(lambda: cls(on_message, len(channels)), "127.0.0.1", port)
        assert protocol._transport is not None
        for channel in channels:
            protocol._transport.write(f"*2\r\n$10\r\nSSUBSCRIBE\r\n${len(channel)}\r\n{channel}\r\n".encode())
        if channels:
            await protocol.subscribed
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            assert isinstance(reply, list)
            if reply[0] == b"smessage":
                self._on_message(now, reply[1], reply[2])
            elif reply[0] == b"ssubscribe":
                self._confirmed += 1
                if self._confirmed == self._expected and not self.subscribed.done():
                    self.subscribed.set_result(None)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def slot_owners(node: RedisServer) -> list[tuple[int, int, int]]:
    """(first slot, last slot, port) for every slot range of the cluster."""
    lines = [line for line in node.cli("CLUSTER", "SLOTS").splitlines() if line.strip()]
    # redis-cli prints each range as: first, last, then the master's ip, port and id.
    return [(int(lines[i]), int(lines[i + 1]), int(lines[i + 3])) for i in range(0, len(lines), 5)]


async def subscribe_all(
    nodes: list[RedisServer], channels: Iterable[str], counter: ChunkCounter
) -> list[ShardedCounter]:
    owners = slot_owners(nodes[0])
    by_port: dict[int, list[str]] = {node.port: [] for node in nodes}
    for channel in channels:
        slot = key_slot(channel.encode())
        port = next(port for first, last, port in owners if first <= slot <= last)
        by_port[port].append(channel)
    return [await ShardedCounter.open(port, names, counter) for port, names in by_port.items()]


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def per_chunk(seconds: float, chunks: int) -> float:
    return round(seconds / chunks * 1e6, 2)


async def measure(nodes: list[RedisServer], logs: Path, answers: int, chunks: int) -> dict[str, Any]:
    result: dict[str, Any] = {"nodes": len(nodes), "answers": answers, "chunks_per_answer": chunks}

    counter = ChunkCounter()
    counter.expected = answers * chunks
    subscribers = await subscribe_all(nodes, (f"chat:{{ceiling{i}}}" for i in range(answers)), counter)
    try:
        before = children_cpu_seconds()  # the publisher is the only child that ends meanwhile
        result["ceiling"] = await publish_ceiling(counter, nodes[0].port, answers, chunks, "cluster")
        result["ceiling"]["cpu_us_per_chunk"] = per_chunk(children_cpu_seconds() - before, answers * chunks)
    finally:
        for subscriber in subscribers:
            subscriber.close()

    env = {
        "REDIS_URL": f"redis://127.0.0.1:{nodes[0].port}/0",
        "REDIS_CLUSTER": "true",
        "STREAM_DELAY": "0",
        "CHUNK_DELAY": "0",
        "SHUTDOWN_GRACE_SECONDS": "2",
        "BENCH_CHUNKS": str(chunks),
    }
    service = Server("bench.service:create", env, logs / "service-cluster.log")
    service.start()
    counter = ChunkCounter()
    counter.expected = answers * chunks
    subscribers = await subscribe_all(nodes, (f"chat:{{b{n}}}" for n in range(answers)), counter)
    try:
        cpu = service.cpu_seconds()
        limits = httpx.Limits(max_connections=16)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.port}", limits=limits) as client:
            body = {"message": "Stream a long answer", "user_id": "bench"}
            replies = await asyncio.gather(
                *(client.post("/chat", json={**body, "session_id": f"b{n}"}) for n in range(answers))
            )
        assert all(reply.status_code == 202 for reply in replies), {reply.status_code for reply in replies}
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(counter.done.wait(), 180)
        result["service"] = {
            "chunks_per_s": chunk_rate(counter),
            "received": len(counter.times),
            # POSTs included: 200 of them beside 200,000 chunks.
            "cpu_us_per_chunk": per_chunk(service.cpu_seconds() - cpu, answers * chunks),
        }
    finally:
        for subscriber in subscribers:
            subscriber.close()
        service.stop()
    result["ratio"] = rate_ratio(result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a moment's run, to prove it works (CI)")
    args = parser.parse_args()
    answers, chunks = (20, 50) if args.smoke else (200, 1000)
    cluster = ClusterServers()
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as directory:
        try:
            cluster.start()
            started = datetime.now(UTC)
            result = uvloop.run(measure(cluster.nodes, Path(directory), answers, chunks))
        finally:
            cluster.cleanup()
    figures = {"date": started.isoformat(timespec="seconds"), "smoke": args.smoke, "b_cluster": result}
    out = RESULTS / ("cluster-smoke.json" if args.smoke else "cluster.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2) + b"\n")
    sys.stdout.write(
        f"b on a 3-master cluster: service {result['service']['chunks_per_s']} chunks/s, "
        f"ceiling {result['ceiling']['chunks_per_s']} chunks/s, ratio {result['ratio']}; CPU per chunk: "
        f"service {result['service']['cpu_us_per_chunk']} us, "
        f"ceiling {result['ceiling']['cpu_us_per_chunk']} us\n"
        f"figures written to {out.relative_to(ROOT)}\n"
    )


if __name__ == "__main__":
    main()
