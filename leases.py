"""How answers end for certain (issue #13, items 4 and 5): the end of an answer as one transaction, and
the lease that shows its instance still runs it.

`AnswerEnds` writes an answer's end (its turn in history, its final state, its removal from the running
answers and the leases, its terminal event) in one MULTI/EXEC, so that Redis refusing a write leaves
nothing half done; and it ends a *lost* answer (its lease expired: its instance died, or could not write
its end) from what its events in the replay log hold, with `finish_reason: "error"` and an `error`
event `answer_lost`, only if it is still streaming (WATCH), so two instances never end one answer twice.

`LeaseKeeper`, owned by the lifespan, renews the leases of this process's running answers (refreshing
their session's keys with them, so the owner record outlives the answer) and sweeps for expired leases.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson
from redis.asyncio import RedisCluster
from redis.exceptions import WatchError

from answer_events import Answer, Phase
from ids import message_of, owner_of_answer
from models import AnswerState, ChatTurn, ErrorEvent, ErrorInfo, utc_now
from redis_client import Command, KeySpace, RedisClient, RedisUnavailable, bounded, describe

if TYPE_CHECKING:
    from batcher import CommandBatcher
    from stores.answers import AnswerRegistry
    from stores.history import HistoryStore
    from stores.leases import AnswerLeases
    from stores.replay_log import ReplayLog

__all__ = ["LOST", "AnswerEnds", "LeaseKeeper"]

logger = logging.getLogger(__name__)

# The `error` event's code for an answer that its instance did not end.
LOST = ErrorInfo(code="answer_lost", message="the instance running this answer stopped before it ended")
# Attempts at a WATCHed transaction that other writes to the answer's state keep interrupting.
WATCH_ATTEMPTS = 5


def _exec_failure(replies: Sequence[Any]) -> str | None:
    """Why a MULTI ... EXEC sent in a batch was not applied, if it was not."""
    result = replies[-1]
    if isinstance(result, Exception):
        return describe(result)
    if not isinstance(result, list):
        return "transaction aborted"
    failure = next((reply for reply in result if isinstance(reply, Exception)), None)
    return describe(failure) if failure is not None else None


class AnswerEnds:
    """Writes the end of answers, each as one transaction."""

    def __init__(
        self,
        redis: RedisClient,
        writer: CommandBatcher,
        keys: KeySpace,
        *,
        history: HistoryStore,
        answers: AnswerRegistry,
        log: ReplayLog,
        leases: AnswerLeases,
        timeout: float,
    ) -> None:
        self._redis = redis
        self._writer = writer
        self._keys = keys
        self._history = history
        self._answers = answers
        self._log = log
        self.leases = leases
        self._timeout = timeout
        # A cluster's batches take no MULTI, and an answer's state is in another slot than its session.
        self._cluster = isinstance(redis, RedisCluster)

    def commands(self, session_id: str, turn: ChatTurn, event: bytes | None, answer: str) -> list[Command]:
        """The end of the answer `turn` closes (`answer`: its key): history first, so a client that reads
        history on the terminal event finds the turn, then the state, then the event (unless None:
        already written)."""
        assert turn.finish_reason is not None
        return [
            *self._history.append_commands(session_id, turn, owner=owner_of_answer(answer)),
            *self._answers.finished_commands(answer, turn.finish_reason),
            *self._log.finished_commands(session_id, turn.message_id),
            self.leases.release_command(answer),
            # The history's commands above refresh the owner record's TTL: the event's need not again.
            *(
                []
                if event is None
                else self._log.append_commands(session_id, event, refresh_ttl=True, refresh_owner=False)
            ),
        ]

    async def commit(self, commands: Sequence[Command]) -> None:
        """Apply the commands together in the writer's next batch (one MULTI/EXEC), or none of them."""
        if self._cluster:
            await self._writer.submit(commands)
            return
        failure = _exec_failure(await self._writer.submit([("MULTI",), *commands, ("EXEC",)]))
        if failure is not None:
            raise RedisUnavailable(failure)

    async def commit_if_streaming(self, answer: str, commands: Sequence[Command]) -> bool:
        """`commit`, only if the answer (its key) is still streaming; False (and nothing written) if it
        has ended, or its state has expired."""
        key = self._keys.message(answer)
        if self._cluster:  # no transaction spans the answer's state and its session: check, then write
            async with bounded(self._timeout):
                status = await self._redis.hget(key, "status")
            if status != b"streaming":
                return False
            await self._writer.submit(commands)
            return True
        for _ in range(WATCH_ATTEMPTS):
            try:
                async with bounded(self._timeout):
                    return await self._watched(key, commands)
            except RedisUnavailable:
                raise
            except WatchError:
                continue  # its state changed meanwhile (a lease renewal's EXPIRE, or its end): look again
        raise RedisUnavailable("the answer's state kept changing")

    async def _watched(self, key: str, commands: Sequence[Command]) -> bool:
        async with self._redis.pipeline(transaction=True) as pipe:
            await pipe.watch(key)
            if await pipe.hget(key, "status") != b"streaming":
                return False
            pipe.multi()  # type: ignore[no-untyped-call]
            for command in commands:
                pipe.execute_command(*command)
            try:
                await pipe.execute()
            except WatchError:
                raise
            except Exception as error:  # a command refused (out of memory): nothing was applied
                raise RedisUnavailable(describe(error)) from None
        return True

    async def end_lost(self, answer: str) -> bool:
        """End an answer (its key) whose lease has expired, from its events in the log: its partial
        content stored with `finish_reason: "error"`, then an `error` event `answer_lost`. False if it
        had ended."""
        state = await self._answers.get(answer)
        if state is None or state.status != "streaming":
            await self._writer.submit([self.leases.release_command(answer)])
            return False
        session_id, message_id = state.session_id, message_of(answer)
        since = await self._log.start_of(answer) or "0-0"
        entries = [
            entry for entry in await self._log.read_after(session_id, since) if entry.message_id == message_id
        ]
        events = [orjson.loads(entry.payload) for entry in entries]

        def joined(kind: str) -> str | None:
            return "".join(event.get("content", "") for event in events if event["type"] == kind) or None

        turn = ChatTurn.assistant(
            message_id,
            joined("chunk") or "",
            await self._answers.user_of(answer),
            "error",
            reasoning=joined("reasoning"),
            refusal=joined("refusal"),
            # Where it hangs in the conversation's tree: as its `start` said (issue #15).
            parent_id=next((event.get("parent_id") for event in events if event["type"] == "start"), None),
        )
        payload = None
        if not any(entry.terminal for entry in entries):  # on a cluster its event may have landed alone
            seq = max((int(event["seq"]) for event in events), default=-1) + 1
            error = ErrorEvent(
                message_id=message_id, session_id=session_id, seq=seq, timestamp=utc_now(), error=LOST
            )
            payload = error.model_dump_json(exclude_none=True).encode()
        ended = await self.commit_if_streaming(answer, self.commands(session_id, turn, payload, answer))
        if ended:
            logger.warning("ended a lost answer message_id=%s session_id=%s", message_id, session_id)
        return ended


class LeaseKeeper:
    """Renews this process's answers' leases and ends other instances' lost answers, in one task that the
    lifespan starts and ends."""

    def __init__(
        self,
        ends: AnswerEnds,
        writer: CommandBatcher,
        *,
        log: ReplayLog,
        answers: AnswerRegistry,
        renew_seconds: float,
        sweep_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`renew_seconds`, `sweep_seconds`: how often the leases of this process's answers are renewed
        (with their sessions' TTLs) and how often expired leases are looked for."""
        self.ends = ends
        self._leases = ends.leases
        self._writer = writer
        self._log = log
        self._answers = answers
        # The stored answers this process runs, by key (it is an `AnswerObserver` of the chat service).
        self._running: dict[str, Answer] = {}
        self._renew_every = renew_seconds
        self._sweep_every = sweep_seconds
        self._clock = clock
        # Until when (by `clock`) each of our answers surely holds its lease: it may end without a check.
        self._held: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    # -- AnswerObserver --

    def answer_started(self, answer: Answer) -> None:
        if answer.stored:  # its lease was taken with its claim, a moment ago
            self._running[answer.key] = answer
            self._held[answer.key] = self._clock() + self._validity()

    def chunk_published(self, answer: Answer) -> None:
        pass

    def answer_ended(self, answer: Answer) -> None:
        self._running.pop(answer.key, None)
        self._held.pop(answer.key, None)

    async def state(self, answer: str) -> AnswerState | None:
        """The state (`settled`) of the answer with this key, or None if there is no such answer."""
        state = await self._answers.get(answer)
        return None if state is None else await self.settled(answer, state)

    async def settled(self, answer: str, state: AnswerState) -> AnswerState:
        """The answer's (`answer`: its key) state, once it has been ended as lost if it is `streaming`
        and no instance holds its lease: whoever sees a lost answer first ends it."""
        if state.status != "streaming" or answer in self._running:
            return state
        if await self._leases.live(answer):
            return state
        await self.ends.end_lost(answer)
        return await self._answers.get(answer) or state

    def holds(self, answer: str) -> bool:
        """Whether our lease on the answer (its key) surely has not expired, so no other instance may end
        it."""
        return self._held.get(answer, 0.0) > self._clock()

    def _validity(self) -> float:
        # A third of the lease is left as margin for the instances' clocks and the write's own delay.
        return self._leases.seconds * 2 / 3

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="answer-leases")

    async def close(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        next_sweep = self._clock()
        while True:
            try:
                await self.renew()
                if self._clock() >= next_sweep:
                    next_sweep = self._clock() + self._sweep_every
                    await self.sweep()
            except RedisUnavailable as error:
                logger.warning("answer leases: %s", error.reason)
            except Exception:
                logger.exception("answer leases failed")
            await asyncio.sleep(self._renew_every)  # a period, not a wait for something

    async def renew(self) -> None:
        """Extend the leases of our running answers and the TTLs of their sessions' keys; stop any answer
        that another instance has meanwhile ended as lost."""
        answers = list(self._running.values())
        if not answers:
            return
        commands = self._leases.renew_commands([answer.key for answer in answers])
        for answer in answers:
            commands += [
                *self._log.keep_alive_commands(answer.session_id),
                self._answers.keep_alive_command(answer.key),
            ]
        sent = self._clock()
        _, scores, *_ = await self._writer.submit(commands)
        for answer, score in zip(answers, scores, strict=True):
            if score is not None:
                self._held[answer.key] = sent + self._validity()
                continue
            # Ended elsewhere while our writes were refused: it must write nothing more.
            self._held.pop(answer.key, None)
            if answer.task is not None and answer.phase is Phase.RUNNING:
                logger.warning(
                    "answer message_id=%s was ended as lost by another instance", answer.message_id
                )
                answer.phase = Phase.CANCELLING
                answer.task.cancel()

    async def sweep(self) -> int:
        """End every answer whose lease has expired and that does not run here; how many were ended."""
        ours = self._running
        ended = 0
        for answer in await self._leases.expired():
            if answer not in ours and await self.ends.end_lost(answer):
                ended += 1
        return ended
