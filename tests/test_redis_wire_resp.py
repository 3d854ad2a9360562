"""Packing commands as RESP (redis_wire/resp.py): byte for byte what redis-py writes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Connection

from redis_client import (
    Command,
)
from redis_wire.resp import pack

args = st.one_of(st.binary(max_size=5000), st.text(max_size=200), st.integers(), st.floats(allow_nan=False))


@given(st.lists(st.tuples(st.sampled_from(["SET", "XADD", "PUBLISH"]), args, args), max_size=20))
def test_pack_writes_what_redis_py_writes(commands: list[Command]) -> None:
    assert pack(commands) == b"".join(Connection().pack_commands(commands))
