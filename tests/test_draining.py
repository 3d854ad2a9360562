"""Whether uvicorn has begun to shut down, as the stream hub asks it (draining.py)."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
import uvicorn
from fastapi import FastAPI

from draining import server_draining


@pytest.fixture
def sigterm_handler() -> Iterator[None]:
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


def test_not_draining_outside_uvicorn(sigterm_handler: None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    assert server_draining() is False


def test_draining_once_the_server_handling_sigterm_is_exiting(sigterm_handler: None) -> None:
    # uvicorn installs its Server.handle_exit for SIGTERM while it serves; a signal sets should_exit.
    server = uvicorn.Server(uvicorn.Config(FastAPI()))
    signal.signal(signal.SIGTERM, server.handle_exit)
    assert server_draining() is False
    server.handle_exit(signal.SIGTERM, None)
    assert server_draining() is True
