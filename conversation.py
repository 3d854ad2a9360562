"""What a model is asked: a conversation's messages, and the context built from a session's turns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["ConversationMessage", "build_context"]


@dataclass(frozen=True, slots=True)
class ConversationMessage:
    role: Literal["system", "user", "assistant"]
    content: str


def build_context(
    earlier: Sequence[ConversationMessage],
    message: str,
    *,
    system_prompt: str,
    max_messages: int,
    max_chars: int,
) -> list[ConversationMessage]:
    """The conversation a model answers: the system prompt, recent turns, then the new message.

    Of the `earlier` turns (oldest first) at most `max_messages` of the most recent are kept, and only as
    many as fit in `max_chars` together with the system prompt and the message; the oldest go first.
    The system prompt and the new message are always sent. Empty turns (an answer that failed before its
    first token) are skipped, and an answer whose question was dropped goes too, so the turns sent start
    with a user's: some chat templates refuse anything else.
    """
    budget = max_chars - len(system_prompt) - len(message)
    candidates = [turn for turn in earlier if turn.content][-max_messages:] if max_messages else []
    kept: list[ConversationMessage] = []
    for turn in reversed(candidates):
        budget -= len(turn.content)
        if budget < 0:
            break
        kept.append(turn)
    kept.reverse()
    while kept and kept[0].role == "assistant":
        kept.pop(0)
    system = [ConversationMessage(role="system", content=system_prompt)] if system_prompt else []
    return [*system, *kept, ConversationMessage(role="user", content=message)]
