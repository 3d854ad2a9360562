"""OpenTelemetry tracing, off unless configured: with `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces one)
set, the SDK exports over OTLP/HTTP, reading the standard `OTEL_*` variables itself.

One trace per answer: the request that started it (FastAPI's server span, with admission's Redis calls
under it), a span for the claim and the user turn's write (`chat.submit`: they go through the service's
own pipelined connection, which the redis instrumentation does not see), then the answer's span, with a
GenAI client span for the model call (OpenTelemetry's GenAI semantic conventions) and one span for its
events' writes to Redis (not one per chunk). Streams following an answer link to its span. Off, nothing
of this is built: no observer, no traced chat service, no instrumentation, no span on any path.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import (
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    format_span_id,
    format_trace_id,
)

from ai_service import ChatService
from config import SERVICE_NAME, VERSION
from redis_client import RedisUnavailable, bounded

if TYPE_CHECKING:
    from fastapi import FastAPI

    from answer_run import Answer
    from batcher import CommandBatcher
    from models import ChatAccepted, ChatRequest
    from redis_client import RedisClient

__all__ = ["AnswerTracer", "Telemetry", "TracedChatService", "answer_trace_key", "chat_service"]

logger = logging.getLogger(__name__)

# A follower's link is a nicety: its stream does not wait longer than this for it.
LINK_TIMEOUT = 0.5
# Health probes and scrapes would be most of the traces, and say nothing.
EXCLUDED_URLS = "health,metrics"
# The request's context while `chat.submit` is current: the answer's span is the request's child, beside it.
_REQUEST_CONTEXT: ContextVar[otel_context.Context | None] = ContextVar("request_context", default=None)


def answer_trace_key(prefix: str, answer: str) -> str:
    """Where the answer's (`answer`: its key, `ids.answer_key`) span context is kept (`<trace id>-<span
    id>`), for followers to link to."""
    return f"{prefix}:trace:{{{answer}}}"


def _consume(future: asyncio.Future[list[object]]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.debug("could not store an answer's trace context: %s", future.exception())


@dataclass(slots=True)
class _AnswerSpans:
    answer: Span
    model: Span
    writes: Span
    first_chunk: float | None = None


class AnswerTracer:
    """An `AnswerObserver` that opens each answer's spans when it starts and ends them when it ends."""

    def __init__(
        self,
        tracer: trace.Tracer,
        *,
        provider: str,
        model: str,
        writer: CommandBatcher | None = None,
        prefix: str = "chat",
        ttl: int = 86_400,
    ) -> None:
        self._tracer = tracer
        self._provider = provider
        self._model = model
        self._writer = writer
        self._prefix = prefix
        self._ttl = ttl
        self._spans: dict[str, _AnswerSpans] = {}

    def answer_started(self, answer: Answer) -> None:
        # Called in the request's context: the answer's span is a child of the request's.
        span = self._tracer.start_span(
            "chat.answer",
            context=_REQUEST_CONTEXT.get(),
            attributes={"chat.message_id": answer.message_id, "chat.session_id": answer.session_id},
        )
        context = trace.set_span_in_context(span)
        model = self._tracer.start_span(
            f"chat {self._model}",
            context=context,
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": self._provider,
                "gen_ai.system": self._provider,
                "gen_ai.request.model": self._model,
            },
        )
        writes = self._tracer.start_span(
            "chat.answer.write",
            context=context,
            kind=SpanKind.CLIENT,
            attributes={"db.system.name": "redis", "chat.stored": answer.stored},
        )
        self._spans[answer.key] = _AnswerSpans(span, model, writes)
        context_of = span.get_span_context()
        answer.trace_id = format_trace_id(context_of.trace_id)
        if answer.stored and self._writer is not None:
            # For followers on any instance (`Telemetry.link_follower`); with the answer's writes.
            value = f"{answer.trace_id}-{format_span_id(context_of.span_id)}"
            key = answer_trace_key(self._prefix, answer.key)
            self._writer.submit([("SET", key, value, "EX", self._ttl)]).add_done_callback(_consume)

    @contextmanager
    def submitting(self, session_id: str) -> Iterator[Span]:
        """The `chat.submit` span, current while the answer is claimed and the user's turn written."""
        request = otel_context.get_current()
        attributes = {"chat.session_id": session_id}
        with self._tracer.start_as_current_span("chat.submit", attributes=attributes) as span:
            token = _REQUEST_CONTEXT.set(request)
            try:
                yield span
            finally:
                _REQUEST_CONTEXT.reset(token)

    def chunk_published(self, answer: Answer) -> None:
        spans = self._spans.get(answer.key)
        if spans is not None and spans.first_chunk is None:
            spans.first_chunk = time.perf_counter() - answer.started
            spans.model.add_event("gen_ai.first_token")

    def answer_ended(self, answer: Answer) -> None:
        spans = self._spans.pop(answer.key, None)
        if spans is None:
            return
        model = spans.model
        model.set_attribute("gen_ai.response.model", self._model)
        model.set_attribute("gen_ai.response.finish_reasons", [answer.finish_reason or "error"])
        if spans.first_chunk is not None:
            model.set_attribute("gen_ai.response.time_to_first_chunk", spans.first_chunk)
        if answer.usage is not None:
            model.set_attribute("gen_ai.usage.input_tokens", answer.usage.prompt_tokens)
            model.set_attribute("gen_ai.usage.output_tokens", answer.usage.completion_tokens)
        spans.writes.set_attribute("chat.events", answer.seq + 1)
        spans.answer.set_attribute("chat.finish_reason", answer.finish_reason or "lost")
        if answer.error_code is not None:
            for span in (model, spans.answer):
                span.set_attribute("error.type", answer.error_code)
                span.set_status(Status(StatusCode.ERROR, answer.error_code))
        for span in (model, spans.writes, spans.answer):
            span.end()


class TracedChatService(ChatService):
    """The chat service when tracing is on: `submit` and `regenerate` run in a `chat.submit` span (off,
    the plain `ChatService` is built, and no span is opened on any path)."""

    def __init__(self, *args: Any, tracer: AnswerTracer, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._answer_tracer = tracer

    async def submit(self, request: ChatRequest, **kwargs: Any) -> tuple[ChatAccepted, bool]:
        with self._answer_tracer.submitting(request.session_id) as span:
            accepted, started = await super().submit(request, **kwargs)
            span.set_attributes({"chat.message_id": accepted.message_id, "chat.started": started})
            return accepted, started

    async def regenerate(self, session_id: str, *args: Any, **kwargs: Any) -> tuple[ChatAccepted, bool]:
        with self._answer_tracer.submitting(session_id) as span:
            accepted, started = await super().regenerate(session_id, *args, **kwargs)
            span.set_attributes({"chat.message_id": accepted.message_id, "chat.started": started})
            return accepted, started


def chat_service(tracer: AnswerTracer | None) -> Callable[..., ChatService]:
    """What builds the chat service: the traced one only when tracing is on."""
    return ChatService if tracer is None else partial(TracedChatService, tracer=tracer)


class Telemetry:
    """Tracing for one app: a tracer provider, or none when tracing is off (the default)."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self.provider = provider
        self._redis: RedisClient | None = None
        self._prefix = "chat"

    @classmethod
    def from_environment(cls) -> Telemetry:
        """On when an OTLP endpoint is configured; the exporter reads `OTEL_EXPORTER_OTLP_*` itself."""
        if not (
            os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        ):
            return cls(None)
        # Imported only when on: the exporter pulls in protobuf.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create(
            {
                "service.name": os.environ.get("OTEL_SERVICE_NAME") or SERVICE_NAME,
                "service.version": VERSION,
            }
        )
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        return cls(provider)

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    def instrument_app(self, app: FastAPI) -> None:
        if self.provider is not None:
            FastAPIInstrumentor.instrument_app(
                app, tracer_provider=self.provider, excluded_urls=EXCLUDED_URLS
            )

    @contextmanager
    def tracing(self, redis: RedisClient, prefix: str) -> Iterator[None]:
        """For the services' lifetime: trace the Redis client's commands; at the end, export what is
        buffered and stop.

        No httpx instrumentation: the service makes no httpx requests of its own, and the openai SDK
        (3.x) talks to the model server through `httpx2`, which it does not see; the GenAI span is the
        model call's."""
        if self.provider is None:
            yield
            return
        RedisInstrumentor.instrument_client(redis, tracer_provider=self.provider)
        self._redis, self._prefix = redis, prefix
        try:
            yield
        finally:
            self.provider.shutdown()

    def observer(
        self, *, provider: str, model: str, writer: CommandBatcher, prefix: str, ttl: int
    ) -> AnswerTracer | None:
        if self.provider is None:
            return None
        tracer = self.provider.get_tracer(__name__, VERSION)
        return AnswerTracer(tracer, provider=provider, model=model, writer=writer, prefix=prefix, ttl=ttl)

    async def link_follower(self, answer: str) -> None:
        """Link the current request's span (a stream following an answer, `answer` its key) to the
        answer's span, which may be in another request's trace, on another instance. Nothing when
        tracing is off."""
        if self.provider is None or self._redis is None:
            return
        span = trace.get_current_span()
        if not span.is_recording():
            return
        try:
            async with bounded(LINK_TIMEOUT):
                value = await self._redis.get(answer_trace_key(self._prefix, answer))
        except RedisUnavailable:
            return
        if not isinstance(value, bytes):
            return
        trace_id, _, span_id = value.decode().partition("-")
        try:
            context = SpanContext(
                int(trace_id, 16),
                int(span_id, 16),
                is_remote=True,
                trace_flags=TraceFlags(TraceFlags.SAMPLED),
            )
        except ValueError:
            return
        span.add_link(context, {"chat.link": "follows_answer"})
