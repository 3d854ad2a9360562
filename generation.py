"""What a request may ask of the model besides its messages: tools, structured output, sampling options.

`GenerationOptions` is OpenAI's Chat Completions vocabulary, validated to OpenAI's ranges; `POST /chat`
and `/v1/chat/completions` both extend it, so an answer's source is handed the request itself. The
server's own settings cap what a request asks (`AI_MAX_TOKENS` is a ceiling); each source applies them.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from jsonschema import SchemaError
from jsonschema.validators import validator_for
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

__all__ = [
    "FunctionDefinition",
    "FunctionTool",
    "GenerationOptions",
    "JSONSchemaFormat",
    "NamedToolChoice",
    "ReasoningEffort",
    "ResponseFormat",
    "ToolChoice",
    "check_image_url",
    "check_json_schema",
]

# OpenAI's limits: a function's name, the tools per request, the stop sequences.
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
MAX_TOOLS = 128
MAX_STOP = 4
ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh"]
_DATA_URL = re.compile(r"^data:image/(png|jpeg|gif|webp);base64,[A-Za-z0-9+/=\s]+$")
MAX_IMAGE_URL = 2048


def check_json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema, if it is a valid JSON Schema (by its own `$schema` draft, else the newest)."""
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as error:
        raise ValueError(f"not a valid JSON Schema: {error.message}") from None
    return schema


def check_image_url(url: str) -> str:
    """An image a model may be shown: an `https` URL, or a base64 `data:` URL of a PNG, JPEG, GIF or WebP
    (its size is bounded by `MAX_BODY_BYTES`, like every body)."""
    if url.startswith("data:"):
        if not _DATA_URL.match(url):
            raise ValueError("a data URL must be a base64 PNG, JPEG, GIF or WebP image")
        return url
    if not url.startswith("https://") or len(url) > MAX_IMAGE_URL or any(c.isspace() for c in url):
        raise ValueError(f"an image URL must be https (at most {MAX_IMAGE_URL} characters) or a data URL")
    return url


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(pattern=NAME_PATTERN, description="1 to 64 of A-Z a-z 0-9 _ -.")
    description: str | None = Field(default=None, max_length=8192)
    parameters: dict[str, Any] | None = Field(
        default=None, description="The arguments, as a JSON Schema object; omitted means none."
    )
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else check_json_schema(value)


class FunctionTool(BaseModel):
    """A function the model may ask the client to call (this service never runs client code)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(pattern=NAME_PATTERN)


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["function"] = "function"
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class JSONSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = Field(default=None, max_length=8192)
    json_schema: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_json_schema(value)


class TextFormat(BaseModel):
    type: Literal["text"]


class JSONObjectFormat(BaseModel):
    type: Literal["json_object"]


class JSONSchemaResponseFormat(BaseModel):
    type: Literal["json_schema"]
    json_schema: JSONSchemaFormat


ResponseFormat = Annotated[
    TextFormat | JSONObjectFormat | JSONSchemaResponseFormat, Field(discriminator="type")
]


class GenerationOptions(BaseModel):
    """Tools, structured output and sampling options, as OpenAI's Chat Completions API takes them."""

    tools: list[FunctionTool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: ToolChoice | None = Field(
        default=None, description="`auto` (the default with tools), `none`, `required`, or a named function."
    )
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(
        default=None, ge=1, description="At most this many tokens; `AI_MAX_TOKENS` caps it."
    )
    stop: str | list[str] | None = Field(default=None, description=f"Up to {MAX_STOP} stop sequences.")
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    reasoning_effort: ReasoningEffort | None = None

    @field_validator("tools")
    @classmethod
    def _unique_names(cls, tools: list[FunctionTool] | None) -> list[FunctionTool] | None:
        names = [tool.function.name for tool in tools or []]
        duplicate = next((name for name in names if names.count(name) > 1), None)
        if duplicate is not None:
            raise ValueError(f"two tools are named {duplicate!r}")
        return tools

    @field_validator("tool_choice")
    @classmethod
    def _choice_in_tools(cls, choice: ToolChoice | None, info: ValidationInfo) -> ToolChoice | None:
        names = {tool.function.name for tool in info.data.get("tools") or []}
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise ValueError(f"no tool is named {choice.function.name!r}")
        if choice == "required" and not names:
            raise ValueError("`required` needs at least one tool")
        return choice

    @field_validator("stop")
    @classmethod
    def _stop_sequences(cls, stop: str | list[str] | None) -> str | list[str] | None:
        sequences = [stop] if isinstance(stop, str) else stop or []
        if len(sequences) > MAX_STOP or any(not 1 <= len(s) <= 256 for s in sequences):
            raise ValueError(f"at most {MAX_STOP} stop sequences of 1 to 256 characters")
        return stop

    def tool_named(self, name: str) -> FunctionTool | None:
        return next((tool for tool in self.tools or [] if tool.function.name == name), None)

    def stop_sequences(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
