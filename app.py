"""FastAPI application: wiring (lifespan, middleware, routers, the error table). `python app.py` runs it."""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypedDict

import uvicorn
from asgi_correlation_id import CorrelationIdMiddleware
from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline
from pydantic import ValidationError
from starlette.middleware import Middleware

from admission import Admission
from ai_service import ChatService
from batcher import CommandBatcher
from config import SERVICE_NAME, VERSION, Settings, format_validation_error, get_settings
from health import PubSubProbe
from logs import RequestLogMiddleware, configure_logging, valid_request_id
from metrics import Metrics, MetricsMiddleware
from protocols import errors
from protocols.body_limit import BodyLimitMiddleware
from protocols.deps import require_key
from protocols.native import ERRORS
from protocols.native import router as native_router
from protocols.openai import router as openai_router
from protocols.service import HEALTH_TIMEOUT
from protocols.service import router as service_router
from providers import close_answer_source, create_answer_source
from providers.base import AnswerSource
from redis_client import AnswerRegistry, HistoryStore, KeySpace, create_redis
from streaming import StreamHub
from ui import add_ui

logger = logging.getLogger(__name__)

# --- Lifespan and dependencies -------------------------------------------------------------------


class State(TypedDict):
    chat_service: ChatService
    history: HistoryStore
    registry: AnswerRegistry
    hub: StreamHub
    settings: Settings
    admission: Admission
    metrics: Metrics
    probe: PubSubProbe


def build_lifespan(settings: Settings, metrics: Metrics, source: AnswerSource | None = None) -> Any:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[State]:
        if settings.embedded_redis:
            logger.warning(
                "no REDIS_URL or REDIS_HOST set: using the embedded in-process Redis; "
                "history lives only as long as this process and no other process can subscribe"
            )
        redis = create_redis(settings)
        keys = KeySpace(settings.redis_key_prefix, sharded=settings.redis_cluster)
        history = HistoryStore(
            redis,
            keys,
            ttl=settings.chat_history_ttl,
            max_messages=settings.max_history_messages,
            timeout=settings.redis_timeout,
            wait_replicas=settings.redis_wait_replicas,
        )
        registry = AnswerRegistry(redis, keys, ttl=settings.chat_history_ttl, timeout=settings.redis_timeout)
        writer = CommandBatcher(redis, timeout=settings.redis_timeout, name="event-writer")
        reader = CommandBatcher(redis, timeout=settings.redis_timeout, name="log-reader")
        answer_source = source or create_answer_source(settings)
        admission = Admission(settings, redis, keys)
        service = ChatService(
            settings,
            history=history,
            registry=registry,
            writer=writer,
            keys=keys,
            source=answer_source,
            observers=[metrics, admission],
        )
        probe = PubSubProbe(redis, keys, timeout=min(settings.redis_timeout, HEALTH_TIMEOUT))
        hub = StreamHub(
            redis,
            keys,
            reader,
            poll_interval=settings.sse_poll_seconds,
            listener_limit=settings.sse_queue_limit,
            on_control=probe.wrap(service.on_control),
            ping_interval=settings.sse_ping_seconds,
        )
        admission.start()
        writer.start()
        reader.start()
        await hub.start()
        # What start-up built lives as long as the process: take it out of the garbage collector's
        # full collections, which otherwise walk all of it and stall every stream (71 ms with 2,000
        # answers running; issue #6, scenario d).
        gc.collect()
        gc.freeze()
        logger.info("%s %s started; redis=%s", SERVICE_NAME, VERSION, settings.redis_location())
        try:
            yield {
                "chat_service": service,
                "history": history,
                "registry": registry,
                "hub": hub,
                "settings": settings,
                "admission": admission,
                "metrics": metrics,
                "probe": probe,
            }
        finally:
            await service.shutdown()
            await admission.close()
            await hub.close()
            await close_answer_source(answer_source)
            await writer.close()
            await reader.close()
            await redis.aclose()
            metrics.close()
            gc.unfreeze()
            logger.info("%s stopped", SERVICE_NAME)

    return lifespan


def create_app(settings: Settings | None = None, *, source: AnswerSource | None = None) -> FastAPI:
    """Build the application for these settings (the environment's when none are given).

    `source` replaces the simulated model, for embedding and benchmarks (`bench/service.py`).
    """
    settings = settings or get_settings()
    metrics = Metrics()
    middleware = [
        Middleware(CorrelationIdMiddleware, header_name="X-Request-ID", validator=valid_request_id),
        Middleware(MetricsMiddleware, metrics=metrics),
        Middleware(RequestLogMiddleware, crash_response=errors.crash_response),
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
    errors.install(app)
    app.include_router(service_router)
    app.include_router(native_router)
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
