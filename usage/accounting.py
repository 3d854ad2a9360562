"""Which API key an answer is charged to: admission sets it around `submit`, and the answer's task,
which copies the request's context when it is created, carries it to the usage recorder."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["OPEN_KEY", "charged_to", "current_key"]

# The key of answers on an open service (no API_KEYS), as `Principal.owner` names it.
OPEN_KEY = "-"

_key: ContextVar[str] = ContextVar("charged_key", default=OPEN_KEY)


@contextmanager
def charged_to(key: str) -> Iterator[None]:
    token = _key.set(key)
    try:
        yield
    finally:
        _key.reset(token)


def current_key() -> str:
    """The key answers started now are charged to (`-` outside admission, or on an open service)."""
    return _key.get()
