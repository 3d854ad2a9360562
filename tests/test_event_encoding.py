"""The chunk events an answer publishes without building a model are the model's JSON."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
from hypothesis import given
from hypothesis import strategies as st

from models import ChunkEvent, stream_event_adapter

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
