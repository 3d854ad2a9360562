"""The errors `ChatService` raises (`ai_service.py` re-exports them), each with its HTTP status and code
for the error table."""

from __future__ import annotations

from errors import ServiceError
from models import AnswerState

__all__ = [
    "AnswerFinished",
    "AnswerNotFound",
    "ImagesUnsupported",
    "MessageConflict",
    "NoSuchAnswer",
    "ServiceUnavailable",
    "ToolResultConflict",
]


class ServiceUnavailable(ServiceError):
    """The service is shutting down and takes no new chats."""

    status = 503
    code = "shutting_down"


class AnswerNotFound(ServiceError):
    """No answer has this message id (or it has expired)."""

    status = 404
    code = "not_found"

    def __init__(self, message_id: str) -> None:
        super().__init__("No such answer")
        self.message_id = message_id


class NoSuchAnswer(AnswerNotFound):
    """`AnswerNotFound` of a path's `message_id`, naming the field: no such answer, or another key's."""

    def __init__(self, message_id: str) -> None:
        super().__init__(message_id)
        self.details = {"fields": [{"field": "message_id", "message": "no such answer"}]}


class AnswerFinished(ServiceError):
    """The answer has already ended; `state` says how."""

    status = 409
    code = "already_finished"

    def __init__(self, state: AnswerState) -> None:
        super().__init__("The answer has already ended")
        self.state = state


class MessageConflict(ServiceError):
    """A client-chosen message id is already used by another session of the same API key."""

    status = 409
    code = "message_id_conflict"


class ToolResultConflict(ServiceError):
    """Tool results that the session's last answer did not ask for, or that it has already had, or that
    came while an answer of the session is still streaming; nothing of them is stored."""

    status = 409
    code = "tool_result_conflict"


class ImagesUnsupported(ServiceError):
    """The model that answers cannot be shown images."""

    status = 400
    code = "images_unsupported"
