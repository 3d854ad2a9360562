"""MAX_BODY_BYTES (protocols/body_limit.py): an oversized body is refused with 413 before it is read."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from config import Settings
from tests.conftest import CHAT, AppClient


async def test_a_10_mb_body_with_content_length_is_refused_before_it_is_read(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    async with app_client(make_settings(max_body_bytes=65_536)) as client:
        body = b'{"session_id": "s1", "user_id": "u1", "message": "' + b"x" * 10_000_000 + b'"}'
        response = await client.post("/chat", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


async def test_a_10_mb_chunked_body_is_refused_once_it_passes_the_limit(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"session_id": "s1", "user_id": "u1", "message": "'
        for _ in range(160):
            sent += 65_536
            yield b"x" * 65_536
        yield b'"}'

    async with app_client(make_settings(max_body_bytes=65_536)) as client:
        response = await client.post("/chat", content=chunks(), headers={"Content-Type": "application/json"})
        assert response.status_code == 413
        # Refused after the first chunks, not after all 10 MB.
        assert sent < 1_000_000
        # A body within the limit still goes through.
        assert (await client.post("/chat", json=CHAT)).status_code == 202
