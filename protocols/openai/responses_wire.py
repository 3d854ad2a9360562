"""OpenAI's Responses API shapes, as far as the service speaks them: the `POST /v1/responses` request,
its input items, function tools in the Responses' flat shape, `text.format`, `reasoning`. The response
object is `protocols.openai.responses_objects`'.

What has no meaning here is refused with `400` naming the field, never ignored: built-in tools (web
search, file search, ...), `input_file` parts, stored prompts, `conversation` objects.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
)

from generation import NAME_PATTERN, ReasoningEffort, check_image_url, check_json_schema
from models import ID_PATTERN
from parts import ToolCallId
from protocols.openai.messages import MAX_CONTENT

__all__ = [
    "FunctionCallItem",
    "FunctionCallOutputItem",
    "InputImage",
    "InputItem",
    "InputMessage",
    "InputText",
    "ItemReference",
    "OutputText",
    "ReasoningInput",
    "RefusalContent",
    "ResponseCreateRequest",
    "ResponseFunctionTool",
]

RESPONSE_ID_PATTERN = r"^resp_[0-9a-f]{32}$"


class InputText(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["input_text"]
    text: str = Field(max_length=MAX_CONTENT)


class InputImage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["input_image"]
    image_url: str = Field(description="An https URL or a base64 `data:` URL; `file_id` is not supported.")
    detail: Literal["auto", "low", "high", "original"] | None = None

    @field_validator("image_url")
    @classmethod
    def _image(cls, url: str) -> str:
        return check_image_url(url)


class OutputText(BaseModel):
    """An earlier answer's text, as a client sends the conversation back."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["output_text"]
    text: str = Field(max_length=MAX_CONTENT)


class RefusalContent(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["refusal"]
    refusal: str = Field(max_length=MAX_CONTENT)


ContentPart = Annotated[InputText | InputImage | OutputText | RefusalContent, Field(discriminator="type")]


class InputMessage(BaseModel):
    """A message of the input: a user's (text and images), an instruction (`system` / `developer`), or
    an earlier answer (`assistant`, with `output_text` parts)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart] = Field(max_length=MAX_CONTENT)

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "\n".join(
            part.refusal if isinstance(part, RefusalContent) else part.text
            for part in self.content
            if not isinstance(part, InputImage)
        )

    def images(self) -> tuple[str, ...]:
        if isinstance(self.content, str):
            return ()
        return tuple(part.image_url for part in self.content if isinstance(part, InputImage))


class FunctionCallItem(BaseModel):
    """A tool call of an earlier answer, echoed back."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["function_call"]
    call_id: ToolCallId
    name: str = Field(pattern=NAME_PATTERN)
    arguments: str = Field(max_length=MAX_CONTENT)
    id: str | None = None


class FunctionCallOutputItem(BaseModel):
    """The client's result of a tool call: stored as a `tool` turn, as `POST /chat`'s `tool_results`."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["function_call_output"]
    call_id: ToolCallId
    output: str | list[InputText] = Field(description="The result: text, or `input_text` parts.")
    id: str | None = None

    def text(self) -> str:
        if isinstance(self.output, str):
            return self.output
        return "".join(part.text for part in self.output)


class ReasoningInput(BaseModel):
    """An earlier answer's reasoning, echoed back: accepted and not sent to the model (as reasoning of
    earlier turns never is, unless `AI_SEND_REASONING` says so)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["reasoning"]
    id: str | None = None


class ItemReference(BaseModel):
    """An output item of an earlier response of this service, by its id."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["item_reference"]
    id: str = Field(max_length=128)


def _item_type(value: Any) -> str:
    # An input message may omit `type` (OpenAI's "easy" input message).
    if isinstance(value, dict):
        return str(value.get("type", "message"))
    return str(getattr(value, "type", "message"))


InputItem = Annotated[
    Annotated[InputMessage, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningInput, Tag("reasoning")]
    | Annotated[ItemReference, Tag("item_reference")],
    Discriminator(_item_type),
]


class ResponseFunctionTool(BaseModel):
    """A function tool, in the Responses API's flat shape."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["function"] = "function"
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = Field(default=None, max_length=8192)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else check_json_schema(value)


class NamedFunctionChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["function"]
    name: str = Field(pattern=NAME_PATTERN)


class TextFormatText(BaseModel):
    type: Literal["text"]


class TextFormatJSONObject(BaseModel):
    type: Literal["json_object"]


class TextFormatJSONSchema(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    type: Literal["json_schema"]
    name: str = Field(pattern=NAME_PATTERN)
    json_schema: dict[str, Any] = Field(alias="schema")
    description: str | None = Field(default=None, max_length=8192)
    strict: bool | None = None

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_json_schema(value)


TextFormat = Annotated[
    TextFormatText | TextFormatJSONObject | TextFormatJSONSchema, Field(discriminator="type")
]


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None

    @field_validator("format", mode="wrap")
    @classmethod
    def _format(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """Reported as `text.format` with the failing part in the message: pydantic would put the
        union's tag into the field's name (`text.format.json_schema.schema`)."""
        try:
            return handler(value)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"][1:])
            raise ValueError(f"{where}: {first['msg']}" if where else first["msg"]) from None


class ReasoningConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    effort: ReasoningEffort | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None


def _refused(value: object, name: str) -> object:
    if value is not None:
        raise ValueError(f"`{name}` is not supported by this service")
    return value


class ResponseCreateRequest(BaseModel):
    """OpenAI's `POST /v1/responses` request."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={"examples": [{"model": "simulated", "input": "Hello!"}]},
    )

    model: str = Field(min_length=1, max_length=256, description="The model that answers (`/v1/models`).")
    input: str | list[InputItem] = Field(
        min_length=1,
        description="Text, or items: messages, `function_call` items echoed back, `function_call_output` "
        "items with the client's tool results.",
    )
    instructions: str | None = Field(
        default=None, max_length=MAX_CONTENT, description="The system prompt of this response only."
    )
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedFunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_output_tokens: int | None = Field(default=None, ge=1)
    previous_response_id: str | None = Field(
        default=None, max_length=64, description="Continue that response's conversation (its session)."
    )
    store: bool = Field(
        default=True,
        description="`false`: nothing is stored or published; the response cannot be retrieved or continued.",
    )
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    stream: bool = False
    background: bool = False
    user: str | None = Field(default=None, min_length=1, max_length=128, pattern=ID_PATTERN)
    include: list[str] | None = Field(default=None, description="Accepted; nothing more can be included.")
    truncation: Literal["auto", "disabled"] | None = None
    service_tier: str | None = None
    conversation: object = Field(default=None, description="Not supported: use `previous_response_id`.")
    prompt: object = Field(default=None, description="Not supported: refused.")

    @field_validator("conversation", "prompt")
    @classmethod
    def _unsupported(cls, value: object, info: Any) -> object:
        return _refused(value, info.field_name)

    @field_validator("tools")
    @classmethod
    def _function_tools(cls, tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        """Only function tools: the service never runs tools itself (built-in ones are OpenAI's)."""
        for index, tool in enumerate(tools or []):
            if tool.get("type") != "function":
                raise ValueError(
                    f"tool {index}: only `function` tools are supported, not {tool.get('type')!r}"
                )
        return tools

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, metadata: dict[str, str] | None) -> dict[str, str] | None:
        for key, value in (metadata or {}).items():
            if len(key) > 64 or len(value) > 512:
                raise ValueError("keys are at most 64 characters, values at most 512")
        return metadata

    def function_tools(self) -> list[ResponseFunctionTool]:
        return [ResponseFunctionTool.model_validate(tool) for tool in self.tools or []]
