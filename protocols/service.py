"""The service's own routes: what it is, whether it is alive and ready, and its metrics."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from archiver import ArchiveRunner
from config import SERVICE_NAME, VERSION
from metrics import CONTENT_TYPE_LATEST
from protocols.deps import (
    ArchiverDep,
    ChatServiceDep,
    HistoryDep,
    HubDep,
    MetricsDep,
    PrincipalDep,
    ReadinessDep,
    SettingsDep,
)
from protocols.native import ERRORS
from providers.base import AIHealth
from redis_client import KeySpace, RedisUnavailable

__all__ = ["HEALTH_TIMEOUT", "router"]

# /health answers within this many seconds, whatever Redis does.
HEALTH_TIMEOUT = 1.5

router = APIRouter(tags=["service"])


class RedisHealth(BaseModel):
    status: Literal["connected", "disconnected"]
    mode: Literal["redis", "embedded"]
    latency_ms: float | None = Field(default=None, description="PING round trip, in milliseconds.")
    writes: Literal["ok"] | None = Field(
        default=None, description="Redis took a write (a tiny key with a short TTL) within the last second."
    )
    pubsub: Literal["ok"] | None = Field(
        default=None, description="A probe came back through this process's PubSub subscription."
    )
    error: str | None = Field(
        default=None, description="Why Redis is unreachable or refuses writes (out of memory, read-only)."
    )


class ArchiveHealth(BaseModel):
    """The conversation record's archive: `degraded` (still 200) while turns wait longer than
    ARCHIVE_DEGRADED_SECONDS to be archived (the database is down, or behind)."""

    status: Literal["ok", "degraded"]
    backlog: int = Field(ge=0, description="Turns in the outbox not archived yet.")
    oldest_seconds: float = Field(ge=0, description="Age of the oldest of them.")
    error: str | None = Field(default=None, description="Why the last archiving attempt failed.")


class HealthResponse(BaseModel):
    status: Literal["healthy", "unhealthy"]
    version: str
    redis: RedisHealth
    archive: ArchiveHealth | None = None
    ai: AIHealth | None = Field(default=None, description="The model provider answers come from.")


class LivenessResponse(BaseModel):
    status: Literal["alive"]
    version: str


class ServiceInfo(BaseModel):
    """What the service is and where to go next."""

    service: str
    version: str
    docs: str
    redoc: str
    health: str
    metrics: str
    openapi: str
    event_schema: str
    chat_page: str
    channel_pattern: str = Field(description="How a session's PubSub channel is named.")


@router.get("/", response_model=ServiceInfo, summary="Service information")
async def root(settings: SettingsDep) -> ServiceInfo:
    """What this service is, and where to go next."""
    keys = KeySpace(settings.redis_key_prefix, sharded=settings.redis_cluster)
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


@router.get("/health/live", response_model=LivenessResponse, summary="Liveness")
async def liveness() -> LivenessResponse:
    """The process answers. Touches nothing else: for a liveness probe that restarts a wedged process."""
    return LivenessResponse(status="alive", version=VERSION)


@router.get(
    "/health",
    response_model=HealthResponse,
    response_model_exclude_none=True,
    summary="Readiness: Redis takes writes, and this process's PubSub subscription works",
    responses={
        503: {
            "model": HealthResponse,
            "description": "Redis does not answer or take writes, or PubSub does not.",
        }
    },
)
async def health(
    history: HistoryDep,
    hub: HubDep,
    readiness: ReadinessDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    service: ChatServiceDep,
    archiver: ArchiverDep,
) -> JSONResponse:
    """Healthy when Redis answers a PING, takes a write, and a message published on the control channel
    comes back through this process's own subscription; otherwise 503 with the reason, within two
    seconds. The write and the round trip are checked at most once a second."""
    mode = "embedded" if settings.embedded_redis else "redis"
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT):
            latency = await history.ping()
            if not hub.connected:
                raise RedisUnavailable("the PubSub subscription is down")
            await readiness.check()
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
        redis=RedisHealth(
            status="connected", mode=mode, latency_ms=round(latency, 3), writes="ok", pubsub="ok"
        ),
        ai=service.source.health(),
        archive=_archive_health(archiver, settings.archive_degraded_seconds),
    )
    return JSONResponse(body.model_dump(mode="json", exclude_none=True))


def _archive_health(archiver: ArchiveRunner, threshold: float) -> ArchiveHealth:
    state = archiver.state
    return ArchiveHealth(
        status="degraded" if state.degraded(threshold) else "ok",
        backlog=state.backlog,
        oldest_seconds=round(state.oldest_seconds, 3),
        error=state.error,
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Metrics."},
        401: ERRORS[401],
    },
)
async def prometheus_metrics(_: PrincipalDep, metrics: MetricsDep) -> Response:
    """Metrics in the Prometheus text format (with several workers, every worker's)."""
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
