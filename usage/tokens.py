"""Counting tokens with `tiktoken` when the model reports none (the simulated model, some servers).

A documented approximation: the text is encoded with the model's encoding (`o200k_base` for a model
tiktoken does not know), plus OpenAI's published per-message overhead; a server's own chat template may
differ by a few tokens per message. Usage counted here is marked `counted`, never passed off as reported.

The encodings' files are vendored in `usage/encodings/` (see its README): tiktoken would otherwise fetch
them from the network on first use.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
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
# Counts of recent texts kept, up to this many characters of text in all: a conversation's turns are
# counted again in the prompt of each later answer (and an answer's text in the next prompt), so without
# it counting a session's prompts costs the square of its length (issue #16's bench regression).
MEMO_CHARS = 4_000_000


def use_vendored_encodings() -> None:
    """Point tiktoken's cache at the vendored files, unless the operator chose a cache of their own."""
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(ENCODINGS_DIR))


class TokenCounter:
    """Counts a model's tokens. Encoding is CPU work: call it off the event loop for long texts.

    A text seen recently is not encoded again: its count is remembered (first in, first out, up to
    `memo_chars` characters of text)."""

    def __init__(self, model: str, *, memo_chars: int = MEMO_CHARS) -> None:
        use_vendored_encodings()
        try:
            name = tiktoken.encoding_name_for_model(model)
        except KeyError:
            name = FALLBACK_ENCODING
        self.encoding_name = name if name in VENDORED else FALLBACK_ENCODING
        self.encoding = tiktoken.get_encoding(self.encoding_name)
        self._memo: OrderedDict[str, int] = OrderedDict()
        self._memo_chars = 0
        self._memo_limit = memo_chars
        self._lock = threading.Lock()  # for writes: callers may count in worker threads

    def text(self, text: str) -> int:
        """Tokens of plain text (special tokens counted as text: a user may type `<|endoftext|>`)."""
        if not text:
            return 0
        count = self._memo.get(text)  # a read needs no lock: one call, atomic for the interpreter
        if count is None:
            count = len(self.encoding.encode_ordinary(text))
            self._remember(text, count)
        return count

    def _remember(self, text: str, count: int) -> None:
        if len(text) > self._memo_limit:
            return
        with self._lock:
            if text in self._memo:
                return
            self._memo[text] = count
            self._memo_chars += len(text)
            while self._memo_chars > self._memo_limit:
                forgotten, _ = self._memo.popitem(last=False)
                self._memo_chars -= len(forgotten)

    def unremembered(self, texts: Iterable[str]) -> int:
        """How many characters of `texts` counting them would encode (those not remembered)."""
        memo = self._memo
        return sum(len(text) for text in texts if text not in memo)

    @property
    def remembered_chars(self) -> int:
        """Characters of text whose counts are remembered (never more than `memo_chars`)."""
        return self._memo_chars

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
