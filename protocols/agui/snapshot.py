"""A thread's history as AG-UI messages, for the `MESSAGES_SNAPSHOT` a reconnect starts with.

Each stored turn becomes the message the stream named it by: an answer is the assistant message
`<message_id>` (its text, its refusal after it, its tool calls), preceded by its reasoning message
`<message_id>-reasoning`; a user turn is `<message_id>-user` (the turns of one exchange share the
answer's id); a tool turn is `<message_id>-<tool_call_id>`.
"""

from __future__ import annotations

from collections.abc import Sequence

from ag_ui.core import (
    AssistantMessage,
    FunctionCall,
    ImagePart,
    Message,
    ReasoningMessage,
    TextPart,
    ToolCall,
    ToolMessage,
    UrlSource,
    UserMessage,
)
from ag_ui.core import DataSource as Data

from models import ChatTurn
from protocols.agui.encoder import reasoning_id

__all__ = ["snapshot_messages"]

_DATA_PREFIX = "data:"


def _image(url: str) -> ImagePart:
    if url.startswith(_DATA_PREFIX):
        head, _, data = url.partition(",")
        mime_type = head.removeprefix(_DATA_PREFIX).removesuffix(";base64")
        return ImagePart(source=Data(value=data, mime_type=mime_type))
    return ImagePart(source=UrlSource(value=url))


def _user(turn: ChatTurn) -> UserMessage:
    if not turn.images:
        return UserMessage(id=f"{turn.message_id}-user", content=turn.content)
    parts: list[TextPart | ImagePart] = [TextPart(text=turn.content), *map(_image, turn.images)]
    return UserMessage(id=f"{turn.message_id}-user", content=parts)


def _answer(turn: ChatTurn) -> list[Message]:
    messages: list[Message] = []
    if turn.reasoning:
        messages.append(ReasoningMessage(id=reasoning_id(turn.message_id), content=turn.reasoning))
    text = turn.content + (turn.refusal or "")  # the stream sends a refusal as the message's text
    calls = [
        ToolCall(id=call.id, function=FunctionCall(name=call.name, arguments=call.arguments))
        for call in turn.tool_calls or ()
    ]
    messages.append(AssistantMessage(id=turn.message_id, content=text or None, tool_calls=calls or None))
    return messages


def snapshot_messages(turns: Sequence[ChatTurn], *, streaming: str | None = None) -> list[Message]:
    """The thread's messages, oldest first. `streaming`: the answer the reconnect then streams, whose
    assistant message its events build (left out here, should it have ended meanwhile)."""
    messages: list[Message] = []
    for turn in turns:
        if turn.role == "user":
            messages.append(_user(turn))
        elif turn.role == "tool":
            messages.append(
                ToolMessage(
                    id=f"{turn.message_id}-{turn.tool_call_id}",
                    content=turn.content,
                    tool_call_id=turn.tool_call_id or "",
                )
            )
        elif turn.message_id != streaming:
            messages.extend(_answer(turn))
    return messages
