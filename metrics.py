"""Prometheus metrics: HTTP requests, answers, SSE clients and errors, served at `/metrics`.

With several uvicorn workers, set `PROMETHEUS_MULTIPROC_DIR` to an empty directory the workers share
before starting them: prometheus-client then keeps each worker's values in files there and `/metrics`,
whichever worker answers, sums them (prometheus-client reads the variable when it is first imported).
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.routing import Match

if TYPE_CHECKING:
    from starlette.types import Scope

    from answer_run import Answer
    from usage.ledger import UsageRecord

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "UsageMetrics"]


LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A method label outside these is "OTHER": h11 takes any token as a method, and a client's made-up ones
# must not each make a time series.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"})
ANSWER_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """The service's metrics, on a registry of their own (so several apps in one process, as in the
    tests, do not collide). Also an `AnswerObserver` of the chat service."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = RequestMetrics(registry)
        self.active_answers = Gauge(
            "chat_active_answers",
            "Answers being generated now.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.chunks = Counter("chat_chunks_published", "Answer chunks published to Redis.", registry=registry)
        self.time_to_first_chunk = Histogram(
            "chat_time_to_first_chunk_seconds",
            "From accepting a chat to publishing its answer's first chunk.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.answer_duration = Histogram(
            "chat_answer_duration_seconds",
            "From accepting a chat to its answer's end, by finish reason.",
            ["finish_reason"],
            buckets=ANSWER_BUCKETS,
            registry=registry,
        )
        self.errors = Counter(
            "chat_errors",
            "Errors by code: HTTP error answers (source=http), answers ended by an error (source=answer).",
            ["source", "code"],
            registry=registry,
        )
        self.redis_errors = Counter(
            "chat_redis_errors",
            "Redis failures, by where they were noticed (request, answer, health).",
            ["where"],
            registry=registry,
        )
        self.feedback = Counter(
            "chat_feedback",
            "Ratings given to answers (POST /chat/{message_id}/feedback), by model and rating; a rating that "
            "replaces an earlier one counts too (issue #15).",
            ["model", "rating"],
            registry=registry,
        )
        self.sse_clients = Gauge(
            "chat_sse_clients",
            "Server-Sent Event clients connected now.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.usage = UsageMetrics(registry)

    def observe_request(
        self, scope: Scope, status: int, seconds: float, *, streaming: bool, error_body: bytes | None
    ) -> None:
        """One HTTP request answered (`protocols/edge.py`): counted by method, route template and status,
        timed unless it was an event stream, and an error counted by its code (`error_body` is its
        start, for a status of 400 or more)."""
        method = scope["method"] if scope["method"] in HTTP_METHODS else "OTHER"
        self.requests.count(method, _route_template(scope), status, None if streaming else seconds)
        if status >= 400:
            code = _error_code(error_body)
            self.errors.labels("http", code).inc()
            if code == "redis_unavailable":
                self.redis_errors.labels("request").inc()

    def render(self) -> bytes:
        """The exposition text: this process's metrics, or with several workers every live worker's."""
        if multiprocess_dir() is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    def close(self) -> None:
        """On shutdown: a worker's live gauges (active answers, SSE clients) stop counting."""
        if multiprocess_dir() is not None:
            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]

    # -- AnswerObserver --

    def answer_started(self, answer: Answer) -> None:
        self.active_answers.inc()

    def chunk_published(self, answer: Answer) -> None:
        self.chunks.inc()
        if answer.seq == 1:
            self.time_to_first_chunk.observe(time.perf_counter() - answer.started)

    def answer_ended(self, answer: Answer) -> None:
        self.active_answers.dec()
        self.answer_duration.labels(answer.finish_reason or "lost").observe(
            time.perf_counter() - answer.started
        )
        if answer.error_code is not None:
            self.errors.labels("answer", answer.error_code).inc()
            if answer.error_code == "redis_unavailable":
                self.redis_errors.labels("answer").inc()


# The kinds of tokens `chat_tokens` counts.
KINDS = ("prompt", "completion", "reasoning")


class RequestMetrics:
    """HTTP requests: counted by method, route template and status, and timed."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.total = Counter(
            "chat_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "chat_http_request_duration_seconds",
            "Time to answer an HTTP request (Server-Sent Event streams are not included).",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        # Each (method, route, status)'s counter and histogram, looked up once (bounded: route templates,
        # the standard methods and the status codes).
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def count(self, method: str, route: str, status: int, seconds: float | None) -> None:
        """One request answered; `seconds` None for one that is not timed (an event stream)."""
        if (series := self._series.get((method, route, status))) is None:
            series = self._series[method, route, status] = (
                self.total.labels(method, route, str(status)),
                self.latency.labels(method, route),
            )
        total, latency = series
        total.inc()
        if seconds is not None:
            latency.observe(seconds)


class UsageMetrics:
    """Usage and budgets (issue #16). `key` is the API key's name (`-` on an open service): a bounded set,
    from API_KEYS. `source`: `reported` by the model, or `counted` here with tiktoken."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.tokens = Counter(
            "chat_tokens",
            "Tokens spent by answers, by API key name, model, kind (prompt, completion, reasoning), source.",
            ["key", "model", "kind", "source"],
            registry=registry,
        )
        self.cost = Counter(
            "chat_cost_usd",
            "What answers cost by the PRICES table, in USD, by API key name and model.",
            ["key", "model"],
            registry=registry,
        )
        self.accounted_answers = Counter(
            "chat_accounted_answers",
            "Answers whose usage was recorded, by API key name and model.",
            ["key", "model"],
            registry=registry,
        )
        self.budget_refusals = Counter(
            "chat_budget_refusals",
            "Answers refused because their API key had spent its budget, by API key name.",
            ["key"],
            registry=registry,
        )
        # Each (key, model, source)'s labelled counters, looked up once: `labels()` costs more than the
        # increment, and this runs for every answer. As bounded as the series themselves.
        self._children: dict[tuple[str, str, bool], tuple[Any, ...]] = {}

    def record(self, record: UsageRecord) -> None:
        """A `UsageRecorder` sink: the answer's tokens and cost in the counters."""
        series = (record.key, record.model, record.counted)
        if (children := self._children.get(series)) is None:
            source = "counted" if record.counted else "reported"
            children = self._children[series] = (
                *(self.tokens.labels(record.key, record.model, kind, source) for kind in KINDS),
                self.cost.labels(record.key, record.model),
                self.accounted_answers.labels(record.key, record.model),
            )
        prompt, completion, reasoning, cost, answers = children
        prompt.inc(record.prompt_tokens)
        completion.inc(record.completion_tokens)
        reasoning.inc(record.reasoning_tokens)
        cost.inc(record.cost_nanos / 1_000_000_000)
        answers.inc()


def _route_template(scope: Scope) -> str:
    """The matched route's template (`/history/{session_id}`), never the raw path: ids would make
    one time series per session. Unmatched paths share one label."""
    matched = scope.get("route")  # set by Starlette's router when it routed the request
    if matched is not None:
        return str(getattr(matched, "path", "unmatched"))
    app = scope.get("app")  # refused before routing (a body too large): match it ourselves
    router = getattr(app, "router", None)
    for route in getattr(router, "routes", ()):
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return str(getattr(route, "path", "unmatched"))
    return "unmatched"


def _error_code(body: bytes | None) -> str:
    try:
        code = orjson.loads(body or b"")["error"]["code"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "unknown"
    return code if isinstance(code, str) and len(code) <= 64 else "unknown"
