"""Any ASGI app served by uvicorn on a free loopback port, in a thread of the test's own process."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from starlette.types import ASGIApp

from testkit.waiting import eventually_sync

__all__ = ["serve"]


def _started(server: uvicorn.Server, thread: threading.Thread) -> bool:
    if not thread.is_alive():
        raise RuntimeError("the test server's thread ended before it started")
    return server.started


@contextmanager
def serve(app: ASGIApp, *, lifespan: str = "on") -> Iterator[str]:
    """Serve the app with uvicorn on a free loopback port, in a thread with its own event loop.

    Yields the base URL. A real socket, so synchronous clients can talk to it from the test's thread.
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        lifespan=lifespan,  # type: ignore[arg-type]
        log_config=None,
        access_log=False,
        interface="asgi3",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}")
    thread.start()
    try:
        # A budget, not a wait: the app's start (its migrations' commits among others) has taken over
        # ten seconds on a loaded two-core CI machine.
        eventually_sync(lambda: _started(server, thread), f"uvicorn serves on port {port}", timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
