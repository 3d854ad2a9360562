"""The messages of a Chat Completions request, as OpenAI's API takes them: `system`/`developer`, `user`
(text and `image_url` parts), `assistant` (text, refusal parts and `tool_calls`), and `tool` results."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from generation import NAME_PATTERN, check_image_url
from parts import ToolCallId

__all__ = [
    "ContentPart",
    "ImagePart",
    "ImageURL",
    "InboundMessage",
    "InboundToolCall",
    "RefusalPart",
    "TextPart",
]

# The most text a message may hold: what a tool's result may hold in `POST /chat`'s `tool_results`.
MAX_CONTENT = 1_000_000


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class ImageURL(BaseModel):
    model_config = ConfigDict(extra="ignore")

    url: str = Field(description="An https URL, or a base64 `data:` URL of a PNG, JPEG, GIF or WebP.")
    detail: Literal["auto", "low", "high"] | None = None

    @field_validator("url")
    @classmethod
    def _image(cls, url: str) -> str:
        return check_image_url(url)


class ImagePart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["image_url"]
    image_url: ImageURL


class RefusalPart(BaseModel):
    """An earlier answer's refusal, as a client sends the conversation back."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["refusal"]
    refusal: str


ContentPart = Annotated[TextPart | ImagePart | RefusalPart, Field(discriminator="type")]
_parts: TypeAdapter[list[ContentPart]] = TypeAdapter(list[ContentPart])
# The part types each role may send (OpenAI's own rules): images only from a user.
_ALLOWED = {"user": {"text", "image_url"}, "assistant": {"text", "refusal"}}


def _joined(parts: list[ContentPart]) -> str:
    """The text of a message's parts: its text and refusal parts, a line apart."""
    return "\n".join(
        part.text if isinstance(part, TextPart) else part.refusal
        for part in parts
        if not isinstance(part, ImagePart)
    )


class InboundFunction(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(pattern=NAME_PATTERN)
    arguments: str = Field(max_length=MAX_CONTENT)


class InboundToolCall(BaseModel):
    """A tool call of an earlier answer, as the client sends the conversation back."""

    model_config = ConfigDict(extra="ignore")

    id: ToolCallId
    type: Literal["function"] = "function"
    function: InboundFunction


class InboundMessage(BaseModel):
    """One message of the conversation."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = Field(
        default=None,
        description="Text, or parts: `text`; `image_url` from a user; `refusal` from an assistant.",
    )
    tool_calls: list[InboundToolCall] | None = Field(
        default=None, max_length=128, description="An assistant's calls; its `content` may then be null."
    )
    tool_call_id: ToolCallId | None = Field(
        default=None, validate_default=True, description="A `tool` message's: the call it answers."
    )

    @field_validator("content", mode="before")
    @classmethod
    def _content(cls, value: Any, info: ValidationInfo) -> Any:
        """Parts validated here, so that a bad one is reported as `content` with its reason (pydantic
        would report each member of the union, the string's first), and only the parts the role may
        send (OpenAI's rules: images only from a user)."""
        if isinstance(value, str) and len(value) > MAX_CONTENT:
            raise ValueError(f"at most {MAX_CONTENT} characters")
        if not isinstance(value, list):
            return value
        try:
            parts = _parts.validate_python(value)
        except ValidationError as error:
            first = error.errors()[0]
            reason = first["msg"].removeprefix("Value error, ")
            raise ValueError(f"content part {first['loc'][0]}: {reason}") from None
        allowed = _ALLOWED.get(info.data.get("role", ""), {"text"})
        for index, part in enumerate(parts):
            if part.type not in allowed:
                raise ValueError(
                    f"content part {index}: {info.data['role']} messages have no {part.type} parts"
                )
        if len(_joined(parts)) > MAX_CONTENT:
            raise ValueError(f"at most {MAX_CONTENT} characters")
        return parts

    @field_validator("tool_calls")
    @classmethod
    def _assistant_calls(
        cls, calls: list[InboundToolCall] | None, info: ValidationInfo
    ) -> list[InboundToolCall] | None:
        if calls and info.data.get("role") != "assistant":
            raise ValueError("only an assistant message has tool calls")
        return calls or None

    @field_validator("tool_call_id")
    @classmethod
    def _tool_answer(cls, call_id: str | None, info: ValidationInfo) -> str | None:
        role = info.data.get("role")
        if role == "tool" and call_id is None:
            raise ValueError("a tool message names the call it answers in `tool_call_id`")
        return call_id if role == "tool" else None

    def text(self) -> str:
        """The text of the message: its string, or its text (and refusal) parts joined."""
        if isinstance(self.content, list):
            return _joined(self.content)
        return self.content or ""

    def images(self) -> tuple[str, ...]:
        if not isinstance(self.content, list):
            return ()
        return tuple(part.image_url.url for part in self.content if isinstance(part, ImagePart))
