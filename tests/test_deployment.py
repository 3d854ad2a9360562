"""The deployment files as they are shipped: docker-compose's Redis keeps what it holds across a restart
(issue #13, item 7)."""

from __future__ import annotations

import json
import re

from testkit.processes import ROOT
from testkit.redis_server import start_redis


def compose_redis_arguments() -> list[str]:
    """The arguments docker-compose.yml starts its redis-server with."""
    text = (ROOT / "docker-compose.yml").read_text()
    match = re.search(r'command: (\["redis-server".*\])', text)
    assert match, "docker-compose.yml starts redis-server with a command list"
    command: list[str] = json.loads(match.group(1))
    return command[1:]


def test_compose_redis_keeps_turns_and_owners_across_a_kill_and_a_restart() -> None:
    # Given after the test server's own `--appendonly no`, the compose file's arguments win.
    server = start_redis(*compose_redis_arguments())
    try:
        server.cli("RPUSH", "chat:{kept}:history", '{"role": "user", "content": "Hello"}')
        server.cli("SET", "chat:{kept}:owner", "alice")
        server.stop(kill=True)  # no chance to save on the way out
        server.start()
        assert server.cli("GET", "chat:{kept}:owner") == "alice"
        assert server.cli("LLEN", "chat:{kept}:history") == "1"
    finally:
        server.cleanup()
