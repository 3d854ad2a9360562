"""FastAPI application: wiring, middleware, error handlers and routes. `python app.py` runs it."""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypedDict

import uvicorn
from asgi_correlation_id import CorrelationIdMiddleware
from fastapi import Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware

from ai_service import (
    AnswerFinished,
    AnswerNotFound,
    ChatService,
    MessageConflict,
    ServiceUnavailable,
)
from config import SERVICE_NAME, VERSION, Settings, format_validation_error, get_settings
from deps import (
    ChatServiceDep,
    HistoryDep,
    HubDep,
    ProbeDep,
    RegistryDep,
    SettingsDep,
)
from draining import server_draining
from health import PubSubProbe
from hub import StreamHub
from logs import RequestLogMiddleware, configure_logging, valid_request_id
from metrics import CONTENT_TYPE_LATEST, Metrics, MetricsMiddleware
from models import (
    ID_PATTERN,
    AnswerState,
    ChatAccepted,
    ChatRequest,
    ConflictResponse,
    ErrorResponse,
    HealthResponse,
    HistoryResponse,
    LivenessResponse,
    RedisHealth,
    ServiceInfo,
    StatusResponse,
    stream_event_schema,
)
from openai_api import router as openai_router
from providers.base import AnswerSource
from redis_client import KeySpace, RedisUnavailable
from security import (
    AccessControl,
    AccessDep,
    BodyLimitMiddleware,
    Overloaded,
    PrincipalDep,
    RateLimited,
    SessionForbidden,
    SessionNotFound,
    StreamPrincipalDep,
    Unauthorized,
    require_key,
)
from services import HEALTH_TIMEOUT, build_services
from sse import EventStreamResponse
from stores.answers import AnswerRegistry
from stores.history import HistoryStore
from ui import add_ui

logger = logging.getLogger(__name__)

ENTRY_ID_PATTERN = r"^[0-9]{1,20}-[0-9]{1,20}$"


# --- Lifespan and dependencies -------------------------------------------------------------------


class State(TypedDict):
    chat_service: ChatService
    history: HistoryStore
    registry: AnswerRegistry
    hub: StreamHub
    settings: Settings
    access: AccessControl
    metrics: Metrics
    probe: PubSubProbe


def build_lifespan(settings: Settings, metrics: Metrics, source: AnswerSource | None = None) -> Any:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[State]:
        async with build_services(
            settings, metrics=metrics, source=source, draining=server_draining
        ) as services:
            yield {
                "chat_service": services.chat,
                "history": services.history,
                "registry": services.answers,
                "hub": services.hub,
                "settings": settings,
                "access": services.access,
                "metrics": metrics,
                "probe": services.probe,
            }

    return lifespan


# The dependencies are `async def`, though they do not await: FastAPI runs a plain `def` dependency in
# its thread pool, and that hop cost more than the whole rest of a POST /chat (issue #6's profile).
MessageIdPath = Annotated[uuid.UUID, Path(description="The answer's message_id.")]
SessionIdPath = Annotated[
    str, Path(min_length=1, max_length=128, pattern=ID_PATTERN, description="The chat session.")
]


# --- Errors --------------------------------------------------------------------------------------


def error_response(
    status_code: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = ErrorResponse.model_validate({"error": {"code": code, "message": message, **extra}})
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status_code, headers=headers)


def _field_name(location: tuple[int | str, ...] | list[int | str]) -> str:
    parts = [str(part) for part in location]
    if parts and parts[0] in {"body", "path", "query", "header"}:
        parts = parts[1:]
    return ".".join(parts) or "body"


async def on_validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    fields = [
        # Invalid JSON is located by character offset (`("body", 15)`), which names no field.
        {
            "field": "body" if error["type"] == "json_invalid" else _field_name(error["loc"]),
            "message": error["msg"],
        }
        for error in exc.errors()
    ]
    summary = "; ".join(f"{item['field']}: {item['message']}" for item in fields)
    return error_response(422, "invalid_request", f"Invalid request: {summary}", fields=fields)


async def on_http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed"}
    response = error_response(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def on_redis_unavailable(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RedisUnavailable)
    logger.warning("Redis unavailable: %s", exc.reason)
    return error_response(503, "redis_unavailable", f"Service temporarily unavailable: {exc.reason}")


async def on_service_unavailable(_: Request, exc: Exception) -> JSONResponse:
    return error_response(503, "shutting_down", str(exc))


async def on_answer_not_found(_: Request, exc: Exception) -> JSONResponse:
    return error_response(404, "not_found", "No such answer")


async def on_answer_finished(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AnswerFinished)
    body = ConflictResponse.model_validate(
        {
            "error": {"code": "already_finished", "message": "The answer has already ended"},
            "state": exc.state.model_dump(),
        }
    )
    return JSONResponse(body.model_dump(mode="json", exclude_none=True), status_code=409)


async def on_message_conflict(_: Request, exc: Exception) -> JSONResponse:
    return error_response(409, "message_id_conflict", str(exc))


async def on_unauthorized(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Unauthorized)
    return error_response(
        401, "unauthorized", exc.message, headers={"WWW-Authenticate": f'Bearer realm="{SERVICE_NAME}"'}
    )


async def on_session_not_found(_: Request, exc: Exception) -> JSONResponse:
    # The same answer for a session that does not exist and for another key's session.
    return error_response(404, "not_found", "No such session")


async def on_session_forbidden(_: Request, exc: Exception) -> JSONResponse:
    return error_response(403, "session_forbidden", "This session belongs to another API key")


async def on_rate_limited(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RateLimited)
    return error_response(429, "rate_limited", exc.message, headers={"Retry-After": str(exc.retry_after)})


async def on_overloaded(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Overloaded)
    return error_response(
        503,
        "overloaded",
        "The service is at capacity; try again shortly",
        headers={"Retry-After": str(exc.retry_after)},
    )


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "The body cannot be read (not UTF-8 JSON)."},
    401: {"model": ErrorResponse, "description": "API keys are on and no valid key was sent."},
    422: {"model": ErrorResponse, "description": "Invalid input: the body names each bad field."},
    503: {"model": ErrorResponse, "description": "Redis is unavailable, or the service is shutting down."},
}
NO_SESSION: dict[int | str, dict[str, Any]] = {
    404: {
        "model": ErrorResponse,
        "description": "With API keys on: the session does not exist, or belongs to another key.",
    }
}


# --- Application ---------------------------------------------------------------------------------


def create_app(settings: Settings | None = None, *, source: AnswerSource | None = None) -> FastAPI:
    """Build the application for these settings (the environment's when none are given).

    `source` replaces the simulated model, for embedding and benchmarks (`bench/service.py`).
    """
    settings = settings or get_settings()
    metrics = Metrics()
    middleware = [
        Middleware(
            CorrelationIdMiddleware,
            header_name="X-Request-ID",
            validator=valid_request_id,
        ),
        Middleware(MetricsMiddleware, metrics=metrics),
        Middleware(RequestLogMiddleware),
        Middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes),
    ]
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=[
                    "Content-Type",
                    "Authorization",
                    "X-API-Key",
                    "X-Request-ID",
                    "Last-Event-ID",
                    "X-Session-Id",
                ],
                expose_headers=["X-Request-ID"],
            )
        )
    # FastAPIOffline serves the Swagger UI and ReDoc assets from the package, not a CDN (issue #3, part 7).
    app = FastAPIOffline(
        title="AI Chat Service",
        version=VERSION,
        summary="Streams AI chat answers over Redis PubSub and Server-Sent Events, with TTL-bound history.",
        openapi_tags=[
            {"name": "chat", "description": "Send messages, follow and stop their answers."},
            {"name": "history", "description": "A session's stored turns."},
            {"name": "openai", "description": "The OpenAI-compatible API, run by the same pipeline."},
            {"name": "service", "description": "Health, metrics and what the service publishes."},
        ],
        lifespan=build_lifespan(settings, metrics, source),
        middleware=middleware,
        debug=False,
    )
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RedisUnavailable, on_redis_unavailable)
    app.add_exception_handler(ServiceUnavailable, on_service_unavailable)
    app.add_exception_handler(AnswerNotFound, on_answer_not_found)
    app.add_exception_handler(AnswerFinished, on_answer_finished)
    app.add_exception_handler(MessageConflict, on_message_conflict)
    app.add_exception_handler(Unauthorized, on_unauthorized)
    app.add_exception_handler(SessionNotFound, on_session_not_found)
    app.add_exception_handler(SessionForbidden, on_session_forbidden)
    app.add_exception_handler(RateLimited, on_rate_limited)
    app.add_exception_handler(Overloaded, on_overloaded)
    # The OpenAI-compatible API takes the same keys (OpenAI clients send `Authorization: Bearer`).
    app.include_router(openai_router, dependencies=[Depends(require_key)], responses={401: ERRORS[401]})
    add_ui(app)
    keys = KeySpace(settings.redis_key_prefix, sharded=settings.redis_cluster)

    @app.get("/", response_model=ServiceInfo, summary="Service information", tags=["service"])
    async def root() -> ServiceInfo:
        """What this service is, and where to go next."""
        return ServiceInfo(
            service=SERVICE_NAME,
            version=VERSION,
            docs="/docs",
            redoc="/redoc",
            health="/health",
            metrics="/metrics",
            openapi="/openapi.json",
            event_schema="/schema/events",
            chat_page="/ui",
            channel_pattern=keys.channel_pattern,
        )

    @app.get("/health/live", response_model=LivenessResponse, summary="Liveness", tags=["service"])
    async def liveness() -> LivenessResponse:
        """The process answers. Touches nothing else: for a liveness probe that restarts a wedged process."""
        return LivenessResponse(status="alive", version=VERSION)

    @app.get(
        "/health",
        response_model=HealthResponse,
        response_model_exclude_none=True,
        summary="Readiness: Redis and this process's PubSub subscription",
        tags=["service"],
        responses={503: {"model": HealthResponse, "description": "Redis or PubSub does not answer."}},
    )
    async def health(
        history: HistoryDep, hub: HubDep, probe: ProbeDep, app_settings: SettingsDep, service: ChatServiceDep
    ) -> JSONResponse:
        """Healthy when Redis answers a PING and a message published on the control channel comes back
        through this process's own subscription; otherwise 503, within two seconds."""
        mode = "embedded" if app_settings.embedded_redis else "redis"
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT):
                latency = await history.ping()
                if not hub.connected:
                    raise RedisUnavailable("the PubSub subscription is down")
                await probe.round_trip()
        except (RedisUnavailable, TimeoutError) as error:
            reason = error.reason if isinstance(error, RedisUnavailable) else "Redis did not answer in time"
            metrics.redis_errors.labels("health").inc()
            body = HealthResponse(
                status="unhealthy",
                version=VERSION,
                redis=RedisHealth(status="disconnected", mode=mode, error=reason),
                ai=service.source.health(),
            )
            return JSONResponse(body.model_dump(mode="json", exclude_none=True), status_code=503)
        body = HealthResponse(
            status="healthy",
            version=VERSION,
            redis=RedisHealth(status="connected", mode=mode, latency_ms=round(latency, 3), pubsub="ok"),
            ai=service.source.health(),
        )
        return JSONResponse(body.model_dump(mode="json", exclude_none=True))

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        tags=["service"],
        response_class=Response,
        responses={
            200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Metrics."},
            401: ERRORS[401],
        },
    )
    async def prometheus_metrics(_: PrincipalDep) -> Response:
        """Metrics in the Prometheus text format (with several workers, every worker's)."""
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post(
        "/chat",
        status_code=202,
        response_model=ChatAccepted,
        response_model_exclude_none=True,
        summary="Send a message and stream the answer",
        tags=["chat"],
        responses={
            200: {
                "model": ChatAccepted,
                "description": "A repeated message_id: the existing answer's state.",
            },
            403: {"model": ErrorResponse, "description": "The session belongs to another API key."},
            409: {"model": ErrorResponse, "description": "The message_id belongs to another session."},
            413: {"model": ErrorResponse, "description": "The body is larger than MAX_BODY_BYTES."},
            429: {
                "model": ErrorResponse,
                "description": "RATE_LIMIT or MAX_STREAMS_PER_USER reached; see `Retry-After`.",
            },
            **ERRORS,
        },
    )
    async def chat(
        request: ChatRequest,
        response: Response,
        principal: PrincipalDep,
        service: ChatServiceDep,
        access: AccessDep,
        app_settings: SettingsDep,
    ) -> ChatAccepted:
        """Store the message, start the answer in the background, and return where it streams."""
        if len(request.message) > app_settings.max_message_length:
            raise RequestValidationError(
                [
                    {
                        "loc": ("body", "message"),
                        "msg": f"String should have at most {app_settings.max_message_length} characters",
                        "type": "string_too_long",
                    }
                ]
            )
        accepted, started = await access.submit(principal, request, service)
        if not started:
            response.status_code = 200
        return accepted

    @app.post(
        "/chat/{message_id}/cancel",
        response_model=AnswerState,
        response_model_exclude_none=True,
        summary="Stop an answer",
        tags=["chat"],
        responses={
            404: {"model": ErrorResponse, "description": "No such answer (or another key's)."},
            409: {"model": ConflictResponse, "description": "The answer has already ended."},
            **ERRORS,
        },
    )
    async def cancel(
        message_id: MessageIdPath,
        principal: PrincipalDep,
        service: ChatServiceDep,
        registry: RegistryDep,
        access: AccessDep,
    ) -> AnswerState:
        """Stop the answer on whichever instance runs it; the partial answer is stored as `cancelled`."""
        if principal.key_name is not None:
            state = await registry.get(str(message_id))
            if state is None or not await access.owners.owns(state.session_id, principal.key_name):
                raise AnswerNotFound(str(message_id))
        return await service.cancel(str(message_id))

    @app.get(
        "/stream/{session_id}",
        summary="Follow a session's answers (Server-Sent Events)",
        tags=["chat"],
        response_class=EventStreamResponse,
        responses={
            200: {
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
                "description": "`id:` the log entry id, `event:` the type, `data:` the event's JSON.",
            },
            404: {
                "model": ErrorResponse,
                "description": "message_id is not an answer of this session; with API keys on, the "
                "session does not exist or belongs to another key.",
            },
            **ERRORS,
        },
    )
    async def stream(
        session_id: SessionIdPath,
        principal: StreamPrincipalDep,
        access: AccessDep,
        service: ChatServiceDep,
        message_id: Annotated[
            uuid.UUID | None, Query(description="Follow only this answer; the stream ends with it.")
        ] = None,
        last_event_id: Annotated[
            str | None,
            Query(
                pattern=ENTRY_ID_PATTERN,
                description="Resume after this event (for clients that cannot set headers).",
            ),
        ] = None,
        last_event_id_header: Annotated[
            str | None, Header(alias="Last-Event-ID", pattern=ENTRY_ID_PATTERN, include_in_schema=False)
        ] = None,
    ) -> EventStreamResponse:
        """Replay what the client missed from the session's log, then stream live events.

        Authenticate with the API key, or with `token`: the `stream_token` that `POST /chat` returned."""
        await access.check_session(principal, session_id)
        cursor = await service.follow(
            session_id,
            after=last_event_id_header or last_event_id,
            message_id=str(message_id) if message_id else None,
        )
        return EventStreamResponse(cursor, clients=metrics.sse_clients)

    @app.get(
        "/history/{session_id}",
        response_model=HistoryResponse,
        response_model_exclude_none=True,
        summary="Get a session's history",
        tags=["history"],
        responses={**ERRORS, **NO_SESSION},
    )
    async def get_session_history(
        session_id: SessionIdPath,
        principal: PrincipalDep,
        access: AccessDep,
        history: HistoryDep,
        limit: Annotated[
            int | None, Query(ge=1, le=100_000, description="Only the most recent N turns.")
        ] = None,
    ) -> HistoryResponse:
        """The session's turns, oldest first; an unknown session has an empty history (404 with API keys)."""
        await access.check_session(principal, session_id)
        messages = await history.read(session_id, limit)
        return HistoryResponse(session_id=session_id, messages=messages, count=len(messages))

    @app.delete(
        "/history/{session_id}",
        response_model=StatusResponse,
        summary="Clear a session's history",
        tags=["history"],
        responses={**ERRORS, **NO_SESSION},
    )
    async def clear_session_history(
        session_id: SessionIdPath, principal: PrincipalDep, access: AccessDep, service: ChatServiceDep
    ) -> StatusResponse:
        """Delete every stored turn of the session (it stays its key's until its TTL runs out)."""
        await access.check_session(principal, session_id)
        await service.clear(session_id)
        return StatusResponse(message=f"History cleared for session {session_id}")

    @app.get("/schema/events", summary="JSON Schema of stream events", tags=["service"])
    async def event_schema() -> dict[str, Any]:
        """The JSON Schema every PubSub event validates against (a union discriminated by `type`)."""
        return stream_event_schema()

    return app


def main() -> None:
    try:
        settings = get_settings()
    except ValidationError as error:
        sys.stderr.write(format_validation_error(error) + "\n")
        raise SystemExit(2) from None
    configure_logging(settings)
    server: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "access_log": False,
        "proxy_headers": False,
    }
    if settings.web_concurrency > 1:
        # Worker processes import the app themselves (issue #6): each builds its own from the
        # environment, with its own event loop, Redis connections and stream hub.
        uvicorn.run("app:worker_app", factory=True, workers=settings.web_concurrency, **server)
    else:
        uvicorn.run(create_app(settings), **server)


def worker_app() -> FastAPI:
    """The app of one worker process of `python app.py` with WEB_CONCURRENCY above 1."""
    settings = get_settings()
    configure_logging(settings)
    return create_app(settings)


if __name__ == "__main__":
    main()
