"""The Redis protocol (RESP), written: many commands packed into one buffer."""

from __future__ import annotations

from collections.abc import Iterable

from redis_client import Command

__all__ = ["pack"]

# RESP headers, made once: `*<n>` for a command of n arguments, `$<n>` for an argument of n bytes.
_ARRAY = [b"*%d\r\n" % n for n in range(64)]
_BULK = [b"$%d\r\n" % n for n in range(4096)]


def pack(commands: Iterable[Command]) -> bytes:
    """The commands in the Redis protocol, as one buffer."""
    out: list[bytes] = []
    add = out.append
    for command in commands:
        add(_ARRAY[len(command)] if len(command) < 64 else b"*%d\r\n" % len(command))
        for arg in command:
            data = arg if type(arg) is bytes else (arg.encode() if type(arg) is str else str(arg).encode())
            add(_BULK[len(data)] if len(data) < 4096 else b"$%d\r\n" % len(data))
            add(data)
            add(b"\r\n")
    return b"".join(out)
