"""Logs: the root logger's set-up (text or JSON, every line with its request id) and one access line per
request. Configured once, at the entry point; the request id is set by `protocols/edge.py` (the client's
`X-Request-ID` when it is a plain token, a new one otherwise) in asgi-correlation-id's context variable,
which its log filter puts in every line.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import TYPE_CHECKING

from asgi_correlation_id import CorrelationIdFilter
from pythonjsonlogger.json import JsonFormatter

if TYPE_CHECKING:
    from config import Settings

__all__ = [
    "EscapeControls",
    "configure_logging",
    "escape_controls",
    "log_request",
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
    # No line shows the caller's file and line, its thread or process: each record need not find them
    # (the logging HOWTO's "Optimization"; the access line is logged once per request).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False


def log_request(method: str, path: str, status: int, seconds: float) -> None:
    """The request's one access line (`protocols/edge.py` calls it as the request ends)."""
    if not access_logger.isEnabledFor(logging.INFO):
        return
    duration_ms = seconds * 1000
    access_logger.info(
        "%s %s %d %.1fms",
        method,
        path,
        status,
        duration_ms,
        extra={"method": method, "path": path, "status": status, "duration_ms": round(duration_ms, 2)},
    )
