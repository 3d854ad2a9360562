"""The ids a client sends: sessions and users (which become Redis keys and channel names) and messages."""

from __future__ import annotations

import uuid
from typing import Annotated

from pydantic import AfterValidator, Field

__all__ = [
    "ID_PATTERN",
    "MessageId",
    "SessionId",
    "UserId",
    "answer_key",
    "check_message_id",
    "message_of",
    "new_message_id",
    "owner_of_answer",
]

# Ids become Redis keys and channel names: no glob characters, spaces, braces or control characters.
ID_PATTERN = r"^[A-Za-z0-9_.:\-]{1,128}$"
SessionId = Annotated[
    str,
    Field(min_length=1, max_length=128, pattern=ID_PATTERN, examples=["test123"]),
]
UserId = Annotated[
    str,
    Field(min_length=1, max_length=128, pattern=ID_PATTERN, examples=["user1"]),
]


def new_message_id() -> str:
    return str(uuid.uuid4())


def check_message_id(value: uuid.UUID) -> uuid.UUID:
    """A client's message id must be hard to guess: a random (v4) or time-ordered random (v7) UUID, not
    the nil or max UUID nor a name- or MAC-based one (issue #13, item 7)."""
    if value.variant != uuid.RFC_4122 or value.version not in (4, 7):
        raise ValueError("must be a random UUID (version 4 or 7)")
    return value


MessageId = Annotated[uuid.UUID, AfterValidator(check_message_id)]


def answer_key(owner: str | None, message_id: str) -> str:
    """An answer's identity in Redis and in this process: its message id within its owner's, the API key
    that asked for it (issue #13, item 7), so that another key's use of an id tells nothing and changes
    nothing. `<owner>/<message_id>` (a key's name has no `/`, nor has an id); the bare id on an open
    service, as before."""
    return f"{owner}/{message_id}" if owner else message_id


def message_of(key: str) -> str:
    """The message id of an `answer_key`."""
    return key.rpartition("/")[2]


def owner_of_answer(key: str) -> str | None:
    """The owner of an `answer_key` (the API key's name), or None on an open service."""
    return key.rpartition("/")[0] or None
