"""Whether the uvicorn server running this process has begun to shut down.

uvicorn tells an application nothing when a shutdown begins: it stops accepting connections, then waits
for every open response to end before it runs the lifespan's shutdown, and a Server-Sent Events response
never ends by itself. The stream hub asks `server_draining()` as it polls and closes its listeners once
it is true. uvicorn's SIGTERM handler is its `Server.handle_exit`, a bound method, and the server's
public `should_exit` says whether it is exiting: this module is the one place that looks there (the
service used to rely on sse-starlette's `AppStatus`, a global it set by patching uvicorn at import).
"""

from __future__ import annotations

import signal

import uvicorn

__all__ = ["server_draining"]


def server_draining() -> bool:
    """True once the uvicorn server of this process (any worker's own) is shutting down."""
    server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    return isinstance(server, uvicorn.Server) and server.should_exit
