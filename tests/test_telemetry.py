"""Tracing (telemetry.py, issue #16): one trace per answer, from the request that started it to its end,
with a GenAI span for the model call; checked with the SDK's in-memory exporter on both model paths, and
over the wire with the OTLP/HTTP exporter sending to a receiver this test runs."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, format_trace_id
from pydantic import SecretStr
from starlette.types import Receive, Scope, Send

from ai_service import ChatService
from app import create_app
from config import Settings
from providers.base import AnswerSource
from telemetry import Telemetry, chat_service
from testkit.asgi_server import serve
from testkit.openai_server import OpenAIServer, Reply
from testkit.service import ServiceProcess
from testkit.waiting import eventually, eventually_sync
from tests.agui_events import HeldSource, run_input
from tests.sse_flows import collect

CHAT = {"session_id": "traced", "message": "Hello there", "user_id": "u1"}
KEY = "alice-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}


@asynccontextmanager
async def traced_app(
    settings: Settings, source: AnswerSource | None = None
) -> AsyncIterator[tuple[httpx.AsyncClient, InMemorySpanExporter]]:
    """The app in-process with tracing on, its spans kept in memory."""
    settings = settings.model_copy(update={"api_keys": {"alice": SecretStr(KEY)}})
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = create_app(settings, source=source, telemetry=Telemetry(provider))
    async with (
        LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://test", headers=AUTH
        ) as client,
    ):
        yield client, exporter


def named(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    found = [span for span in spans if span.name == name]
    assert len(found) == 1, f"{name!r} in {[span.name for span in spans]}"
    return found[0]


def assert_links_to_the_answer(follower: ReadableSpan, spans: Sequence[ReadableSpan]) -> None:
    """A follower's span is in a trace of its own, linked to exactly the answer's span."""
    answer = named(spans, "chat.answer")
    assert answer.context is not None
    assert follower.context is not None
    assert follower.context.trace_id != answer.context.trace_id
    linked = [(link.context.trace_id, link.context.span_id) for link in follower.links]
    assert linked == [(answer.context.trace_id, answer.context.span_id)]


async def answer_spans(exporter: InMemorySpanExporter, model: str) -> list[ReadableSpan]:
    """Every span, once the answer's three have ended."""

    async def ended() -> list[ReadableSpan] | None:
        spans = list(exporter.get_finished_spans())
        names = {span.name for span in spans}
        return spans if {"chat.answer", f"chat {model}", "chat.answer.write"} <= names else None

    return await eventually(ended, "the answer's spans have ended")


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def assert_one_trace(spans: Sequence[ReadableSpan], model: str) -> ReadableSpan:
    """The request's server span, the answer's span under it, and the model's and writes' under that;
    returns the model's span."""
    request = next(
        span for span in spans if span.kind is SpanKind.SERVER and span.name.startswith("POST /chat")
    )
    answer = named(spans, "chat.answer")
    model_span = named(spans, f"chat {model}")
    writes = named(spans, "chat.answer.write")
    assert request.context is not None
    assert answer.context is not None
    assert parent_of(answer) == request.context.span_id
    assert parent_of(model_span) == answer.context.span_id
    assert parent_of(writes) == answer.context.span_id
    trace_ids = {span.context.trace_id for span in (request, answer, model_span, writes) if span.context}
    assert trace_ids == {request.context.trace_id}
    # Admission's Redis calls (the session's owner, with keys on) are traced by the redis instrumentation,
    # under the request's span.
    redis_spans = [
        span
        for span in spans
        if parent_of(span) == request.context.span_id and not span.name.startswith("chat.")
    ]
    assert redis_spans, [(span.name, dict(span.attributes or {})) for span in spans]
    assert model_span.kind is SpanKind.CLIENT
    assert model_span.attributes is not None
    assert model_span.attributes["gen_ai.operation.name"] == "chat"
    assert model_span.attributes["gen_ai.request.model"] == model
    assert model_span.attributes["gen_ai.response.model"] == model
    return model_span


async def test_a_simulated_answer_is_one_trace_with_a_genai_span_and_its_id_in_start(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="answer_run")
    async with traced_app(make_settings()) as (client, exporter):
        accepted = (await client.post("/chat", json=CHAT)).json()
        events = await collect(client, accepted["stream_url"])
        spans = await answer_spans(exporter, "simulated")
    model_span = assert_one_trace(spans, "simulated")
    assert model_span.attributes is not None
    assert model_span.attributes["gen_ai.provider.name"] == "simulated"
    assert model_span.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert float(model_span.attributes["gen_ai.response.time_to_first_chunk"]) >= 0  # type: ignore[arg-type]
    assert [event.name for event in model_span.events] == ["gen_ai.first_token"]
    # One span for the answer's writes, however many chunks it had.
    chunks = [event for event in events if event.event == "chunk"]
    assert len(chunks) > 1
    assert sum(1 for span in spans if span.name == "chat.answer.write") == 1
    writes = named(spans, "chat.answer.write")
    assert writes.attributes is not None
    assert writes.attributes["chat.events"] == len(events)
    # The trace id, for a frontend to report, and in the answer's log lines.
    answer = named(spans, "chat.answer")
    assert answer.context is not None
    trace_id = format_trace_id(answer.context.trace_id)
    assert events[0].event == "start"
    assert events[0].json()["trace_id"] == trace_id
    logged = [record.getMessage() for record in caplog.records if record.name == "answer_run"]
    assert any("answer started" in line and f"trace_id={trace_id}" in line for line in logged)
    assert any("answer ended" in line and f"trace_id={trace_id}" in line for line in logged)


async def test_an_upstream_answer_has_the_reported_usage_on_its_genai_span(
    openai_settings: Callable[..., Settings], model_server: OpenAIServer
) -> None:
    model_server.script(Reply(tokens=("Hi", " you"), usage=(11, 7)))
    async with traced_app(openai_settings()) as (client, exporter):
        accepted = (await client.post("/chat", json=CHAT)).json()
        await collect(client, accepted["stream_url"])
        spans = await answer_spans(exporter, "test-model")
    model_span = assert_one_trace(spans, "test-model")
    assert model_span.attributes is not None
    assert model_span.attributes["gen_ai.provider.name"] == "openai"
    assert model_span.attributes["gen_ai.usage.input_tokens"] == 11
    assert model_span.attributes["gen_ai.usage.output_tokens"] == 7
    assert model_span.status.status_code is not StatusCode.ERROR


async def test_an_upstream_failure_marks_the_model_span_as_an_error_with_its_code(
    openai_settings: Callable[..., Settings], model_server: OpenAIServer
) -> None:
    model_server.script(Reply(status=500))
    async with traced_app(openai_settings()) as (client, exporter):
        accepted = (await client.post("/chat", json=CHAT)).json()
        events = await collect(client, accepted["stream_url"])
        spans = await answer_spans(exporter, "test-model")
    assert events[-1].event == "answer_error"
    assert events[-1].json()["error"]["code"] == "upstream_error"
    model_span = assert_one_trace(spans, "test-model")
    assert model_span.status.status_code is StatusCode.ERROR
    assert model_span.status.description == "upstream_error"
    assert model_span.attributes is not None
    assert model_span.attributes["error.type"] == "upstream_error"
    assert named(spans, "chat.answer").status.status_code is StatusCode.ERROR


async def test_tracing_off_puts_no_trace_id_in_start(make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings(), telemetry=Telemetry(None))
    async with (
        LifespanManager(app, startup_timeout=30) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://test") as client,
    ):
        accepted = (await client.post("/chat", json=CHAT)).json()
        events = await collect(client, accepted["stream_url"])
    assert events[0].event == "start"
    assert "trace_id" not in events[0].json()
    assert chat_service(None) is ChatService  # off, `submit` opens no span: it is the plain one


# --- The real export path --------------------------------------------------------------------------


class OTLPReceiver:
    """The OTLP/HTTP traces endpoint of a collector, as small as it gets: decodes every export with the
    protocol's own protobuf classes and keeps the spans."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.resources: list[dict[str, str]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        status = 404
        if scope["path"] == "/v1/traces" and scope["method"] == "POST":
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            for resource_spans in request.resource_spans:
                attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                self.resources.append(attributes)
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend(scope_spans.spans)
            status = 200
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/x-protobuf")],
            }
        )
        await send({"type": "http.response.body", "body": b""})


@contextmanager
def otlp_receiver() -> Iterator[tuple[OTLPReceiver, str]]:
    receiver = OTLPReceiver()
    with serve(receiver, lifespan="off") as url:
        yield receiver, url


def test_a_chats_trace_arrives_over_otlp_http(start_service: Callable[..., ServiceProcess]) -> None:
    with otlp_receiver() as (receiver, url):
        service = start_service(
            OTEL_EXPORTER_OTLP_ENDPOINT=url,
            OTEL_BSP_SCHEDULE_DELAY="50",
            STREAM_DELAY="0",
            CHUNK_DELAY="0",
        )
        response = httpx.post(f"{service.url}/chat", json=CHAT, timeout=10)
        assert response.status_code == 202

        def arrived() -> list[Any] | None:
            names = {span.name for span in receiver.spans}
            return receiver.spans if {"chat.answer", "chat simulated", "chat.answer.write"} <= names else None

        spans = eventually_sync(arrived, "the answer's spans reach the receiver")
    answer = next(span for span in spans if span.name == "chat.answer")
    request = next(span for span in spans if span.span_id == answer.parent_span_id)
    assert request.name.startswith("POST /chat")
    assert request.trace_id == answer.trace_id
    model = next(span for span in spans if span.name == "chat simulated")
    attributes = {a.key: a.value for a in model.attributes}
    assert attributes["gen_ai.operation.name"].string_value == "chat"
    assert attributes["gen_ai.request.model"].string_value == "simulated"
    assert {"service.name": "ai-chat-service"}.items() <= receiver.resources[0].items()


def test_tracing_is_off_without_an_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert not Telemetry.from_environment().enabled
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    telemetry = Telemetry.from_environment()
    assert telemetry.enabled
    assert telemetry.provider is not None
    telemetry.provider.shutdown()


async def test_a_stream_following_an_answer_links_to_the_answers_trace(
    make_settings: Callable[..., Settings],
) -> None:
    async with traced_app(make_settings()) as (client, exporter):
        accepted = (await client.post("/chat", json=CHAT)).json()
        await collect(client, accepted["stream_url"])
        spans = await answer_spans(exporter, "simulated")
        exporter.clear()
        await collect(client, accepted["stream_url"])  # a follower that comes back later, in a new trace

        async def follower() -> ReadableSpan | None:
            servers = [
                span
                for span in exporter.get_finished_spans()
                if span.kind is SpanKind.SERVER and span.name.startswith("GET /stream")
            ]
            return servers[0] if servers else None

        stream = await eventually(follower, "the follower's span has ended")
    assert_links_to_the_answer(stream, spans)


def submit_under_request(
    spans: Sequence[ReadableSpan], request_name: str, message_id: str
) -> tuple[ReadableSpan, ReadableSpan]:
    """The request's server span and its `chat.submit` child, which started the answer `message_id`."""
    request = next(
        span for span in spans if span.kind is SpanKind.SERVER and span.name.startswith(request_name)
    )
    submit = named(spans, "chat.submit")
    assert request.context is not None
    assert submit.context is not None
    assert parent_of(submit) == request.context.span_id
    assert submit.attributes is not None
    assert submit.attributes["chat.message_id"] == message_id
    assert submit.attributes["chat.started"] is True
    return request, submit


async def test_the_claim_and_the_user_turns_write_are_a_span_under_the_request_in_the_answers_trace(
    make_settings: Callable[..., Settings],
) -> None:
    async with traced_app(make_settings()) as (client, exporter):
        accepted = (await client.post("/chat", json=CHAT)).json()
        await collect(client, accepted["stream_url"])
        spans = await answer_spans(exporter, "simulated")
    request, submit = submit_under_request(spans, "POST /chat", accepted["message_id"])
    answer = named(spans, "chat.answer")
    assert request.context is not None
    assert submit.context is not None
    assert answer.context is not None
    # The pipelined writes are not seen by the redis instrumentation: this span is the claim's and the
    # user turn's, a child of the request, beside the answer's span (which outlives it), in one trace.
    assert parent_of(answer) == request.context.span_id
    assert submit.context.trace_id == answer.context.trace_id == request.context.trace_id
    assert submit.attributes is not None
    assert submit.attributes["chat.session_id"] == CHAT["session_id"]
    assert submit.end_time is not None
    assert answer.end_time is not None
    assert submit.end_time <= answer.end_time


# The protocol routes that follow a running answer: (method, path, body) for its session and message id.
FOLLOWERS: dict[str, Callable[[str, str], tuple[str, str, dict[str, Any] | None]]] = {
    "ai_sdk_resume": lambda session, _: ("GET", f"/api/chat/{session}/stream", None),
    "agui_connect": lambda session, _: ("POST", "/agui/connect", run_input(session)),
    "responses_retrieve_stream": lambda _, message: (
        "GET",
        f"/v1/responses/resp_{uuid.UUID(message).hex}?stream=true",
        None,
    ),
}


@pytest.mark.parametrize("route", list(FOLLOWERS))
async def test_a_protocol_stream_following_an_answer_links_to_the_answers_trace(
    make_settings: Callable[..., Settings], route: str
) -> None:
    source = HeldSource(["Hello", " there"])
    async with traced_app(make_settings(), source) as (client, exporter):
        accepted = (await client.post("/chat", json=CHAT)).json()
        await source.written.wait()  # the answer runs: every one of these routes follows it
        method, path, body = FOLLOWERS[route](CHAT["session_id"], accepted["message_id"])
        exporter.clear()  # the follower's is then the only server span (`/metrics` is not traced)
        following = asyncio.create_task(client.request(method, path, json=body))

        async def streaming() -> bool:
            metrics = (await client.get("/metrics")).text
            return re.search(r"^chat_sse_clients 1\.0$", metrics, re.MULTILINE) is not None

        await eventually(streaming, "the follower follows the running answer")
        source.release.set()
        response = await following
        assert response.status_code == 200, response.text
        spans = await answer_spans(exporter, "scripted")

        async def follower() -> ReadableSpan | None:
            servers = [span for span in exporter.get_finished_spans() if span.kind is SpanKind.SERVER]
            return servers[0] if servers else None

        stream = await eventually(follower, "the follower's span has ended")
        assert stream.name.startswith(method)
    assert_links_to_the_answer(stream, spans)


async def test_a_regenerated_answers_claim_is_a_span_under_its_request(
    make_settings: Callable[..., Settings],
) -> None:
    async with traced_app(make_settings()) as (client, exporter):
        first = (await client.post("/chat", json=CHAT)).json()
        await collect(client, first["stream_url"])
        await answer_spans(exporter, "simulated")
        exporter.clear()
        regenerated = await client.post(f"/chat/{first['message_id']}/regenerate", json={"user_id": "u1"})
        assert regenerated.status_code == 202, regenerated.text
        await collect(client, regenerated.json()["stream_url"])
        spans = await answer_spans(exporter, "simulated")
    submit_under_request(spans, "POST /chat/", regenerated.json()["message_id"])
