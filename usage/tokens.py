"""Counting tokens with `tiktoken` when the model reports none (the simulated model, some servers).

A documented approximation: the text is encoded with the model's encoding (`o200k_base` for a model
tiktoken does not know), plus OpenAI's published per-message overhead; a server's own chat template may
differ by a few tokens per message. Usage counted here is marked `counted`, never passed off as reported.

The encodings' files are vendored in `usage/encodings/` (see its README): tiktoken would otherwise fetch
them from the network on first use.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import tiktoken

if TYPE_CHECKING:
    from conversation import ConversationMessage

__all__ = ["ENCODINGS_DIR", "FALLBACK_ENCODING", "TokenCounter", "use_vendored_encodings"]

ENCODINGS_DIR = Path(__file__).parent / "encodings"
# The encodings vendored in ENCODINGS_DIR; a model whose encoding is not among them counts with this one.
VENDORED = frozenset({"o200k_base", "cl100k_base"})
FALLBACK_ENCODING = "o200k_base"
# OpenAI's accounting for chat models: every message costs 3 tokens besides its content and role, and
# every reply is primed with 3 (the "How to count tokens with tiktoken" cookbook).
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3


def use_vendored_encodings() -> None:
    """Point tiktoken's cache at the vendored files, unless the operator chose a cache of their own."""
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(ENCODINGS_DIR))


class TokenCounter:
    """Counts a model's tokens. Encoding is CPU work: call it off the event loop for long texts."""

    def __init__(self, model: str) -> None:
        use_vendored_encodings()
        try:
            name = tiktoken.encoding_name_for_model(model)
        except KeyError:
            name = FALLBACK_ENCODING
        self.encoding_name = name if name in VENDORED else FALLBACK_ENCODING
        self.encoding = tiktoken.get_encoding(self.encoding_name)

    def text(self, text: str) -> int:
        """Tokens of plain text (special tokens counted as text: a user may type `<|endoftext|>`)."""
        return len(self.encoding.encode_ordinary(text)) if text else 0

    def prompt(self, messages: Sequence[ConversationMessage]) -> int:
        """Tokens of a conversation as sent to a chat model: each message's role, text and tool calls."""
        total = TOKENS_PER_REPLY
        for message in messages:
            total += TOKENS_PER_MESSAGE + self.text(message.role) + self.text(message.content)
            for call in message.tool_calls:
                total += self.text(call.name) + self.text(call.arguments)
            if message.reasoning:
                total += self.text(message.reasoning)
        return total
