"""`MAX_BODY_BYTES`: a request body over the limit is refused with 413 before it is read whole; one that
has not arrived whole within `REQUEST_BODY_TIMEOUT` seconds is refused with 408."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from errors import ServiceError
from protocols.errors import problem_of, render

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodyLimitMiddleware", "BodyTimeout", "PayloadTooLarge"]


class PayloadTooLarge(ServiceError):
    status = 413
    code = "payload_too_large"


class BodyTimeout(ServiceError):
    status = 408
    code = "request_timeout"


class BodyLimitMiddleware:
    """A declared `Content-Length` over the limit is refused before any of the body is read; otherwise
    (chunked bodies, or a length that lies) the bytes are counted as they arrive, at most the limit
    is held, and the request is refused the moment it goes over. A body that trickles in (or never
    comes) is refused after `timeout` seconds: a slow client cannot hold a request open (issue #13, 6).
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(scope, receive, send)
            return
        if scope["method"] in ("GET", "HEAD", "OPTIONS") and declared is None:
            await self.app(scope, receive, send)
            return
        # Read the body here, counting, and hand it on once it is known to fit.
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        break  # the client left: let the app see the disconnect
                    size += len(message.get("body", b""))
                    if size > self.max_bytes:
                        await self._refuse(scope, receive, send)
                        return
                    chunks.append(message.get("body", b""))
                    if not message.get("more_body", False):
                        message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
                        break
        except TimeoutError:
            error = BodyTimeout(
                f"The request body did not arrive within {self.timeout:g} seconds",
                headers={"Connection": "close"},
            )
            await render(scope["path"], problem_of(error))(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return message
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = PayloadTooLarge(
            f"The request body is larger than {self.max_bytes} bytes",
            # The rest of the body is not read: the connection cannot be reused.
            headers={"Connection": "close"},
        )
        await render(scope["path"], problem_of(error))(scope, receive, send)
