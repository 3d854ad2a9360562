"""Node for the tests that drive the service with Node clients: the `node` binary, once the pinned
clients of a `tests/node*/` directory are installed there (`make node-clients` runs `npm ci`)."""

from __future__ import annotations

import shutil
from pathlib import Path

from testkit.prerequisites import need

__all__ = ["node_for"]


def node_for(directory: Path) -> str:
    """The `node` binary, with `directory`'s clients installed; a skip (a failure under CI) saying
    what is missing otherwise."""
    binary = shutil.which("node")
    need(binary is not None, "node is not installed (Debian's nodejs and npm)")
    installed = directory / "node_modules" / ".package-lock.json"
    need(
        installed.exists(), f"the Node clients are not installed in {directory} (`make pytest` installs them)"
    )
    assert binary is not None
    return binary
