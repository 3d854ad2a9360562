"""The servers a benchmark run starts: the service under test and its references, under uvicorn with
production settings. Its redis-server and the process plumbing (free ports, waiting until a server
answers, CPU accounting) come from `testkit`, which the tests use too.

Each is started on a free loopback port and always stopped, however the run ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

from testkit.processes import ROOT, ServerProcess
from testkit.redis_server import RedisServer

__all__ = ["ROOT", "RedisServer", "Server", "bench_redis"]


def bench_redis(directory: Path) -> RedisServer:
    """The run's redis-server, in the run's folder, with room for every client a scenario opens."""
    return RedisServer("--maxclients", "10000", directory=directory)


class Server(ServerProcess):
    """uvicorn serving an app factory with production settings: uvloop, httptools, no access log of
    uvicorn's own (the service logs each request itself, at INFO, to a file here)."""

    def __init__(self, target: str, env: dict[str, str], log: Path, *, workers: int = 1) -> None:
        super().__init__(log)
        self.target = target
        self.env = env
        self.workers = workers

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "uvicorn", "--factory", self.target]
        profile = os.environ.get("BENCH_PROFILE")  # a folder: record each server with py-spy there
        if profile:
            name = f"{self.target.split(':')[0]}-{self.port}.txt"
            command = [
                shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy")),
                "record", "--format", "raw", "-r", "250", "--nonblocking", "-o", f"{profile}/{name}",
                "--",
                *command,
            ]  # fmt: skip
        return [
            *command,
            "--host", "127.0.0.1", "--port", str(self.port), "--loop", "uvloop", "--http", "httptools",
            "--no-access-log", "--no-proxy-headers", "--log-level", "warning",
            "--workers", str(self.workers),
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        return {**os.environ, "LOG_LEVEL": "INFO", "LOG_FORMAT": "text", **self.env}

    def start(self, ready: str = "", timeout: float = 30) -> None:
        """Start it and wait until it answers: /health for the service, /docs for a reference."""
        path = ready or ("/health" if self.target.startswith("bench.service") else "/docs")
        super().start(path, timeout)

    def stop(self, sig: signal.Signals = signal.SIGTERM, grace: float = 20) -> None:
        # py-spy writes its profile on SIGINT and passes it on to the server
        super().stop(signal.SIGINT if os.environ.get("BENCH_PROFILE") else sig, grace)
