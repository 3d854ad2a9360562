"""A real redis-server on a free loopback port, as redis-py's own suite runs against one."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from testkit.ports import free_port
from testkit.prerequisites import need
from testkit.waiting import eventually_sync

__all__ = ["RedisServer", "start_redis"]


class RedisServer:
    """One redis-server process, owned by a test, a session or a benchmark run.

    It runs from `directory` (a temporary folder of its own when none is given, removed by `cleanup`),
    saves nothing to disk unless `extra_args` say so, and can be stopped and started again on its port.
    """

    def __init__(
        self,
        *extra_args: str,
        password: str | None = None,
        port: int | None = None,
        directory: Path | None = None,
    ) -> None:
        self.port = port or free_port()
        self.extra_args = extra_args
        self.password = password
        self._owns_directory = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="redis-test-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30) -> None:
        """Start it and wait until it answers PING."""
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.directory),
                "--logfile", "redis.log",
                *(["--requirepass", self.password] if self.password else []),
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        eventually_sync(
            self._answers,
            "redis-server answers PING",
            timeout=timeout,
            ignoring=(subprocess.SubprocessError,),
        )

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            log = (self.directory / "redis.log").read_text(errors="replace").strip().splitlines()
            raise RuntimeError(f"redis-server exited with {self.process.returncode}: {log[-1:]}")
        return self.cli("PING") == "PONG"

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (or SIGKILL) it and wait for it to exit; `start` brings it back on the same port."""
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        self.process.wait(timeout=10)
        self.process = None

    def cli(self, *args: str) -> str:
        """Run one `redis-cli` command against it; its output, stripped."""
        # REDISCLI_AUTH rather than -a: the password stays off the command line and its warning.
        env = {**os.environ, "REDISCLI_AUTH": self.password} if self.password else None
        result = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
            env=env,
        )
        return result.stdout.strip()

    def info(self, section: str, field: str) -> str:
        """One field of `INFO section`."""
        for line in self.cli("INFO", section).splitlines():
            if line.startswith(f"{field}:"):
                return line.split(":", 1)[1].strip()
        raise KeyError(field)

    def cpu_seconds(self) -> float:
        return float(self.info("cpu", "used_cpu_sys")) + float(self.info("cpu", "used_cpu_user"))

    def connected_clients(self) -> int:
        return int(self.info("clients", "connected_clients"))

    def version(self) -> str:
        return self.info("server", "redis_version")

    def cleanup(self) -> None:
        """Kill it and remove its folder if it made one."""
        self.stop(kill=True)
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)


def start_redis(*extra_args: str, password: str | None = None) -> RedisServer:
    """Start a redis-server for a test; skip the test (fail it in CI) when one cannot run."""
    need(shutil.which("redis-server") is not None, "redis-server is not installed")
    server = RedisServer(*extra_args, password=password)
    try:
        server.start()
    except (OSError, RuntimeError, AssertionError) as error:
        server.cleanup()
        need(False, f"cannot start redis-server: {error}")
    return server
