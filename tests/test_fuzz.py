"""Fuzzing: schemathesis against the service's own OpenAPI document, and hypothesis on ids
(issue #5, tests). Bounded in examples, and the operations split into shards that run in parallel."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import positive_data_acceptance

from config import Settings
from testkit.redis_server import RedisServer
from testkit.service import ServiceProcess
from tests.conftest import AppClient, CaughtArchiver

KEY = "fuzz-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
EXAMPLES = 25


@pytest.fixture(scope="module")
def service() -> Iterator[ServiceProcess]:
    process = ServiceProcess(
        {"API_KEYS": f"fuzz:{KEY}", "STREAM_DELAY": "0", "CHUNK_DELAY": "0", "LOG_LEVEL": "ERROR"}
    )
    try:
        process.start()
        yield process
    finally:
        process.terminate()
        process.cleanup()


# The operations are dealt round-robin into shards, so that the test runner's workers share them.
SHARDS = 6


@pytest.mark.parametrize("shard", range(SHARDS))
def test_schemathesis_finds_no_server_error_and_no_undocumented_response(
    service: ServiceProcess, shard: int
) -> None:
    schema = schemathesis.openapi.from_url(f"{service.url}/openapi.json")
    # A body over MAX_BODY_BYTES is refused with 413 whether or not it is valid: a rejection too.
    schema.config.checks.negative_data_rejection.expected_statuses.append("413")
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operations.append(result.ok())
    # A session's stream without message_id never ends by design; its inputs are fuzzed below.
    operations = [operation for operation in operations if operation.path != "/stream/{session_id}"]
    operations.sort(key=lambda operation: (operation.path, operation.method))
    names = [f"{operation.method.upper()} {operation.path}" for operation in operations]
    assert "POST /chat" in names
    assert "GET /history/{session_id}" in names
    for operation in operations[shard::SHARDS]:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def check(case: Any) -> None:
                case.call_and_validate(
                    base_url=service.url,
                    headers=AUTH,
                    timeout=10,
                    # Schema-valid is not always acceptable: e.g. /v1 needs the last message to be
                    # the user's, which JSON Schema cannot say; such a request gets a documented 400.
                    excluded_checks=[positive_data_acceptance],
                )

            try:
                check()
            except Unsatisfiable:
                # An operation with no inputs has no negative data to make.
                assert mode is GenerationMode.NEGATIVE, operation.path


# --- Ids: anything that is not an id is refused before Redis hears of it ---------------------------

BAD_IDS = st.one_of(
    st.sampled_from(
        ["*", "chat:*", "a?b", "[abc]", "a b", "a\r\nb", "a\x00b", "é", "{tag}", "a%2Fb", "a" * 10_240]
    ),
    st.text(min_size=1, max_size=40).filter(
        lambda text: any(not (char.isascii() and (char.isalnum() or char in "_.:-")) for char in text)
    ),
    st.text(alphabet="abc", min_size=129, max_size=10_240),
)


@pytest.mark.redis
async def test_malformed_ids_get_422_and_send_no_redis_command(
    make_settings: Callable[..., Settings], app_client: AppClient, redis_server: RedisServer
) -> None:
    caught = CaughtArchiver()
    settings = make_settings(api_keys=f"fuzz:{KEY}", redis_url=redis_server.url, archiver="loop")
    async with app_client(settings, overrides=caught.overrides) as client:
        assert (await client.get("/health")).status_code == 200  # connected and subscribed
        # The archiver polls the outbox on its own: stopped, so that what is counted is the requests'.
        await caught.stop(client, AUTH)
        redis_server.cli("CONFIG", "RESETSTAT")
        for bad in _examples(BAD_IDS, 60):
            path = "/" + _quote(bad)
            for method, url, body in (
                ("GET", "/history" + path, None),
                ("DELETE", "/history" + path, None),
                ("GET", "/stream" + path, None),
                ("POST", "/chat", {"session_id": bad, "message": "hi", "user_id": "u"}),
                ("POST", "/chat", {"session_id": "ok", "message": "hi", "user_id": bad}),
            ):
                response = await client.request(method, url, json=body, headers=AUTH)
                # A `/` in a path id makes another path: no route, the router's 404.
                expected = 404 if body is None and "/" in bad else 422
                assert response.status_code == expected, (method, repr(bad), response.text)
        after_bad = commands(redis_server)
        # The counting works: a well-formed id does reach Redis.
        assert (await client.get("/history/well-formed", headers=AUTH)).status_code == 404
        after_good = commands(redis_server)
    # Only this test's own redis-cli calls reached Redis.
    assert after_bad <= {"config", "info"}, after_bad
    assert after_good - after_bad


def commands(server: RedisServer) -> set[str]:
    """The commands Redis has run since its statistics were reset (`config|resetstat` -> `config`)."""
    stats = server.cli("INFO", "commandstats")
    return {
        line.split(":")[0].removeprefix("cmdstat_").split("|")[0]
        for line in stats.splitlines()
        if line.startswith("cmdstat_")
    }


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


def _examples(strategy: st.SearchStrategy[str], count: int) -> list[str]:
    found: list[str] = []

    @given(value=strategy)
    @settings(
        max_examples=count,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    def collect(value: str) -> None:
        found.append(value)

    collect()
    return found
