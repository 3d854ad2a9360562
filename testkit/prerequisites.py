"""What a test needs from the machine (a redis-server, a browser): skipped without it, failed in CI."""

from __future__ import annotations

import os

import pytest

__all__ = ["IN_CI", "need"]

IN_CI = os.environ.get("CI", "").lower() == "true"


def need(condition: bool, reason: str) -> None:
    """In CI a missing prerequisite fails the test; elsewhere it skips it, with the reason."""
    if not condition:
        if IN_CI:
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)
