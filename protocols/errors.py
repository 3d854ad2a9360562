"""The error table: every exception a request can end in, mapped to one `Problem` (status, stable code,
message, headers), and the two renderers that put a problem on the wire: the service's native body and
OpenAI's error object. Which renderer answers is chosen by path, so every route under `/v1`, and every
unknown path there, answers in OpenAI's shape (the clients then raise their usual exceptions)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from ai_service import AnswerFinished
from errors import ServiceError
from models import AnswerState
from protocols.validation import InvalidRequest
from providers.base import AnswerError
from redis_client import RedisUnavailable

__all__ = [
    "HANDLED",
    "OPENAI_PREFIX",
    "ConflictResponse",
    "ErrorResponse",
    "OpenAIErrorDetail",
    "OpenAIErrorResponse",
    "Problem",
    "crash_response",
    "error_response",
    "install",
    "openai_error",
    "problem_of",
    "render",
]

logger = logging.getLogger(__name__)


class FieldError(BaseModel):
    field: str
    message: str


class ErrorDetail(BaseModel):
    code: str = Field(examples=["redis_unavailable"])
    message: str
    fields: list[FieldError] | None = Field(
        default=None, description="For invalid requests: each field that failed, and why."
    )


class ErrorResponse(BaseModel):
    """Every error answer has this body."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"error": {"code": "redis_unavailable", "message": "Redis is unavailable"}}]
        }
    )

    error: ErrorDetail


class ConflictResponse(ErrorResponse):
    """The answer has already ended: the error, and the answer's final state."""

    state: AnswerState


OPENAI_PREFIX = "/v1"

# Starlette's own refusals (no route, wrong method, an unreadable body).
HTTP_CODES = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed"}

# How an answer's failure reaches a client that is still waiting for the status line.
ANSWER_ERROR_STATUS = {
    "rate_limited": 429,
    "upstream_timeout": 504,
    "shutdown": 503,
    "redis_unavailable": 503,
    "internal_error": 500,
}


@dataclass(frozen=True, slots=True)
class Problem:
    """One error answer, before any protocol's shape."""

    status: int
    code: str
    message: str
    headers: Mapping[str, str] = field(default_factory=dict)
    # Extra fields of the native body (`fields`), and OpenAI's `param`.
    details: Mapping[str, Any] = field(default_factory=dict)
    state: AnswerState | None = None


INTERNAL = Problem(500, "internal_error", "Internal server error")


def problem_of(error: BaseException) -> Problem:
    """The table: what a client is told about `error`."""
    if isinstance(error, RequestValidationError):
        error = InvalidRequest.from_errors(error.errors())
    if isinstance(error, ServiceError):
        state = error.state if isinstance(error, AnswerFinished) else None
        return Problem(error.status, error.code, error.message, error.headers, error.details, state)
    if isinstance(error, HTTPException):
        code = HTTP_CODES.get(error.status_code, "http_error")
        return Problem(error.status_code, code, str(error.detail), dict(error.headers or {}))
    if isinstance(error, AnswerError):
        return Problem(ANSWER_ERROR_STATUS.get(error.code, 502), error.code, error.message)
    return INTERNAL


# --- Renderers -----------------------------------------------------------------------------------


def render_native(problem: Problem) -> JSONResponse:
    """`{"error": {"code", "message", "fields"?}}`, plus the answer's `state` for a finished one."""
    error = {"code": problem.code, "message": problem.message, **problem.details}
    body: BaseModel
    if problem.state is not None:
        body = ConflictResponse.model_validate({"error": error, "state": problem.state.model_dump()})
    else:
        body = ErrorResponse.model_validate({"error": error})
    content = body.model_dump(mode="json", exclude_none=True)
    return JSONResponse(content, status_code=problem.status, headers=dict(problem.headers))


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(examples=["invalid_request_error", "server_error"])
    param: str | None = None
    code: str | None = Field(default=None, examples=["invalid_request", "upstream_timeout"])


class OpenAIErrorResponse(BaseModel):
    """Every error on `/v1` has this body, as OpenAI's API does."""

    error: OpenAIErrorDetail


# OpenAI's `type` by status (https://platform.openai.com/docs/guides/error-codes); OpenAI answers an
# invalid body with 400, never 422.
OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def _openai_status(problem: Problem) -> int:
    return 400 if problem.status == 422 else problem.status


def openai_error(problem: Problem) -> OpenAIErrorDetail:
    """OpenAI's error object for the problem (also sent as the last event of a failed stream)."""
    status = _openai_status(problem)
    kind = OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    param = problem.details.get("param")
    fields = problem.details.get("fields")
    if param is None and fields and fields[0]["field"] != "body":
        param = fields[0]["field"]
    return OpenAIErrorDetail(message=problem.message, type=kind, param=param, code=problem.code)


def render_openai(problem: Problem) -> JSONResponse:
    body = OpenAIErrorResponse(error=openai_error(problem))
    return JSONResponse(body.model_dump(), status_code=_openai_status(problem), headers=dict(problem.headers))


def render(path: str, problem: Problem) -> JSONResponse:
    """The problem in the shape of the protocol that serves `path`."""
    if path == OPENAI_PREFIX or path.startswith(OPENAI_PREFIX + "/"):
        return render_openai(problem)
    return render_native(problem)


def crash_response(path: str) -> JSONResponse:
    """The 500 of an unexpected exception: a code and a sentence, never a traceback."""
    return render(path, INTERNAL)


# The exceptions a route may end in that the table answers; any other is a crash (`INTERNAL`).
HANDLED: tuple[type[Exception], ...] = (ServiceError, RequestValidationError, HTTPException, AnswerError)


def error_response(path: str, error: Exception) -> JSONResponse:
    """The answer to a request on `path` that ended in `error` (one of HANDLED)."""
    if isinstance(error, RedisUnavailable):
        logger.warning("Redis unavailable: %s", error.reason)
    return render(path, problem_of(error))


async def _handle(request: Request, error: Exception) -> JSONResponse:
    return error_response(request.url.path, error)


def install(app: FastAPI) -> None:
    """Answer every known error through the table (a crash is the access log's: `INTERNAL`)."""
    for kind in HANDLED:
        app.add_exception_handler(kind, _handle)
