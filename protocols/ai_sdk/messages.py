"""What `useChat`'s default transport posts, and what of it the service takes.

The body is the SDK's: the chat `id`, every `messages` of the chat as UI messages with parts, the
`trigger` and the `messageId` it concerns, plus whatever the transport's `body` option adds (here: the
answer's options, as `POST /chat` takes them). The service keeps the conversation itself (the chat id is
the session), so only the last message is read: a user message is the next question; an assistant
message whose tool parts now carry outputs (`addToolOutput`) gives the results to continue from.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from errors import ServiceError
from generation import GenerationOptions
from models import MAX_IMAGES, ChatRequest, SessionId, UserId
from parts import ToolResult
from protocols.ai_sdk.encoder import Chunk, tool_output, tool_output_error
from protocols.validation import InvalidRequest, check_message_length

__all__ = [
    "DEFAULT_USER_ID",
    "Exchange",
    "RegenerateUnsupported",
    "UIChatRequest",
    "UIMessage",
    "read_exchange",
]

# The user id stored with the chat's turns when the body names none in `user_id`.
DEFAULT_USER_ID = "ai-sdk"
# Answer ids are derived from what the client sent (the chat, its message, the calls answered), so a
# retried POST finds the answer it started instead of starting another (`ChatRequest.message_id`).
ANSWER_NAMESPACE = uuid.UUID("0b5e7a52-6c1f-4f8e-9a53-3f1f5d2c8e41")
OPTION_FIELDS = tuple(GenerationOptions.model_fields)


class RegenerateUnsupported(ServiceError):
    """`regenerate-message` would replace a stored answer; a session's history is append-only."""

    status = 400
    code = "regenerate_unsupported"


class UIPart(BaseModel):
    """One part of a UI message: its `type` decides which other fields it has (the SDK's `UIMessagePart`)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(max_length=256)
    text: str | None = None
    mediaType: str | None = None  # the SDK's field names, camelCase
    url: str | None = None
    toolCallId: str | None = None
    state: str | None = None
    output: Any = None
    errorText: str | None = None

    @property
    def is_tool(self) -> bool:
        return self.type.startswith("tool-") or self.type == "dynamic-tool"


class UIMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str = Field(max_length=256)
    role: Literal["system", "user", "assistant"]
    parts: list[UIPart] = Field(max_length=4096)


class UIChatRequest(GenerationOptions):
    """The body `DefaultChatTransport` posts; the answer's options (tools, structured output, sampling)
    come through the transport's `body` option."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: SessionId = Field(description="The chat's id: the session its turns are stored in.")
    messages: list[UIMessage] = Field(min_length=1, max_length=100_000)
    trigger: Literal["submit-message", "regenerate-message"] = "submit-message"
    message_id: str | None = Field(default=None, alias="messageId", max_length=256)
    user_id: UserId = DEFAULT_USER_ID


@dataclass(frozen=True, slots=True)
class Exchange:
    """What the last message asks: the request for `ChatService.submit`; the UI message the answer
    belongs to (None: a new one, named by the answer's id); the results to echo before the answer."""

    request: ChatRequest
    ui_message_id: str | None
    prelude: list[Chunk]


def _text(content: Any) -> str:
    return content if isinstance(content, str) else orjson.dumps(content).decode()


def _user_turn(body: UIChatRequest, message: UIMessage, index: int, limit: int) -> dict[str, Any]:
    text = "\n".join(part.text for part in message.parts if part.type == "text" and part.text)
    check_message_length(text, limit, f"messages.{index}.parts")
    images = []
    for number, part in enumerate(message.parts):
        if part.type == "file":
            if not (part.mediaType or "").startswith("image/") or not part.url:
                raise InvalidRequest([(f"messages.{index}.parts.{number}", "only image files are supported")])
            images.append(part.url)
    if len(images) > MAX_IMAGES:
        raise InvalidRequest([(f"messages.{index}.parts", f"at most {MAX_IMAGES} images")])
    key = f"{body.id}/{message.id}"
    return {
        "message": text or None,
        "images": images or None,
        "message_id": uuid.uuid5(ANSWER_NAMESPACE, key),
    }


def _last_step(message: UIMessage) -> list[UIPart]:
    """The parts after the last `step-start`: the step whose tool calls await results (the earlier
    steps' calls were answered before)."""
    starts = [i for i, part in enumerate(message.parts) if part.type == "step-start"]
    return message.parts[starts[-1] + 1 :] if starts else message.parts


def _tool_results(body: UIChatRequest, message: UIMessage, index: int) -> tuple[dict[str, Any], list[Chunk]]:
    results: list[ToolResult] = []
    outputs: list[Chunk] = []
    for part in _last_step(message):
        if not part.is_tool or part.toolCallId is None:
            continue
        if part.state == "output-available":
            content = _text(part.output)
            outputs.append(tool_output(part.toolCallId, part.output))
        elif part.state == "output-error":
            error = part.errorText or "the tool failed"
            content = _text({"error": error})
            outputs.append(tool_output_error(part.toolCallId, error))
        else:
            continue
        results.append(ToolResult(tool_call_id=part.toolCallId, content=content))
    if not results:
        raise InvalidRequest(
            [(f"messages.{index}", "the last message is an assistant message with no tool output to send")]
        )
    key = f"{body.id}/{message.id}/" + ",".join(sorted(r.tool_call_id for r in results))
    return {"tool_results": results, "message_id": uuid.uuid5(ANSWER_NAMESPACE, key)}, outputs


def read_exchange(body: UIChatRequest, max_message_length: int) -> Exchange:
    """The submission the body's last message makes."""
    if body.trigger == "regenerate-message":
        raise RegenerateUnsupported(
            "regenerate-message is not supported: a chat's history cannot be rewritten; send a new message.",
            param="trigger",
        )
    index = len(body.messages) - 1
    message = body.messages[index]
    ui_message_id: str | None = None
    outputs: list[Chunk] = []
    if message.role == "user":
        turn = _user_turn(body, message, index, max_message_length)
    elif message.role == "assistant":
        turn, outputs = _tool_results(body, message, index)
        ui_message_id = message.id
    else:
        raise InvalidRequest(
            [(f"messages.{index}.role", "the last message must be the user's or the assistant's")]
        )
    options = {name: getattr(body, name) for name in OPTION_FIELDS}
    message_id = turn.pop("message_id")
    try:
        request = ChatRequest(session_id=body.id, user_id=body.user_id, **turn, **options)
    except ValidationError as error:
        raise InvalidRequest(
            [(f"messages.{index}.parts", str(detail["msg"])) for detail in error.errors()]
        ) from None
    # Set after validation: the id is derived (name-based, v5), which a client may not send itself.
    return Exchange(request.model_copy(update={"message_id": message_id}), ui_message_id, outputs)
