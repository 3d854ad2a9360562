"""FastAPI application: wiring (lifespan, middleware, routers, the error table). `python app.py` runs it."""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline
from pydantic import ValidationError
from starlette.middleware import Middleware

from config import VERSION, Settings, format_validation_error, get_settings
from draining import server_draining
from logs import configure_logging
from metrics import Metrics
from protocols import errors
from protocols.agui import router as agui_router
from protocols.ai_sdk import router as ai_sdk_router
from protocols.conversations import router as conversations_router
from protocols.deps import require_key
from protocols.direct import DirectChat
from protocols.edge import Edge
from protocols.native import ERRORS
from protocols.native import router as native_router
from protocols.openai import router as openai_router
from protocols.service import router as service_router
from protocols.usage import router as usage_router
from providers.base import AnswerSource
from services import Services, build_services
from telemetry import Telemetry
from ui import DOCS_HEADERS, add_ui

logger = logging.getLogger(__name__)

# What a browser on another origin may send: the keys, the request id, the resume position, the session.
CORS_HEADERS = ["Content-Type", "Authorization", "X-API-Key", "X-Request-ID", "Last-Event-ID", "X-Session-Id"]


def build_lifespan(
    settings: Settings,
    metrics: Metrics,
    source: AnswerSource | None = None,
    telemetry: Telemetry | None = None,
) -> Any:
    """The lifespan: the services builder's object graph, as the routes' state (`protocols/deps.py`)."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Services]]:
        async with build_services(
            settings, metrics=metrics, source=source, draining=server_draining, telemetry=telemetry
        ) as services:
            yield {"services": services}

    return lifespan


def _middleware(settings: Settings, metrics: Metrics) -> list[Middleware]:
    """The middleware, outermost first: the edge layer (request id, body limit, crash answer, access
    log, metrics, the docs' policy, event streams run once their route has returned), then CORS when
    origins are configured."""
    middleware = [
        Middleware(
            Edge,
            metrics=metrics,
            crash_response=errors.crash_response,
            max_body_bytes=settings.max_body_bytes,
            body_timeout=settings.request_body_timeout,
            path_headers=DOCS_HEADERS,
        )
    ]
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_methods=["GET", "POST", "PATCH", "DELETE"],
                allow_headers=CORS_HEADERS,
                expose_headers=["X-Request-ID"],
            )
        )
    # Innermost: POST /chat without FastAPI's per-request machinery, when it can answer as the route.
    middleware.append(Middleware(DirectChat))
    return middleware


def create_app(
    settings: Settings | None = None,
    *,
    source: AnswerSource | None = None,
    telemetry: Telemetry | None = None,
) -> FastAPI:
    """Build the application for these settings (the environment's when none are given).

    `source` replaces the simulated model, for embedding and benchmarks (`bench/service.py`);
    `telemetry` replaces the tracing that `OTEL_*` configures (tests give theirs).
    """
    settings = settings or get_settings()
    telemetry = telemetry or Telemetry.from_environment()
    metrics = Metrics()
    middleware = _middleware(settings, metrics)
    # FastAPIOffline serves the Swagger UI and ReDoc assets from the package, not a CDN (issue #3, part 7).
    app = FastAPIOffline(
        title="AI Chat Service",
        version=VERSION,
        summary="Streams AI chat answers over Redis PubSub and Server-Sent Events, with TTL-bound history.",
        openapi_tags=[
            {"name": "chat", "description": "Send messages, follow and stop their answers."},
            {"name": "history", "description": "A session's stored turns, and a user's conversations."},
            {"name": "openai", "description": "The OpenAI-compatible API, run by the same pipeline."},
            {"name": "agui", "description": "AG-UI: run the agent on a thread, and reconnect to it."},
            {
                "name": "ai-sdk",
                "description": "The Vercel AI SDK's UI message stream: useChat's chat endpoint.",
            },
            {"name": "service", "description": "Health, metrics and what the service publishes."},
        ],
        lifespan=build_lifespan(settings, metrics, source, telemetry),
        middleware=middleware,
        debug=False,
        # The service's traces are `telemetry.py`'s (with OTEL_* set); FastAPI's own telemetry, which
        # would look for globally configured providers on every request, stays off.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    errors.install(app)
    telemetry.instrument_app(app)
    app.include_router(service_router)
    app.include_router(usage_router)
    app.include_router(native_router)
    app.include_router(conversations_router)
    app.include_router(agui_router)
    app.include_router(ai_sdk_router)
    # The OpenAI-compatible API takes the same keys (OpenAI clients send `Authorization: Bearer`).
    app.include_router(openai_router, dependencies=[Depends(require_key)], responses={401: ERRORS[401]})
    add_ui(app)
    return app


def main() -> None:
    try:
        settings = get_settings()
    except ValidationError as error:
        sys.stderr.write(format_validation_error(error) + "\n")
        raise SystemExit(2) from None
    configure_logging(settings)
    server = server_options(settings)
    if settings.web_concurrency > 1:
        # Worker processes import the app themselves (issue #6): each builds its own from the
        # environment, with its own event loop, Redis connections and stream hub.
        uvicorn.run("app:worker_app", factory=True, workers=settings.web_concurrency, **server)
    else:
        uvicorn.run(create_app(settings), **server)


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options for `python app.py`: what one process lets in, and how long it waits to stop
    (issue #13, item 6; README "Operations"). h11 by default: it bounds a request's head
    (`h11_max_incomplete_event_size`, answered with 400); httptools reads heads of any size."""
    return {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "access_log": False,
        "proxy_headers": False,
        "http": settings.http_parser,
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "limit_concurrency": settings.max_connections,
        "timeout_keep_alive": settings.keepalive_timeout,
        # After the grace period uvicorn stops waiting for open responses (an SSE client that does
        # not read holds its own open forever) and cancels them; then the lifespan ends the answers.
        "timeout_graceful_shutdown": math.ceil(settings.shutdown_grace_seconds),
    }


def worker_app() -> FastAPI:
    """The app of one worker process of `python app.py` with WEB_CONCURRENCY above 1."""
    settings = get_settings()
    configure_logging(settings)
    return create_app(settings)


if __name__ == "__main__":
    main()
