"""`UsageRecorder`: an `AnswerObserver` that accounts for every answer once it has ended.

An ended answer is queued, and the recorder's task (owned by the lifespan, drained on shutdown) works
out its tokens (as the model reported them, or counted with tiktoken, off the event loop), prices them,
adds them to the ledger and the key's budget in Redis, and to the `/metrics` counters.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from redis_client import RedisUnavailable
from usage.accounting import current_key
from usage.ledger import UsageRecord

if TYPE_CHECKING:
    from answer_run import Answer
    from usage.budgets import Budgets
    from usage.ledger import UsageLedger
    from usage.plans import Price
    from usage.tokens import TokenCounter

__all__ = ["UsageRecorder", "UsageSink"]

logger = logging.getLogger(__name__)

# At most this many ended answers are accounted for together.
BATCH = 256
# A batch whose texts not yet counted are at most this long is counted on the event loop (a few
# hundred microseconds at most); a longer one in a worker thread.
INLINE_CHARS = 2_000

# What else hears of each record: the Prometheus counters (`Metrics.record_usage`).
UsageSink = Callable[[UsageRecord], None]


@dataclass(frozen=True, slots=True)
class _Ended:
    answer: Answer
    key: str
    at: float


class UsageRecorder:
    """Accounts for the answers of one process; `model` is the model its answer source runs."""

    def __init__(
        self,
        ledger: UsageLedger,
        budgets: Budgets | None,
        counter: Callable[[], TokenCounter],
        *,
        model: str,
        prices: dict[str, Price],
        sinks: tuple[UsageSink, ...] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger = ledger
        self._budgets = budgets
        self._make_counter = counter
        # Loading an encoding takes a quarter of a second of CPU or more: `start` loads it (in a worker
        # thread) before the service serves, so that it is ready before answers end.
        self._counter: asyncio.Task[TokenCounter] | None = None
        self._model = model
        self._price = prices.get(model)
        self._sinks = sinks
        self._clock = clock
        self._keys: dict[str, str] = {}
        self._queue: asyncio.Queue[_Ended | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load the token counter, then start accounting. Start-up waits for the load: done while the
        first answers stream, it held the interpreter from them for a quarter of a second and more (the
        encoding is parsed in Python). Loaded once per process: tiktoken keeps it."""
        self._counter = asyncio.create_task(asyncio.to_thread(self._make_counter), name="token-counter")
        await asyncio.wait([self._counter])
        self._task = asyncio.create_task(self._drain(), name="usage-recorder")

    async def close(self) -> None:
        """Record every answer that has ended, then stop (after the chat service has shut down)."""
        if self._task is not None:
            self._queue.put_nowait(None)
            await self._task
        if self._counter is not None:
            await asyncio.wait([self._counter])
            if not self._counter.cancelled() and self._counter.exception() is not None:
                logger.error("could not load the token counter: %s", self._counter.exception())

    # -- AnswerObserver --

    def answer_started(self, answer: Answer) -> None:
        key = current_key()
        self._keys[answer.key] = key
        if self._budgets is not None:
            self._budgets.started(answer.key)

    def chunk_published(self, answer: Answer) -> None:
        pass

    def answer_ended(self, answer: Answer) -> None:
        key = self._keys.pop(answer.key, None)
        if key is not None:
            self._queue.put_nowait(_Ended(answer, key, self._clock()))

    # -- the recorder's task --

    async def _drain(self) -> None:
        """Account for ended answers in batches: what ended while the last batch was written goes in the
        next one, counted in one worker-thread call and added to the ledger in one round trip."""
        while True:
            batch = [await self._queue.get()]
            while len(batch) < BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            ended = [item for item in batch if item is not None]
            if ended:
                try:
                    await self._account(ended)
                except RedisUnavailable as error:
                    logger.error("could not record the usage of %d answers: %s", len(ended), error.reason)
                except Exception:
                    logger.exception("could not record the usage of %d answers", len(ended))
            if len(ended) < len(batch):  # the close() marker: everything before it is recorded
                return

    async def _account(self, batch: list[_Ended]) -> None:
        unreported = [ended.answer for ended in batch if ended.answer.usage is None]
        counts: dict[str, tuple[int, int, int]] = {}
        if unreported:
            assert self._counter is not None  # started with the recorder
            counter = await self._counter

            def count() -> dict[str, tuple[int, int, int]]:
                return {answer.key: self._count(counter, answer) for answer in unreported}

            # Texts already counted (a session's earlier turns) are remembered; a few new ones cost less
            # to encode here than a worker thread's hand-over of the interpreter does.
            new_text = sum(counter.unremembered(texts_of(answer)) for answer in unreported)
            counts = count() if new_text <= INLINE_CHARS else await asyncio.to_thread(count)
        records = [self._record(ended, counts.get(ended.answer.key)) for ended in batch]
        for record in records:
            for sink in self._sinks:
                sink(record)
        try:
            await self.ledger.record(*records)
        finally:  # the budgets are settled even if the ledger could not be written
            if self._budgets is not None:
                for ended, record in zip(batch, records, strict=True):
                    await self._budgets.settle(
                        ended.key,
                        ended.answer.key,
                        record.total_tokens,
                        record.cost_nanos,
                        at=ended.at,
                    )

    def _record(self, ended: _Ended, counted: tuple[int, int, int] | None) -> UsageRecord:
        """The answer's record: its tokens as the model reported them, else as `counted`."""
        answer = ended.answer
        if counted is None:
            assert answer.usage is not None
            usage = answer.usage
            details = usage.completion_tokens_details
            reasoning = (details.reasoning_tokens or 0) if details is not None else 0
            prompt, completion = usage.prompt_tokens, usage.completion_tokens
        else:
            prompt, completion, reasoning = counted
        return UsageRecord(
            key=ended.key,
            user_id=answer.user_id,
            session_id=answer.session_id,
            model=self._model,
            prompt_tokens=prompt,
            completion_tokens=completion,
            reasoning_tokens=reasoning,
            counted=counted is not None,
            cost_nanos=self._price.nanos(prompt, completion) if self._price is not None else 0,
            at=ended.at,
        )

    @staticmethod
    def _count(counter: TokenCounter, answer: Answer) -> tuple[int, int, int]:
        """Prompt, completion and reasoning tokens, counted (in a worker thread: encoding is CPU work).
        Completion tokens include reasoning tokens, as OpenAI reports them."""
        prompt = counter.prompt(answer.conversation)
        completion = counter.text("".join(answer.parts))
        reasoning = 0
        other = answer.other
        if other is not None:
            reasoning = counter.text(other.reasoning_text() or "")
            completion += reasoning + counter.text(other.refusal_text() or "")
            for call in other.tool_calls() or ():
                completion += counter.text(call.name) + counter.text(call.arguments)
        return prompt, completion, reasoning


def texts_of(answer: Answer) -> Iterator[str]:
    """The texts counting the answer's usage encodes (besides roles and tool calls' names)."""
    for message in answer.conversation:
        yield message.content
    yield "".join(answer.parts)
    if answer.other is not None:
        yield answer.other.reasoning_text() or ""
