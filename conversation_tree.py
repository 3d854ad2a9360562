"""A conversation's message tree (issue #15): its exchanges, the branches through them, and each one's
alternatives, from its stored turns alone.

The turns of one exchange share its message_id: a user's message (or tool results) and the answer to
it. Each exchange has a `parent_id`, the exchange it follows (none for the first). An edited message is
a new exchange with the edited one's parent; a regenerated answer is an exchange holding only an answer,
whose parent is the exchange of the message it answers. A branch is the path from a first exchange to
an exchange (its leaf): along it, an exchange followed by a regenerated answer gives that answer the
place of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Exchange", "Position", "Tree", "turn_row_id"]

Turn = Mapping[str, Any]


def turn_row_id(turn: Turn) -> str:
    """A turn's own id: `<message_id>:<role>`, or `<message_id>:tool:<tool_call_id>`."""
    base = f"{turn['message_id']}:{turn['role']}"
    return f"{base}:{turn['tool_call_id']}" if turn["role"] == "tool" else base


@dataclass(slots=True)
class Exchange:
    id: str
    parent: str | None
    turns: list[Turn] = field(default_factory=list)

    @property
    def asks(self) -> bool:
        """Whether it begins with a user's message or tool results (else it is a regenerated answer)."""
        return any(turn["role"] != "assistant" for turn in self.turns)

    @property
    def answered(self) -> bool:
        return any(turn["role"] == "assistant" for turn in self.turns)


@dataclass(frozen=True, slots=True)
class Position:
    """A turn on the active branch among its alternatives: `siblings` (message_ids, oldest first)."""

    turn_id: str
    message_id: str
    siblings: list[str]

    @property
    def index(self) -> int:
        return self.siblings.index(self.message_id) + 1


class Tree:
    """The exchanges of a conversation's turns, given in the order they were stored (a turn given twice
    counts once)."""

    def __init__(self, turns: Iterable[Turn]) -> None:
        self.exchanges: dict[str, Exchange] = {}
        self.children: dict[str | None, list[str]] = {}
        seen: set[str] = set()
        for turn in turns:
            row_id = turn_row_id(turn)
            if row_id in seen:
                continue
            seen.add(row_id)
            exchange = self.exchanges.get(turn["message_id"])
            if exchange is None:
                exchange = Exchange(turn["message_id"], turn.get("parent_id"))
                self.exchanges[exchange.id] = exchange
                self.children.setdefault(exchange.parent, []).append(exchange.id)
            exchange.turns.append(turn)

    def lineage(self, leaf: str) -> list[str]:
        """The exchanges from the first to `leaf`, oldest first (empty if `leaf` is not one)."""
        ids: list[str] = []
        current: str | None = leaf
        while current is not None and current in self.exchanges and current not in ids:
            ids.append(current)
            current = self.exchanges[current].parent
        return ids[::-1]

    def path(self, leaf: str, *, answered: bool = True) -> list[Turn]:
        """The turns of the branch ending with `leaf`, oldest first; without the leaf's own answer if not
        `answered` (a regenerated answer takes its place)."""
        ids = self.lineage(leaf)
        turns: list[Turn] = []
        for index, exchange_id in enumerate(ids):
            following = self.exchanges[ids[index + 1]] if index + 1 < len(ids) else None
            replaced = not answered if following is None else not following.asks
            turns.extend(
                turn
                for turn in self.exchanges[exchange_id].turns
                if not (replaced and turn["role"] == "assistant")
            )
        return turns

    def prompt_of(self, exchange: Exchange) -> Exchange | None:
        """The exchange whose message an answer answers: its own, or a regenerated answer's parent."""
        if exchange.asks:
            return exchange
        return self.exchanges.get(exchange.parent) if exchange.parent is not None else None

    def prompt_siblings(self, exchange: Exchange) -> list[str]:
        """A message and its edits: the exchanges that ask, after the same parent."""
        return [child for child in self.children.get(exchange.parent, []) if self.exchanges[child].asks]

    def answer_siblings(self, prompt: Exchange) -> list[str]:
        """The answers to one message: its own, then those regenerated from it."""
        own = [prompt.id] if prompt.answered else []
        return own + [c for c in self.children.get(prompt.id, []) if not self.exchanges[c].asks]

    def positions(self, path: Iterable[Turn]) -> list[Position]:
        """Where each message and answer of a branch stands among its alternatives."""
        found: list[Position] = []
        for turn in path:
            exchange = self.exchanges[turn["message_id"]]
            if turn["role"] == "assistant":
                prompt = self.prompt_of(exchange)
                siblings = self.answer_siblings(prompt) if prompt is not None else [exchange.id]
            elif exchange.turns[0] is turn:
                siblings = self.prompt_siblings(exchange)
            else:
                continue  # a tool result after the exchange's first
            if exchange.id not in siblings:
                siblings = [exchange.id]
            found.append(Position(turn_row_id(turn), exchange.id, siblings))
        return found
