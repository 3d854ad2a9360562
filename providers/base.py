"""The seam every answer source plugs into: what it is, what it is given, what it yields, how it fails."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel, Field

from conversation import ConversationMessage
from generation import GenerationOptions
from models import FinishReason
from parts import Delta, Usage

__all__ = ["AIHealth", "AnswerError", "AnswerSource", "Completion"]


class AIHealth(BaseModel):
    """Which model answers. Not probed: a health check must not spend tokens or wait on a model server."""

    provider: str = Field(examples=["openai"], description="The `AI_PROVIDER` that answers.")
    model: str = Field(examples=["gpt-4o-mini"])
    base_url: str | None = Field(
        default=None, description="The model server, for `openai`; never with credentials."
    )


@dataclass(slots=True)
class Completion:
    """What a source reports about an answer besides its parts, filled in while it streams. A source
    that called tools may leave `stop`: the runner reports `tool_calls` for an answer that has any."""

    finish_reason: FinishReason = "stop"
    usage: Usage | None = None


class AnswerSource(Protocol):
    """Where answers come from: a simulated model, or a real one behind an HTTP API.

    A source that holds nothing to release and has nothing to add to `/health` may subclass this
    Protocol to inherit `health` and `aclose`; any other class with these members is one too.
    """

    # Its `AI_PROVIDER` name: `provider` in `/health`, `owned_by` in `/v1/models`.
    name: str
    # The model that answers, as `/health` and `/v1/models` name it.
    model: str
    # Whether it can be shown images; a message with images to one that cannot is refused (400).
    accepts_images: bool = False

    def health(self) -> AIHealth:
        """What `/health` shows of it. Never probes: a health check must not spend tokens or wait."""
        return AIHealth(provider=self.name, model=self.model)

    async def aclose(self) -> None:
        """Release what it holds (clients, connections); the lifespan calls it once, at shutdown."""
        return  # nothing to release; a body of only a docstring would make this abstract for mypy

    def stream(
        self,
        conversation: Sequence[ConversationMessage],
        options: GenerationOptions,
        completion: Completion,
    ) -> AsyncGenerator[Delta, None]:
        """Yield the answer to the conversation as deltas: text as `str`, other parts as `parts` types.

        `options` are the request's (tools, structured output, sampling), validated; the source applies
        the server's settings on top of them (`AI_MAX_TOKENS` caps `max_tokens`).

        A generator, so that its caller can close it (`aclose`) the moment an answer is cancelled and
        the source can release what it holds, such as an HTTP stream to a model server, at once.
        """
        ...


class AnswerError(Exception):
    """An answer source failed; `code` goes into the stream's `error` event."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
