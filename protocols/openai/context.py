"""From a Chat Completions request's messages to what the service answers: the conversation, within the
same context limits as `POST /chat`, and what is new in it (the user's message, or the tool results that
end it). The order of the messages is checked as OpenAI checks it: every `tool` message answers a call
of the assistant message just before it, and the conversation ends with the user's turn or results."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from config import Settings
from conversation import (
    ConversationMessage,
    InstructionsTooLong,
    build_context,
    check_instructions,
    pinned_size,
)
from models import MAX_IMAGES
from parts import ToolCall, ToolResult
from protocols.openai.messages import InboundMessage
from protocols.validation import InvalidRequest, check_message_length

__all__ = ["Exchange", "read_messages"]


@dataclass(frozen=True, slots=True)
class Exchange:
    """The conversation to answer, and its new turn: the user's `message` (with its `images`), or the
    `tool_results` of the calls its last answer made."""

    conversation: list[ConversationMessage]
    message: str | None
    images: tuple[str, ...] = ()
    tool_results: tuple[ToolResult, ...] = ()


def _refuse(reason: str) -> InvalidRequest:
    return InvalidRequest([("messages", reason)])


def _check_order(messages: Sequence[InboundMessage]) -> None:
    """Each tool message answers a call of the assistant message before it (other results may come
    between), once; the last message is a user's or a tool's."""
    awaiting: set[str] = set()
    for index, message in enumerate(messages):
        if message.role == "tool":
            if message.tool_call_id not in awaiting:
                raise _refuse(
                    f"messages.{index}: a tool message must answer a call of the assistant message "
                    f"before it, once; {message.tool_call_id!r} is not one"
                )
            awaiting.discard(message.tool_call_id)
        else:
            awaiting = {call.id for call in message.tool_calls or ()}
        if len(message.images()) > MAX_IMAGES:
            raise _refuse(f"messages.{index}: at most {MAX_IMAGES} images in a message")
    if messages[-1].role not in {"user", "tool"}:
        raise _refuse("The last message must be a user message, or tool results.")


def _converted(message: InboundMessage) -> ConversationMessage:
    if message.role == "user":
        return ConversationMessage(role="user", content=message.text(), images=message.images())
    if message.role == "assistant":
        calls = tuple(
            ToolCall(id=call.id, name=call.function.name, arguments=call.function.arguments)
            for call in message.tool_calls or ()
        )
        return ConversationMessage(role="assistant", content=message.text(), tool_calls=calls)
    if message.role == "tool":
        return ConversationMessage(role="tool", content=message.text(), tool_call_id=message.tool_call_id)
    return ConversationMessage(role="system", content=message.text())  # system, developer


def read_messages(messages: Sequence[InboundMessage], settings: Settings) -> Exchange:
    """The exchange the messages ask for; `InvalidRequest` (naming `messages`) if they are out of order.

    The request's leading system (or developer) messages replace `SYSTEM_PROMPT`; a request with none
    gets `SYSTEM_PROMPT`. They count toward `MAX_CONTEXT_CHARS`: what cannot fit beside the newest
    message is refused, naming them.
    """
    _check_order(messages)
    leading = 0
    while leading < len(messages) - 1 and messages[leading].role in {"system", "developer"}:
        leading += 1
    turns = [_converted(message) for message in messages[leading:]]
    if leading:
        system_prompt = "\n\n".join(m.text() for m in messages[:leading])
        try:
            check_instructions(system_prompt, pinned=pinned_size(turns), max_chars=settings.max_context_chars)
        except InstructionsTooLong as error:
            field = "messages.0.content" if leading == 1 else "messages"
            raise InvalidRequest([(field, str(error))]) from None
    else:
        system_prompt = settings.system_prompt
    conversation = build_context(
        turns,
        system_prompt=system_prompt,
        max_messages=settings.max_context_messages,
        max_chars=settings.max_context_chars,
        send_reasoning=settings.ai_send_reasoning,
    )
    last = messages[-1]
    if last.role == "tool":
        tail = len(messages)
        while messages[tail - 1].role == "tool":
            tail -= 1
        results = tuple(
            ToolResult(tool_call_id=m.tool_call_id or "", content=m.text()) for m in messages[tail:]
        )
        return Exchange(conversation, None, tool_results=results)
    message = last.text()
    if not message.strip():
        raise _refuse("The last user message must have text.")
    check_message_length(message, settings.max_message_length, "messages")
    return Exchange(conversation, message, images=last.images())
