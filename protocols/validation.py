"""Invalid requests: FastAPI's validation errors flattened to named fields, once for every protocol,
and the checks that depend on settings (which a `Field` constraint cannot read)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from errors import ServiceError

__all__ = ["InvalidRequest", "check_message_length", "field_name"]


def field_name(location: Sequence[int | str]) -> str:
    """`("body", "messages", 0, "role")` -> `messages.0.role`; the body itself is `body`."""
    parts = [str(part) for part in location]
    if parts and parts[0] in {"body", "path", "query", "header"}:
        parts = parts[1:]
    return ".".join(parts) or "body"


class InvalidRequest(ServiceError):
    """The request breaks its schema; `fields` names each bad field, and why."""

    status = 422
    code = "invalid_request"

    def __init__(self, fields: Iterable[tuple[str, str]]) -> None:
        self.fields = list(fields)
        summary = "; ".join(f"{field}: {message}" for field, message in self.fields)
        super().__init__(
            f"Invalid request: {summary}",
            fields=[{"field": field, "message": message} for field, message in self.fields],
        )

    @classmethod
    def from_errors(cls, errors: Sequence[Mapping[str, Any]]) -> InvalidRequest:
        """From pydantic's (or FastAPI's) error list."""
        return cls(
            # Invalid JSON is located by character offset (`("body", 15)`), which names no field.
            ("body" if error["type"] == "json_invalid" else field_name(error["loc"]), error["msg"])
            for error in errors
        )


def check_message_length(message: str, limit: int, field: str) -> None:
    """`MAX_MESSAGE_LENGTH`, a setting, so not in the model's schema: refused as the schema would."""
    if len(message) > limit:
        raise InvalidRequest([(field, f"String should have at most {limit} characters")])
