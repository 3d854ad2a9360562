"""`POST /chat` answered without FastAPI's per-request machinery: the busiest route, on its own path.

For a route this small, FastAPI's routing, dependency solving and response validation cost more than
the route's own work (issue #15 and #16's bench: a sixth of the service's CPU per `POST /chat` was
FastAPI's). This layer, the innermost middleware (under the edge, inside CORS), answers `POST /chat`
itself when it can answer exactly as the route would: a JSON body that `ChatRequest` validates, from a
caller whose key admits them (or on an open service). The work is the route's own (`accept_chat`), and
an error goes through the same table (`protocols/errors.py`).

Every other request goes on to the routes, the rest of `POST /chat`'s included (another content type,
a body that is not JSON or does not validate, a missing or wrong key, and every request while the app's
`dependency_overrides` replace some dependency): the route answers it with its `400`, `422` or `401`,
as it always did. Nothing was done here by then but reading, so nothing is done
twice. The route stays the one the OpenAPI document describes.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.requests import HTTPConnection
from starlette.responses import Response

from models import ChatRequest
from protocols import native
from protocols.body_limit import replaying
from protocols.deps import key_principal, services_of
from protocols.errors import HANDLED, error_response

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from admission import Principal

__all__ = ["DirectChat", "chat_route"]

PATH = "/chat"


class DirectChat:
    """Answers `POST /chat` as its route does, or passes it on to the route (see the module's docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._route = chat_route()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != PATH
            or scope["method"] != "POST"
            or scope["app"].dependency_overrides  # the route's dependencies replaced: the route answers
        ):
            await self.app(scope, receive, send)
            return
        # The edge has read the whole body within its limits: it is the first message.
        message = await receive()
        replay = replaying(message, receive)
        connection = HTTPConnection(scope)
        caller = await self._caller(connection, message)
        if caller is None:
            await self.app(scope, replay, send)
            return
        request, principal = caller
        scope["route"] = self._route  # the metrics' label: the route the router would have chosen
        try:
            accepted, started = await native.accept_chat(request, principal, services_of(connection))
        except HANDLED as error:
            response: Response = error_response(PATH, error)
        else:
            response = Response(
                accepted.model_dump_json(exclude_none=True),
                status_code=202 if started else 200,
                media_type="application/json",
            )
        await response(scope, replay, send)

    @staticmethod
    async def _caller(connection: HTTPConnection, message: Message) -> tuple[ChatRequest, Principal] | None:
        """The request and its caller, when the route would take both as they are; otherwise None."""
        if message.get("more_body", False) or not _is_json(connection.headers.get("content-type")):
            return None
        principal = await key_principal(connection)
        if principal is None:
            return None
        try:
            # As FastAPI reads a JSON body (json.loads), and validates it (in Python mode).
            body: Any = json.loads(message.get("body", b""))
            return ChatRequest.model_validate(body), principal
        except (ValueError, ValidationError):  # not JSON (or not UTF-8), or not a valid request
            return None


def chat_route() -> APIRoute:
    """The `POST /chat` route, as the native router holds it."""
    return next(
        route
        for route in native.router.routes
        if isinstance(route, APIRoute) and route.path == PATH and "POST" in (route.methods or ())
    )


def _is_json(content_type: str | None) -> bool:
    """`application/json`, with or without parameters: what every client of this route sends."""
    return content_type is not None and content_type.partition(";")[0].strip().lower() == "application/json"
