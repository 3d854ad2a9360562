"""Why admission refuses a request; the protocol edge renders each in its own wire shape."""

from __future__ import annotations

from config import SERVICE_NAME
from errors import ServiceError

__all__ = ["Overloaded", "RateLimited", "SessionForbidden", "SessionNotFound", "Unauthorized"]


class Unauthorized(ServiceError):
    """No valid API key (or stream token) was presented."""

    status = 401
    code = "unauthorized"

    def __init__(self, message: str = "A valid API key is required") -> None:
        super().__init__(message, headers={"WWW-Authenticate": f'Bearer realm="{SERVICE_NAME}"'})


class SessionNotFound(ServiceError):
    """The session does not exist for this key: missing, expired, or another key's (the same answer)."""

    status = 404
    code = "not_found"

    def __init__(self, session_id: str) -> None:
        super().__init__("No such session")
        self.session_id = session_id


class SessionForbidden(ServiceError):
    """A chat was posted into a session that another key owns."""

    status = 403
    code = "session_forbidden"

    def __init__(self, session_id: str) -> None:
        super().__init__("This session belongs to another API key")
        self.session_id = session_id


class RateLimited(ServiceError):
    """Too many requests, or too many running answers, for this key and user."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class Overloaded(ServiceError):
    """This process runs as many answers as it may (`MAX_ACTIVE_STREAMS`)."""

    status = 503
    code = "overloaded"

    def __init__(self, retry_after: int = 1) -> None:
        super().__init__(
            "The service is at capacity; try again shortly", headers={"Retry-After": str(retry_after)}
        )
        self.retry_after = retry_after
