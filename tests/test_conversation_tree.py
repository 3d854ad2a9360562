"""A conversation's message tree (conversation_tree.py): the path of a branch, a regenerated answer in the
place of its message's own, and each turn's alternatives, from stored turns alone."""

from __future__ import annotations

from typing import Any

from conversation_tree import Tree, turn_row_id


def turn(message_id: str, role: str, parent: str | None = None, **extra: Any) -> dict[str, Any]:
    stored: dict[str, Any] = {"message_id": message_id, "role": role, "content": f"{role} {message_id}"}
    if parent is not None:
        stored["parent_id"] = parent
    return {**stored, **extra}


# a: the first exchange; b: the second message; c: b edited; r: another answer to c; d: after r.
TURNS = [
    turn("a", "user"),
    turn("a", "assistant"),
    turn("b", "user", "a"),
    turn("b", "assistant", "a"),
    turn("c", "user", "a"),
    turn("c", "assistant", "a"),
    turn("r", "assistant", "c"),
    turn("d", "user", "r"),
    turn("d", "assistant", "r"),
]


def ids(turns: Any) -> list[str]:
    return [turn_row_id(stored) for stored in turns]


def test_a_branch_is_the_path_from_the_first_exchange_to_its_leaf() -> None:
    tree = Tree(TURNS)
    assert ids(tree.path("b")) == ["a:user", "a:assistant", "b:user", "b:assistant"]
    assert ids(tree.path("c")) == ["a:user", "a:assistant", "c:user", "c:assistant"]


def test_a_regenerated_answer_takes_the_place_of_its_messages_own() -> None:
    tree = Tree(TURNS)
    assert ids(tree.path("d")) == ["a:user", "a:assistant", "c:user", "r:assistant", "d:user", "d:assistant"]
    assert ids(tree.path("c", answered=False)) == ["a:user", "a:assistant", "c:user"]


def test_each_turn_of_a_branch_knows_its_alternatives() -> None:
    tree = Tree(TURNS)
    positions = {p.turn_id: (p.index, p.siblings) for p in tree.positions(tree.path("d"))}
    assert positions["c:user"] == (2, ["b", "c"])
    assert positions["r:assistant"] == (2, ["c", "r"])
    assert positions["a:user"] == (1, ["a"])
    assert positions["d:assistant"] == (1, ["d"])


def test_tool_results_follow_their_calls_and_count_as_a_message() -> None:
    tree = Tree(
        [
            turn("q", "user"),
            turn("q", "assistant", tool_calls=[{"id": "c1", "name": "f", "arguments": "{}"}]),
            turn("t", "tool", "q", tool_call_id="c1"),
            turn("t", "assistant", "q"),
            turn("t2", "assistant", "t"),
        ]
    )
    assert ids(tree.path("t2")) == ["q:user", "q:assistant", "t:tool:c1", "t2:assistant"]
    prompt = tree.prompt_of(tree.exchanges["t2"])
    assert prompt is not None
    assert prompt.id == "t"


def test_a_turn_given_twice_counts_once_and_a_loop_of_parents_ends() -> None:
    tree = Tree([*TURNS, turn("a", "user"), turn("x", "user", "y"), turn("y", "user", "x")])
    assert len(tree.exchanges["a"].turns) == 2
    assert ids(tree.path("x")) == ["y:user", "x:user"]
    assert tree.lineage("unknown") == []
