"""From a Responses request's input to what the service answers: the conversation (the continued
response's, then the new items), its system prompt, and the new turn (the user's message, or the tool
results that end the input), checked as OpenAI checks them.

The system prompt is `instructions` (of this request only, as OpenAI's are) together with the
conversation's `system` / `developer` messages; `SYSTEM_PROMPT` when there are none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

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
from protocols.openai.context import Exchange
from protocols.openai.responses_wire import (
    FunctionCallItem,
    FunctionCallOutputItem,
    InputItem,
    InputMessage,
    ItemReference,
    OutputText,
    ResponseCreateRequest,
)
from protocols.validation import InvalidRequest, check_message_length

__all__ = ["Reading", "input_items", "read_input"]


@dataclass(frozen=True, slots=True)
class Reading:
    """What a request asks: the `exchange` to answer (the context sent to the model, the new turn) and
    the `conversation` to keep for a later `previous_response_id` (system messages in it, trimmed)."""

    exchange: Exchange
    conversation: list[ConversationMessage]


def _refuse(field: str, reason: str) -> InvalidRequest:
    return InvalidRequest([(field, reason)])


def _items(body: ResponseCreateRequest) -> list[InputItem]:
    if isinstance(body.input, str):
        return [InputMessage(role="user", content=body.input)]
    return list(body.input)


def _converted(items: Sequence[InputItem], prior: list[ConversationMessage]) -> list[ConversationMessage]:
    """The new items as conversation messages, after `prior`: a `function_call` joins the assistant
    message just before it (OpenAI-compatible servers take calls only on an assistant message)."""
    messages = list(prior)
    fresh = len(messages)
    for index, item in enumerate(items):
        if isinstance(item, InputMessage):
            if item.role != "user" and item.images():
                raise _refuse(f"input.{index}", "only user messages have images")
            if len(item.images()) > MAX_IMAGES:
                raise _refuse(f"input.{index}", f"at most {MAX_IMAGES} images in a message")
            role: Literal["system", "user", "assistant"] = "system"
            if item.role in ("user", "assistant"):
                role = item.role
            messages.append(ConversationMessage(role=role, content=item.text(), images=item.images()))
        elif isinstance(item, FunctionCallItem):
            call = ToolCall(id=item.call_id, name=item.name, arguments=item.arguments)
            last = messages[-1] if len(messages) > fresh else None
            if last is not None and last.role == "assistant":
                messages[-1] = replace(last, tool_calls=(*last.tool_calls, call))
            else:
                messages.append(ConversationMessage(role="assistant", content="", tool_calls=(call,)))
        elif isinstance(item, FunctionCallOutputItem):
            messages.append(ConversationMessage(role="tool", content=item.text(), tool_call_id=item.call_id))
        elif isinstance(item, ItemReference):  # resolved before: `responses_create.resolve_references`
            raise _refuse(f"input.{index}", f"Item with id {item.id!r} not found.")
    return messages


def _check_order(messages: Sequence[ConversationMessage], fresh: int) -> None:
    """Each tool result answers a call of the assistant message before it, once; the conversation ends
    with the user's message or tool results."""
    awaiting: set[str] = set()
    for message in messages:
        if message.role == "tool":
            if message.tool_call_id not in awaiting:
                raise _refuse(
                    "input",
                    f"No tool call found for function call output with call_id {message.tool_call_id!r}.",
                )
            awaiting.discard(message.tool_call_id or "")
        elif message.role != "system":
            awaiting = {call.id for call in message.tool_calls}
    if len(messages) == fresh or messages[-1].role not in ("user", "tool"):
        raise _refuse("input", "The input must end with a user message or function call outputs.")


def read_input(body: ResponseCreateRequest, prior: list[ConversationMessage], settings: Settings) -> Reading:
    """The exchange `body` asks for after the `prior` conversation (the continued response's, and its
    answer); `InvalidRequest` naming `input` if its items are out of order."""
    messages = _converted(_items(body), prior)
    _check_order(messages, len(prior))
    system = [message for message in messages if message.role == "system"]
    prompts = [text for text in (body.instructions, *(m.content for m in system)) if text]
    turns = [message for message in messages if message.role != "system"]
    if prompts:
        # The client's instructions count toward MAX_CONTEXT_CHARS (issue #13).
        try:
            check_instructions(
                "\n\n".join(prompts), pinned=pinned_size(turns), max_chars=settings.max_context_chars
            )
        except InstructionsTooLong as error:
            raise _refuse("instructions" if body.instructions else "input", str(error)) from None
    context = build_context(
        turns,
        system_prompt="\n\n".join(prompts) if prompts or system else settings.system_prompt,
        max_messages=settings.max_context_messages,
        max_chars=settings.max_context_chars,
        send_reasoning=settings.ai_send_reasoning,
    )
    kept = [*system, *(message for message in context if message.role != "system")]
    last = messages[-1]
    if last.role == "tool":
        tail = len(messages)
        while tail > len(prior) and messages[tail - 1].role == "tool":
            tail -= 1
        results = tuple(
            ToolResult(tool_call_id=m.tool_call_id or "", content=m.content) for m in messages[tail:]
        )
        return Reading(Exchange(context, None, tool_results=results), kept)
    if not last.content.strip():
        raise _refuse("input", "The last user message must have text.")
    check_message_length(last.content, settings.max_message_length, "input")
    return Reading(Exchange(context, last.content, images=last.images), kept)


def _content(message: InputMessage) -> list[dict[str, Any]]:
    if isinstance(message.content, str):
        if message.role == "assistant":
            return [{"type": "output_text", "text": message.content, "annotations": []}]
        return [{"type": "input_text", "text": message.content}]
    content = []
    for part in message.content:
        dumped = part.model_dump(exclude_none=True)
        if isinstance(part, OutputText):
            dumped["annotations"] = []
        content.append(dumped)
    return content


def input_items(body: ResponseCreateRequest, message_hex: str) -> list[dict[str, Any]]:
    """The request's input items as `GET /v1/responses/{id}/input_items` lists them, each with an id."""
    listed = []
    for index, item in enumerate(_items(body)):
        item_id = getattr(item, "id", None) or f"in_{message_hex}_{index}"
        if isinstance(item, InputMessage):
            listed.append(
                {
                    "id": f"msg_{message_hex}_in{index}",
                    "type": "message",
                    "role": item.role,
                    "status": "completed",
                    "content": _content(item),
                }
            )
        elif isinstance(item, FunctionCallItem | FunctionCallOutputItem):
            prefix = "fc" if isinstance(item, FunctionCallItem) else "fco"
            item_id = item.id or f"{prefix}_{message_hex}_in{index}"
            listed.append({**item.model_dump(exclude_none=True), "id": item_id, "status": "completed"})
        else:
            listed.append({"id": item_id, "type": "reasoning", "summary": []})
    return listed
