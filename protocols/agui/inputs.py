"""From AG-UI's `RunAgentInput` to what `ChatService.submit` takes.

The thread (`threadId`) is the session, and its history on the server is the conversation: of the
input's `messages` only the new turn is read, the last user message or the `tool` messages that end the
input (the results of the calls the last answer made). `tools` are function tools; `context` and any
`system`/`developer` messages go into the system prompt; `forwardedProps` may carry the generation
options of `POST /chat` (`temperature`, `toolChoice`, `reasoningEffort`, ...) and a `userId`; `state`
is not read (this agent keeps none); `resume` is refused (it never interrupts a run).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ag_ui.core import (
    DataSource,
    DeveloperMessage,
    ImagePart,
    RunAgentInput,
    SystemMessage,
    TextPart,
    Tool,
    ToolMessage,
    UrlSource,
    UserMessage,
)
from pydantic import ValidationError
from pydantic.alias_generators import to_camel

from config import Settings
from conversation import InstructionsTooLong, check_instructions
from generation import FunctionDefinition, FunctionTool, GenerationOptions
from models import ID_PATTERN, ChatRequest, check_message_id
from parts import ToolResult
from protocols.validation import InvalidRequest, check_message_length

__all__ = [
    "DEFAULT_USER_ID",
    "Run",
    "message_id_of",
    "read_input",
    "system_prompt_of",
]

# The user id stored with a thread's turns when `forwardedProps` names none.
DEFAULT_USER_ID = "agui"
# runIds that are not UUIDs name the answer `uuid5(RUN_NAMESPACE, threadId + "\n" + runId)`.
RUN_NAMESPACE = uuid.UUID("0b6f4f7a-6c1e-4a8e-9d1f-7a0b6f4f7a6c")
# The generation options `forwardedProps` may carry, by their wire (camelCase) and Python names.
OPTION_NAMES = {
    **{name: name for name in GenerationOptions.model_fields},
    **{to_camel(name): name for name in GenerationOptions.model_fields},
}
NOT_FORWARDED = {"tools"}  # the input's own `tools` field says which tools there are


@dataclass(frozen=True, slots=True)
class Run:
    """What a run asks of the service: the request to submit, and the system prompt to answer it with
    when the input brings its own (`context`, system messages), else None (the server's)."""

    request: ChatRequest
    system_prompt: str | None


def message_id_of(thread_id: str, run_id: str) -> uuid.UUID:
    """The answer's `message_id` for a run: the runId itself when it is a random UUID (as `HttpAgent`'s
    are), otherwise a UUID derived from the thread and the runId, so that a repeated run finds its answer
    (a nil or name-based runId never becomes a message id as it is: issue #13, item 7)."""
    try:
        return check_message_id(uuid.UUID(run_id))
    except ValueError:
        return uuid.uuid5(RUN_NAMESPACE, f"{thread_id}\n{run_id}")


def _refuse(field: str, reason: str) -> InvalidRequest:
    return InvalidRequest([(field, reason)])


def _image_url(part: ImagePart) -> str:
    source = part.source
    if isinstance(source, UrlSource):
        return source.value
    if isinstance(source, DataSource):
        return f"data:{source.mime_type};base64,{source.value}"
    raise ValueError("an image must come from a URL or base64 data")


def _user_turn(message: UserMessage, index: int) -> tuple[str, list[str]]:
    """A user message's text (its text parts, a line apart) and its images' URLs."""
    if isinstance(message.content, str):
        return message.content, []
    texts, images = [], []
    for number, part in enumerate(message.content):
        if isinstance(part, TextPart):
            texts.append(part.text)
        elif isinstance(part, ImagePart):
            try:
                images.append(_image_url(part))
            except ValueError as error:
                raise _refuse(f"messages.{index}.content.{number}", str(error)) from None
        else:
            raise _refuse(f"messages.{index}.content.{number}", f"{part.type} parts are not supported")
    return "\n".join(texts), images


def _tool_text(message: ToolMessage) -> str:
    """A tool message's result as text (its text parts); a failed tool's `error` follows it."""
    if isinstance(message.content, str):
        text = message.content
    else:
        text = "\n".join(part.text for part in message.content if isinstance(part, TextPart))
    return f"{text}\nerror: {message.error}" if message.error else text


def _new_turn(messages: Sequence[Any], settings: Settings) -> dict[str, Any]:
    """The `ChatRequest` fields of the input's new turn: the last user message, or the tool results
    that end the input (those after its last assistant message)."""
    if not messages:
        raise _refuse("messages", "a run needs a user message, or tool results")
    last = len(messages) - 1
    if isinstance(messages[last], ToolMessage):
        first = last
        while first > 0 and isinstance(messages[first - 1], ToolMessage):
            first -= 1
        results = [
            ToolResult(tool_call_id=message.tool_call_id, content=_tool_text(message))
            for message in messages[first:]
        ]
        return {"tool_results": results}
    if not isinstance(messages[last], UserMessage):
        raise _refuse(f"messages.{last}", "the last message must be a user message, or tool results")
    text, images = _user_turn(messages[last], last)
    if not text.strip():
        raise _refuse(f"messages.{last}.content", "the user message must have text")
    check_message_length(text, settings.max_message_length, f"messages.{last}.content")
    return {"message": text, "images": images or None}


def _tools(tools: Sequence[Tool]) -> list[FunctionTool]:
    """The input's tools as function tools (their `parameters`, a JSON Schema, checked as such)."""
    converted = []
    for index, tool in enumerate(tools):
        try:
            definition = FunctionDefinition(
                name=tool.name, description=tool.description, parameters=tool.parameters
            )
        except ValidationError as error:
            first = error.errors()[0]
            field = ".".join(["tools", str(index), *(str(part) for part in first["loc"])])
            raise _refuse(field, first["msg"].removeprefix("Value error, ")) from None
        converted.append(FunctionTool(function=definition))
    return converted


def _forwarded(props: Any) -> dict[str, Any]:
    """The generation options and user id `forwardedProps` carries; its other keys are the
    application's own and are left alone."""
    if not isinstance(props, dict):
        return {}
    chosen: dict[str, Any] = {}
    for key, value in props.items():
        name = OPTION_NAMES.get(key)
        if name is not None and name not in NOT_FORWARDED:
            chosen[name] = value
        elif key in {"userId", "user_id"}:
            chosen["user_id"] = value
    return chosen


def system_prompt_of(body: RunAgentInput, default: str) -> str | None:
    """The system prompt when the input brings instructions: its system and developer messages (in
    place of the server's prompt, as under `/v1`) and its `context`, appended; None when it brings none."""
    instructions = [m.content for m in body.messages if isinstance(m, SystemMessage | DeveloperMessage)]
    context = body.context or []
    if not instructions and not context:
        return None
    prompt = "\n\n".join(instructions) if instructions else default
    if context:
        lines = "\n".join(f"- {item.description}: {item.value}" for item in context)
        prompt = f"{prompt}\n\nContext from the application:\n{lines}".lstrip()
    return prompt


def read_input(body: RunAgentInput, settings: Settings) -> Run:
    """The run the input asks for; `InvalidRequest` naming the field that cannot be served."""
    if not re.fullmatch(ID_PATTERN, body.thread_id):
        raise _refuse("threadId", "1 to 128 of A-Z a-z 0-9 _ . : -")
    if body.resume:
        raise _refuse("resume", "this agent never interrupts a run, so there is nothing to resume")
    tools = _tools(body.tools or ())
    options = _forwarded(body.forwarded_props)
    try:
        request = ChatRequest(
            session_id=body.thread_id,
            tools=tools or None,
            **{"user_id": DEFAULT_USER_ID, **options},
            **_new_turn(body.messages, settings),
        )
    except ValidationError as error:
        raise InvalidRequest(_located(error, options)) from None
    system_prompt = system_prompt_of(body, settings.system_prompt)
    if system_prompt is not None:
        _check_instructions(body, request, system_prompt, settings.max_context_chars)
    # Set after validation: a derived id is name-based (v5), which a client may not send itself.
    request = request.model_copy(update={"message_id": message_id_of(body.thread_id, body.run_id)})
    return Run(request, system_prompt)


def _check_instructions(body: RunAgentInput, request: ChatRequest, prompt: str, max_chars: int) -> None:
    """The input's instructions and context count toward MAX_CONTEXT_CHARS with its new turn (issue
    #13); refused naming the first system message, or `context` when it brings none."""
    pinned = len(request.message or "") + sum(len(result.content) for result in request.tool_results or ())
    try:
        check_instructions(prompt, pinned=pinned, max_chars=max_chars)
    except InstructionsTooLong as error:
        first = next(
            (i for i, m in enumerate(body.messages) if isinstance(m, SystemMessage | DeveloperMessage)), None
        )
        raise _refuse("context" if first is None else f"messages.{first}.content", str(error)) from None


def _located(error: ValidationError, options: dict[str, Any]) -> list[tuple[str, str]]:
    """Pydantic's errors named by the input's fields: options as `forwardedProps.<key>`."""
    located = []
    for item in error.errors():
        loc = [str(part) for part in item["loc"]]
        if loc and loc[0] in options:
            loc = ["forwardedProps", to_camel(loc[0]), *loc[1:]]
        elif loc and loc[0] == "tool_results":
            loc = ["messages", *loc[1:]]
        elif loc and loc[0] == "session_id":
            loc = ["threadId"]
        located.append((".".join(loc), item["msg"].removeprefix("Value error, ")))
    return located
