"""Access control: API keys, session ownership, stream tokens, and the limits that keep one client from
exhausting the service (OWASP API Security Top 10: broken object-level authorisation, unrestricted
resource consumption).

Every limit that must hold across instances lives in Redis: the rate limits (the `limits` library, on
the app's own connection pool), the owner of each session, and each user's running answers.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import math
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, cast

import orjson
from fastapi import Depends, Query, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisClusterStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from redis.asyncio import Redis

from models import ID_PATTERN
from redis_client import KeySpace, RedisUnavailable, bounded

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from ai_service import ChatService
    from answer_run import Answer
    from config import Settings
    from models import ChatAccepted, ChatRequest
    from redis_client import RedisClient

__all__ = [
    "AccessControl",
    "AccessDep",
    "BodyLimitMiddleware",
    "Overloaded",
    "Principal",
    "PrincipalDep",
    "RateLimited",
    "SessionForbidden",
    "SessionNotFound",
    "StreamPrincipalDep",
    "StreamTokens",
    "Unauthorized",
    "require_key",
]

logger = logging.getLogger(__name__)


# --- Errors (app.py maps them to HTTP answers) ----------------------------------------------------


class Unauthorized(Exception):
    """No valid API key (or stream token) was presented."""

    def __init__(self, message: str = "A valid API key is required") -> None:
        super().__init__(message)
        self.message = message


class SessionNotFound(Exception):
    """The session does not exist for this key: missing, expired, or another key's (the same answer)."""


class SessionForbidden(Exception):
    """A chat was posted into a session that another key owns."""


class RateLimited(Exception):
    """Too many requests, or too many running answers, for this key and user."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class Overloaded(Exception):
    """This process runs as many answers as it may (`MAX_ACTIVE_STREAMS`)."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("the service is at capacity")
        self.retry_after = retry_after


# --- Keys and tokens -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the name of their API key, or nobody when the service is open."""

    key_name: str | None

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

    def __init__(self, secret: bytes, ttl: int) -> None:
        self._secret = secret
        self.ttl = ttl

    def _sign(self, session_id: str, key_name: str, expires: int) -> str:
        message = f"stream-token-v1\n{session_id}\n{key_name}\n{expires}".encode()
        return _b64(hmac.new(self._secret, message, hashlib.sha256).digest())

    def issue(self, session_id: str, key_name: str, *, now: float | None = None) -> str:
        expires = int(now if now is not None else time.time()) + self.ttl
        return f"{expires}.{self._sign(session_id, key_name, expires)}.{key_name}"

    def verify(self, token: str, session_id: str, *, now: float | None = None) -> str | None:
        """The key name the token was issued to, if it is genuine, for this session and unexpired."""
        expires_text, _, rest = token.partition(".")
        signature, _, key_name = rest.partition(".")
        if not expires_text.isdigit() or not signature or not key_name or len(expires_text) > 12:
            return None
        expires = int(expires_text)
        if not hmac.compare_digest(signature, self._sign(session_id, key_name, expires)):
            return None
        if expires < (now if now is not None else time.time()):
            return None
        return key_name


# --- Session ownership ---------------------------------------------------------------------------


class SessionOwners:
    """The key that created each session, stored beside the session's keys (same hash tag) with the
    history's TTL, refreshed on every chat."""

    def __init__(self, redis: RedisClient, keys: KeySpace, *, ttl: int, timeout: float) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl = ttl
        self._timeout = timeout

    def _key(self, session_id: str) -> str:
        return f"{self._keys.prefix}:{{{session_id}}}:owner"

    async def claim(self, session_id: str, owner: str) -> bool:
        """Make `owner` the session's owner unless it already has another; True if `owner` owns it."""
        key = self._key(session_id)
        async with bounded(self._timeout), self._redis.pipeline(transaction=True) as pipe:
            pipe.set(key, owner, nx=True, ex=self._ttl)
            pipe.get(key)
            _, current = await pipe.execute()
        if current != owner.encode():
            return False
        async with bounded(self._timeout):
            await self._redis.expire(key, self._ttl)
        return True

    async def owns(self, session_id: str, owner: str) -> bool:
        async with bounded(self._timeout):
            current = await self._redis.get(self._key(session_id))
        return current is not None and hmac.compare_digest(cast(bytes, current), owner.encode())


# --- Limits --------------------------------------------------------------------------------------


class RateLimiter:
    """`RATE_LIMIT` per API key and user: a moving window in Redis, shared by every instance.

    Keyed by the key's name and the body's `user_id`, never by an address a client can claim in
    `X-Forwarded-For`."""

    def __init__(self, storage: Storage, items: list[RateLimitItem], *, timeout: float) -> None:
        self._storage = storage
        self._limiter = MovingWindowRateLimiter(storage)
        self._items = items
        self._timeout = timeout

    async def hit(self, principal: Principal, user_id: str) -> None:
        for item in self._items:
            async with bounded(self._timeout):
                allowed = await self._limiter.hit(item, principal.owner, user_id)
                if allowed:
                    continue
                stats = await self._limiter.get_window_stats(item, principal.owner, user_id)
            retry_after = max(1, math.ceil(stats.reset_time - time.time()))
            raise RateLimited(f"Rate limit of {item} exceeded", retry_after)


class StreamSlots:
    """`MAX_STREAMS_PER_USER`: each user's running answers, counted in Redis across instances.

    A sorted set per key and user whose members are message ids scored by a lease's expiry. The
    instance running an answer renews its lease while it runs and removes it when the answer ends, however
    it ends; if the instance dies, the lease runs out after `STREAM_LEASE_SECONDS` and the slot is free
    again. Plain MULTI/EXEC, no Lua, so it also runs on the embedded Redis.
    """

    def __init__(
        self, redis: RedisClient, keys: KeySpace, *, limit: int, lease: float, timeout: float
    ) -> None:
        self._redis = redis
        self._keys = keys
        self.limit = limit
        self._lease = lease
        self._timeout = timeout
        self._held: dict[str, str] = {}  # message id -> its sorted set, for the answers this process runs
        self._tasks: set[asyncio.Task[None]] = set()
        self._renewer: asyncio.Task[None] | None = None

    def _key(self, principal: Principal, user_id: str) -> str:
        return f"{self._keys.prefix}:streams:{{{principal.owner}:{user_id}}}"

    async def acquire(self, principal: Principal, user_id: str, message_id: str) -> bool:
        """Take a slot for the answer; False if it already had one (a repeated send).
        Raises `RateLimited` when the user already runs `limit` answers."""
        key = self._key(principal, user_id)
        now = time.time()
        async with bounded(self._timeout), self._redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(key, "-inf", now)
            pipe.zadd(key, {message_id: now + self._lease}, nx=True)
            pipe.zcard(key)
            pipe.expire(key, math.ceil(self._lease) + 1)
            _, added, count, _ = await pipe.execute()
        if not added:
            return False
        if count > self.limit:
            # Two racing sends may both see the other and both be refused: never one too many.
            async with bounded(self._timeout):
                await self._redis.zrem(key, message_id)
            raise RateLimited(f"At most {self.limit} answers may run at once for one user", 1)
        self._held[message_id] = key
        return True

    async def release(self, message_id: str) -> None:
        key = self._held.pop(message_id, None)
        if key is None:
            return
        try:
            async with bounded(self._timeout):
                await self._redis.zrem(key, message_id)
        except RedisUnavailable as error:
            logger.warning("could not free the stream slot of %s (%s); its lease expires", message_id, error)

    # AnswerObserver: the answer's end frees its slot, whatever the end.
    def answer_started(self, answer: Answer) -> None:
        pass

    def chunk_published(self, answer: Answer) -> None:
        pass

    def answer_ended(self, answer: Answer) -> None:
        if answer.message_id not in self._held:
            return
        task = asyncio.create_task(self.release(answer.message_id), name="stream-slot-release")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def start(self) -> None:
        self._renewer = asyncio.create_task(self._renew(), name="stream-slot-renewer")

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
            self._renewer = None
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            if not self._held:
                continue
            expiry = time.time() + self._lease
            try:
                async with bounded(self._timeout), self._redis.pipeline(transaction=False) as pipe:
                    for message_id, key in list(self._held.items()):
                        pipe.zadd(key, {message_id: expiry}, xx=True)
                        pipe.expire(key, math.ceil(self._lease) + 1)
                    await pipe.execute()
            except RedisUnavailable as error:
                logger.warning("could not renew %d stream slots: %s", len(self._held), error.reason)


# --- Putting it together -------------------------------------------------------------------------


class AccessControl:
    """Keys, tokens, ownership and limits of one process, owned by the lifespan."""

    def __init__(self, settings: Settings, redis: RedisClient, keys: KeySpace) -> None:
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
        self.tokens = StreamTokens(token_secret, settings.stream_token_ttl)
        self.owners = SessionOwners(
            redis, keys, ttl=settings.chat_history_ttl, timeout=settings.redis_timeout
        )
        self.rate_limiter: RateLimiter | None = None
        # The cluster client limits makes for itself (it has no close of its own): closed in `close()`.
        self._limits_client: Any = None
        if settings.rate_limit:
            storage: Storage
            if settings.embedded_redis:
                # The embedded Redis has no Lua; it serves one process, so memory is as shared.
                storage = MemoryStorage()
            elif settings.redis_cluster:
                # A cluster client has no single pool to share: limits makes its own, to the same nodes.
                scheme, _, rest = settings.redis_dsn().partition("://")
                storage = RedisClusterStorage(
                    f"async+redis+cluster://{rest}",
                    implementation="redispy",
                    key_prefix=f"{keys.prefix}:ratelimit",
                    ssl=scheme == "rediss",
                )
                self._limits_client = cast(Any, storage.bridge).storage
            else:
                storage = RedisStorage(
                    "async+redis://",
                    implementation="redispy",
                    key_prefix=f"{keys.prefix}:ratelimit",
                    connection_pool=cast(Redis, redis).connection_pool,  # type: ignore[arg-type]
                )
            self.rate_limiter = RateLimiter(
                storage, parse_many(settings.rate_limit), timeout=settings.redis_timeout
            )
        self.slots: StreamSlots | None = None
        if settings.max_streams_per_user:
            self.slots = StreamSlots(
                redis,
                keys,
                limit=settings.max_streams_per_user,
                lease=settings.stream_lease_seconds,
                timeout=settings.redis_timeout,
            )
        self.max_active_streams = settings.max_active_streams
        self.admitting = 0  # chats between the capacity check and their answer's start

    def start(self) -> None:
        if not self.keyring.enabled:
            logger.warning("API_KEYS is not set: the API is open to anyone who can reach it")
        if self.slots is not None:
            self.slots.start()

    async def close(self) -> None:
        if self.slots is not None:
            await self.slots.close()
        if self._limits_client is not None:
            await self._limits_client.aclose()

    def principal(self, presented: str | None) -> Principal | None:
        """Who presented this key; None if it is not one of ours."""
        if not self.keyring.enabled:
            return Principal(None)
        if not presented:
            return None
        name = self.keyring.identify(presented)
        return Principal(name) if name else None

    async def check_session(self, principal: Principal, session_id: str) -> None:
        """Raise `SessionNotFound` unless the caller owns the session (always passes on an open service)."""
        if principal.key_name is None:
            return
        if not await self.owners.owns(session_id, principal.key_name):
            raise SessionNotFound(session_id)

    async def claim_session(self, principal: Principal, session_id: str) -> None:
        """Before a chat: the session becomes the caller's, or `SessionForbidden` if it is another's."""
        if principal.key_name is None:
            return
        if not await self.owners.claim(session_id, principal.key_name):
            raise SessionForbidden(session_id)

    def stream_token(self, principal: Principal, session_id: str) -> str | None:
        return self.tokens.issue(session_id, principal.key_name) if principal.key_name else None

    def check_capacity(self, active_answers: int) -> None:
        if self.max_active_streams and active_answers + self.admitting >= self.max_active_streams:
            raise Overloaded(retry_after=1)

    async def rate_limit(self, principal: Principal, user_id: str) -> None:
        if self.rate_limiter is not None:
            await self.rate_limiter.hit(principal, user_id)

    async def submit(
        self, principal: Principal, request: ChatRequest, service: ChatService, **options: Any
    ) -> tuple[ChatAccepted, bool]:
        """Admit a chat through every check, cheapest first, then submit it to the service.

        Capacity (503) before anything touches Redis, then the rate limit (429), the session's owner
        (403), the user's running answers (429). A slot taken for an answer that does not start (a
        repeated send, a failure) is given back at once; one that starts is freed when it ends.
        """
        self.check_capacity(service.active_answers)
        self.admitting += 1
        try:
            await self.rate_limit(principal, request.user_id)
            await self.claim_session(principal, request.session_id)
            if self.slots is None:
                accepted, started = await service.submit(request, **options)
            else:
                if request.message_id is None:
                    request = request.model_copy(update={"message_id": uuid.uuid4()})
                message_id = str(request.message_id)
                taken = await self.slots.acquire(principal, request.user_id, message_id)
                started = False
                try:
                    accepted, started = await service.submit(request, **options)
                finally:
                    if taken and not started:
                        await self.slots.release(message_id)
        finally:
            self.admitting -= 1
        accepted.stream_token = self.stream_token(principal, request.session_id)
        return accepted, started


# --- FastAPI dependencies ------------------------------------------------------------------------

# Declared as security schemes, so the OpenAPI document has them and Swagger UI's Authorize works.
bearer_scheme = HTTPBearer(
    auto_error=False, description="`Authorization: Bearer <key>`, as OpenAI clients send it."
)
api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False, description="The API key.")


def get_access(request: Request) -> AccessControl:
    return cast(AccessControl, request.state.access)


async def access_dependency(request: Request) -> AccessControl:
    # async although it does not await: FastAPI runs a plain `def` dependency in its thread pool.
    return get_access(request)


def _presented(bearer: HTTPAuthorizationCredentials | None, header: str | None) -> str | None:
    return bearer.credentials if bearer is not None else header


async def require_key(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    header: Annotated[str | None, Depends(api_key_scheme)],
) -> Principal:
    """The caller, identified by their API key; 401 without a valid one (unless the service is open)."""
    principal = get_access(request).principal(_presented(bearer, header))
    if principal is None:
        raise Unauthorized()
    return principal


async def require_stream_access(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    header: Annotated[str | None, Depends(api_key_scheme)],
    token: Annotated[
        str | None,
        Query(
            max_length=256,
            pattern=r"^[A-Za-z0-9_.\-]+$",
            description="A `stream_token` from `POST /chat`, for clients that cannot send the API key.",
        ),
    ] = None,
) -> Principal:
    """The caller of a stream: an API key, or a stream token for the session in the path."""
    access = get_access(request)
    principal = access.principal(_presented(bearer, header))
    if principal is not None:
        return principal
    session_id = request.path_params.get("session_id", "")
    if token is not None and isinstance(session_id, str) and _valid_id(session_id):
        key_name = access.tokens.verify(token, session_id)
        if key_name is not None:
            return Principal(key_name)
        raise Unauthorized("The stream token is invalid, expired, or for another session")
    raise Unauthorized()


def _valid_id(value: str) -> bool:
    return re.fullmatch(ID_PATTERN, value) is not None


AccessDep = Annotated[AccessControl, Depends(access_dependency)]
PrincipalDep = Annotated[Principal, Depends(require_key)]
StreamPrincipalDep = Annotated[Principal, Depends(require_stream_access)]


# --- Request bodies ------------------------------------------------------------------------------


class BodyLimitMiddleware:
    """`MAX_BODY_BYTES`: 413 before a large body is read whole.

    A declared `Content-Length` over the limit is refused before any of the body is read; otherwise
    (chunked bodies, or a length that lies) the bytes are counted as they arrive, at most the limit
    is held, and the request is refused the moment it goes over.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(scope, receive, send)
            return
        if scope["method"] in ("GET", "HEAD", "OPTIONS") and declared is None:
            await self.app(scope, receive, send)
            return
        # Read the body here, counting, and hand it on once it is known to fit.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client left: let the app see the disconnect
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return message
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = orjson.dumps(
            {
                "error": {
                    "code": "payload_too_large",
                    "message": f"The request body is larger than {self.max_bytes} bytes",
                }
            }
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    # The rest of the body is not read: the connection cannot be reused.
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
