"""Logs: the root logger's set-up (text or JSON, every line with its request id) and one access line per
request. Configured once, at the entry point; the request id comes from asgi-correlation-id, which
accepts a client's `X-Request-ID` when it is a plain token and makes one otherwise.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from asgi_correlation_id import CorrelationIdFilter
from pythonjsonlogger.json import JsonFormatter

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from config import Settings

__all__ = [
    "EscapeControls",
    "RequestLogMiddleware",
    "configure_logging",
    "escape_controls",
    "valid_request_id",
]

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("chat.access")

# A client's request id ends up in every log line of its request: a plain token, nothing to inject.
REQUEST_ID = re.compile(r"[A-Za-z0-9._\-]{1,128}")


def valid_request_id(value: str) -> bool:
    return REQUEST_ID.fullmatch(value) is not None


# C0 and C1 control characters, DEL and the Unicode line and paragraph separators, as `\x0a`-style
# escapes: a client's value (a path with `%0A` in it) cannot start a line of its own (issue #13, item 7).
CONTROL_ESCAPES = {
    code: f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    for code in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)
}


def escape_controls(text: str) -> str:
    """`text` with every control character escaped, so that it stays on one log line."""
    return text.translate(CONTROL_ESCAPES)


class EscapeControls(logging.Filter):
    """Escapes control characters in each record's message, with its arguments filled in (a traceback,
    formatted apart from the message, keeps its lines). JSON lines escape them anyway; text lines need
    this."""

    def filter(self, record: logging.LogRecord) -> bool:
        # A trailing newline (uvicorn ends some messages with one) starts no line of its own: dropped.
        record.msg, record.args = escape_controls(record.getMessage().rstrip("\n")), None
        return True


def configure_logging(settings: Settings) -> None:
    """Configure the root logger once, at the entry point: text or JSON, with the request id."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(CorrelationIdFilter(default_value="-"))
    handler.addFilter(EscapeControls())
    if settings.log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(correlation_id)s %(message)s",
                rename_fields={"correlation_id": "request_id", "levelname": "level"},
            )
        )
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(correlation_id)s] %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)


class RequestLogMiddleware:
    """Logs each request once (method, path, status, duration) and turns a crash into a 500: the
    response `crash_response(path)` makes (the error table's, in the path's protocol)."""

    def __init__(self, app: ASGIApp, crash_response: Callable[[str], ASGIApp]) -> None:
        self.app = app
        self.crash_response = crash_response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            logger.exception("unhandled error on %s %s", scope["method"], scope["path"])
            status = 500
            if not response_started:
                await self.crash_response(scope["path"])(scope, receive, send)
        finally:
            duration_ms = (time.perf_counter() - started) * 1000
            access_logger.info(
                "%s %s %d %.1fms",
                scope["method"],
                scope["path"],
                status,
                duration_ms,
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(duration_ms, 2),
                },
            )
