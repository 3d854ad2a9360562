"""Reading a Chat Completions stream: the `data` of each Server-Sent Event, decoded with orjson into the
answer source's parts (text, reasoning, refusals, tool calls), its usage and finish reason into the
answer's `Completion`, without building the SDK's typed chunk per token (issue #14)."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from parts import (
    CompletionTokensDetails,
    Delta,
    Reasoning,
    Refusal,
    ToolCallArguments,
    ToolCallStart,
    Usage,
)
from providers.base import AnswerError, Completion

__all__ = ["ChunkReader", "ToolCallReader", "sse_data"]

logger = logging.getLogger(__name__)


def _usage(usage: dict[str, Any]) -> Usage:
    details = usage.get("completion_tokens_details")
    reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else None
    return Usage(
        prompt_tokens=usage.get("prompt_tokens") or 0,
        completion_tokens=usage.get("completion_tokens") or 0,
        total_tokens=usage.get("total_tokens") or 0,
        completion_tokens_details=(
            CompletionTokensDetails(reasoning_tokens=reasoning) if reasoning is not None else None
        ),
    )


@dataclass(slots=True)
class _StreamedCall:
    id: str | None
    name: str | None
    started: bool = False
    pieces: list[str] = field(default_factory=list)  # arguments that came before the name


class ToolCallReader:
    """Streamed `tool_calls` deltas, accumulated by `index`, as the source's `ToolCallStart` and
    `ToolCallArguments`. A call's first delta normally carries its id and name and the rest pieces of
    its arguments; some servers send the name late (its arguments wait for it) or no id at all (one is
    made up). Calls are relayed one after another, as every known server streams them."""

    def __init__(self) -> None:
        self._calls: dict[int, _StreamedCall] = {}
        self._current = -1  # the index of the call being relayed

    @property
    def called(self) -> bool:
        return any(call.started for call in self._calls.values())

    def read(self, deltas: Sequence[dict[str, Any]]) -> list[Delta]:
        read: list[Delta] = []
        for delta in deltas:
            function = delta.get("function") or {}
            name = function.get("name")
            arguments = function.get("arguments")
            index = delta.get("index", 0)
            call = self._calls.get(index)
            if call is None:
                call = self._calls[index] = _StreamedCall(delta.get("id"), name)
            elif not call.started:
                call.id = call.id or delta.get("id")
                call.name = call.name or name
            if call.started:
                if arguments:
                    if index != self._current:
                        raise AnswerError(
                            "upstream_error", "The model server interleaved the arguments of its tool calls."
                        )
                    read.append(ToolCallArguments(call.id or "", arguments))
                continue
            if arguments:
                call.pieces.append(arguments)
            if call.name:
                read.extend(self._start(index, call))
        return read

    def _start(self, index: int, call: _StreamedCall) -> list[Delta]:
        call.started = True
        call.id = call.id or f"call_{secrets.token_hex(12)}"
        self._current = index
        started: list[Delta] = [ToolCallStart(call.id, call.name or "")]
        if call.pieces:
            started.append(ToolCallArguments(call.id, "".join(call.pieces)))
            call.pieces.clear()
        return started

    def unnamed(self) -> int:
        """How many calls never got a name: they cannot be relayed."""
        return sum(not call.started for call in self._calls.values())


async def sse_data(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The `data` of each Server-Sent Event in a byte stream, up to `[DONE]`. Chat Completions events
    are one `data:` line each; comments, `event:` and `id:` lines carry nothing here."""
    pending = b""
    async for chunk in chunks:
        lines = (pending + chunk).split(b"\n") if pending else chunk.split(b"\n")
        pending = lines.pop()
        for line in lines:
            if line.startswith(b"data:"):
                data = line[5:].strip()
                if data == b"[DONE]":
                    return
                if data:
                    yield data


class ChunkReader:
    """`chat.completion.chunk` events, decoded with orjson, as the source's parts: text, reasoning,
    refusals, tool calls; the usage and the finish reason go to the answer's `Completion`."""

    __slots__ = ("calls", "completion", "finish")

    def __init__(self, completion: Completion) -> None:
        self.completion = completion
        self.calls = ToolCallReader()
        self.finish: str | None = None

    def read(self, data: bytes) -> list[Delta]:
        chunk = orjson.loads(data)
        if not isinstance(chunk, dict):
            raise ValueError("not an object")
        if chunk.get("error"):
            # An error sent in the stream (the openai client would raise it as an `APIError`): its text is
            # the server's, so it goes to the log, not to users.
            logger.warning("the model server reported an error in its stream: %.300s", chunk["error"])
            raise AnswerError("upstream_error", "The model server reported an error.")
        parts: list[Delta] = []
        usage = chunk.get("usage")
        if usage:
            self.completion.usage = _usage(usage)
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if delta:
                # vLLM, DeepSeek and Ollama say `reasoning_content`, OpenRouter `reasoning`; some servers
                # send both, with the same text.
                thought = delta.get("reasoning_content") or delta.get("reasoning")
                if thought and isinstance(thought, str):
                    parts.append(Reasoning(thought))
                content = delta.get("content")
                if content and isinstance(content, str):
                    parts.append(content)
                refusal = delta.get("refusal")
                if refusal and isinstance(refusal, str):
                    parts.append(Refusal(refusal))
                calls = delta.get("tool_calls")
                if calls:
                    parts.extend(self.calls.read(calls))
            finish = choice.get("finish_reason")
            if finish is not None:
                self.finish = finish
        return parts
