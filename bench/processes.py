"""The processes a benchmark run owns: its redis-server, the service under test and its references.

Each is started on a free loopback port and always stopped, however the run ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            return [int(child) for child in children.read().split()]
    except OSError:
        return []


class RedisServer:
    def __init__(self, directory: Path, *extra_args: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.directory = directory
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--maxclients",
                "10000",
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.cli("PING") == "PONG":
                    return
            except subprocess.SubprocessError:
                pass
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start within 10s")

    def cli(self, *args: str) -> str:
        result = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True, timeout=10, check=True
        )
        return result.stdout.strip()

    def info(self, section: str, field: str) -> str:
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

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


class Server:
    """uvicorn serving an app factory with production settings: uvloop, httptools, no access log of
    uvicorn's own (the service logs each request itself, at INFO, to a file here)."""

    def __init__(self, target: str, env: dict[str, str], log: Path, *, workers: int = 1) -> None:
        self.port = free_port()
        self.target = target
        self.env = env
        self.workers = workers
        self.log_path = log
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        self._log = self.log_path.open("ab")
        command = [sys.executable, "-m", "uvicorn", "--factory", self.target]
        profile = os.environ.get("BENCH_PROFILE")  # a folder: record each server with py-spy there
        if profile:
            name = f"{self.target.split(':')[0]}-{self.port}.txt"
            command = [
                shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy")),
                "record",
                "--format",
                "raw",
                "-r",
                "250",
                "--nonblocking",
                "-o",
                f"{profile}/{name}",
                "--",
                *command,
            ]
        command += [
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
        ]
        command += [
            "--no-access-log",
            "--no-proxy-headers",
            "--log-level",
            "warning",
            "--workers",
            str(self.workers),
        ]
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, "LOG_LEVEL": "INFO", "LOG_FORMAT": "text", **self.env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        path = "/health" if self.target.startswith("bench.service") else "/docs"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.target} exited with {self.process.returncode}; see {self.log_path}"
                )
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.target} did not start within 30s; see {self.log_path}")

    def cpu_seconds(self) -> float:
        """CPU time used so far by the server and its worker processes."""
        return sum(_cpu_seconds(pid) for pid in [self.pid, *_children(self.pid)])

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                # py-spy writes its profile on SIGINT and passes it on to the server
                self.process.send_signal(signal.SIGINT if os.environ.get("BENCH_PROFILE") else signal.SIGTERM)
                try:
                    self.process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None
