"""The simulated model: a composed, relevant answer streamed a few words at a time, with no model server.

Besides text it learns the other parts of an answer, deterministically, so that demos and tests work
without a model: it calls the request's tools (arguments valid for their JSON Schema), answers from tool
results, writes JSON for `response_format`, streams reasoning first when asked, and honours `max_tokens`
(counted in words: its "tokens" are words) and `stop`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from conversation import ConversationMessage
from generation import FunctionTool, GenerationOptions, JSONObjectFormat, JSONSchemaResponseFormat
from models import FinishReason
from parts import Delta, Reasoning, ToolCallArguments, ToolCallStart
from providers.base import AnswerError, AnswerSource, Completion
from providers.simulated_json import Material, SchemaUnsupported, instance_for
from providers.simulated_tools import arguments_for, call_id, results_answer, tools_to_call

if TYPE_CHECKING:
    from config import Settings

__all__ = ["SimulatedAnswerSource", "compose_answer", "create"]


def create(settings: Settings) -> AnswerSource:
    """`AI_PROVIDER=simulated`, paced by `STREAM_DELAY` and `CHUNK_DELAY`; reasoning with
    `SIMULATED_REASONING`, answers capped at `AI_MAX_TOKENS` words."""
    return SimulatedAnswerSource(
        stream_delay=settings.stream_delay,
        chunk_delay=settings.chunk_delay,
        reasoning=settings.simulated_reasoning,
        max_tokens=settings.ai_max_tokens,
    )


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


# --- Parts besides plain text ----------------------------------------------------------------------

# How many sentences of reasoning each `reasoning_effort` gets; `SIMULATED_REASONING` alone: medium.
_REASONING_SENTENCES = {"minimal": 1, "low": 2, "medium": 3, "high": 4, "xhigh": 4}
# Words that ask for a tool rather than say what it is for: not argument material.
_INSTRUCTIONS = frozenset({"use", "using", "call", "calling", "run", "invoke", "tool", "tools", "function"})
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])")
# Tool-call arguments stream a JSON token at a time, as models write them: a string (a key with its
# colon), an opening brace or bracket, or a run of anything else; each with the whitespace before it.
_JSON_TOKEN = re.compile(r'\s*(?:"(?:[^"\\]|\\.)*":?|[{\[]|[^"\s{\[]+)')
Piece = tuple[Delta, int]  # a delta, and how many words it counts as for pacing


def _material(message: str, tools: Sequence[FunctionTool], sentence: str) -> Material:
    """What JSON values are made of: the message's telling words (names, such as a capitalised word
    inside a sentence, first; then the longest), a phrase of the best four as written, its numbers."""
    excluded = {part.lower() for tool in tools for part in re.split(r"[_-]", tool.function.name)}
    ranked: dict[str, tuple[bool, int, int]] = {}
    for position, match in enumerate(_WORD.finditer(message)):
        word, lowered = match.group(), match.group().lower()
        if lowered in _STOPWORDS or lowered in _INSTRUCTIONS or lowered in excluded or "'" in word:
            continue
        before = message[: match.start()].rstrip()
        name = word[0].isupper() and bool(before) and before[-1] not in ".!?"
        if all(lowered != known.lower() for known in ranked):
            ranked[word] = (not name, -len(word), position)
    words = sorted(ranked, key=ranked.__getitem__)
    phrase = " ".join(sorted(words[:4], key=lambda word: ranked[word][2]))
    numbers = tuple(float(number) for number in _NUMBER.findall(message))
    return Material(words=tuple(words), phrase=phrase, sentence=sentence, numbers=numbers)


def _reasoning(topics: Sequence[str], plan: str, sentences: int) -> str:
    """A few sentences of "thinking" about the message's topics, the second saying what the answer
    will do."""
    others = " and ".join(topics[1:])
    thoughts = [
        f"The user asks about {topics[0]}." if topics else "The user greets me without a question.",
        plan,
        f"It also touches on {others}, which I should keep in mind."
        if others
        else "Nothing else needs care.",
        "Before answering, I check that this fits the earlier turns of the conversation.",
    ]
    return " ".join(thoughts[:sentences])


def _limited(text: str, stops: Sequence[str], max_words: int | None) -> tuple[str, FinishReason]:
    """The text up to its first stop sequence (`stop`), then at most `max_words` words (`length`)."""
    cut = min((text.find(stop) for stop in stops if stop in text), default=-1)
    if cut >= 0:
        text = text[:cut]
    words = text.split(" ")
    if max_words is not None and len(words) > max_words:
        return " ".join(words[:max_words]), "length"
    return text, "stop"


class SimulatedAnswerSource(AnswerSource):
    """The default answer source: a composed answer, streamed a few words at a time.

    Each chunk is up to `words_per_chunk` words. Before a chunk is sent the source waits
    `stream_delay` for each of its words (the model "writing"), plus `chunk_delay` (the pause between
    chunks). Both at 0 stream as fast as the machinery allows. Reasoning and tool-call arguments are
    streamed in word chunks paced the same way; a tool call's start counts as a chunk of no words.

    With no option that changes the answer (tools, `response_format`, `max_tokens`, `stop`, reasoning)
    it streams `compose_answer` as it always has: the common path does no more work than before.
    `max_tokens` (the request's, capped by `max_tokens` here) counts words, the simulated model's
    tokens, of the answer's text; reasoning and tool-call arguments do not count against it, and the
    arguments are never cut, so they always validate.
    """

    name = "simulated"
    model = "simulated"
    accepts_images = False

    def __init__(
        self,
        *,
        stream_delay: float,
        chunk_delay: float,
        words_per_chunk: int = 3,
        reasoning: bool = False,
        max_tokens: int | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.stream_delay = stream_delay
        self.chunk_delay = chunk_delay
        self.words_per_chunk = words_per_chunk
        self.reasoning = reasoning
        self.max_tokens = max_tokens
        self._sleep = sleep  # the pacing's clock: tests pass one that records the pauses

    async def stream(
        self,
        conversation: Sequence[ConversationMessage],
        options: GenerationOptions,
        completion: Completion,
    ) -> AsyncGenerator[Delta, None]:
        pieces: Sequence[Piece]
        changed = options.tools or options.response_format or options.max_tokens or options.stop
        answering_results = bool(conversation) and conversation[-1].role == "tool"
        if changed or answering_results or options.reasoning_effort or self.reasoning or self.max_tokens:
            try:
                pieces, finish_reason = self._plan(conversation, options)
            except SchemaUnsupported as error:
                message = f"The simulated model cannot write JSON for {error}"
                raise AnswerError("schema_unsupported", message) from error
        else:
            pieces, finish_reason = self._chunks(compose_answer(conversation)), "stop"
        loop = asyncio.get_running_loop()
        # How far behind its pacing the answer is: a busy event loop wakes a sleeper late (and
        # libuv's timers tick in whole milliseconds). The next pause is shortened by as much, so
        # lateness does not add up over an answer's chunks (issue #6, scenario d).
        behind = 0.0
        for delta, words in pieces:
            pause = self.stream_delay * words + self.chunk_delay
            if pause:
                wanted = max(0.0, pause - behind)
                slept_from = loop.time()
                await self._sleep(wanted)
                behind = max(0.0, behind + (loop.time() - slept_from) - pause)
            yield delta
        completion.finish_reason = finish_reason

    def _chunks(self, text: str) -> list[tuple[str, int]]:
        """The text in chunks of up to `words_per_chunk` words, each with its count of words."""
        if not text:
            return []
        words = text.split(" ")
        chunks = []
        for start in range(0, len(words), self.words_per_chunk):
            piece = words[start : start + self.words_per_chunk]
            chunks.append(((" " if start else "") + " ".join(piece), len(piece)))
        return chunks

    def _plan(
        self, conversation: Sequence[ConversationMessage], options: GenerationOptions
    ) -> tuple[list[Piece], FinishReason]:
        """Every piece of the answer, made before the first is sent: a schema it cannot satisfy fails
        the answer before anything streams. Reasoning first, when on; then tool calls, or text."""
        message = next((turn.content for turn in reversed(conversation) if turn.role == "user"), "")
        material = _material(message, options.tools or [], message.strip())
        effort = options.reasoning_effort or ("medium" if self.reasoning else "none")
        calls = tools_to_call(conversation, options)
        pieces: list[Piece]
        finish_reason: FinishReason
        if calls:
            plan = f"I will call {' and '.join(tool.function.name for tool in calls)} with fitting arguments."
            pieces, finish_reason = self._calls(conversation, calls, material), "tool_calls"
        else:
            plan, text = self._text(conversation, options, material)
            limits = [limit for limit in (options.max_tokens, self.max_tokens) if limit is not None]
            text, finish_reason = _limited(text, options.stop_sequences(), min(limits, default=None))
            pieces = [*self._chunks(text)]
        sentences = _REASONING_SENTENCES.get(effort, 0)
        if sentences:
            thinking = _reasoning(material.words, plan, sentences)
            pieces[:0] = [(Reasoning(piece), words) for piece, words in self._chunks(thinking)]
        return pieces, finish_reason

    def _calls(
        self, conversation: Sequence[ConversationMessage], calls: Sequence[FunctionTool], material: Material
    ) -> list[Piece]:
        """Each call's start, then its arguments a JSON token at a time, each paced as a word; the ids
        are the conversation's."""
        pieces: list[Piece] = []
        for index, tool in enumerate(calls):
            arguments = arguments_for(tool, material)
            identifier = call_id(conversation, index)
            pieces.append((ToolCallStart(identifier, tool.function.name), 0))
            pieces += [(ToolCallArguments(identifier, token), 1) for token in _JSON_TOKEN.findall(arguments)]
        return pieces

    @staticmethod
    def _text(
        conversation: Sequence[ConversationMessage], options: GenerationOptions, material: Material
    ) -> tuple[str, str]:
        """What the answer will do (for its reasoning), and its text: from the tool results the
        conversation ends with, else composed; as JSON when `response_format` asks for it."""
        topics = material.words[:1] or _topics(material.sentence, limit=1)
        from_results = results_answer(conversation, topics[0] if topics else None)
        text = from_results or compose_answer(conversation)
        plan = "I will answer from the tool results." if from_results else "I will explain it plainly."
        response_format = options.response_format
        if isinstance(response_format, JSONSchemaResponseFormat):
            try:
                value = instance_for(
                    response_format.json_schema.json_schema, replace(material, sentence=text)
                )
            except SchemaUnsupported as error:
                raise SchemaUnsupported(f"the response_format schema: {error}") from error
            return f"The answer is JSON for the {response_format.json_schema.name} schema.", json.dumps(value)
        if isinstance(response_format, JSONObjectFormat):
            return "The answer is a JSON object.", json.dumps({"answer": text})
        return plan, text
