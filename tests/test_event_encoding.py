"""The chunk and part events an answer publishes without building a model are the model's JSON."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from models import (
    ChunkEvent,
    EventBase,
    ReasoningEvent,
    RefusalEvent,
    ToolCallDeltaEvent,
    ToolCallEndEvent,
    ToolCallStartEvent,
    part_json,
    stream_event_adapter,
)

ids = st.from_regex(r"[A-Za-z0-9_.:\-]{1,128}", fullmatch=True)


@given(message_id=ids, session_id=ids, seq=st.integers(min_value=1, max_value=10**9), content=st.text())
def test_fast_chunk_json_is_the_models_json(message_id: str, session_id: str, seq: int, content: str) -> None:
    before = datetime.now(UTC)
    payload = ChunkEvent.fast_json(ChunkEvent.json_header(message_id, session_id), seq, content)
    event = stream_event_adapter.validate_json(payload)

    assert isinstance(event, ChunkEvent)
    assert (event.message_id, event.session_id, event.seq, event.content) == (
        message_id,
        session_id,
        seq,
        content,
    )
    assert before <= event.timestamp <= datetime.now(UTC)
    assert orjson.loads(payload) == orjson.loads(event.model_dump_json(exclude_none=True))
    assert list(orjson.loads(payload)) == list(orjson.loads(event.model_dump_json(exclude_none=True)))


PART_FIELDS: dict[type[EventBase], dict[str, st.SearchStrategy[Any]]] = {
    ReasoningEvent: {"content": st.text()},
    RefusalEvent: {"content": st.text()},
    ToolCallStartEvent: {
        "tool_call_id": st.text(min_size=1),
        "name": st.text(min_size=1),
        "index": st.integers(0, 127),
    },
    ToolCallDeltaEvent: {"tool_call_id": st.text(min_size=1), "arguments": st.text()},
    ToolCallEndEvent: {"tool_call_id": st.text(min_size=1), "name": st.text(), "arguments": st.text()},
}


@given(data=st.data(), kind=st.sampled_from(list(PART_FIELDS)), seq=st.integers(min_value=1, max_value=10**9))
def test_fast_part_json_is_the_models_json(data: st.DataObject, kind: type[EventBase], seq: int) -> None:
    fields = {name: data.draw(strategy) for name, strategy in PART_FIELDS[kind].items()}
    type_name = kind.model_fields["type"].default
    payload = part_json(ChunkEvent.json_header("m1", "s1"), seq, type_name.encode(), fields)
    event = stream_event_adapter.validate_json(payload)

    assert isinstance(event, kind)
    assert event.model_dump(include=set(fields)) == fields
    model_json = orjson.loads(event.model_dump_json(exclude_none=True))
    assert list(orjson.loads(payload).items()) == list(model_json.items())
