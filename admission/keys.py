"""Who is calling: API keys, compared in constant time, and the stream tokens that stand in for a key
where a client (a browser's `EventSource`) cannot send headers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["KeyRing", "Principal", "StreamTokens"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the name of their API key, or nobody when the service is open. `expires`: when
    the caller came with a stream token, the time (`time.time()`) it expires; its stream ends then."""

    key_name: str | None
    expires: float | None = None

    @property
    def owner(self) -> str:
        """What ownership and limits are keyed by: the key's name, or `-` on an open service."""
        return self.key_name or "-"


class KeyRing:
    """The configured API keys, compared in constant time."""

    def __init__(self, keys: dict[str, bytes]) -> None:
        self._keys = keys

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def identify(self, presented: str) -> str | None:
        """The name of the key presented, or None. Every key is compared, so the time taken tells
        nothing about which key (or how much of one) matched."""
        candidate = presented.encode()
        found = None
        for name, key in self._keys.items():
            if hmac.compare_digest(candidate, key):
                found = name
        return found


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class StreamTokens:
    """Short-lived tokens that let a browser's `EventSource` (which cannot set headers) follow one
    session: `<expiry>.<signature>.<key name>`, the signature an HMAC-SHA256 over the session id, the
    key name and the expiry, so a token is good for its session only, and only until it expires."""

    MIN_SECRET_BYTES = 32

    def __init__(self, secret: bytes, ttl: int, *, clock: Callable[[], float] = time.time) -> None:
        if len(secret) < self.MIN_SECRET_BYTES:
            raise ValueError(f"a stream token secret has at least {self.MIN_SECRET_BYTES} bytes")
        self._secret = secret
        self.ttl = ttl
        self.clock = clock

    def _sign(self, session_id: str, key_name: str, expires: int) -> str:
        message = f"stream-token-v1\n{session_id}\n{key_name}\n{expires}".encode()
        return _b64(hmac.new(self._secret, message, hashlib.sha256).digest())

    def issue(self, session_id: str, key_name: str, *, now: float | None = None) -> str:
        expires = int(now if now is not None else self.clock()) + self.ttl
        return f"{expires}.{self._sign(session_id, key_name, expires)}.{key_name}"

    def verify(self, token: str, session_id: str, *, now: float | None = None) -> tuple[str, int] | None:
        """The key name the token was issued to and its expiry, if it is genuine, for this session and
        unexpired."""
        expires_text, _, rest = token.partition(".")
        signature, _, key_name = rest.partition(".")
        # One spelling per expiry: `0001700000000` is not the token that was signed as `1700000000`.
        canonical = expires_text.isdigit() and not (expires_text.startswith("0") and expires_text != "0")
        if not canonical or not signature or not key_name or len(expires_text) > 12:
            return None
        expires = int(expires_text)
        if not hmac.compare_digest(signature, self._sign(session_id, key_name, expires)):
            return None
        if expires < (now if now is not None else self.clock()):
            return None
        return key_name, expires
