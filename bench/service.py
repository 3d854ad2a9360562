"""The service as `make bench` runs it: the real application, configured from the environment like
`python app.py`, with two additions that only the benchmark needs.

- `BENCH_CHUNKS=N` replaces the simulated model with one that streams N fixed chunks (paced by
  `STREAM_DELAY` per chunk when set), so a scenario can ask for one-chunk answers (the request path) or
  long ones (chunk throughput) without paying for many POSTs.
- `GET /_bench/stats` reports the process's event-loop lag since `POST /_bench/lag`, and its memory.

Run it with `uvicorn --factory bench.service:create`.
"""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import time
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from fastapi import FastAPI

from app import create_app
from config import get_settings
from conversation import ConversationMessage
from generation import GenerationOptions
from logs import configure_logging
from parts import Delta
from providers.base import AnswerSource, Completion

LAG_INTERVAL = 0.005


class FixedAnswerSource(AnswerSource):
    """Streams `chunks` short chunks, `delay` seconds apart."""

    name = "bench-fixed"
    model = "bench-fixed"

    def __init__(self, chunks: int, delay: float) -> None:
        self.chunks = chunks
        self.delay = delay

    async def stream(
        self,
        conversation: Sequence[ConversationMessage],
        options: GenerationOptions,
        completion: Completion,
    ) -> AsyncGenerator[Delta, None]:
        for index in range(self.chunks):
            if self.delay:
                await asyncio.sleep(self.delay)
            yield f"word{index % 10} "
        completion.finish_reason = "stop"


class LagMonitor:
    """How late the event loop runs a timer: the time a ready callback waits behind the others."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self.gc_pauses: list[tuple[int, float]] = []
        self._gc_started = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif len(self.gc_pauses) < 1_000_000:
            self.gc_pauses.append((info["generation"], time.perf_counter() - self._gc_started))

    def restart(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.samples = []
        self.gc_pauses = []
        self._task = asyncio.create_task(self._run(), name="bench-lag-monitor")

    async def _run(self) -> None:
        while len(self.samples) < 1_000_000:
            started = time.perf_counter()
            await asyncio.sleep(LAG_INTERVAL)
            self.samples.append(time.perf_counter() - started - LAG_INTERVAL)

    def summary(self) -> dict[str, float]:
        if not self.samples:
            return {"samples": 0}
        ordered = sorted(self.samples)

        def at(q: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

        full = [pause for generation, pause in self.gc_pauses if generation == 2]
        return {
            "samples": len(ordered),
            "p50_ms": at(0.5),
            "p99_ms": at(0.99),
            "max_ms": at(1.0),
            "gc_collections": len(self.gc_pauses),
            "gc_max_ms": round(max((pause for _, pause in self.gc_pauses), default=0) * 1000, 3),
            "gc_full_collections": len(full),
            "gc_full_total_ms": round(sum(full) * 1000, 3),
        }


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def create() -> FastAPI:
    settings = get_settings()
    configure_logging(settings)
    chunks = int(os.environ.get("BENCH_CHUNKS", "0"))
    source = FixedAnswerSource(chunks, settings.stream_delay) if chunks else None
    app = create_app(settings, source=source)
    monitor = LagMonitor()

    @app.post("/_bench/lag", include_in_schema=False)
    async def restart_lag() -> dict[str, str]:
        monitor.restart()
        return {"status": "restarted"}

    @app.get("/_bench/stats", include_in_schema=False)
    async def stats(collect: bool = False) -> dict[str, Any]:
        if collect:
            gc.collect()
        return {"lag": monitor.summary(), "rss_bytes": rss_bytes(), "tasks": len(asyncio.all_tasks())}

    if os.environ.get("BENCH_TRACEMALLOC"):  # for finding where memory goes: not used by the scenarios
        import tracemalloc

        tracemalloc.start(int(os.environ["BENCH_TRACEMALLOC"]))
        snapshots: list[tracemalloc.Snapshot] = []

        @app.get("/_bench/allocations", include_in_schema=False)
        async def allocations(group: str = "traceback") -> list[str]:
            gc.collect()
            snapshots.append(tracemalloc.take_snapshot())
            if len(snapshots) < 2:
                return []
            diff = snapshots[-1].compare_to(snapshots[-2], "traceback" if group == "traceback" else "lineno")
            lines = []
            for stat in diff[:40]:
                lines.append(f"{stat.size_diff / 1024:.0f} KiB in {stat.count_diff} blocks")
                lines += [f"    {frame}" for frame in stat.traceback.format()[-12:]]
            return lines

    return app
