"""The live side of the replay log: one process's PubSub doorbell, fanned out to its listeners.

PubSub is at-most-once, so it is used here only as a doorbell. After a wake-up from PubSub, a periodic
poll, or a reconnect, the hub reads the session's replay log from the last entry it dispatched and hands
the new entries to every local listener of the session, so a lost PubSub message delays an event by at
most `SSE_POLL_SECONDS` but never loses it.

One `StreamHub` per process holds one PubSub connection and reads the logs through one batched
pipeline, whatever the number of listeners: connections to Redis do not grow with clients.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from redis.asyncio.cluster import ClusterPubSub, RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from redis_client import KeySpace, RedisClient, RedisUnavailable
from stores.replay_log import Entry, ReplayLog

__all__ = ["Listener", "StreamHub"]

logger = logging.getLogger(__name__)


@dataclass(eq=False, slots=True)
class Listener:
    """One SSE client's inbox. When a slow client lets it fill up, it is marked `lagged` and emptied:
    the client then catches up from the replay log instead of holding memory.

    Thousands of idle clients each hold one: it is kept small (a list, not a deque, for the inbox; a
    future only while waiting, no asyncio.Event, no timer of its own: the hub tells it when a keepalive
    is due).
    """

    limit: int
    entries: list[Entry] = field(default_factory=list)
    feed: SessionFeed | None = None  # set while it follows a session (`StreamHub.join`)
    lagged: bool = False
    closed: bool = False
    ping_due: bool = False
    # loop.time() of the last thing sent to the client, for keepalives
    active: float = 0.0
    woken: bool = False
    waiter: asyncio.Future[None] | None = None

    def push(self, entry: Entry) -> None:
        if len(self.entries) >= self.limit:
            self.entries.clear()
            self.lagged = True
        else:
            self.entries.append(entry)
        self.wake()

    def close(self) -> None:
        """The client left, or the server is stopping: its stream ends at its next wake-up."""
        self.closed = True
        self.wake()

    def wake(self) -> None:
        self.woken = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def wait(self) -> None:
        """Until something is pushed, a keepalive is due, or the listener is closed."""
        if not self.woken:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        self.woken = False


@dataclass(eq=False, slots=True)
class SessionFeed:
    """The live events of one session, fanned out to the local listeners that follow it."""

    session_id: str
    channel: str
    listeners: set[Listener] = field(default_factory=set)
    last: str | None = None  # the newest log entry dispatched; None until the feed has read its position
    fetching: bool = False
    dirty: bool = False
    open_answers: set[str] = field(default_factory=set)


class StreamHub:
    """Per-process relay between the sessions' Redis logs and the SSE clients of this process."""

    def __init__(
        self,
        redis: RedisClient,
        keys: KeySpace,
        log: ReplayLog,
        *,
        poll_interval: float,
        listener_limit: int,
        on_control: Callable[[bytes], None],
        ping_interval: float = 15.0,
        draining: Callable[[], bool] = lambda: False,
    ) -> None:
        """`draining`: whether the server has begun to shut down; every listener is then closed, since
        the server waits for its open responses to end before it runs the application's shutdown."""
        self._redis = redis
        self._draining = draining
        self._ping_interval = ping_interval
        self._pinger: asyncio.Task[None] | None = None
        self._keys = keys
        self.log = log
        self._poll_interval = poll_interval
        self._listener_limit = listener_limit
        self._on_control = on_control
        self._feeds: dict[str, SessionFeed] = {}
        self._by_channel: dict[bytes, SessionFeed] = {}
        self._pubsub = redis.pubsub()
        self._subscribe_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._fetches: set[asyncio.Task[None]] = set()
        self._shard_readers: dict[str, asyncio.Task[None]] = {}
        self.connected = False

    async def start(self) -> None:
        """Subscribe and start relaying; if Redis is down, keep trying in the background."""
        await self._resubscribe()
        if not self.connected:
            logger.warning("stream hub cannot subscribe yet; retrying in the background")
        self._task = asyncio.create_task(self._run(), name="stream-hub")
        self._pinger = asyncio.create_task(self._ping(), name="stream-hub-ping")

    async def _ping(self) -> None:
        """Tell each listener idle for `ping_interval` to send a keepalive: one timer for all clients."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._ping_interval / 4)
            due = loop.time() - self._ping_interval
            for feed in self._feeds.values():
                for listener in feed.listeners:
                    if listener.active <= due:
                        listener.ping_due = True
                        listener.wake()

    def close_listeners(self) -> None:
        """End every client's stream: the server is stopping, and waits for its connections."""
        for feed in self._feeds.values():
            for listener in feed.listeners:
                listener.close()

    async def close(self) -> None:
        self.close_listeners()
        if self._pinger is not None:
            self._pinger.cancel()
            await asyncio.gather(self._pinger, return_exceptions=True)
            self._pinger = None
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        pending = [*self._fetches, *self._shard_readers.values()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    # -- following a session --

    async def join(self, session_id: str) -> Listener:
        """Follow a session's live events until `leave`: the caller leaves in a `finally` (an
        idle client holds the listener alone, not a context manager's generator as well)."""
        listener = Listener(limit=self._listener_limit, active=asyncio.get_running_loop().time())
        feed = self._feeds.get(session_id)
        if feed is None:
            feed = SessionFeed(session_id, self._keys.channel(session_id))
            self._feeds[session_id] = feed
            self._by_channel[feed.channel.encode()] = feed
            feed.listeners.add(listener)
            listener.feed = feed
            try:
                async with self._subscribe_lock:
                    await self._subscribe_or_defer(feed.channel)
                newest = await self.log.newest(session_id)
            except BaseException:
                self.leave(listener)
                raise
            feed.last = newest or "0-0"
            if feed.dirty:
                self._notify(feed)
        else:
            feed.listeners.add(listener)
            listener.feed = feed
        return listener

    def leave(self, listener: Listener) -> None:
        """Stop following; the session's channel is unsubscribed once its last local listener left."""
        feed, listener.feed = listener.feed, None
        if feed is not None:
            self._release(feed, listener)

    def _release(self, feed: SessionFeed, listener: Listener) -> None:
        feed.listeners.discard(listener)
        if feed.listeners or self._feeds.get(feed.session_id) is not feed:
            return
        del self._feeds[feed.session_id]
        del self._by_channel[feed.channel.encode()]
        task = asyncio.create_task(self._unsubscribe(feed.channel), name="stream-hub-unsubscribe")
        self._fetches.add(task)
        task.add_done_callback(self._fetches.discard)

    async def _unsubscribe(self, channel: str) -> None:
        try:
            async with self._subscribe_lock:
                if channel.encode() not in self._by_channel:
                    await self._unsubscribe_now(channel)
        except (RedisError, RedisClusterException, OSError) as error:
            logger.debug("unsubscribe from %s failed: %s", channel, error)

    # -- the PubSub doorbell --

    async def _run(self) -> None:
        last_poll = time.monotonic()
        backoff = 0.1
        while True:
            if self._draining():
                self.close_listeners()
            if not self.connected:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                await self._resubscribe()
                continue
            try:
                message = await self._next_message()
                self.connected = True
                backoff = 0.1
            except (RedisError, RedisClusterException, OSError) as error:
                logger.warning("stream hub lost its PubSub connection: %s", type(error).__name__)
                self.connected = False
                continue
            if message is not None:
                self._handle(message)
            if time.monotonic() - last_poll >= self._poll_interval:
                last_poll = time.monotonic()
                for feed in self._feeds.values():
                    if feed.open_answers:
                        self._notify(feed)

    # On a cluster every channel is sharded (SSUBSCRIBE goes to the node owning the channel's slot);
    # elsewhere plain SUBSCRIBE, so `redis-cli SUBSCRIBE chat:<session>` sees the same messages.

    async def _subscribe(self, *channels: str) -> None:
        if self._keys.sharded:
            assert isinstance(self._redis, RedisCluster)
            # The cluster's slot map is needed to pick each channel's node; this loads it once.
            await self._redis.initialize()
            await self._pubsub.ssubscribe(*channels)
        else:
            await self._pubsub.subscribe(*channels)

    async def _subscribe_or_defer(self, channel: str) -> None:
        """Subscribe a new feed; if the shared connection is being re-made under us (redis-py's reader
        reconnecting while we subscribe: "read() called while another coroutine is already waiting"),
        leave it to the doorbell's resubscribe, which subscribes every feed and reads what it missed."""
        try:
            await self._subscribe(channel)
        except (RedisError, RedisClusterException, OSError, RuntimeError) as error:
            logger.warning("stream hub could not subscribe to %s now: %s", channel, type(error).__name__)
            self.connected = False

    async def _unsubscribe_now(self, channel: str) -> None:
        if self._keys.sharded:
            await self._pubsub.sunsubscribe(channel)
        else:
            await self._pubsub.unsubscribe(channel)

    async def _next_message(self) -> dict[str, Any] | None:
        if self._keys.sharded:
            # Each shard's connection is read by its own task (`_read_shard`): asking them in turn
            # would hold every message behind the others' timeouts.
            self._start_shard_readers()
            await asyncio.sleep(self._poll_interval)
            return None
        message = await self._pubsub.get_message(timeout=self._poll_interval)
        return cast(dict[str, Any] | None, message)

    def _start_shard_readers(self) -> None:
        assert isinstance(self._pubsub, ClusterPubSub)
        for name in self._pubsub.node_pubsub_mapping:
            if name not in self._shard_readers:
                task = asyncio.create_task(self._read_shard(name), name=f"stream-hub-shard-{name}")
                self._shard_readers[name] = task

    async def _read_shard(self, name: str) -> None:
        assert isinstance(self._pubsub, ClusterPubSub)
        assert isinstance(self._redis, RedisCluster)
        node = self._redis.get_node(node_name=name)
        try:
            while name in self._pubsub.node_pubsub_mapping:
                message = await self._pubsub.get_sharded_message(
                    target_node=node, timeout=self._poll_interval
                )
                if message is not None:
                    self._handle(message)
        except (RedisError, RedisClusterException, OSError) as error:
            logger.warning("stream hub lost its PubSub connection to %s: %s", name, type(error).__name__)
            self.connected = False
        finally:
            del self._shard_readers[name]

    async def _resubscribe(self) -> None:
        """After a lost connection: subscribe again, then read every feed's log for what was missed."""
        try:
            async with self._subscribe_lock:
                await self._subscribe(self._keys.control, *(feed.channel for feed in self._feeds.values()))
        except (RedisError, RedisClusterException, OSError):
            return
        self.connected = True
        logger.info("stream hub resubscribed to %d sessions", len(self._feeds))
        for feed in self._feeds.values():
            self._notify(feed)

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        channel = message["channel"]
        if kind in ("message", "smessage") and channel == self._keys.control.encode():
            self._on_control(message["data"])
            return
        feed = self._by_channel.get(channel)
        # A `subscribe` confirmation also rings: redis-py resubscribes by itself after a reconnect,
        # and anything published while the connection was down must be read from the log.
        if feed is not None and kind in ("message", "subscribe", "smessage", "ssubscribe"):
            self._notify(feed)

    def _notify(self, feed: SessionFeed) -> None:
        if feed.fetching or feed.last is None:
            feed.dirty = True
            return
        feed.fetching = True
        task = asyncio.create_task(self._fetch(feed), name=f"stream-hub-fetch-{feed.session_id}")
        self._fetches.add(task)
        task.add_done_callback(self._fetches.discard)

    async def _fetch(self, feed: SessionFeed) -> None:
        try:
            while True:
                feed.dirty = False
                assert feed.last is not None
                for entry in await self.log.read_after(feed.session_id, feed.last):
                    feed.last = entry.id
                    if entry.terminal:
                        feed.open_answers.discard(entry.message_id)
                    else:
                        feed.open_answers.add(entry.message_id)
                    for listener in feed.listeners:
                        listener.push(entry)
                if not feed.dirty:
                    return
        except RedisUnavailable as error:
            logger.warning("could not read the log of session %s: %s", feed.session_id, error.reason)
        finally:
            feed.fetching = False
