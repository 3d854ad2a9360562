"""Configuration: every setting comes from the environment (or `.env`), typed and validated once."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Annotated, Literal
from urllib.parse import urlsplit

from limits import parse_many
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from providers import PROVIDERS
from usage.plans import Budget, Price, parse_budgets, parse_prices

__all__ = ["Settings", "format_validation_error", "get_settings"]

VERSION = "1.0.0"
SERVICE_NAME = "ai-chat-service"

KEY_NAME_PATTERN = r"[A-Za-z0-9_.\-]{1,64}"
OPENAI_BASE_URL = "https://api.openai.com/v1"

LogLevel = Literal["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"]


class Settings(BaseSettings):
    """The service's settings; each field is the environment variable of the same name, upper-cased."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        validate_default=True,
    )

    # HTTP server
    host: str = "0.0.0.0"  # noqa: S104 - a container service listens on every interface
    port: int = Field(default=8000, ge=1, le=65535)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Worker processes of `python app.py`, one per core to use. Every feature works across workers
    # through Redis, so more than one needs a Redis server, not the embedded one.
    web_concurrency: int = Field(default=1, ge=1, le=64)

    # Redis. Neither REDIS_URL nor REDIS_HOST set: the embedded in-process Redis.
    redis_url: SecretStr | None = None
    redis_host: str | None = None
    redis_port: int = Field(default=6379, ge=1, le=65535)
    redis_password: SecretStr | None = None
    redis_db: int = Field(default=0, ge=0)
    redis_timeout: float = Field(default=2.0, gt=0, le=60)
    redis_max_connections: int = Field(default=64, ge=4, le=10_000)
    redis_key_prefix: str = Field(default="chat", pattern=r"^[A-Za-z0-9_.\-]{1,32}$")
    # Redis Cluster: REDIS_URL (or REDIS_HOST/PORT) names any node; answers use sharded PubSub.
    redis_cluster: bool = False
    # Sentinel: the sentinels to ask for the master named REDIS_SENTINEL_MASTER.
    redis_sentinels: Annotated[list[tuple[str, int]], NoDecode] = Field(default_factory=list)
    redis_sentinel_master: str = "mymaster"
    redis_sentinel_password: SecretStr | None = None
    # Replicas that must confirm a user turn before the chat is accepted (WAIT), so a failover
    # cannot lose a turn answered with 202; every attached replica when fewer are attached. 0: off.
    redis_wait_replicas: int = Field(default=0, ge=0, le=16)

    # History
    chat_history_ttl: int = Field(default=86_400, ge=1)
    max_history_messages: int = Field(default=1000, ge=2, le=100_000)

    # Replay log and Server-Sent Events
    stream_maxlen: int = Field(default=1000, ge=10, le=1_000_000)
    sse_ping_seconds: float = Field(default=15.0, gt=0, le=300)
    sse_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    sse_queue_limit: int = Field(default=1000, ge=10, le=1_000_000)

    # Simulated model pacing, and whether it "thinks" aloud before answering (a request's
    # `reasoning_effort` other than `none` turns it on for that answer)
    stream_delay: float = Field(default=0.1, ge=0, le=10)
    chunk_delay: float = Field(default=0.05, ge=0, le=10)
    simulated_reasoning: bool = False

    # The model: the simulated one, or any server speaking OpenAI's Chat Completions API
    ai_provider: str = "simulated"
    openai_base_url: str = Field(default=OPENAI_BASE_URL, min_length=1)
    openai_api_key: SecretStr | None = None
    ai_model: str = Field(default="gpt-4o-mini", min_length=1, max_length=256)
    ai_temperature: float | None = Field(default=None, ge=0, le=2)
    ai_max_tokens: int | None = Field(default=None, ge=1)
    ai_timeout: float = Field(default=60.0, gt=0, le=3600)
    ai_max_retries: int = Field(default=2, ge=0, le=10)
    ai_stream_usage: bool = True

    # What the model is sent: the system prompt, then recent turns within both limits, then the message
    system_prompt: str = "You are a helpful assistant."
    max_context_messages: int = Field(default=20, ge=0, le=10_000)
    max_context_chars: int = Field(default=32_000, ge=1, le=10_000_000)
    # Whether earlier answers' reasoning is sent back to the model (most servers neither want nor take it)
    ai_send_reasoning: bool = False
    # Model-written titles (issue #15, titles.py): after a conversation's first answer, the model is
    # asked for a short title, which replaces the one taken from the first message unless renamed.
    ai_titles: bool = False

    # Inputs and lifecycle
    max_message_length: int = Field(default=8000, ge=1, le=1_000_000)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0, le=3600)

    # Access control (admission/). API_KEYS unset: the service is open.
    api_keys: Annotated[dict[str, SecretStr], NoDecode] = Field(default_factory=dict)
    stream_token_secret: SecretStr | None = None
    stream_token_ttl: int = Field(default=3600, ge=10, le=7 * 86_400)

    # Limits (0 or unset: no limit)
    rate_limit: str | None = None
    max_streams_per_user: int = Field(default=0, ge=0)
    max_active_streams: int = Field(default=0, ge=0)
    stream_lease_seconds: float = Field(default=60.0, ge=1, le=3600)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)

    # Per-key totals (issue #13): what one API key may use across all its user ids, so that a new
    # `user_id` per request buys nothing (on an open service, the whole service is one key).
    rate_limit_per_key: str | None = None
    max_streams_per_key: int = Field(default=0, ge=0)

    # Answer leases and orphaned answers (issue #13, item 5; `leases.py`). A running answer's instance
    # renews its lease (and its session's TTLs); an answer whose lease has expired is ended as lost by
    # whichever instance sees it next, or by the sweep every ANSWER_SWEEP_SECONDS. An answer tries to
    # store its end for ANSWER_END_RETRY_SECONDS while Redis refuses, then leaves it to its lease.
    answer_lease_seconds: float = Field(default=30.0, ge=0.5, le=3600)
    answer_sweep_seconds: float = Field(default=10.0, ge=0.1, le=3600)
    answer_end_retry_seconds: float = Field(default=15.0, ge=0, le=3600)

    # Usage accounting and budgets (issue #16, usage/). PRICES: USD per million input/output tokens per
    # model (none by default: costs are 0). BUDGETS: per key name and `default`, tokens or usd, per day
    # or month. Tracing has no settings here: the OpenTelemetry SDK reads OTEL_* itself (telemetry.py).
    prices: Annotated[dict[str, Price], NoDecode] = Field(default_factory=dict)
    budgets: Annotated[dict[str, Budget], NoDecode] = Field(default_factory=dict)
    usage_retention_days: int = Field(default=400, ge=1, le=3660)
    budget_hold_seconds: float = Field(default=600.0, ge=10, le=86_400)

    # The edge: what one `python app.py` process lets in (issue #13, items 6 and 7). uvicorn's h11
    # parser holds at most MAX_HEADER_BYTES of a request head (httptools, about 90 us a request faster,
    # reads heads of any size: only behind a proxy that bounds them); beyond MAX_CONNECTIONS open connections
    # (or requests) it answers 503; a body must arrive within REQUEST_BODY_TIMEOUT seconds; at most
    # MAX_SSE_CLIENTS streams (0: no limit) are open at once. SHUTDOWN_GRACE_SECONDS also bounds how
    # long the server waits for open responses when it stops.
    http_parser: Literal["h11", "httptools"] = "h11"
    max_header_bytes: int = Field(default=16_384, ge=1024, le=1_048_576)
    max_connections: int = Field(default=2048, ge=1, le=1_000_000)
    max_sse_clients: int = Field(default=1500, ge=0, le=1_000_000)
    request_body_timeout: float = Field(default=30.0, gt=0, le=3600)
    keepalive_timeout: int = Field(default=5, ge=1, le=3600)

    # Conversations that last (issue #15): the SQL system of record behind the Redis hot tier.
    # DATABASE_URL: a PostgreSQL URL (postgresql+asyncpg://...); unset: an embedded SQLite file.
    database_url: SecretStr | None = None
    database_path: str = Field(default="conversations.db", min_length=1, max_length=4096)
    # Days a conversation is kept after its last turn; 0: forever.
    conversation_retention_days: int = Field(default=0, ge=0, le=36_500)
    # /health reports the archive `degraded` when its oldest unarchived turn is older than this.
    archive_degraded_seconds: float = Field(default=60.0, gt=0, le=86_400)
    # How many outbox entries the archiver takes per read, and how long an entry may sit with a
    # consumer that stopped answering before another instance claims it.
    archive_batch: int = Field(default=200, ge=1, le=10_000)
    archive_claim_seconds: float = Field(default=30.0, gt=0, le=86_400)
    # Where the archiver runs: `process`, a child process (archiver_process.py), so that storing turns
    # takes no time from the streams; `loop`, a task on this event loop. `auto`: `process` with a Redis
    # server, `loop` with the embedded one, which lives in this process only (see `archiver_mode`).
    archiver: Literal["auto", "loop", "process"] = "auto"

    # Logging
    log_level: LogLevel = "INFO"
    log_format: Literal["text", "json"] = "text"

    @field_validator("stream_token_secret")
    @classmethod
    def _long_token_secret(cls, value: SecretStr | None) -> SecretStr | None:
        # A short secret is recovered offline from one token (issue #13, item 7): HMAC-SHA256's own size.
        if value is not None and len(value.get_secret_value().encode()) < 32:
            raise ValueError("must be at least 32 bytes (for example: openssl rand -hex 32)")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_api_keys(cls, value: object) -> object:
        # `name:key,name:key`. Errors name the entry's position, never the key itself.
        if not isinstance(value, str):
            return value
        keys: dict[str, str] = {}
        for position, item in enumerate((part.strip() for part in value.split(",")), start=1):
            if not item:
                continue
            name, separator, key = item.partition(":")
            if not separator or not re.fullmatch(KEY_NAME_PATTERN, name):
                raise ValueError(f"entry {position} is not name:key (name: letters, digits, _ . -)")
            if len(key) < 16:
                raise ValueError(f"the key of {name!r} is shorter than 16 characters")
            if name in keys:
                raise ValueError(f"the name {name!r} is used twice")
            keys[name] = key
        return keys

    @field_validator("rate_limit", "rate_limit_per_key", mode="before")
    @classmethod
    def _check_rate_limit(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        if isinstance(value, str):
            try:
                parse_many(value)
            except ValueError:
                raise ValueError("must look like 30/minute (or several: 30/minute;500/hour)") from None
        return value

    @field_validator("prices", mode="before")
    @classmethod
    def _parse_prices(cls, value: object) -> object:
        return parse_prices(value) if isinstance(value, str) else value

    @field_validator("budgets", mode="before")
    @classmethod
    def _parse_budgets(cls, value: object) -> object:
        return parse_budgets(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _budgets_name_keys(self) -> Settings:
        # A budget for a name that is not a key is a typo that would leave the key without one.
        if unknown := set(self.budgets) - set(self.api_keys) - {"default"}:
            secrets = {key.get_secret_value() for key in self.api_keys.values()}  # never echoed
            named = sorted(unknown - secrets) + ["a key's secret (give its name)"] * bool(unknown & secrets)
            raise ValueError(f"BUDGETS names keys that API_KEYS does not have: {', '.join(named)}")
        return self

    @field_validator("redis_sentinels", mode="before")
    @classmethod
    def _split_sentinels(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        sentinels = []
        for item in (part.strip() for part in value.split(",")):
            if not item:
                continue
            host, _, port = item.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"expected host:port pairs, got {item!r}")
            sentinels.append((host, int(port)))
        return sentinels

    @model_validator(mode="after")
    def _one_topology(self) -> Settings:
        if self.redis_cluster and self.redis_sentinels:
            raise ValueError("REDIS_CLUSTER and REDIS_SENTINELS cannot be used together")
        if self.redis_cluster and self.redis_wait_replicas:
            raise ValueError("REDIS_WAIT_REPLICAS is not supported with REDIS_CLUSTER")
        if self.redis_cluster and self.embedded_redis:
            raise ValueError("REDIS_CLUSTER needs REDIS_URL or REDIS_HOST naming a cluster node")
        if self.web_concurrency > 1 and self.embedded_redis:
            raise ValueError(
                "WEB_CONCURRENCY above 1 needs REDIS_URL or REDIS_HOST: the embedded Redis is in one process"
            )
        return self

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        # Checked by hand rather than as RedisDsn so that a bad URL's error never echoes the password.
        if value is None:
            return value
        url = value.get_secret_value()
        if not url.startswith(("redis://", "rediss://")):
            raise ValueError("must start with redis:// or rediss://")
        try:
            port = urlsplit(url).port
        except ValueError:  # not a number, or out of range: the client would crash start-up later
            port = 0
        if port == 0:
            raise ValueError("has an invalid port")
        return value

    @field_validator("ai_provider")
    @classmethod
    def _known_provider(cls, value: str) -> str:
        if value not in PROVIDERS:
            raise ValueError(f"must be one of: {', '.join(PROVIDERS)}")
        return value

    @field_validator("openai_base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL, for example http://localhost:11434/v1")
        return value

    @model_validator(mode="after")
    def _key_for_openai(self) -> Settings:
        # Local servers (Ollama, vLLM, llama.cpp) take any key; OpenAI itself does not answer without one.
        if (
            self.ai_provider == "openai"
            and self.openai_api_key is None
            and urlsplit(self.openai_base_url).hostname == urlsplit(OPENAI_BASE_URL).hostname
        ):
            raise ValueError("OPENAI_API_KEY must be set when AI_PROVIDER=openai talks to api.openai.com")
        return self

    @model_validator(mode="after")
    def _archiver_process_needs_a_server(self) -> Settings:
        if self.archiver == "process" and self.embedded_redis:
            raise ValueError(
                "ARCHIVER=process needs a Redis server (REDIS_URL, REDIS_HOST or REDIS_SENTINELS): "
                "the embedded Redis lives in this process only"
            )
        return self

    @property
    def archiver_mode(self) -> Literal["loop", "process"]:
        """Where the archiver runs: ARCHIVER, with `auto` resolved by where Redis is."""
        if self.archiver == "auto":
            return "loop" if self.embedded_redis else "process"
        return self.archiver

    @property
    def embedded_redis(self) -> bool:
        """True when no Redis server is configured and the in-process one is used."""
        return self.redis_url is None and not self.redis_host and not self.redis_sentinels

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: SecretStr | None) -> SecretStr | None:
        # Checked by hand so that a bad URL's error never echoes the password.
        if value is None or not value.get_secret_value():
            return None
        scheme = urlsplit(value.get_secret_value()).scheme
        if scheme not in ("postgresql", "postgresql+asyncpg", "postgres", "sqlite", "sqlite+aiosqlite"):
            raise ValueError("DATABASE_URL must be a postgresql:// (or sqlite://) URL")
        return value

    def database_dsn(self) -> str:
        """The SQLAlchemy URL of the conversation store, with its async driver. May hold a password."""
        if self.database_url is None:
            return f"sqlite+aiosqlite:///{self.database_path}"
        url = self.database_url.get_secret_value()
        scheme, rest = url.split("://", 1)
        driver = {"postgresql": "postgresql+asyncpg", "postgres": "postgresql+asyncpg"}.get(scheme, scheme)
        return f"{'sqlite+aiosqlite' if scheme == 'sqlite' else driver}://{rest}"

    def database_location(self) -> str:
        """Where the conversation store is, fit for a log line: no credentials."""
        if self.database_url is None:
            return f"sqlite:{self.database_path}"
        parts = urlsplit(self.database_url.get_secret_value())
        return f"{parts.scheme}://{parts.hostname or ''}:{parts.port or ''}{parts.path}"

    def redis_dsn(self) -> str:
        """The URL the Redis client connects to. It may hold the password: never log it."""
        if self.redis_url is not None:
            return self.redis_url.get_secret_value()
        password = self.redis_password.get_secret_value() if self.redis_password else ""
        auth = f":{password}@" if password else ""
        return f"redis://{auth}{self.redis_host or 'localhost'}:{self.redis_port}/{self.redis_db}"

    def redis_location(self) -> str:
        """Where Redis is, fit for a log line or a response: no credentials."""
        if self.embedded_redis:
            return "embedded"
        if self.redis_sentinels:
            sentinels = ",".join(f"{host}:{port}" for host, port in self.redis_sentinels)
            return f"sentinel://{sentinels}/{self.redis_sentinel_master}/{self.redis_db}"
        if self.redis_url is not None:
            parts = urlsplit(self.redis_url.get_secret_value())
            return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path or '/0'}"
        return f"redis://{self.redis_host}:{self.redis_port}/{self.redis_db}"


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings()


def format_validation_error(error: ValidationError) -> str:
    """One line per bad variable, naming it and saying why, without echoing secret values."""
    lines = []
    for item in error.errors(include_input=False, include_url=False):
        if item["loc"]:
            lines.append(f"invalid configuration: {str(item['loc'][0]).upper()}: {item['msg']}")
        else:  # a check across variables names them in its message
            lines.append(f"invalid configuration: {item['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)
