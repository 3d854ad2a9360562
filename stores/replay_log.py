"""The replay log: every event of a session's answers, in order, in one Redis Stream per session.

This module owns it: the commands that append an answer's events (XADD, then PUBLISH on the session's
channel as a doorbell), reading after a position, its bounds, and where each answer's events begin.
PubSub is at-most-once; the log is what listeners are sent, so a lost PubSub message delays an event but
never loses it. An entry's id (`<ms>-<n>`) is the position clients resume from (`Last-Event-ID`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from batcher import CommandBatcher
from ids import message_of
from redis_client import Command, KeySpace

__all__ = ["TERMINAL", "Entry", "ReplayLog", "parse_entry_id", "position_of"]

EntryKey = tuple[int, int]
# The event types that end an answer: nothing of it follows them.
TERMINAL = frozenset({"end", "error"})
PAGE = 500


def parse_entry_id(entry_id: str) -> EntryKey:
    """`1700000000000-3` -> (1700000000000, 3), the order Redis gives stream entries."""
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), int(sequence or 0)


def position_of(reply: Sequence[Any]) -> str:
    """The entry id in an `XREVRANGE ... COUNT 1` reply (as Redis sends it, or as redis-py converts it),
    `0-0` for an empty log."""
    return bytes(reply[0][0]).decode() if reply else "0-0"


@dataclass(frozen=True, slots=True)
class Entry:
    """One event read back from a session's log: its position, type, answer and JSON."""

    id: str
    key: EntryKey
    type: str
    message_id: str
    payload: bytes

    @classmethod
    def from_reply(cls, entry_id: bytes, fields: list[bytes] | dict[bytes, bytes]) -> Entry:
        """From an XRANGE reply's entry: its id, then `[field, value, ...]` as Redis sends it (or, from a
        cluster's pipeline, redis-py's dict of them)."""
        payload = fields[b"e"] if isinstance(fields, dict) else fields[fields.index(b"e") + 1]
        event = orjson.loads(payload)
        text_id = entry_id.decode()
        return cls(text_id, parse_entry_id(text_id), event["type"], event["message_id"], payload)

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL


class ReplayLog:
    """The sessions' logs: written through the answers' batches, read through `reader`."""

    def __init__(self, keys: KeySpace, reader: CommandBatcher, *, maxlen: int, ttl: int) -> None:
        self._keys = keys
        self._reader = reader
        self._maxlen = maxlen
        self._ttl = ttl

    # -- writing: commands for the answer's writer --

    def append_commands(
        self, session_id: str, payload: bytes, *, refresh_ttl: bool, refresh_owner: bool = True
    ) -> list[Command]:
        """XADD the event, then PUBLISH it: a reader woken by the PUBLISH finds the entry in the log.
        The log lives as long as the history: `start` and the terminal event set its TTL, and a chunk's
        XADD keeps it. With the TTL the owner record's is refreshed in the same batch, so that it never
        expires before the log (#13, item 4); `refresh_owner=False` when the batch's other commands
        refresh it already (the history's, at an answer's end)."""
        commands = self.appender(session_id)(payload)
        if refresh_ttl:
            refreshed: list[Command] = [("EXPIRE", self._keys.events(session_id), self._ttl)]
            if refresh_owner:
                refreshed.append(("EXPIRE", self._keys.owner(session_id), self._ttl))
            commands[1:1] = refreshed
        return commands

    def appender(self, session_id: str) -> Callable[[bytes], list[Command]]:
        """`append_commands` without the TTL refresh, with the session's keys named once: for an answer's
        chunks, which are written one by one on the hot path."""
        xadd = ("XADD", self._keys.events(session_id), "MAXLEN", "~", self._maxlen, "*", "e")
        publish = (self._keys.publish, self._keys.channel(session_id))
        return lambda payload: [(*xadd, payload), (*publish, payload)]

    def position_command(self, session_id: str) -> Command:
        """The newest entry's id (read its reply with `position_of`): every event appended after this
        command comes after it."""
        return ("XREVRANGE", self._keys.events(session_id), "+", "-", "COUNT", 1)

    def starting_commands(self, session_id: str, since: str, answer: str) -> list[Command]:
        """Record after which entry the answer (`answer`: its key, `ids.answer_key`) begins. Sent before
        its `start` is appended, in the same batch (whose `append_commands` refresh the owner record's
        TTL), so a reader that finds the answer here finds its `start` after `since`, and one that does
        not sees the `start` arrive live."""
        running = self._keys.active(session_id)
        return [
            ("HSET", self._keys.message(answer), "since", since),
            ("HSET", running, message_of(answer), since),
            ("EXPIRE", running, self._ttl),
        ]

    def keep_alive_commands(self, session_id: str) -> list[Command]:
        """Refresh the TTL of the session's keys while an answer runs (its chunks do not): the log, the
        running answers, the history and the owner record live at least as long as the answer."""
        return [
            ("EXPIRE", key, self._ttl)
            for key in (
                self._keys.events(session_id),
                self._keys.active(session_id),
                self._keys.history(session_id),
                self._keys.owner(session_id),
            )
        ]

    def finished_commands(self, session_id: str, message_id: str) -> list[Command]:
        return [("HDEL", self._keys.active(session_id), message_id)]

    def clear_commands(self, session_id: str) -> list[Command]:
        return [("DEL", self._keys.events(session_id))]

    # -- reading --

    async def read_after(self, session_id: str, after: str) -> list[Entry]:
        """Every entry after `after`, oldest first."""
        entries: list[Entry] = []
        start = f"({after}"
        while True:
            (page,) = await self._reader.submit(
                [("XRANGE", self._keys.events(session_id), start, "+", "COUNT", PAGE)]
            )
            entries.extend(Entry.from_reply(entry_id, fields) for entry_id, fields in page)
            if len(page) < PAGE:
                return entries
            start = f"({entries[-1].id}"

    async def bounds(self, session_id: str) -> tuple[str | None, str | None]:
        """The oldest and newest entry ids of the session's log (None when it is empty)."""
        key = self._keys.events(session_id)
        first, last = await self._reader.submit(
            [("XRANGE", key, "-", "+", "COUNT", 1), ("XREVRANGE", key, "+", "-", "COUNT", 1)]
        )
        return (first[0][0].decode() if first else None, last[0][0].decode() if last else None)

    async def newest(self, session_id: str) -> str | None:
        return (await self.bounds(session_id))[1]

    async def running(self, session_id: str) -> dict[str, str]:
        """The session's running answers: each one's message id, and the entry after which its events
        begin."""
        (values,) = await self._reader.submit([("HGETALL", self._keys.active(session_id))])
        if isinstance(values, dict):  # a cluster's pipeline hands back redis-py's dict
            return {bytes(k).decode(): bytes(v).decode() for k, v in values.items()}
        return {bytes(values[i]).decode(): bytes(values[i + 1]).decode() for i in range(0, len(values), 2)}

    async def running_starts(self, session_id: str) -> list[str]:
        """For each running answer of the session, the entry after which its events begin."""
        (values,) = await self._reader.submit([("HVALS", self._keys.active(session_id))])
        return [value.decode() for value in values]

    async def start_of(self, answer: str) -> str | None:
        """The entry after which the answer's (`answer`: its key) events begin, once it is starting."""
        (value,) = await self._reader.submit([("HGET", self._keys.message(answer), "since")])
        return bytes(value).decode() if value else None
