"""`Admission`: every check a request passes before the service sees it. Routes compose "admit, then
submit": nothing here receives the `ChatService`."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from admission.clients import Gauge, SseClients
from admission.errors import SessionForbidden, SessionNotFound
from admission.keys import KeyRing, Principal, StreamTokens
from admission.limits import Capacity, Clock, RateLimiter, StreamSlots
from admission.owners import SessionOwners
from ids import answer_key

if TYPE_CHECKING:
    from answer_run import Answer
    from config import Settings
    from redis_client import KeySpace, RedisClient
    from usage.budgets import Budgets

__all__ = ["Admission"]

logger = logging.getLogger(__name__)


class Admission:
    """Keys, tokens, ownership and limits of one process, owned by the lifespan.

    It is also an `AnswerObserver` of the chat service: it counts the running answers for
    `MAX_ACTIVE_STREAMS` and frees each answer's stream slot when it ends, however it ends.
    """

    def __init__(
        self,
        settings: Settings,
        redis: RedisClient,
        keys: KeySpace,
        *,
        clock: Clock = time.time,
        budgets: Budgets | None = None,
        sse_gauge: Gauge | None = None,
    ) -> None:
        self.budgets = budgets
        self.keyring = KeyRing(
            {name: key.get_secret_value().encode() for name, key in settings.api_keys.items()}
        )
        secret = settings.stream_token_secret
        if self.keyring.enabled and secret is None:
            logger.warning(
                "STREAM_TOKEN_SECRET is not set: stream tokens are signed with a random per-process secret "
                "and are not accepted by other instances or after a restart"
            )
        token_secret = secret.get_secret_value().encode() if secret else secrets.token_bytes(32)
        self.tokens = StreamTokens(token_secret, settings.stream_token_ttl, clock=clock)
        self.owners = SessionOwners(
            redis, keys, ttl=settings.chat_history_ttl, timeout=settings.redis_timeout
        )
        # Who the conversation record says owns a session ("" on an open service, None if it has none
        # or cannot say): asked when a claim finds the session free in Redis. Set by the services builder.
        self.record_owner: Callable[[str], Awaitable[str | None]] | None = None
        self.rate_limiter: RateLimiter | None = None
        if settings.rate_limit or settings.rate_limit_per_key:
            self.rate_limiter = RateLimiter.from_settings(settings, redis, keys)
        self.slots: StreamSlots | None = None
        if settings.max_streams_per_user or settings.max_streams_per_key:
            self.slots = StreamSlots(
                redis,
                keys,
                limit=settings.max_streams_per_user,
                per_key=settings.max_streams_per_key,
                lease=settings.stream_lease_seconds,
                timeout=settings.redis_timeout,
                clock=clock,
            )
        self.capacity = Capacity(settings.max_active_streams)
        self.sse_clients = SseClients(settings.max_sse_clients, sse_gauge)

    def start(self) -> None:
        if not self.keyring.enabled:
            logger.warning("API_KEYS is not set: the API is open to anyone who can reach it")
        if self.slots is not None:
            self.slots.start()

    async def close(self) -> None:
        if self.slots is not None:
            await self.slots.close()
        if self.rate_limiter is not None:
            await self.rate_limiter.close()

    # -- who is calling --

    def principal(self, presented: str | None) -> Principal | None:
        """Who presented this key; None if it is not one of ours."""
        if not self.keyring.enabled:
            return Principal(None)
        if not presented:
            return None
        name = self.keyring.identify(presented)
        return Principal(name) if name else None

    def token_principal(self, token: str, session_id: str) -> Principal | None:
        """Who a stream token was issued to, if it is genuine, unexpired and for this session."""
        verified = self.tokens.verify(token, session_id)
        return Principal(verified[0], expires=verified[1]) if verified is not None else None

    def expires_in(self, principal: Principal) -> float | None:
        """Seconds until the stream token the caller came with expires (None: it came with a key)."""
        return None if principal.expires is None else max(0.0, principal.expires - self.tokens.clock())

    def stream_token(self, principal: Principal, session_id: str) -> str | None:
        return self.tokens.issue(session_id, principal.key_name) if principal.key_name else None

    # -- ownership --

    async def owns(self, principal: Principal, session_id: str) -> bool:
        """Whether the caller may see the session (always on an open service)."""
        return principal.key_name is None or await self.owners.owns(session_id, principal.key_name)

    async def check_session(self, principal: Principal, session_id: str) -> None:
        """Raise `SessionNotFound` unless the caller owns the session (always passes on an open service)."""
        if not await self.owns(principal, session_id):
            raise SessionNotFound(session_id)

    async def claim_session(self, principal: Principal, session_id: str) -> None:
        """Before a chat: the session becomes the caller's, or `SessionForbidden` if it is another's:
        in Redis, or, once its owner record there has expired, in the conversation record."""
        key = principal.key_name
        if key is None:
            return
        claimed = await self.owners.claim(session_id, key)
        if claimed == "new" and self.record_owner is not None:
            first = await self.record_owner(session_id)
            if first and first != key:
                await self.owners.restore(session_id, first)
                claimed = "theirs"
        if claimed == "theirs":
            raise SessionForbidden(session_id)

    # -- admitting a read, and an answer --

    async def admit_read(self, principal: Principal) -> None:
        """A read (a history page) counts toward the key's `RATE_LIMIT_PER_KEY`; 429 beyond it."""
        if self.rate_limiter is not None:
            await self.rate_limiter.hit(principal, None)

    @asynccontextmanager
    async def admit(
        self, principal: Principal, *, user_id: str, message_id: str, session_id: str | None = None
    ) -> AsyncIterator[None]:
        """Let an answer in through every check, cheapest first; submit it inside the block.

        Capacity (503 `Overloaded`) before anything touches Redis, then the rate limits (429, the key's
        total first), the session's owner (403, skipped for a stateless call), the key's and the user's
        running answers (429). A slot
        taken for an answer that has not started when the block ends (a repeated send, a failure) is
        given back at once; one that started is freed when it ends (`answer_ended`).
        """
        self.capacity.check()
        self.capacity.admitting += 1
        taken = False
        # The answer as the service names it (`ids.answer_key`): one key's ids are not another's.
        key = answer_key(principal.key_name, message_id)
        try:
            if self.rate_limiter is not None:
                await self.rate_limiter.hit(principal, user_id)
            if session_id is not None:
                await self.claim_session(principal, session_id)
            if self.slots is not None:
                taken = await self.slots.acquire(principal, user_id, key)
            if self.budgets is None:
                yield
            else:  # the key's budget (429 `budget_exceeded`), and whom the answer is charged to
                async with self.budgets.admit(principal.owner, key):
                    yield
        finally:
            self.capacity.admitting -= 1
            # Released at most once: if the answer started and already ended, its release went first.
            if taken and self.slots is not None and key not in self.capacity.running:
                await self.slots.release(key)

    # -- AnswerObserver --

    def answer_started(self, answer: Answer) -> None:
        self.capacity.running.add(answer.key)

    def chunk_published(self, answer: Answer) -> None:
        pass

    def answer_ended(self, answer: Answer) -> None:
        self.capacity.running.discard(answer.key)
        if self.slots is not None:
            self.slots.release_later(answer.key)
