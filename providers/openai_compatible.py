"""Answers from any server speaking OpenAI's Chat Completions API: OpenAI, Azure OpenAI, vLLM, Ollama,
llama.cpp, LM Studio, LiteLLM and OpenRouter alike, through the `openai` client."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

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

from conversation import ConversationMessage
from generation import GenerationOptions
from models import FinishReason
from parts import Delta, Usage
from providers.base import AIHealth, AnswerError, AnswerSource, Completion

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam

    from config import Settings

__all__ = ["OpenAIAnswerSource", "create", "model_location"]

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

    async def stream(
        self,
        conversation: Sequence[ConversationMessage],
        options: GenerationOptions,
        completion: Completion,
    ) -> AsyncGenerator[Delta, None]:
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
