"""The services builder: the whole object graph of one process, opened in order and closed in reverse.

The lifespan, the tests and the benchmark all build the service through `build_services`, so what runs
in production is what they run. It is an `AsyncExitStack`: each piece's close is pushed as it is opened,
so a failure half-way through start-up closes what was opened, and shutdown ends running answers first,
then stops following streams, then closes the connections they used.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import partial

from prometheus_client import CollectorRegistry

from admission import Admission
from ai_service import AnswerObserver, ChatService
from archiver import Archiver, ArchiveRunner
from archiver_process import ArchiverProcess
from batcher import CommandBatcher
from branches import Branches
from config import SERVICE_NAME, VERSION, Settings
from health import PubSubProbe, Readiness
from hub import StreamHub
from leases import AnswerEnds, LeaseKeeper
from metrics import Metrics
from providers import create_answer_source
from providers.base import AnswerSource
from records.database import create_engine, migrate
from records.history import owner_in_record
from records.store import ConversationStore
from redis_client import KeySpace, RedisClient, create_redis
from redis_wire import RedisPipe, open_pipe
from stores.answers import AnswerRegistry
from stores.history import HistoryStore
from stores.leases import AnswerLeases
from stores.outbox import Outbox
from stores.replay_log import ReplayLog
from telemetry import AnswerTracer, Telemetry, chat_service
from titles import TitleWriter
from usage.budgets import Budgets
from usage.ledger import UsageLedger
from usage.recorder import UsageRecorder
from usage.tokens import TokenCounter

__all__ = ["HEALTH_TIMEOUT", "Services", "build_services"]

logger = logging.getLogger(__name__)

# /health answers within this many seconds, whatever Redis does.
HEALTH_TIMEOUT = 1.5


@dataclass(frozen=True, slots=True)
class Services:
    """What one process runs on, for the routes' dependencies (`protocols/deps.py`) and for tests."""

    settings: Settings
    redis: RedisClient
    keys: KeySpace
    history: HistoryStore
    answers: AnswerRegistry
    log: ReplayLog
    hub: StreamHub
    chat: ChatService
    admission: Admission
    probe: PubSubProbe
    metrics: Metrics
    readiness: Readiness
    keeper: LeaseKeeper
    usage: UsageLedger
    budgets: Budgets
    telemetry: Telemetry
    # The conversation record and the task that archives into it (issue #15).
    records: ConversationStore
    archiver: ArchiveRunner


EMBEDDED_WARNING = (
    "no REDIS_URL or REDIS_HOST set: using the embedded in-process Redis; "
    "history lives only as long as this process and no other process can subscribe"
)


@asynccontextmanager
async def build_services(
    settings: Settings,
    *,
    metrics: Metrics | None = None,
    source: AnswerSource | None = None,
    draining: Callable[[], bool] = lambda: False,
    end_retry_seconds: float | None = None,
    pipes: Callable[[RedisClient], RedisPipe] = open_pipe,
    telemetry: Telemetry | None = None,
) -> AsyncIterator[Services]:
    """Open everything the service needs for `settings`; close it all, in reverse, on exit.

    `source` replaces the configured answer source (embedding, benchmarks); `draining` tells the stream
    hub that the server is shutting down (`draining.py`); `end_retry_seconds` bounds how long an answer
    keeps trying to store its end while Redis is down (ANSWER_END_RETRY_SECONDS unless given); `pipes`
    opens the batchers' connections (tests wrap them); `telemetry` traces answers (off when not given).
    """
    if settings.embedded_redis:
        logger.warning(EMBEDDED_WARNING)
    metrics = metrics or Metrics()
    telemetry = telemetry or Telemetry()
    async with AsyncExitStack() as stack:
        stack.callback(metrics.close)
        redis = create_redis(settings)
        stack.push_async_callback(redis.aclose)
        stack.enter_context(telemetry.tracing(redis, settings.redis_key_prefix))
        keys = KeySpace(settings.redis_key_prefix, sharded=settings.redis_cluster)
        batchers = _batchers(stack, settings, redis, pipes)
        answer_source = source or create_answer_source(settings)
        stack.push_async_callback(answer_source.aclose)
        if end_retry_seconds is None:
            end_retry_seconds = settings.answer_end_retry_seconds
        recorder, budgets = _accounting(settings, redis, batchers[0], answer_source, metrics)
        titles = _titles(settings, answer_source, redis, keys)
        observing = (metrics, telemetry, recorder, budgets, titles)
        sql = await _open_archive(stack, settings, redis, keys, metrics.registry, model=answer_source.model)
        services = _assemble(
            settings, redis, keys, batchers, answer_source, observing, draining, end_retry_seconds, sql
        )
        await recorder.start()
        stack.push_async_callback(recorder.close)
        if titles is not None:  # stopped after the chat service has shut down, as the recorder
            titles.start()
            stack.push_async_callback(titles.close)
        await _start(services, stack)
        # What start-up built lives as long as the process: take it out of the garbage collector's
        # full collections, which otherwise walk all of it and stall every stream (71 ms with 2,000
        # answers running; issue #6, scenario d).
        gc.collect()
        gc.freeze()
        stack.callback(gc.unfreeze)
        logger.info("%s %s started; redis=%s", SERVICE_NAME, VERSION, settings.redis_location())
        yield services
    logger.info("%s stopped", SERVICE_NAME)


def _batchers(
    stack: AsyncExitStack, settings: Settings, redis: RedisClient, pipes: Callable[[RedisClient], RedisPipe]
) -> tuple[CommandBatcher, CommandBatcher]:
    """The event writer and the log reader, each on a connection of its own, closed by `stack`."""
    writer, reader = (
        CommandBatcher(pipes(redis), timeout=settings.redis_timeout, name=name)
        for name in ("event-writer", "log-reader")
    )
    for batcher in (writer, reader):
        batcher.start()
        stack.push_async_callback(batcher.close)
    return writer, reader


async def _start(services: Services, stack: AsyncExitStack) -> None:
    """Start what runs in the background, each closed in reverse by `stack`; the chat service last."""
    await services.hub.start()
    stack.push_async_callback(services.hub.close)
    services.admission.start()
    stack.push_async_callback(services.admission.close)
    # Renewing leases until the last answer has ended (and ending predecessors' lost ones).
    services.keeper.start()
    stack.push_async_callback(services.keeper.close)
    stack.push_async_callback(_shutdown_chat, services)


async def _shutdown_chat(services: Services) -> None:
    """End the answers within what is left of the grace period once the streams have drained: the grace
    is counted once, from when the server began to drain (issue #13, item 6)."""
    await services.chat.shutdown(began=services.admission.sse_clients.draining_since)


def _lease_keeper(
    settings: Settings,
    redis: RedisClient,
    keys: KeySpace,
    writer: CommandBatcher,
    history: HistoryStore,
    answers: AnswerRegistry,
    log: ReplayLog,
    leases: AnswerLeases,
) -> LeaseKeeper:
    """How answers' ends are written, and their leases kept (`leases.py`)."""
    ends = AnswerEnds(
        redis,
        writer,
        keys,
        history=history,
        answers=answers,
        log=log,
        leases=leases,
        timeout=settings.redis_timeout,
    )
    return LeaseKeeper(
        ends,
        writer,
        log=log,
        answers=answers,
        # Often enough that neither the lease nor the session's TTL runs out between two renewals.
        renew_seconds=min(settings.answer_lease_seconds, settings.chat_history_ttl) / 3,
        sweep_seconds=settings.answer_sweep_seconds,
    )


def _titles(
    settings: Settings, source: AnswerSource, redis: RedisClient, keys: KeySpace
) -> TitleWriter | None:
    """Model-written titles (issue #15), only with AI_TITLES=true."""
    if not settings.ai_titles:
        return None
    return TitleWriter(source, redis, keys, timeout=settings.redis_timeout, ai_timeout=settings.ai_timeout)


def _accounting(
    settings: Settings, redis: RedisClient, writer: CommandBatcher, source: AnswerSource, metrics: Metrics
) -> tuple[UsageRecorder, Budgets]:
    """Usage accounting and budgets (issue #16): the ledger adds through the event writer."""
    timeout, prefix = settings.redis_timeout, settings.redis_key_prefix
    budgets = Budgets(
        redis,
        prefix,
        settings.budgets,
        timeout,
        hold_seconds=settings.budget_hold_seconds,
        refused=lambda key: metrics.usage.budget_refusals.labels(key).inc(),
    )
    ledger = UsageLedger(
        redis,
        writer,
        prefix,
        retention_days=settings.usage_retention_days,
        session_ttl=settings.chat_history_ttl,
        timeout=timeout,
    )
    recorder = UsageRecorder(
        ledger,
        budgets,
        lambda: TokenCounter(source.model),
        model=source.model,
        prices=settings.prices,
        sinks=(metrics.usage.record,),
    )
    return recorder, budgets


def _stores(
    settings: Settings, redis: RedisClient, keys: KeySpace, batchers: tuple[CommandBatcher, CommandBatcher]
) -> tuple[HistoryStore, AnswerRegistry, ReplayLog, AnswerLeases]:
    """The stores of turns, answer states, the replay log and the answers' leases."""
    ttl, timeout = settings.chat_history_ttl, settings.redis_timeout
    writer, reader = batchers
    history = HistoryStore(
        redis,
        writer,
        keys,
        ttl=ttl,
        max_messages=settings.max_history_messages,
        timeout=timeout,
        wait_replicas=settings.redis_wait_replicas,
    )
    leases = AnswerLeases(keys, reader, seconds=settings.answer_lease_seconds)
    answers = AnswerRegistry(redis, writer, keys, leases, ttl=ttl, timeout=timeout)
    log = ReplayLog(keys, reader, maxlen=settings.stream_maxlen, ttl=ttl)
    return history, answers, log, leases


def _assemble(
    settings: Settings,
    redis: RedisClient,
    keys: KeySpace,
    batchers: tuple[CommandBatcher, CommandBatcher],
    source: AnswerSource,
    observing: tuple[Metrics, Telemetry, UsageRecorder, Budgets, TitleWriter | None],
    draining: Callable[[], bool],
    end_retry_seconds: float,
    record: tuple[ConversationStore, ArchiveRunner],
) -> Services:
    """The stores, the hub, admission and the chat service over open connections (nothing runs yet)."""
    timeout, writer = settings.redis_timeout, batchers[0]
    metrics, telemetry, recorder, budgets, titles = observing
    history, answers, log, leases = _stores(settings, redis, keys, batchers)
    keeper = _lease_keeper(settings, redis, keys, writer, history, answers, log, leases)
    admission = Admission(settings, redis, keys, budgets=budgets, sse_gauge=metrics.sse_clients)
    admission.record_owner = partial(owner_in_record, record[0])
    probe = PubSubProbe(redis, keys, timeout=min(timeout, HEALTH_TIMEOUT))
    hub = _hub(
        settings, redis, keys, log, probe.wrap(lambda data: chat.on_control(data)), admission, draining
    )
    tracer = _tracer(settings, telemetry, source, writer)
    chat = chat_service(tracer)(
        settings,
        history=history,
        answers=answers,
        log=log,
        hub=hub,
        writer=writer,
        keys=keys,
        source=source,
        keeper=keeper,
        branches=Branches(settings, history=history, log=log, keys=keys, records=record[0]),
        observers=_observers((metrics, admission, keeper, recorder, *filter(None, [titles])), tracer),
        end_retry_seconds=end_retry_seconds,
    )
    memory = not settings.embedded_redis  # a probe of INFO memory (fakeredis has no maxmemory)
    readiness = Readiness(redis, keys, probe.round_trip, timeout=min(timeout, HEALTH_TIMEOUT), memory=memory)
    stores = (history, answers, log, hub, chat, admission, probe, metrics, readiness, keeper)
    return Services(settings, redis, keys, *stores, recorder.ledger, budgets, telemetry, *record)


def _hub(
    settings: Settings,
    redis: RedisClient,
    keys: KeySpace,
    log: ReplayLog,
    on_control: Callable[[bytes], None],
    admission: Admission,
    draining: Callable[[], bool],
) -> StreamHub:
    """The process's PubSub doorbell and fan-out to its stream clients."""
    return StreamHub(
        redis,
        keys,
        log,
        poll_interval=settings.sse_poll_seconds,
        listener_limit=settings.sse_queue_limit,
        on_control=on_control,
        ping_interval=settings.sse_ping_seconds,
        # Open streams end within half the grace period, well before uvicorn stops waiting for them
        # (`app.server_options`), so that none is cancelled under the server's feet.
        draining=admission.sse_clients.on_draining(draining, within=settings.shutdown_grace_seconds / 2),
    )


def _tracer(
    settings: Settings, telemetry: Telemetry, source: AnswerSource, writer: CommandBatcher
) -> AnswerTracer | None:
    """The answers' tracer, only when tracing is on: off, it costs nothing."""
    return telemetry.observer(
        provider=source.name,
        model=source.model,
        writer=writer,
        prefix=settings.redis_key_prefix,
        ttl=settings.chat_history_ttl,
    )


def _observers(observers: tuple[AnswerObserver, ...], tracer: AnswerTracer | None) -> list[AnswerObserver]:
    """Who hears of each answer's life."""
    # The tracer first: the answer's trace id is set before anything logs it.
    return [*observers] if tracer is None else [tracer, *observers]


async def _open_archive(
    stack: AsyncExitStack,
    settings: Settings,
    redis: RedisClient,
    keys: KeySpace,
    registry: CollectorRegistry,
    *,
    model: str | None,
) -> tuple[ConversationStore, ArchiveRunner]:
    """The conversation record, migrated (under the lock), and its archiver, running (a task on this
    loop, or a child process: ARCHIVER); closed by `stack`."""
    engine = create_engine(settings)
    stack.push_async_callback(engine.dispose)
    await migrate(engine)
    store = ConversationStore(engine, model=model)
    outbox = Outbox(redis, keys, timeout=settings.redis_timeout)
    archiver: Archiver | ArchiverProcess
    mode = settings.archiver_mode
    if mode == "process":
        archiver = ArchiverProcess(outbox, registry, settings, model=model)
    else:
        archiver = Archiver.configured(outbox, store, registry, settings)
    archiver.start()
    stack.push_async_callback(archiver.close)
    logger.info("conversation record: %s, archived by %s", settings.database_location(), mode)
    return store, archiver
