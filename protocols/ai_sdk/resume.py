"""Which UI message a running answer belongs to, read from the session's history, for a client that
resumes it after a reload and so has none of it.

The first answer of a UI message names it (its `start` carried the answer's id); an answer to tool
results continues the UI message of the answer that called the tools. The SDK rebuilds a resumed
message from the stream alone, so the earlier steps are sent again, whole, before the running one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from models import ChatTurn
from protocols.ai_sdk.encoder import Chunk, step_chunks, tool_output

__all__ = ["resumed_message"]


def _output(content: str) -> Any:
    """A stored result as the client's `output` was: JSON when it is JSON, else its text."""
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return content


def resumed_message(turns: Sequence[ChatTurn], message_id: str) -> tuple[str, list[Chunk]]:
    """The UI message id of the answer `message_id`, and the chunks of its earlier steps and results."""
    callers = {call.id: turn for turn in turns if turn.role == "assistant" for call in turn.tool_calls or ()}
    prelude: list[Chunk] = []
    current = message_id
    for _ in range(len(turns)):  # each step goes one answer back; a history has no more answers
        results = [turn for turn in turns if turn.message_id == current and turn.role == "tool"]
        previous = next((callers[r.tool_call_id] for r in results if r.tool_call_id in callers), None)
        if previous is None:
            break
        step = step_chunks(
            previous.message_id,
            text=previous.content,
            reasoning=previous.reasoning,
            tool_calls=previous.tool_calls or (),
        )
        outputs = [tool_output(r.tool_call_id, _output(r.content)) for r in results if r.tool_call_id]
        prelude = [*step, *outputs, *prelude]
        current = previous.message_id
    return current, prelude
