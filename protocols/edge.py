"""The one middleware layer in front of the routes: what every HTTP request goes through.

In one pure-ASGI layer, for every request (issue #14, "a leaner POST /chat"; these were six layers, each
with its own frame and its own wrapper around `send`):
- its request id: the client's `X-Request-ID` when it is a plain token, a new one otherwise; in every log
  line of the request (asgi-correlation-id's context variable and log filter) and in the response;
- its body within `MAX_BODY_BYTES` and `REQUEST_BODY_TIMEOUT` (`protocols/body_limit.py`);
- a crash answered with the error table's 500, in the path's protocol, never a traceback;
- one access log line, and the request counted and timed in the metrics by route template;
- the docs pages' content policy;
- an event stream run from here once its route has returned (`protocols/sse.py`): the router's, FastAPI's
  and the endpoint's frames are freed while the client stays connected.
CORS, when configured, is Starlette's own layer inside this one.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from asgi_correlation_id import correlation_id

from logs import log_request, valid_request_id
from protocols.body_limit import BodyTimeout, PayloadTooLarge, read_body, replaying, too_large
from protocols.errors import problem_of, render
from protocols.sse import HANDOFF

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from metrics import Metrics
    from protocols.sse import EventStreamResponse

__all__ = ["Edge"]

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = b"x-request-id"


class Edge:
    """Request id, body limit, crash answer, access log, metrics, path headers and the stream handoff,
    in one layer (see the module's docstring). `crash_response(path)` is the 500 in the path's protocol;
    `path_headers` are added to the responses of those exact paths."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        crash_response: Callable[[str], ASGIApp],
        max_body_bytes: int,
        body_timeout: float = 30.0,
        path_headers: Mapping[str, list[tuple[bytes, bytes]]] | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.crash_response = crash_response
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self.path_headers = dict(path_headers or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id, declared = self._request_headers(scope)
        correlation_id.set(request_id)
        added = [(REQUEST_ID_HEADER, request_id.encode()), *self.path_headers.get(scope["path"], ())]
        status = 500
        response_started = streaming = False
        error_body: bytes | None = None

        async def edge_send(message: Message) -> None:
            nonlocal status, response_started, streaming, error_body
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                headers = [*message.get("headers", ()), *added]
                streaming = any(
                    name == b"content-type" and value.startswith(b"text/event-stream")
                    for name, value in headers
                )
                error_body = b"" if status >= 400 else None
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body" and error_body is not None:
                error_body = _keep_start(error_body, message.get("body", b""))
            await send(message)

        try:
            body = await self._body(scope, receive, declared)
            if isinstance(body, PayloadTooLarge | BodyTimeout):
                await render(scope["path"], problem_of(body))(scope, receive, edge_send)
            elif stream := await self._route(scope, body or receive, edge_send):
                # Its headers went through `edge_send`; its events (thousands, to as many clients) go
                # straight out, unless it is an error whose body the metrics read.
                await stream.run(body or receive, send if error_body is None else edge_send)
        except Exception:
            logger.exception("unhandled error on %s %s", scope["method"], scope["path"])
            status = 500
            if not response_started:
                await self.crash_response(scope["path"])(scope, receive, edge_send)
        finally:
            seconds = time.perf_counter() - started
            log_request(scope["method"], scope["path"], status, seconds)
            self.metrics.observe_request(scope, status, seconds, streaming=streaming, error_body=error_body)

    def _request_headers(self, scope: Scope) -> tuple[str, bytes | None]:
        """The request's id (the client's when it is a plain token; a new one otherwise, which also
        replaces the client's in the scope) and its declared `Content-Length`, in one pass."""
        sent: str | None = None
        declared: bytes | None = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER and sent is None:
                sent = value.decode("latin-1")
            elif name == b"content-length":
                declared = value
        if sent and valid_request_id(sent):
            return sent, declared
        request_id = uuid.uuid4().hex
        if sent:
            logger.warning("replaced a request id that is not a plain token with %s", request_id)
        scope["headers"] = [
            *(header for header in scope["headers"] if header[0] != REQUEST_ID_HEADER),
            (REQUEST_ID_HEADER, request_id.encode()),
        ]
        return request_id, declared

    async def _body(
        self, scope: Scope, receive: Receive, declared: bytes | None
    ) -> Receive | PayloadTooLarge | BodyTimeout | None:
        """None when the route may read the request as it comes (no body); otherwise a `receive` that
        gives the whole body, read here within the limits, or the error that refuses it."""
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            return too_large(self.max_body_bytes)
        if declared is None and scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return None
        try:
            message = await read_body(receive, self.max_body_bytes, self.body_timeout)
        except (PayloadTooLarge, BodyTimeout) as error:
            return error
        return replaying(message, receive)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> EventStreamResponse | None:
        """Run the routes with a copy of the scope. An event stream whose headers they sent is handed
        over and returned, to be run from here once they have returned and all they held is freed."""
        streams: list[EventStreamResponse] = []
        inner = {**scope, HANDOFF: streams.append}
        await self.app(inner, receive, send)
        for name in ("route", "endpoint", "path_params"):  # the metrics' route label
            if name in inner:
                scope[name] = inner[name]
        del inner
        return streams.pop() if streams else None


def _keep_start(kept: bytes, more: bytes) -> bytes:
    """An error body's first 64 KB at most: its code is at its start (for the metrics)."""
    return kept + more if len(kept) < 65_536 else kept
