"""Counting tokens (usage/tokens.py): the vendored encodings load with no network, and count as OpenAI's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conversation import ConversationMessage
from testkit.processes import ROOT
from usage.tokens import TokenCounter

# What the child runs: every vendored encoding, with tiktoken's network fetch made impossible.
OFFLINE = """
import socket, sys
def refuse(*args, **kwargs):
    raise OSError("no network in this test")
socket.socket.connect = refuse
socket.create_connection = refuse
from usage.tokens import TokenCounter
for model in ("gpt-4o-mini", "gpt-4", "a-model-tiktoken-does-not-know"):
    counter = TokenCounter(model)
    print(model, counter.encoding_name, counter.text("tiktoken is great!"))
"""


def test_the_vendored_encodings_load_without_the_network(tmp_path: Path) -> None:
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in {"TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"}
    }
    # An empty temporary folder: tiktoken's default cache (TMPDIR/data-gym-cache) has nothing to give.
    env.update({"TMPDIR": str(tmp_path), "PYTHONPATH": str(ROOT)})
    result = subprocess.run(
        [sys.executable, "-c", OFFLINE], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "gpt-4o-mini o200k_base 6",
        "gpt-4 cl100k_base 6",
        "a-model-tiktoken-does-not-know o200k_base 6",
    ]


def test_counts_match_openais_published_tokens() -> None:
    # OpenAI's cookbook, "How to count tokens with tiktoken": "tiktoken is great!" in cl100k_base.
    counter = TokenCounter("gpt-4")
    assert counter.encoding.encode("tiktoken is great!") == [83, 1609, 5963, 374, 2294, 0]
    assert counter.text("") == 0
    assert counter.text("<|endoftext|>") > 1  # typed by a user, it is text, not a special token


def test_a_prompt_costs_its_messages_and_their_overhead() -> None:
    counter = TokenCounter("gpt-4o")
    messages = [ConversationMessage("system", "Be brief."), ConversationMessage("user", "Hi")]
    expected = 3 + sum(3 + counter.text(m.role) + counter.text(m.content) for m in messages)
    assert counter.prompt(messages) == expected
    assert counter.prompt([]) == 3


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-4.1", "o3", "gpt-3.5-turbo"])
def test_known_models_use_a_vendored_encoding(model: str) -> None:
    assert TokenCounter(model).encoding_name in {"o200k_base", "cl100k_base"}


def test_a_remembered_count_is_the_encoded_count_and_memory_stays_bounded() -> None:
    counter = TokenCounter("gpt-4o", memo_chars=100)
    text = "The same turn is counted again in every later prompt of its session."
    first = counter.text(text)
    assert first == len(counter.encoding.encode_ordinary(text))
    prompt = [ConversationMessage("user", text)]
    expected = counter.prompt(prompt)
    counter.encoding = None  # type: ignore[assignment]  # a remembered text must not be encoded again
    assert counter.text(text) == first
    assert counter.prompt(prompt) == expected


def test_the_memo_forgets_the_oldest_texts_beyond_its_size() -> None:
    counter = TokenCounter("gpt-4o", memo_chars=100)
    texts = [f"{n} " + "word " * 8 for n in range(10)]  # 42 or 43 characters each
    for text in texts:
        counter.text(text)
    assert 0 < counter.remembered_chars <= 100
    counter.text(texts[0] + "x" * 200)  # longer than the whole memo: counted, not remembered
    assert counter.remembered_chars <= 100
    counter.encoding = None  # type: ignore[assignment]
    assert counter.text(texts[-1]) > 0  # the most recent is still remembered
    with pytest.raises(AttributeError):
        counter.text(texts[0])  # the oldest was forgotten, so it needs the encoding again
