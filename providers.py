"""Answer sources behind `ChatService`: the simulated model, or any OpenAI-compatible model server.

`create_answer_source(settings)` picks one by `AI_PROVIDER`. The OpenAI-compatible source owns an
`AsyncOpenAI` client, which talks to OpenAI, Azure OpenAI, vLLM, Ollama, llama.cpp, LM Studio, LiteLLM and
OpenRouter alike. The lifespan creates it through the factory and closes it with `close_answer_source`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING

from openai import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AsyncOpenAI,
    AuthenticationError,
    NotFoundError,
    OpenAIError,
    PermissionDeniedError,
    RateLimitError,
    omit,
)

from ai_service import AnswerError, AnswerSource, Completion, ConversationMessage
from models import AIHealth, FinishReason, Usage

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam

    from config import Settings

__all__ = [
    "OpenAIAnswerSource",
    "SimulatedAnswerSource",
    "close_answer_source",
    "compose_answer",
    "create_answer_source",
    "provider_health",
]

logger = logging.getLogger(__name__)

# The client always sends a key; local servers (Ollama, vLLM, llama.cpp) accept any, so one that has
# none configured gets this placeholder.
NO_KEY = "no-key"

# The model's own endings; `tool_calls` and `function_call` cannot happen (no tools are sent) and map to stop.
FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "content_filter": "content_filter",
}


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


def compose_answer(conversation: Sequence[ConversationMessage]) -> str:
    """A relevant, multi-sentence answer to the conversation's last user message.

    Deterministic for the same conversation, so tests can compare; different for different messages,
    questions and sessions, and it refers back to what the user said earlier in the session.
    """
    user_turns = [message.content for message in conversation if message.role == "user"]
    message = user_turns[-1] if user_turns else ""
    seed = "\x00".join(message.content for message in conversation).encode()
    topics = _topics(message)
    stripped = message.strip().lower()
    sentences: list[str] = []

    if not topics:
        sentences.append(
            _pick(
                [
                    "Hello! I'm the simulated assistant of this chat service.",
                    "Hi there! This is the simulated assistant speaking.",
                ],
                seed,
            )
        )
        sentences.append("Ask me about anything and I will stream my answer back to you, chunk by chunk.")
    else:
        subject = topics[0]
        others = " and ".join(topics[1:])
        if stripped.startswith(("how", "can", "could")):
            sentences.append(f"Here is how I would approach {subject}, step by step.")
            sentences.append(
                f"First, pin down what {subject} has to achieve; then try the smallest version of it."
            )
        elif stripped.startswith("why"):
            sentences.append(f"Good question: the reasons behind {subject} usually come down to trade-offs.")
            sentences.append(f"Each choice about {subject} buys something and costs something else.")
        elif stripped.startswith(("what", "who", "which", "where", "when")) or stripped.endswith("?"):
            sentences.append(f"In short, {subject} is the heart of what you are asking about.")
            sentences.append(f"The details of {subject} depend on the context you use it in.")
        else:
            sentences.append(
                _pick(
                    [
                        f"You mentioned {subject}, so let's look at it more closely.",
                        f"Thanks for bringing up {subject}.",
                        f"Let's talk about {subject}.",
                    ],
                    seed,
                )
            )
            sentences.append(f"There is more to {subject} than first meets the eye.")
        if others:
            sentences.append(f"It also connects with {others}, which is worth keeping in mind.")

    if len(user_turns) > 1:
        earlier = _topics(user_turns[-2], limit=1)
        if earlier:
            sentences.append(f"Earlier you asked about {earlier[0]}, and that still applies here.")
        sentences.append(f"This is message {len(user_turns)} of our conversation.")
    sentences.append(
        _pick(
            [
                "I'm a simulated model, so treat this as a demonstration of streaming.",
                "Note that I'm simulated: a real model can be configured in place of me.",
            ],
            seed + b"closing",
        )
    )
    return " ".join(sentences)


class SimulatedAnswerSource:
    """The default answer source: a composed answer, streamed a few words at a time.

    Each chunk is up to `words_per_chunk` words. Before a chunk is sent the source waits
    `stream_delay` for each of its words (the model "writing"), plus `chunk_delay` (the pause between
    chunks). Both at 0 stream as fast as the machinery allows.
    """

    name = "simulated"

    def __init__(self, *, stream_delay: float, chunk_delay: float, words_per_chunk: int = 3) -> None:
        self.stream_delay = stream_delay
        self.chunk_delay = chunk_delay
        self.words_per_chunk = words_per_chunk

    async def stream(
        self, conversation: Sequence[ConversationMessage], completion: Completion
    ) -> AsyncGenerator[str, None]:
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


def _message(message: ConversationMessage) -> ChatCompletionMessageParam:
    if message.role == "system":
        return {"role": "system", "content": message.content}
    if message.role == "assistant":
        return {"role": "assistant", "content": message.content}
    return {"role": "user", "content": message.content}


class OpenAIAnswerSource:
    """Answers from a server speaking OpenAI's Chat Completions API, streamed.

    Failures before the first token (connection errors, timeouts, 408, 409, 429 and 5xx answers) are
    retried by the `openai` client itself, `AI_MAX_RETRIES` times with exponential backoff, honouring
    `Retry-After`: it retries only the request, never a stream that has begun, so no token is ever sent
    twice. Everything else ends the answer with an `AnswerError` whose code says what happened.
    """

    name = "openai"

    def __init__(
        self,
        client: AsyncOpenAI,
        *,
        model: str,
        temperature: float | None = None,
        max_tokens: int | None = None,
        include_usage: bool = True,
        location: str = "",
    ) -> None:
        self._client = client
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.include_usage = include_usage
        self.location = location

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenAIAnswerSource:
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else NO_KEY
        client = AsyncOpenAI(
            api_key=key,
            base_url=settings.openai_base_url,
            # Bounds the connect and every read: a stream that stalls longer than this fails.
            timeout=settings.ai_timeout,
            max_retries=settings.ai_max_retries,
        )
        return cls(
            client,
            model=settings.ai_model,
            temperature=settings.ai_temperature,
            max_tokens=settings.ai_max_tokens,
            include_usage=settings.ai_stream_usage,
            location=settings.model_location(),
        )

    async def aclose(self) -> None:
        """Close the client and its connection pool."""
        await self._client.close()

    async def stream(
        self, conversation: Sequence[ConversationMessage], completion: Completion
    ) -> AsyncGenerator[str, None]:
        try:
            response = await self._client.chat.completions.create(
                model=self.model,
                messages=[_message(message) for message in conversation],
                stream=True,
                stream_options={"include_usage": True} if self.include_usage else omit,
                temperature=self.temperature if self.temperature is not None else omit,
                max_tokens=self.max_tokens if self.max_tokens is not None else omit,
            )
        except OpenAIError as error:
            raise self._failure(error) from None
        finish: FinishReason | None = None
        # `async with`: however the answer ends (done, failed, cancelled, closed by its consumer), the
        # HTTP response is closed here, so the model server sees the disconnect and stops generating.
        async with response:
            try:
                async for chunk in response:
                    if chunk.usage is not None:
                        completion.usage = Usage(
                            prompt_tokens=chunk.usage.prompt_tokens,
                            completion_tokens=chunk.usage.completion_tokens,
                            total_tokens=chunk.usage.total_tokens,
                        )
                    for choice in chunk.choices:
                        if choice.index != 0:
                            continue
                        if choice.finish_reason is not None:
                            finish = FINISH_REASONS.get(choice.finish_reason, "stop")
                        if choice.delta.content:
                            yield choice.delta.content
            except OpenAIError as error:
                raise self._failure(error) from None
        if finish is None:
            # Every Chat Completions stream ends with a chunk carrying `finish_reason`; without it the
            # server closed the stream part-way (a crash, a proxy's timeout).
            logger.warning("the model server at %s ended a stream without finishing it", self.location)
            raise AnswerError("upstream_error", "The model server ended the answer before it was complete.")
        completion.finish_reason = finish

    def _failure(self, error: OpenAIError) -> AnswerError:
        """The `AnswerError` for a client error. Its message goes to users: no upstream text in it."""
        if isinstance(error, APITimeoutError):
            logger.warning("the model server at %s did not answer in time", self.location)
            return AnswerError("upstream_timeout", "The model server did not answer in time.")
        if isinstance(error, APIConnectionError):
            logger.warning("cannot reach the model server at %s, or it dropped the stream", self.location)
            return AnswerError("upstream_error", "The connection to the model server failed.")
        if isinstance(error, AuthenticationError | PermissionDeniedError):
            # The upstream's own message can quote part of the key: it is never logged.
            logger.error(
                "the model server at %s refused the API key (HTTP %d): check OPENAI_API_KEY",
                self.location,
                error.status_code,
            )
            return AnswerError("upstream_auth", "The model server refused this service's credentials.")
        if isinstance(error, NotFoundError):
            logger.error(
                "the model server at %s has no model %r (HTTP 404): check AI_MODEL and OPENAI_BASE_URL",
                self.location,
                self.model,
            )
            return AnswerError("model_not_found", f"The model server does not know the model {self.model!r}.")
        if isinstance(error, RateLimitError):
            logger.warning("the model server at %s is rate limiting (HTTP 429)", self.location)
            return AnswerError("rate_limited", "The model server is rate limiting requests; try again later.")
        if isinstance(error, APIStatusError):
            logger.warning(
                "the model server at %s answered HTTP %d: %.300s",
                self.location,
                error.status_code,
                error.message,
            )
            return AnswerError("upstream_error", f"The model server failed (HTTP {error.status_code}).")
        logger.warning("the model server at %s reported an error: %.300s", self.location, error)
        return AnswerError("upstream_error", "The model server reported an error.")


def create_answer_source(settings: Settings) -> AnswerSource:
    """The answer source `AI_PROVIDER` names. Call it in the lifespan: the openai one owns a client."""
    if settings.ai_provider == "openai":
        source = OpenAIAnswerSource.from_settings(settings)
        logger.info("answers come from model %r at %s", source.model, source.location)
        return source
    return SimulatedAnswerSource(stream_delay=settings.stream_delay, chunk_delay=settings.chunk_delay)


async def close_answer_source(source: AnswerSource) -> None:
    """Release what the source holds (the openai client's connections)."""
    if isinstance(source, OpenAIAnswerSource):
        await source.aclose()


def provider_health(settings: Settings) -> AIHealth:
    """The provider and model, as `/health` shows them."""
    return AIHealth(
        provider=settings.ai_provider,
        model=settings.served_model,
        base_url=settings.model_location() if settings.ai_provider == "openai" else None,
    )
