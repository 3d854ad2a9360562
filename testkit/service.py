"""The service as a real process (`python app.py`, or uvicorn with several workers), for the tests where
the network, signals or processes matter."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from config import Settings
from testkit.processes import ROOT, ServerProcess

__all__ = ["SETTINGS_VARIABLES", "ServiceProcess", "service_environment"]

# Every variable the service reads: cleared for tests so the developer's environment cannot leak in.
SETTINGS_VARIABLES = frozenset(name.upper() for name in Settings.model_fields)


def service_environment(**variables: str) -> dict[str, str]:
    """The process environment for a service child: ours without the service's variables."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name.upper() not in SETTINGS_VARIABLES and not name.startswith("PROMETHEUS_")
    }
    env.update(variables)
    return env


class ServiceProcess(ServerProcess):
    """The service on a free port, run from an empty folder (no `.env` of the checkout is read) and
    logging to a file there. `workers` above 1 runs uvicorn's own multi-process server."""

    def __init__(self, variables: Mapping[str, str] | None = None, *, workers: int = 1) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="service-"))
        super().__init__(self.folder / "service.log")
        self.env = service_environment(HOST="127.0.0.1", PORT=str(self.port), **(variables or {}))
        self.workers = workers

    def command(self) -> list[str]:
        if self.workers == 1:
            return [sys.executable, str(ROOT / "app.py")]
        return [
            sys.executable, "-m", "uvicorn", "app:create_app", "--factory", "--app-dir", str(ROOT),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers),
            "--no-access-log",
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        return self.env

    def directory(self) -> Path:
        return self.folder

    def start(self, ready: str = "/health/live", timeout: float = 60) -> None:
        super().start(ready, timeout)

    @property
    def stderr(self) -> str:
        return self.output()

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.folder, ignore_errors=True)
