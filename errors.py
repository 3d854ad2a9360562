"""The service's errors: one hierarchy, each error knowing its HTTP status, its stable code and headers.

Modules raise their own small subclasses (`RedisUnavailable`, `RateLimited`, `AnswerNotFound`); the
protocol edge renders any of them in its own wire shape (the service's JSON body, OpenAI's error object),
so every route of a protocol answers in that protocol's shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

__all__ = ["ServiceError"]


class ServiceError(Exception):
    """An error a client is told about: `status` and `code` are the class's, `message` the instance's."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.headers: dict[str, str] = dict(headers or {})
        # Extra fields of the native error body (`fields` of a validation error, say).
        self.details = details
