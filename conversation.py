"""What a model is asked: a conversation's messages, and the context built from a session's turns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from parts import ToolCall

__all__ = ["ConversationMessage", "InstructionsTooLong", "build_context", "check_instructions", "pinned_size"]

# The fields of a stored turn (`ChatTurn`) that a model is sent besides its role and text.
PARTS = frozenset({"tool_calls", "tool_call_id", "images", "reasoning"})


@dataclass(slots=True)
class ConversationMessage:
    """One message sent to a model: text, and the parts its role may carry. Treated as immutable (use
    `dataclasses.replace`); not frozen, because a frozen dataclass is slower to build and every answer
    builds one per turn of its context."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str
    # An assistant's calls, and a tool message's answer to one of them.
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    # A user's images (https or data URLs); an assistant's reasoning, sent back only when configured.
    images: tuple[str, ...] = ()
    reasoning: str | None = None

    @classmethod
    def from_stored(cls, turn: Mapping[str, Any]) -> ConversationMessage:
        """From a stored turn's JSON object (`ChatTurn`); `KeyError`/`TypeError` if it is not one."""
        if PARTS.isdisjoint(turn):  # a turn of text only, the common case: nothing else to read
            return cls(turn["role"], turn["content"])
        return cls(
            role=turn["role"],
            content=turn["content"],
            tool_calls=tuple(ToolCall(**call) for call in turn.get("tool_calls") or ()),
            tool_call_id=turn.get("tool_call_id"),
            images=tuple(turn.get("images") or ()),
            reasoning=turn.get("reasoning"),
        )

    def size(self) -> int:
        """What it counts against `MAX_CONTEXT_CHARS`: its text, its calls, its reasoning."""
        if not self.tool_calls and self.reasoning is None:
            return len(self.content)
        calls = sum(len(call.name) + len(call.arguments) for call in self.tool_calls)
        return len(self.content) + calls + len(self.reasoning or "")


def _units(messages: Sequence[ConversationMessage]) -> list[list[ConversationMessage]]:
    """The messages in the groups that are kept or dropped together: each message, except that a tool
    message joins the assistant message whose call it answers. Within a group, a call without a result
    (an answer stopped mid-call, or whose results never came) and a result without its call are dropped:
    OpenAI-compatible servers refuse both."""
    groups: list[list[ConversationMessage]] = []
    for message in messages:
        if message.role == "tool" and groups and groups[-1][0].tool_calls:
            groups[-1].append(message)
        elif message.role != "tool":
            groups.append([message])
    units = []
    for group in groups:
        head, results = group[0], group[1:]
        if head.tool_calls:
            answered = {result.tool_call_id for result in results}
            calls = tuple(call for call in head.tool_calls if call.id in answered)
            called = {call.id for call in calls}
            results = [result for result in results if result.tool_call_id in called]
            head = replace(head, tool_calls=calls)
        if head.role == "assistant" and not head.content and not head.tool_calls:
            continue  # an answer that failed before its first token
        units.append([head, *results])
    return units


class InstructionsTooLong(ValueError):
    """A client's own instructions (its system messages) do not fit `MAX_CONTEXT_CHARS` beside what is
    always sent; the protocol edge names the field that brought them."""


def _pinned(turns: Sequence[ConversationMessage]) -> list[ConversationMessage]:
    """What is always sent: the last user message and everything after it."""
    last_user = max((i for i, turn in enumerate(turns) if turn.role == "user"), default=0)
    return [message for unit in _units(turns[last_user:]) for message in unit]


def pinned_size(turns: Sequence[ConversationMessage]) -> int:
    """How much of `MAX_CONTEXT_CHARS` what is always sent of `turns` takes."""
    return sum(message.size() for message in _pinned(turns))


def check_instructions(instructions: str, *, pinned: int, max_chars: int) -> None:
    """Instructions a client sends count toward `max_chars` (issue #13): they must fit together with
    the `pinned` characters always sent, else `InstructionsTooLong`. (`SYSTEM_PROMPT`, the operator's,
    is always sent, as `build_context` says.)"""
    if len(instructions) + pinned > max_chars:
        raise InstructionsTooLong(
            f"the instructions are {len(instructions)} characters; with the newest message at most "
            f"{max(0, max_chars - pinned)} fit (MAX_CONTEXT_CHARS is {max_chars})"
        )


def build_context(
    turns: Sequence[ConversationMessage],
    *,
    system_prompt: str,
    max_messages: int,
    max_chars: int,
    send_reasoning: bool = False,
) -> list[ConversationMessage]:
    """The conversation a model answers: the system prompt, then `turns` (oldest first) within limits.

    The last user message and everything after it (the tool calls of its answer and their results,
    when a tool result is what is answered) are always sent. Of the turns before it, at most
    `max_messages` of the most recent are kept, and only as many as fit in `max_chars` together with the
    system prompt and what is always sent; the oldest go first. A tool call and its result are kept or
    dropped together, and the turns sent start with a user's: some chat templates refuse anything else.
    Reasoning of earlier answers is sent only with `send_reasoning`.
    """
    if not send_reasoning:
        turns = [replace(turn, reasoning=None) if turn.reasoning else turn for turn in turns]
    last_user = max((i for i, turn in enumerate(turns) if turn.role == "user"), default=0)
    pinned = _pinned(turns)
    budget = max_chars - len(system_prompt) - sum(message.size() for message in pinned)
    count = max_messages
    kept: list[list[ConversationMessage]] = []
    for unit in reversed(_units(turns[:last_user])):
        budget -= sum(message.size() for message in unit)
        count -= len(unit)
        if budget < 0 or count < 0:
            break
        kept.append(unit)
    kept.reverse()
    while kept and kept[0][0].role != "user":
        kept.pop(0)
    system = [ConversationMessage(role="system", content=system_prompt)] if system_prompt else []
    return [*system, *(message for unit in kept for message in unit), *pinned]
