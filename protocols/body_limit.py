"""`MAX_BODY_BYTES`: a request body over the limit is refused with 413 before it is read whole; one that
has not arrived whole within `REQUEST_BODY_TIMEOUT` seconds is refused with 408. A declared
`Content-Length` over the limit is refused before any of the body is read (`protocols/edge.py`); other
bodies are counted as they arrive (`read_body`)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from errors import ServiceError

if TYPE_CHECKING:
    from starlette.types import Message, Receive

__all__ = ["BodyTimeout", "PayloadTooLarge", "read_body", "replaying", "too_large"]


class PayloadTooLarge(ServiceError):
    status = 413
    code = "payload_too_large"


class BodyTimeout(ServiceError):
    status = 408
    code = "request_timeout"


def too_large(max_bytes: int) -> PayloadTooLarge:
    """The 413 of a body over `max_bytes`. The rest of it is not read: the connection cannot be reused."""
    return PayloadTooLarge(
        f"The request body is larger than {max_bytes} bytes", headers={"Connection": "close"}
    )


async def read_body(receive: Receive, max_bytes: int, within: float) -> Message:
    """The request's body as one `http.request` message, counted as it arrives: at most `max_bytes` are
    held, and `PayloadTooLarge` is raised the moment the body goes over (chunked bodies, or a length
    that lies). A body that trickles in (or never comes) raises `BodyTimeout` after `within` seconds:
    a slow client cannot hold a request open (issue #13, 6). A client that leaves before its body is
    whole gets its disconnect back, for the route to see."""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(within):
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return message
                size += len(message.get("body", b""))
                if size > max_bytes:
                    raise too_large(max_bytes)
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
    except TimeoutError:
        raise BodyTimeout(
            f"The request body did not arrive within {within:g} seconds", headers={"Connection": "close"}
        ) from None


def replaying(first: Message, receive: Receive) -> Receive:
    """A `receive` that gives `first` (the body `read_body` read) again, then whatever comes next."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return first
        return await receive()

    return replay
