"""The simulated model: a composed, relevant answer streamed a few words at a time, with no model server."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING

from conversation import ConversationMessage
from generation import GenerationOptions
from parts import Delta
from providers.base import AnswerSource, Completion

if TYPE_CHECKING:
    from config import Settings

__all__ = ["SimulatedAnswerSource", "compose_answer", "create"]


def create(settings: Settings) -> AnswerSource:
    """`AI_PROVIDER=simulated`, paced by `STREAM_DELAY` and `CHUNK_DELAY`."""
    return SimulatedAnswerSource(stream_delay=settings.stream_delay, chunk_delay=settings.chunk_delay)


# --- The simulated model -------------------------------------------------------------------------

_STOPWORDS = frozenset(
    """a about above after again all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has
    have having he her here hers him his how i if in into is it its itself just me more most my no
    nor not now of off on once only or other our out over own same she should so some such than that
    the their them then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours hello hi hey please
    thanks thank tell explain give show know want need like get""".split()  # noqa: SIM905 - a word list reads best as prose
)
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9'\-]{2,}")


def _topics(text: str, limit: int = 3) -> list[str]:
    """The message's most telling words: longest first, stopwords dropped, order kept on ties."""
    seen: dict[str, int] = {}
    for position, word in enumerate(_WORD.findall(text)):
        lowered = word.lower()
        if lowered not in _STOPWORDS and lowered not in seen:
            seen[lowered] = position
    return sorted(seen, key=lambda word: (-len(word), seen[word]))[:limit]


def _pick(options: Sequence[str], seed: bytes) -> str:
    return options[int.from_bytes(hashlib.blake2b(seed, digest_size=4).digest(), "big") % len(options)]


def _about(subject: str, message: str, seed: bytes) -> list[str]:
    """Two sentences on the message's main topic, in the manner its first word asks for."""
    stripped = message.strip().lower()
    if stripped.startswith(("how", "can", "could")):
        return [
            f"Here is how I would approach {subject}, step by step.",
            f"First, pin down what {subject} has to achieve; then try the smallest version of it.",
        ]
    if stripped.startswith("why"):
        return [
            f"Good question: the reasons behind {subject} usually come down to trade-offs.",
            f"Each choice about {subject} buys something and costs something else.",
        ]
    if stripped.startswith(("what", "who", "which", "where", "when")) or stripped.endswith("?"):
        return [
            f"In short, {subject} is the heart of what you are asking about.",
            f"The details of {subject} depend on the context you use it in.",
        ]
    opening = _pick(
        [
            f"You mentioned {subject}, so let's look at it more closely.",
            f"Thanks for bringing up {subject}.",
            f"Let's talk about {subject}.",
        ],
        seed,
    )
    return [opening, f"There is more to {subject} than first meets the eye."]


def compose_answer(conversation: Sequence[ConversationMessage]) -> str:
    """A relevant, multi-sentence answer to the conversation's last user message.

    Deterministic for the same conversation, so tests can compare; different for different messages,
    questions and sessions, and it refers back to what the user said earlier in the session.
    """
    user_turns = [message.content for message in conversation if message.role == "user"]
    message = user_turns[-1] if user_turns else ""
    seed = "\x00".join(message.content for message in conversation).encode()
    topics = _topics(message)
    sentences: list[str] = []

    if not topics:
        greetings = [
            "Hello! I'm the simulated assistant of this chat service.",
            "Hi there! This is the simulated assistant speaking.",
        ]
        sentences.append(_pick(greetings, seed))
        sentences.append("Ask me about anything and I will stream my answer back to you, chunk by chunk.")
    else:
        sentences.extend(_about(topics[0], message, seed))
        if len(topics) > 1:
            others = " and ".join(topics[1:])
            sentences.append(f"It also connects with {others}, which is worth keeping in mind.")

    if len(user_turns) > 1:
        earlier = _topics(user_turns[-2], limit=1)
        if earlier:
            sentences.append(f"Earlier you asked about {earlier[0]}, and that still applies here.")
        sentences.append(f"This is message {len(user_turns)} of our conversation.")
    closings = [
        "I'm a simulated model, so treat this as a demonstration of streaming.",
        "Note that I'm simulated: a real model can be configured in place of me.",
    ]
    sentences.append(_pick(closings, seed + b"closing"))
    return " ".join(sentences)


class SimulatedAnswerSource(AnswerSource):
    """The default answer source: a composed answer, streamed a few words at a time.

    Each chunk is up to `words_per_chunk` words. Before a chunk is sent the source waits
    `stream_delay` for each of its words (the model "writing"), plus `chunk_delay` (the pause between
    chunks). Both at 0 stream as fast as the machinery allows.
    """

    name = "simulated"
    model = "simulated"
    accepts_images = False

    def __init__(self, *, stream_delay: float, chunk_delay: float, words_per_chunk: int = 3) -> None:
        self.stream_delay = stream_delay
        self.chunk_delay = chunk_delay
        self.words_per_chunk = words_per_chunk

    async def stream(
        self,
        conversation: Sequence[ConversationMessage],
        options: GenerationOptions,
        completion: Completion,
    ) -> AsyncGenerator[Delta, None]:
        words = compose_answer(conversation).split(" ")
        loop = asyncio.get_running_loop()
        # How far behind its pacing the answer is: a busy event loop wakes a sleeper late (and
        # libuv's timers tick in whole milliseconds). The next pause is shortened by as much, so
        # lateness does not add up over an answer's chunks (issue #6, scenario d).
        behind = 0.0
        for start in range(0, len(words), self.words_per_chunk):
            piece = words[start : start + self.words_per_chunk]
            pause = self.stream_delay * len(piece) + self.chunk_delay
            if pause:
                wanted = max(0.0, pause - behind)
                slept_from = loop.time()
                await asyncio.sleep(wanted)
                behind = max(0.0, behind + (loop.time() - slept_from) - pause)
            yield (" " if start else "") + " ".join(piece)
        completion.finish_reason = "stop"
