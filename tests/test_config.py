"""Settings: defaults, sources (environment, `.env`), Redis location, and how bad values are refused."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from config import Settings, format_validation_error
from testkit.processes import ROOT
from testkit.service import service_environment
from usage.plans import Budget, Price

SECRET = "s3cr3t-pw"
API_KEY = "alice-key-0123456789abcdef"

pytestmark = pytest.mark.usefixtures("clean_env")


def readme_defaults() -> dict[str, str]:
    """The README's configuration table: variable name to its documented default."""
    section = (ROOT / "README.md").read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([A-Z_]+)` \| ([^|]+) \|", section, flags=re.MULTILINE)
    return {name: default.strip().strip("`") for name, default in rows}


def documented(value: str) -> object:
    """A README default as the value Settings should hold."""
    if value in {"unset"}:
        return None
    if value == "empty":
        return []
    if value in {"true", "false"}:
        return value == "true"
    try:
        return float(value)
    except ValueError:
        return value


# Read by libraries themselves (prometheus-client, the OpenTelemetry SDK), not by Settings.
LIBRARY_VARIABLES = {"PROMETHEUS_MULTIPROC_DIR", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME"}


def test_defaults_match_the_readme_table() -> None:
    table = readme_defaults()
    settings = Settings(_env_file=None)
    assert set(table) - LIBRARY_VARIABLES == {name.upper() for name in Settings.model_fields}, (
        "README table and Settings differ"
    )
    for name, value in table.items():
        if name in LIBRARY_VARIABLES:
            continue
        actual = getattr(settings, name.lower())
        if isinstance(actual, int | float) and not isinstance(actual, bool):
            actual = float(actual)
        expected = documented(value)
        if expected is None or expected == []:
            assert not actual, name  # "unset" or "empty": None, or an empty list or mapping
        else:
            assert actual == expected, name


def test_env_example_lists_every_variable_and_changes_no_default() -> None:
    example = ROOT / ".env.example"
    listed = set(re.findall(r"^#? ?([A-Z_]+)=", example.read_text(), flags=re.MULTILINE))
    assert listed - LIBRARY_VARIABLES == {name.upper() for name in Settings.model_fields}
    # `cp .env.example .env` is the README's first step: it must start the service as the defaults do.
    assert Settings(_env_file=example) == Settings(_env_file=None)


def test_seed_defaults_and_embedded_redis_when_nothing_is_set() -> None:
    settings = Settings(_env_file=None)
    assert (settings.host, settings.port) == ("0.0.0.0", 8000)
    assert settings.chat_history_ttl == 86_400
    assert (settings.stream_delay, settings.chunk_delay) == (0.1, 0.05)
    assert settings.log_level == "INFO"
    assert settings.cors_origins == []
    assert settings.embedded_redis
    assert settings.redis_location() == "embedded"


def test_dotenv_is_read_when_present_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text("PORT=9001\nLOG_LEVEL=debug\nCHAT_HISTORY_TTL=60\n")
    monkeypatch.setenv("CHAT_HISTORY_TTL", "120")
    settings = Settings()
    assert settings.port == 9001
    assert settings.log_level == "DEBUG"
    assert settings.chat_history_ttl == 120


def test_no_dotenv_is_fine() -> None:
    assert Settings().port == 8000


@pytest.mark.parametrize(
    ("raw", "origins"),
    [
        ("", []),
        ("https://a.example", ["https://a.example"]),
        ("https://a.example, https://b.example ,", ["https://a.example", "https://b.example"]),
    ],
)
def test_cors_origins_is_a_comma_separated_list(
    monkeypatch: pytest.MonkeyPatch, raw: str, origins: list[str]
) -> None:
    monkeypatch.setenv("CORS_ORIGINS", raw)
    assert Settings(_env_file=None).cors_origins == origins


def test_redis_parts_build_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "REDIS_HOST": "cache.internal",
        "REDIS_PORT": "6380",
        "REDIS_PASSWORD": SECRET,
        "REDIS_DB": "3",
    }.items():
        monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None)
    assert not settings.embedded_redis
    assert settings.redis_dsn() == f"redis://:{SECRET}@cache.internal:6380/3"
    assert settings.redis_location() == "redis://cache.internal:6380/3"


def test_redis_url_wins_over_the_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_HOST", "ignored.internal")
    monkeypatch.setenv("REDIS_URL", f"rediss://:{SECRET}@tls.example:6390/2")
    settings = Settings(_env_file=None)
    assert settings.redis_dsn() == f"rediss://:{SECRET}@tls.example:6390/2"
    assert settings.redis_location() == "rediss://tls.example:6390/2"


@pytest.mark.parametrize(
    "variables",
    [
        {"REDIS_URL": f"redis://:{SECRET}@localhost:6379/0"},
        {"REDIS_URL": f"redis://admin:{SECRET}@localhost/1"},
        {"REDIS_HOST": "localhost", "REDIS_PASSWORD": SECRET},
    ],
)
def test_the_password_never_shows_in_location_or_repr(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str]
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None)
    for text in (settings.redis_location(), repr(settings), str(settings), settings.model_dump_json()):
        assert SECRET not in text
    assert SECRET in settings.redis_dsn()  # ... yet the client does get it


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "abc"),
        ("PORT", "70000"),
        ("CHAT_HISTORY_TTL", "-5"),
        ("LOG_LEVEL", "nonsense"),
        ("LOG_FORMAT", "xml"),
        ("REDIS_URL", "http://x"),
        ("REDIS_URL", "redis://localhost:abc/0"),
        ("REDIS_URL", "redis://localhost:99999/0"),
        ("REDIS_URL", "redis://localhost:0/0"),
        ("STREAM_DELAY", "-0.1"),
        ("MAX_MESSAGE_LENGTH", "0"),
        ("AI_PROVIDER", "nonsense"),
    ],
)
def test_an_invalid_value_is_refused_with_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None)
    message = format_validation_error(caught.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(f"invalid configuration: {name}: ")


def test_an_unknown_provider_is_refused_naming_the_known_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AI_PROVIDER", "anthropic")
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None)
    assert format_validation_error(caught.value) == (
        "invalid configuration: AI_PROVIDER: Value error, must be one of: simulated, openai"
    )


def test_a_bad_redis_url_error_does_not_echo_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", f"http://:{SECRET}@x")
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None)
    assert SECRET not in format_validation_error(caught.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "abc"),
        ("CHAT_HISTORY_TTL", "-1"),
        ("REDIS_URL", f"http://:{SECRET}@x"),
        ("REDIS_URL", f"redis://:{SECRET}@localhost:port/0"),
        ("BUDGETS", "alice:5usd/day"),  # a check across variables (no API_KEYS: no key named alice)
    ],
)
def test_python_app_py_with_a_bad_value_exits_with_one_line_and_no_traceback(
    tmp_path: Path, name: str, value: str
) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "app.py")],
        cwd=tmp_path,
        env=service_environment(**{name: value}),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert name in lines[0]
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stderr + result.stdout


# --- PRICES and BUDGETS --------------------------------------------------------------------------


def test_prices_and_budgets_as_the_readme_writes_them_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEYS", f"web:{API_KEY}")
    monkeypatch.setenv("PRICES", "gpt-4o-mini:0.15/0.60,gpt-4o:2.50/10")
    monkeypatch.setenv("BUDGETS", "web:200000tokens/day, default:5usd/month")
    settings = Settings(_env_file=None)
    assert settings.prices == {"gpt-4o-mini": Price(0.15, 0.60), "gpt-4o": Price(2.50, 10)}
    assert settings.budgets == {
        "web": Budget(200_000, "tokens", "day"),
        "default": Budget(5_000_000_000, "usd", "month"),  # in nano-dollars
    }


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("PRICES", "gpt-4o-mini:0.15", "entry 1 is not model:input/output (USD per million tokens)"),
        (
            "PRICES",
            "gpt-4o:2.50/10;gpt-4o-mini:0.15/0.60",
            "entry 1 is not model:input/output (USD per million tokens)",
        ),
        (
            "PRICES",
            "gpt-4o:2.50/10,gpt-4o-mini:-0.15/0.60",
            "entry 2 is not model:input/output (USD per million tokens)",
        ),
        ("PRICES", "gpt-4o:2.50/10,gpt-4o:3/12", "the model 'gpt-4o' is priced twice"),
        ("BUDGETS", "alice:5000", "entry 1 is not name:amount tokens|usd/day|month"),
        ("BUDGETS", "alice:-5usd/day", "entry 1 is not name:amount tokens|usd/day|month"),
        ("BUDGETS", "alice:0tokens/day", "the budget of 'alice' must be above 0"),
        ("BUDGETS", "alice:0.0000000001usd/day", "the budget of 'alice' must be above 0"),
        ("BUDGETS", "alice:5eur/day", "entry 1 is not name:amount tokens|usd/day|month"),
        ("BUDGETS", "default:1tokens/day,alice:5usd/week", "entry 2 is not name:amount tokens|usd/day|month"),
        ("BUDGETS", "alice:1.5tokens/day", "the budget of 'alice' is not a whole number of tokens"),
        ("BUDGETS", "alice:1usd/day,alice:2usd/month", "the key 'alice' has two budgets"),
    ],
)
def test_a_bad_price_or_budget_is_refused_saying_which_entry_and_why(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, reason: str
) -> None:
    monkeypatch.setenv("API_KEYS", f"alice:{API_KEY}")
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None)
    message = format_validation_error(caught.value)
    assert message == f"invalid configuration: {name}: Value error, {reason}"
    assert API_KEY not in message


def test_a_budget_for_a_name_api_keys_lacks_is_refused_naming_it_and_no_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A typo in a key's name would leave the key without its budget (or on the default).
    monkeypatch.setenv("API_KEYS", f"alice:{API_KEY},bob:bob-key-0123456789abcdefgh")
    monkeypatch.setenv("BUDGETS", "alice:5usd/day,bobby:100tokens/day,default:1usd/day,eve:1tokens/month")
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None)
    message = format_validation_error(caught.value)
    assert message == "invalid configuration: BUDGETS names keys that API_KEYS does not have: bobby, eve"
    assert API_KEY not in message
    assert "bob-key" not in message
    # A key itself written for its name is a budget for no key: refused, and the secret never echoed.
    monkeypatch.setenv("BUDGETS", f"{API_KEY}:5usd/day,eve:1tokens/month")
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None)
    assert format_validation_error(caught.value) == (
        "invalid configuration: BUDGETS names keys that API_KEYS does not have: "
        "eve, a key's secret (give its name)"
    )


def test_with_api_keys_off_only_the_default_budget_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUDGETS", "default:5usd/month")
    assert Settings(_env_file=None).budgets == {"default": Budget(5_000_000_000, "usd", "month")}
    monkeypatch.setenv("BUDGETS", "default:5usd/month,alice:1tokens/day")
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None)
    assert format_validation_error(caught.value) == (
        "invalid configuration: BUDGETS names keys that API_KEYS does not have: alice"
    )
