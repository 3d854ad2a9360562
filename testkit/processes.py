"""A server as a child process on a free loopback port: started, waited for until it answers, measured
(CPU time, memory) and stopped, however the test or benchmark run ends."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import httpx

from testkit.ports import free_port
from testkit.waiting import eventually_sync

__all__ = ["ROOT", "ServerProcess", "child_pids", "cpu_seconds"]

ROOT = Path(__file__).resolve().parent.parent  # the checkout: where app.py and bench/ live


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def child_pids(pid: int) -> list[int]:
    """The processes `pid` started (uvicorn's workers, for one), from /proc."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            return [int(child) for child in children.read().split()]
    except OSError:
        return []


class ServerProcess:
    """An HTTP server process on `port`, with stdout and stderr in `log_path`.

    Subclasses say what to run (`command`), with which environment and from where; `start` waits until
    a path answers 200, or fails with the log when the process exits or the time is up.
    """

    def __init__(self, log_path: Path, *, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def directory(self) -> Path:
        return ROOT

    def start(self, ready: str = "/health", timeout: float = 60) -> None:
        """Start the process and wait until `ready` answers 200."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.directory(),
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own process group: `kill` ends the workers it started too, never orphans them.
                start_new_session=True,
            )
        eventually_sync(
            lambda: self._answers(ready),
            f"{self.url}{ready} answers 200",
            timeout=timeout,
            interval=0.05,
            ignoring=(httpx.TransportError,),
        )

    def _answers(self, path: str) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.output()}")
        return httpx.get(f"{self.url}{path}", timeout=1).status_code == 200

    def output(self) -> str:
        """Everything the process has written so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def worker_pids(self) -> list[int]:
        """The processes this one started: uvicorn's workers when it runs several."""
        return child_pids(self.pid)

    def cpu_seconds(self) -> float:
        """CPU time used so far by the process and the processes it started."""
        return sum(cpu_seconds(pid) for pid in [self.pid, *self.worker_pids()])

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def terminate(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Send SIGTERM (or `sig`) if it still runs; `wait` for it to exit."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the process and every process it started (its uvicorn workers)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(timeout=10)

    def stop(self, sig: signal.Signals = signal.SIGTERM, grace: float = 20) -> None:
        """Ask it to stop; kill it if it has not within `grace` seconds."""
        if self.process is None:
            return
        self.terminate(sig)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.kill()
        # Whatever of its group outlived it: uvicorn's workers, when the signal reached only the process
        # in front of them (py-spy, under the benchmark's BENCH_PROFILE), went on running and loading
        # the machine. The group's id stays taken while any of them lives, so this reaches only them.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process = None
