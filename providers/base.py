"""The seam every answer source plugs into: what it is, what it is given, what it yields, how it fails."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Protocol

from conversation import ConversationMessage
from models import AIHealth, FinishReason, Usage

__all__ = ["AnswerError", "AnswerSource", "Completion"]


@dataclass(slots=True)
class Completion:
    """What a source reports about an answer besides its text, filled in while it streams."""

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

    def health(self) -> AIHealth:
        """What `/health` shows of it. Never probes: a health check must not spend tokens or wait."""
        return AIHealth(provider=self.name, model=self.model)

    async def aclose(self) -> None:
        """Release what it holds (clients, connections); the lifespan calls it once, at shutdown."""
        return  # nothing to release; a body of only a docstring would make this abstract for mypy

    def stream(
        self, conversation: Sequence[ConversationMessage], completion: Completion
    ) -> AsyncGenerator[str, None]:
        """Yield the answer to the conversation's last message as text deltas.

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
