"""ARCHIVER=process: the archiver in a child process of each instance (issue #15).

Storing turns in SQL is CPU on whichever event loop does it: reading a batch from the outbox, building
its rows and statements, the driver's work. As a task on the service's loop (ARCHIVER=loop, the
default) it delays the answers that start meanwhile by a millisecond or two; in a process of its own it
takes none of their time. The child runs the same `Archiver` as a consumer of its own in the outbox's
group, so a child that dies leaves its entries to be re-read by the next one (or claimed by another
instance after ARCHIVE_CLAIM_SECONDS), as a killed instance does.

The parent owns the child: it starts it, restarts it with a growing pause when it exits, and ends it
at shutdown by closing its stdin (a parent that dies closes it as well). The child reports its state
as one JSON line on stdout twice a second; the parent keeps the `/health` and `/metrics` figures from
those lines. Settings go to the child on its stdin, never on its command line or in its environment,
since they may hold passwords.

    python -m archiver_process    # the child: a JSON line of settings, then `wake` or EOF on stdin
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from archiver import ArchiveMetrics, Archiver, ArchiveState
from config import Settings
from logs import configure_logging
from records.database import create_engine
from records.store import ConversationStore
from redis_client import KeySpace, create_redis
from stores.outbox import Outbox

__all__ = ["ArchiverProcess"]

logger = logging.getLogger("archiver_process")  # also when run as `-m`, not "__main__"

# What the child needs of the settings: where Redis and the record are, the archive's own, logging.
CHILD_SETTINGS = ("redis_", "database_", "archive_", "conversation_retention_days", "log_")
REPORT_EVERY = 0.5
# The child's scheduling priority below the service's (the kernel's `nice` increment).
NICENESS = 10
# How long a child may take to end at shutdown (its cycle, its connections) before it is killed.
CLOSE_SECONDS = 10.0
ROOT = Path(__file__).resolve().parent


def child_settings(settings: Settings) -> dict[str, Any]:
    """The settings the child builds its own from, secrets in the clear (they go through a pipe)."""
    values: dict[str, Any] = {}
    for name in Settings.model_fields:
        if name.startswith(CHILD_SETTINGS):
            value = getattr(settings, name)
            values[name] = value.get_secret_value() if isinstance(value, SecretStr) else value
    return values


def child_environment() -> dict[str, str]:
    """This process's environment, with this project importable, and without the service's settings
    (the child's are the parent's, from its stdin: nothing else of the environment may change or fail
    them) or the metrics directory (the parent counts the child's figures: a child writing them there
    too would count them twice)."""
    environment = {
        name: value for name, value in os.environ.items() if name.lower() not in Settings.model_fields
    }
    environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
    environment.pop("prometheus_multiproc_dir", None)
    path = environment.get("PYTHONPATH")
    environment["PYTHONPATH"] = f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)
    return environment


class ArchiverProcess:
    """Owned by the services builder in place of an `Archiver`: `start()` at start-up, `close()` at
    shutdown. `state` and the metrics follow the child's reports."""

    def __init__(
        self,
        outbox: Outbox,
        registry: CollectorRegistry,
        settings: Settings,
        *,
        model: str | None,
        max_pause: float = 5.0,
    ) -> None:
        self._outbox = outbox
        self._config = json.dumps({"settings": child_settings(settings), "model": model}).encode() + b"\n"
        self._max_pause = max_pause
        self.metrics = ArchiveMetrics(registry)
        self.state = ArchiveState()
        self.starts = 0  # children started, for tests and logs
        self._child: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()

    @property
    def outbox(self) -> Outbox:
        return self._outbox

    @property
    def pid(self) -> int | None:
        """The running child's process id, if one runs."""
        return self._child.pid if self._child is not None and self._child.returncode is None else None

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name="archiver-process")

    async def close(self) -> None:
        self._closing.set()
        child = self._child
        if child is not None and child.returncode is None and child.stdin is not None:
            child.stdin.close()  # EOF: the child closes its archiver and exits
            try:
                async with asyncio.timeout(CLOSE_SECONDS):
                    await child.wait()
            except TimeoutError:
                logger.warning("the archiver process did not end within %gs: killed", CLOSE_SECONDS)
                _kill(child)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def wake(self) -> None:
        """Have the child run its next cycle now (tests and the benchmark)."""
        child = self._child
        if child is not None and child.returncode is None and child.stdin is not None:
            child.stdin.write(b"wake\n")

    async def _supervise(self) -> None:
        pause = 0.1
        while not self._closing.is_set():
            try:
                reason = f"the archiver process exited ({await self._run_child()})"
            except OSError as error:  # the interpreter could not be started
                reason = f"the archiver process could not start: {error}"
            if self._closing.is_set():
                return
            logger.warning("%s; starting another in %gs", reason, pause)
            self.state.error = reason
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self._closing.wait()
            pause = min(pause * 2, self._max_pause)

    async def _run_child(self) -> int:
        """Start a child, keep its reports until its stdout ends, and return its exit status."""
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "archiver_process",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=child_environment(),
        )
        self._child = child
        self.starts += 1
        assert child.stdin is not None
        assert child.stdout is not None
        try:
            child.stdin.write(self._config)
            seen = ArchiveState()
            while line := await child.stdout.readline():
                try:
                    seen = self._reported(json.loads(line), seen)
                except (ValueError, TypeError):  # not a report: something in the child printed
                    logger.warning("the archiver process wrote a line that is not a report")
            return await child.wait()
        finally:
            if child.returncode is None:  # cancelled: the owner is closing, or something broke here
                _kill(child)
                await child.wait()

    def _reported(self, report: dict[str, Any], seen: ArchiveState) -> ArchiveState:
        """Take a child's report into `state` and the metrics; counts are the child's since it started."""
        now, state = ArchiveState(**report), self.state
        archived, failures = max(0, now.archived - seen.archived), max(0, now.failures - seen.failures)
        set_aside = max(0, now.set_aside - seen.set_aside)
        self.metrics.archived.inc(archived)
        self.metrics.failures.inc(failures)
        self.metrics.set_aside.inc(set_aside)
        state.archived, state.failures = state.archived + archived, state.failures + failures
        state.set_aside += set_aside
        state.backlog, state.oldest_seconds, state.error = now.backlog, now.oldest_seconds, now.error
        self.metrics.measured(state)
        return now


def _kill(child: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):  # it has just exited
        child.kill()


# --- The child -------------------------------------------------------------------------------------


async def _pipes() -> tuple[asyncio.StreamReader, asyncio.WriteTransport]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    writer, _ = await loop.connect_write_pipe(asyncio.Protocol, sys.stdout)
    return reader, writer


def _report(archiver: Archiver, out: asyncio.WriteTransport) -> None:
    """The archiver's state as one JSON line: the parent reads it back as an `ArchiveState`."""
    out.write(json.dumps(dataclasses.asdict(archiver.state)).encode() + b"\n")


async def _reporting(archiver: Archiver, out: asyncio.WriteTransport) -> None:
    while True:
        _report(archiver, out)
        await asyncio.sleep(REPORT_EVERY)


async def child() -> None:
    """Archive until stdin ends: its first line is the settings, then `wake` lines."""
    commands, out = await _pipes()
    config = json.loads(await commands.readline())
    settings = Settings(_env_file=None, **config["settings"])
    configure_logging(settings)
    async with contextlib.AsyncExitStack() as stack:
        redis = create_redis(settings)
        stack.push_async_callback(redis.aclose)
        engine = create_engine(settings)
        stack.push_async_callback(engine.dispose)
        keys = KeySpace(settings.redis_key_prefix, sharded=settings.redis_cluster)
        outbox = Outbox(redis, keys, timeout=settings.redis_timeout)
        store = ConversationStore(engine, model=config["model"])
        archiver = Archiver.configured(outbox, store, CollectorRegistry(), settings)
        archiver.start()
        stack.push_async_callback(archiver.close)
        reporting = asyncio.create_task(_reporting(archiver, out), name="archiver-reports")
        logger.info("archiver process %d started: %s", os.getpid(), settings.database_location())
        try:
            while line := await commands.readline():
                if line.strip() == b"wake":
                    archiver.wake()
        finally:
            reporting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporting
    _report(archiver, out)  # the last figures, after its last cycle
    out.close()


def main() -> None:
    # Ctrl-C reaches the whole process group: the parent ends this child (it closes its stdin).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Background work: where cores are short, the streams go first (an idle core is used all the same).
    os.nice(NICENESS)
    asyncio.run(child())


if __name__ == "__main__":
    main()
