"""The durable outbox: every stored turn, appended to a Redis Stream in the same transaction as the
history write, for the archiver to copy into the conversation record (issue #15).

Readers form one consumer group (`archiver`): each instance reads new entries as its own consumer,
re-reads its own unacknowledged ones after a failure, and claims those another consumer has held too
long (a killed process). An archived entry is acknowledged and deleted, so the stream holds exactly
what is not archived yet: its length is the lag, its first entry the oldest.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import RedisCluster
from redis.exceptions import ResponseError
from redis.typing import EncodableT, FieldT

from redis_client import Command, KeySpace, RedisClient, bounded

__all__ = [
    "GROUP",
    "Outbox",
    "OutboxEntry",
    "outbox_append",
    "outbox_branch",
    "outbox_title",
    "position_of_entry",
]

logger = logging.getLogger(__name__)

GROUP = "archiver"
# Entries the record refused, kept per outbox for an operator (`Outbox.set_aside`).
REJECTED_KEPT = 10_000
# How long a deleted conversation's mark outlives it: longer than any batch the archiver may be storing.
DELETED_SECONDS = 3600


def outbox_append(keys: KeySpace, session_id: str, turn: str, owner: str | None = None) -> Command:
    """The XADD of one stored turn: its JSON as history holds it (`ChatTurn.model_dump_json`), and the
    name of the API key that owns the session (none on an open service), so that the record has it
    however late the turn is archived (the owner record expires with the session's history)."""
    command: Command = ("XADD", keys.outbox(session_id), "*", "s", session_id, "t", turn)
    return (*command, "o", owner) if owner else command


def outbox_branch(keys: KeySpace, session_id: str, leaf: str) -> Command:
    """The XADD that makes the exchange `leaf` the end of the session's active branch in the record
    ("" for none: an edited first message follows), in the transaction that rewrites its history."""
    return ("XADD", keys.outbox(session_id), "*", "s", session_id, "b", leaf)


def outbox_title(keys: KeySpace, session_id: str, title: str, derived: str) -> Command:
    """The XADD of a model-written title (`titles.py`), applied only while the conversation's title is
    still `derived`, the one taken from its first message (a rename in the meantime is kept)."""
    return ("XADD", keys.outbox(session_id), "*", "s", session_id, "a", title, "f", derived)


def position_of_entry(entry_id: str) -> int:
    """An entry id (`ms-seq`) as one ordered number: the order the turns were stored in."""
    ms, _, seq = entry_id.partition("-")
    return int(ms) * 1_000_000 + int(seq or 0)


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One entry read from an outbox; `turn` is None for an entry deleted while it was pending, for
    a switch of the active branch, whose new end (an exchange's message_id) is `branch`, and for a
    model-written title: (the title, the derived title it replaces) in `title`. `owner`: the session's
    API key as the turn was stored (None when the entry names none: an open service's)."""

    stream: str
    entry_id: str
    session_id: str
    turn: dict[str, Any] | None
    branch: str | None = None
    title: tuple[str, str] | None = None
    owner: str | None = None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entries(stream: str, raw: Iterable[Any]) -> list[OutboxEntry]:
    entries = []
    for entry_id, fields in raw:
        turn = session = branch = title = owner = None
        if fields:
            session = _text(fields.get(b"s", b""))
            owner = _text(fields[b"o"]) if b"o" in fields else None
            if b"b" in fields:
                branch = _text(fields[b"b"])
            elif b"a" in fields:
                title = (_text(fields[b"a"]), _text(fields.get(b"f", b"")))
            else:
                try:
                    turn = orjson.loads(fields.get(b"t", b""))
                except orjson.JSONDecodeError:
                    logger.warning("dropping an unreadable outbox entry %s", _text(entry_id))
        entries.append(OutboxEntry(stream, _text(entry_id), session or "", turn, branch, title, owner))
    return entries


class Outbox:
    """One instance's consumer of the outbox (or, on a cluster, of every session's outbox)."""

    def __init__(self, redis: RedisClient, keys: KeySpace, *, timeout: float, consumer: str = "") -> None:
        self._redis = redis
        self._keys = keys
        self._timeout = timeout
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._grouped: set[str] = set()

    async def streams(self) -> list[str]:
        """The outboxes to read: the one stream, or every session's on a cluster."""
        if not isinstance(self._redis, RedisCluster):
            return [self._keys.outbox("")]
        async with bounded(self._timeout * 5):
            return [_text(key) async for key in self._redis.scan_iter(self._keys.outbox_pattern, 500)]

    async def _ensure_group(self, stream: str) -> bool:
        """Whether the stream exists, with the group on it (no key is made for an empty outbox)."""
        if stream in self._grouped:
            return True
        async with bounded(self._timeout):
            try:
                # From 0: entries appended before the group existed are archived too.
                await self._redis.xgroup_create(stream, GROUP, id="0")
            except ResponseError as error:
                if "requires the key to exist" in str(error):
                    return False
                if "BUSYGROUP" not in str(error):
                    raise
        self._grouped.add(stream)
        return True

    async def read(self, stream: str, count: int, *, new: bool) -> list[OutboxEntry]:
        """This consumer's entries: new ones, or (`new=False`) those it read and has not acknowledged."""
        if not await self._ensure_group(stream):
            return []
        async with bounded(self._timeout):
            try:
                reply: Any = await self._redis.xreadgroup(
                    GROUP, self.consumer, {stream: ">" if new else "0"}, count=count
                )
            except ResponseError as error:
                if "NOGROUP" not in str(error):
                    raise
                self._grouped.discard(stream)  # the stream was deleted (a cleared session): start again
                return []
        return [entry for _, raw in reply or () for entry in _entries(stream, raw)]

    async def claim(self, stream: str, idle_seconds: float, count: int) -> list[OutboxEntry]:
        """Entries another consumer has held for `idle_seconds` without acknowledging (a dead process)."""
        if not await self._ensure_group(stream):
            return []
        async with bounded(self._timeout):
            reply: Any = await self._redis.xautoclaim(
                stream, GROUP, self.consumer, int(idle_seconds * 1000), "0-0", count=count
            )
        return _entries(stream, reply[1])

    async def ack(self, stream: str, entry_ids: Sequence[str]) -> None:
        """Archived: acknowledge and delete them (the stream keeps only what is still to archive)."""
        if not entry_ids:
            return
        async with bounded(self._timeout), self._redis.pipeline(transaction=True) as pipe:
            pipe.xack(stream, GROUP, *entry_ids)
            pipe.xdel(stream, *entry_ids)
            await pipe.execute()

    async def set_aside(self, entry: OutboxEntry, reason: str) -> None:
        """Keep an entry the record refused, with why, in the outbox's `:rejected` stream (the newest
        REJECTED_KEPT), for an operator to read; the caller then acknowledges it as archived."""
        fields: dict[FieldT, EncodableT] = {"id": entry.entry_id, "s": entry.session_id, "r": reason}
        if entry.turn is not None:
            fields["t"] = orjson.dumps(entry.turn).decode()
        if entry.branch is not None:
            fields["b"] = entry.branch
        if entry.title is not None:
            fields["a"], fields["f"] = entry.title
        if entry.owner is not None:
            fields["o"] = entry.owner
        async with bounded(self._timeout):
            await self._redis.xadd(
                self._keys.outbox_rejected(entry.stream), fields, maxlen=REJECTED_KEPT, approximate=True
            )

    async def backlog(self, streams: Sequence[str]) -> tuple[int, float]:
        """Entries not archived yet, and the age in seconds of the oldest (0 with none)."""
        total, oldest = 0, 0.0
        now_ms = time.time() * 1000
        for stream in streams:
            async with bounded(self._timeout):
                total += int(await self._redis.xlen(stream))
                first: Any = await self._redis.xrange(stream, "-", "+", count=1)
            if first:
                age = (now_ms - position_of_entry(_text(first[0][0])) / 1_000_000) / 1000
                oldest = max(oldest, age)
        return total, oldest

    async def sessions_of_user(self, user_id: str) -> set[str]:
        """The sessions with a turn of `user_id` waiting to be archived (a data-deletion request must
        find them too): every entry is read; the outbox holds only what the archiver has not stored."""
        found: set[str] = set()
        for stream in await self.streams():
            async with bounded(self._timeout * 5):
                async for entry_id, fields in self._scan(stream):
                    entry = _entries(stream, [(entry_id, fields)])[0]
                    if entry.turn is not None and entry.turn.get("user_id") == user_id:
                        found.add(entry.session_id)
        return found

    async def mark_deleted(self, session_id: str) -> None:
        """Before a conversation is deleted: the moment, in the outbox's own clock (Redis's), so that a
        batch the archiver stores while it is deleted is deleted again (`deleted_since`)."""
        async with bounded(self._timeout):
            seconds, microseconds = await self._redis.time()
            # As `position_of_entry` counts, past every entry of this millisecond (all written before).
            before = (seconds * 1000 + microseconds // 1000 + 1) * 1_000_000
            await self._redis.set(self._keys.deleted(session_id), before, ex=DELETED_SECONDS)

    async def deleted_since(self, session_ids: Iterable[str]) -> dict[str, int]:
        """The sessions deleted since their entries were read, each with the position (of an entry)
        before which its turns were deleted."""
        sessions = list(session_ids)
        if not sessions:
            return {}
        async with bounded(self._timeout):
            values = await self._redis.mget([self._keys.deleted(session_id) for session_id in sessions])
        return {session_id: int(value) for session_id, value in zip(sessions, values, strict=True) if value}

    async def owners(self, entries: Sequence[OutboxEntry]) -> dict[str, str]:
        """The API key that owns each session of the entries: as their turns name it, else (a switch of
        branch or a title, which name none; an entry from before entries named it; an open service's)
        as its owner record says ("" on an open service, or once the record has expired)."""
        named = {entry.session_id: entry.owner for entry in entries if entry.turn and entry.owner}
        found = await self._owner_records({e.session_id for e in entries if e.session_id} - named.keys())
        return {**found, **named}

    async def _owner_records(self, session_ids: Iterable[str]) -> dict[str, str]:
        sessions = list(session_ids)
        if not sessions:
            return {}
        # One MGET: a batch's sessions share one stream, and on a cluster a stream is one session's.
        async with bounded(self._timeout):
            values = await self._redis.mget([self._keys.owner(session_id) for session_id in sessions])
        return {
            session_id: _text(value) if value else ""
            for session_id, value in zip(sessions, values, strict=True)
        }

    async def forget(self, session_id: str) -> None:
        """Drop the session's entries still waiting, and those set aside (its conversation is being
        deleted)."""
        stream = self._keys.outbox(session_id)
        rejected = self._keys.outbox_rejected(stream)
        if isinstance(self._redis, RedisCluster):
            async with bounded(self._timeout):
                await self._redis.delete(stream, rejected)
            self._grouped.discard(stream)
            return
        session = session_id.encode()
        async with bounded(self._timeout * 5):
            ids = [entry_id async for entry_id, fields in self._scan(stream) if fields.get(b"s") == session]
            kept = [
                entry_id async for entry_id, fields in self._scan(rejected) if fields.get(b"s") == session
            ]
        if ids:
            await self.ack(stream, ids)
        if kept:
            async with bounded(self._timeout):
                await self._redis.xdel(rejected, *kept)

    async def _scan(self, stream: str) -> Any:
        start = "-"
        while True:
            batch: Any = await self._redis.xrange(stream, start, "+", count=500)
            for entry_id, fields in batch:
                yield _text(entry_id), fields
            if len(batch) < 500:
                return
            start = "(" + _text(batch[-1][0])
