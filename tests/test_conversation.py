"""build_context: what a model is sent, within the budget, with tool calls and results kept together."""

from __future__ import annotations

from conversation import ConversationMessage, build_context
from parts import ToolCall


def user(text: str) -> ConversationMessage:
    return ConversationMessage(role="user", content=text)


def assistant(text: str, *calls: str) -> ConversationMessage:
    tool_calls = tuple(ToolCall(id=call, name="lookup", arguments='{"q": "x"}') for call in calls)
    return ConversationMessage(role="assistant", content=text, tool_calls=tool_calls)


def tool(call: str, text: str = "result") -> ConversationMessage:
    return ConversationMessage(role="tool", content=text, tool_call_id=call)


def shape(messages: list[ConversationMessage]) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(m.role, m.tool_call_id or m.content, tuple(c.id for c in m.tool_calls)) for m in messages]


def context(turns: list[ConversationMessage], **limits: int) -> list[ConversationMessage]:
    return build_context(
        turns,
        system_prompt=str(limits.pop("system", "")),
        max_messages=limits.get("max_messages", 100),
        max_chars=limits.get("max_chars", 100_000),
    )


def test_the_system_prompt_comes_first_and_the_new_message_last() -> None:
    sent = build_context(
        [user("a"), assistant("b"), user("c")], system_prompt="S", max_messages=10, max_chars=99
    )
    assert shape(sent) == [("system", "S", ()), ("user", "a", ()), ("assistant", "b", ()), ("user", "c", ())]


def test_the_oldest_turns_go_first_to_fit_the_character_budget() -> None:
    turns = [user("x" * 50), assistant("y" * 50), user("recent"), assistant("reply"), user("now")]
    sent = context(turns, max_chars=len("recent") + len("reply") + len("now") + 10)
    assert shape(sent) == [("user", "recent", ()), ("assistant", "reply", ()), ("user", "now", ())]


def test_at_most_max_messages_earlier_turns_are_kept_and_the_kept_start_with_a_user() -> None:
    turns = [user("1"), assistant("2"), user("3"), assistant("4"), user("now")]
    assert shape(context(turns, max_messages=3)) == [
        ("user", "3", ()),
        ("assistant", "4", ()),
        ("user", "now", ()),
    ]
    assert shape(context(turns, max_messages=1)) == [
        ("user", "now", ())
    ]  # an answer without its question goes
    assert shape(context(turns, max_messages=0)) == [("user", "now", ())]


def test_tool_results_are_answered_with_their_calls_and_the_question_always_sent() -> None:
    turns = [
        user("old"),
        assistant("old answer"),
        user("look it up"),
        assistant("", "c1", "c2"),
        tool("c1"),
        tool("c2"),
    ]
    sent = context(turns, max_chars=60)
    assert shape(sent) == [
        ("user", "look it up", ()),
        ("assistant", "", ("c1", "c2")),
        ("tool", "c1", ()),
        ("tool", "c2", ()),
    ]


def test_a_call_and_its_result_are_dropped_together_for_the_budget() -> None:
    turns = [user("q1"), assistant("", "c1"), tool("c1", "r" * 40), assistant("a1"), user("q2")]
    kept_all = context(turns)
    assert shape(kept_all)[1:3] == [("assistant", "", ("c1",)), ("tool", "c1", ())]
    # Too small for the call with its long result: both go, and with them the question they followed.
    trimmed = context(turns, max_chars=len("a1") + len("q2") + 30)
    assert all(m.role != "tool" and not m.tool_calls for m in trimmed)
    # A count limit that would split the call from its result drops the pair whole.
    split = context(turns, max_messages=2)
    assert all(m.role != "tool" and not m.tool_calls for m in split)


def test_a_call_without_a_result_and_a_result_without_a_call_are_never_sent() -> None:
    turns = [
        user("q1"),
        assistant("partial", "c1", "c2"),  # stopped, or only c1 was answered
        tool("c1"),
        tool("c9"),  # answers nothing in this conversation
        assistant("", "c3"),  # never answered, and no text: dropped whole
        user("q2"),
    ]
    sent = context(turns)
    assert shape(sent) == [
        ("user", "q1", ()),
        ("assistant", "partial", ("c1",)),
        ("tool", "c1", ()),
        ("user", "q2", ()),
    ]


def test_reasoning_is_sent_back_only_when_asked() -> None:
    thought = ConversationMessage(role="assistant", content="4", reasoning="2 + 2")
    turns = [user("2 + 2?"), thought, user("and 3 + 3?")]
    assert [m.reasoning for m in context(turns)] == [None, None, None]
    sent = build_context(turns, system_prompt="", max_messages=9, max_chars=999, send_reasoning=True)
    assert [m.reasoning for m in sent] == [None, "2 + 2", None]


def test_empty_answers_are_skipped() -> None:
    turns = [user("q1"), assistant(""), user("q2")]
    assert shape(context(turns)) == [("user", "q1", ()), ("user", "q2", ())]
