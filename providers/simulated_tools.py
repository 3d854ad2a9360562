"""The simulated model's tool calls: which tools it calls, with which arguments, and how it answers once
their results are back."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

from conversation import ConversationMessage
from generation import FunctionTool, GenerationOptions, NamedToolChoice
from providers.simulated_json import Material, SchemaUnsupported, instance_for

__all__ = ["arguments_for", "call_id", "named_in", "results_answer", "tools_to_call"]

# How much of a tool's result an answer quotes.
QUOTED_CHARS = 200
QUOTED_FIELDS = 6


def named_in(message: str, tools: Sequence[FunctionTool]) -> list[FunctionTool]:
    """The tools whose function name the message contains as a word (in any case), in the order the
    message names them."""
    found: list[tuple[int, FunctionTool]] = []
    for tool in tools:
        name = re.escape(tool.function.name)
        match = re.search(rf"(?<![\w-]){name}(?![\w-])", message, re.IGNORECASE)
        if match is not None:
            found.append((match.start(), tool))
    return [tool for _, tool in sorted(found, key=lambda pair: pair[0])]


def tools_to_call(
    conversation: Sequence[ConversationMessage], options: GenerationOptions
) -> list[FunctionTool]:
    """The tools the answer calls, in order.

    With `tool_choice` `none` (or no tools), none. A named choice: that tool. `required`: the tools the
    user's last message names, else the first tool. `auto` (the default): the tools the last message
    names, while the conversation ends with it; once their results are back, the model answers instead
    of calling again. Several named tools are all called unless `parallel_tool_calls` is false.
    """
    tools = options.tools or []
    choice = options.tool_choice or "auto"
    if not tools or choice == "none":
        return []
    if isinstance(choice, NamedToolChoice):
        return [tool for tool in tools if tool.function.name == choice.function.name]
    message = next((turn.content for turn in reversed(conversation) if turn.role == "user"), "")
    named = named_in(message, tools)
    if options.parallel_tool_calls is False:
        named = named[:1]
    if choice == "required":
        return named or tools[:1]
    return named if conversation and conversation[-1].role == "user" else []


def call_id(conversation: Sequence[ConversationMessage], index: int) -> str:
    """The id of the answer's `index`th call: the same for the same conversation, like OpenAI's shape."""
    digest = hashlib.blake2b(digest_size=12)
    for turn in conversation:
        digest.update(f"{turn.role}\x00{turn.content}\x00{turn.tool_call_id}\x00".encode())
    digest.update(index.to_bytes(4, "big"))
    return f"call_{digest.hexdigest()}"


def arguments_for(tool: FunctionTool, material: Material) -> str:
    """The call's arguments as JSON text, valid against the tool's `parameters` (no parameters: `{}`).
    `SchemaUnsupported` when no JSON object this model can build fits them."""
    schema: dict[str, Any] = dict(tool.function.parameters or {"type": "object", "properties": {}})
    if "type" not in schema:
        schema["type"] = "object"  # a tool's arguments are always an object
    try:
        arguments = instance_for(schema, material)
    except SchemaUnsupported as error:
        raise SchemaUnsupported(f"the parameters of {tool.function.name}: {error}") from error
    if not isinstance(arguments, dict):
        raise SchemaUnsupported(f"the parameters of {tool.function.name}: not a JSON object")
    return json.dumps(arguments, ensure_ascii=False)


def _scalar(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:59] + "…"


def _summary(content: str) -> str:
    """What a result says, briefly: an object's first fields, else the text, quoted and shortened."""
    try:
        value = json.loads(content)
    except ValueError:
        value = None
    if isinstance(value, dict) and value:
        fields = [f"{key} {_scalar(item)}" for key, item in list(value.items())[:QUOTED_FIELDS]]
        more = ", and more" if len(value) > QUOTED_FIELDS else ""
        return ": " + ", ".join(fields) + more
    text = " ".join(content.split())
    if not text:
        return " nothing"
    return f' "{text}"' if len(text) <= QUOTED_CHARS else f' "{text[: QUOTED_CHARS - 1]}…"'


def results_answer(conversation: Sequence[ConversationMessage], topic: str | None) -> str | None:
    """An answer from the tool results the conversation ends with (None if it does not end with any):
    each tool named with what it returned."""
    start = len(conversation)
    while start and conversation[start - 1].role == "tool":
        start -= 1
    if start == len(conversation):
        return None
    names = {call.id: call.name for turn in conversation[:start] for call in turn.tool_calls}
    sentences = []
    for result in conversation[start:]:
        name = names.get(result.tool_call_id or "", "a tool")
        sentences.append(f"I called {name}, and it returned{_summary(result.content)}.")
    sentences.append(f"That is what I found about {topic}." if topic else "That is what the tools reported.")
    return " ".join(sentences)
