"""Answers from any server speaking OpenAI's Chat Completions API: OpenAI, Azure OpenAI, vLLM, Ollama,
llama.cpp, LM Studio, LiteLLM and OpenRouter alike, through the `openai` client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx2
import orjson
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
)

from conversation import ConversationMessage
from generation import GenerationOptions
from models import FinishReason
from parts import Delta
from providers.base import AIHealth, AnswerError, AnswerSource, Completion
from providers.openai_stream import ChunkReader, ToolCallReader, sse_data

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionContentPartParam, ChatCompletionMessageParam

    from config import Settings

__all__ = ["OpenAIAnswerSource", "create", "model_location"]

logger = logging.getLogger(__name__)

# The client always sends a key; local servers (Ollama, vLLM, llama.cpp) accept any, so one that has
# none configured gets this placeholder.
NO_KEY = "no-key"

# The model's own endings. `function_call` is the legacy name of `tool_calls`; anything unknown is a stop.
FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "content_filter": "content_filter",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
}
# How long the rest of a stream after `[DONE]` is waited for, to keep its connection (`_drain`).
DRAIN_SECONDS = 0.25
# The sampling options passed through as they are, when a request sets them.
SAMPLING = ("top_p", "stop", "seed", "presence_penalty", "frequency_penalty", "reasoning_effort")


def create(settings: Settings) -> AnswerSource:
    """`AI_PROVIDER=openai`: `AI_MODEL` at `OPENAI_BASE_URL`. The source owns an `AsyncOpenAI` client."""
    source = OpenAIAnswerSource.from_settings(settings)
    logger.info("answers come from model %r at %s", source.model, source.location)
    return source


def model_location(base_url: str) -> str:
    """Where the model server is, fit for a log line or a response: no credentials, no query."""
    parts = urlsplit(base_url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


def _message(message: ConversationMessage) -> ChatCompletionMessageParam:
    if message.role == "system":
        return {"role": "system", "content": message.content}
    if message.role == "tool":
        return {"role": "tool", "tool_call_id": message.tool_call_id or "", "content": message.content}
    if message.role == "assistant":
        return _assistant_message(message)
    if message.images:
        content: list[ChatCompletionContentPartParam] = [{"type": "text", "text": message.content}]
        content.extend({"type": "image_url", "image_url": {"url": url}} for url in message.images)
        return {"role": "user", "content": content}
    return {"role": "user", "content": message.content}


def _assistant_message(message: ConversationMessage) -> ChatCompletionMessageParam:
    sent: dict[str, Any] = {"role": "assistant", "content": message.content}
    if message.tool_calls:
        # OpenAI's own shape: `content` null when the answer was only calls.
        sent["content"] = message.content or None
        sent["tool_calls"] = [
            {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
            for call in message.tool_calls
        ]
    if message.reasoning:
        # Only with AI_SEND_REASONING; vLLM, DeepSeek and Ollama read it under this name.
        sent["reasoning_content"] = message.reasoning
    return sent  # type: ignore[return-value]  # reasoning_content is not in the SDK's TypedDict


@contextlib.asynccontextmanager
async def _streamed_post(client: AsyncOpenAI, path: str, body: bytes) -> AsyncIterator[httpx2.Response]:
    """The one adapter to the `openai` client: a POST of a body serialised once (orjson), through the
    client's public `post` (its retries with backoff, `Retry-After`, auth headers, and its errors for a
    status that is not 2xx), answered with the raw streaming `httpx2.Response`, closed on the way out.

    `chat.completions.create` would first walk the whole request through the SDK's parameter transform
    (pure Python, every message) for every answer: the first chunk's wait, and a share of a paced
    answer's CPU, were mostly that (issue #14)."""
    response = await client.post(path, cast_to=httpx2.Response, content=body, stream=True)
    try:
        yield response
    finally:
        await response.aclose()


async def _drain(chunks: AsyncIterator[bytes]) -> None:
    """Read what follows `[DONE]` (the end of the chunked body, normally already received), so that the
    connection goes back to the client's pool: a response closed part-read takes its connection with it,
    and every answer would then open a new one (a TCP connect before each first token). A server that
    keeps the stream open after `[DONE]` gets DRAIN_SECONDS, then its connection is closed as before."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_SECONDS):
            async for _ in chunks:
                pass


class OpenAIAnswerSource:
    """Answers from a server speaking OpenAI's Chat Completions API, streamed.

    Failures before the first token (connection errors, timeouts, 408, 409, 429 and 5xx answers) are
    retried by the `openai` client itself, `AI_MAX_RETRIES` times with exponential backoff, honouring
    `Retry-After`: it retries only the request, never a stream that has begun, so no token is ever sent
    twice. Everything else ends the answer with an `AnswerError` whose code says what happened.
    """

    name = "openai"
    accepts_images = True

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
            location=model_location(settings.openai_base_url),
        )

    def health(self) -> AIHealth:
        return AIHealth(provider=self.name, model=self.model, base_url=self.location)

    async def aclose(self) -> None:
        """Close the client and its connection pool."""
        await self._client.close()

    def _options(self, options: GenerationOptions) -> dict[str, Any]:
        """The request's options as Chat Completions parameters, capped by the settings; unset ones are
        left out, so that the server's own defaults apply."""
        sent: dict[str, Any] = {}
        if options.tools:
            sent["tools"] = [tool.model_dump(exclude_none=True) for tool in options.tools]
            # OpenAI refuses these two without `tools` (400), so they go only with them.
            if options.tool_choice is not None:
                choice = options.tool_choice
                sent["tool_choice"] = choice if isinstance(choice, str) else choice.model_dump()
            if options.parallel_tool_calls is not None:
                sent["parallel_tool_calls"] = options.parallel_tool_calls
        if options.response_format is not None:
            sent["response_format"] = options.response_format.model_dump(by_alias=True, exclude_none=True)
        temperature = options.temperature if options.temperature is not None else self.temperature
        if temperature is not None:
            sent["temperature"] = temperature
        # AI_MAX_TOKENS is a ceiling: a request may ask for fewer tokens, never for more.
        limits = [limit for limit in (options.max_tokens, self.max_tokens) if limit is not None]
        if limits:
            sent["max_tokens"] = min(limits)
        for name in SAMPLING:
            value = getattr(options, name)
            if value is not None:
                sent[name] = value
        return sent

    async def stream(
        self,
        conversation: Sequence[ConversationMessage],
        options: GenerationOptions,
        completion: Completion,
    ) -> AsyncGenerator[Delta, None]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [_message(message) for message in conversation],
            "stream": True,
        }
        if self.include_usage:
            body["stream_options"] = {"include_usage": True}
        body.update(self._options(options))
        reader = ChunkReader(completion)
        try:
            # However the answer ends (done, failed, cancelled, closed by its consumer), the HTTP response
            # is closed here, so the model server sees the disconnect and stops generating.
            async with _streamed_post(self._client, "/chat/completions", orjson.dumps(body)) as response:
                chunks = response.aiter_bytes()
                async for data in sse_data(chunks):
                    for part in reader.read(data):
                        yield part
                await _drain(chunks)
        except OpenAIError as error:
            raise self._failure(error) from None
        except httpx2.TimeoutException:
            logger.warning("the model server at %s did not answer in time", self.location)
            raise AnswerError("upstream_timeout", "The model server did not answer in time.") from None
        except httpx2.TransportError:
            logger.warning("cannot reach the model server at %s, or it dropped the stream", self.location)
            raise AnswerError("upstream_error", "The connection to the model server failed.") from None
        except ValueError:  # orjson's: not JSON
            logger.warning("the model server at %s sent an event that is not JSON", self.location)
            raise AnswerError("upstream_error", "The model server sent a malformed stream.") from None
        completion.finish_reason = self._finish(reader.finish, reader.calls)

    def _finish(self, finish: str | None, calls: ToolCallReader) -> FinishReason:
        if finish is None:
            # Every Chat Completions stream ends with a chunk carrying `finish_reason`; without it the
            # server closed the stream part-way (a crash, a proxy's timeout).
            logger.warning("the model server at %s ended a stream without finishing it", self.location)
            raise AnswerError("upstream_error", "The model server ended the answer before it was complete.")
        if unnamed := calls.unnamed():
            logger.warning("the model server at %s sent %d tool calls without a name", self.location, unnamed)
        reason = FINISH_REASONS.get(finish, "stop")
        if reason == "tool_calls" and not calls.called:
            return "stop"  # a client told `tool_calls` looks for calls: there are none to find
        return reason

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
