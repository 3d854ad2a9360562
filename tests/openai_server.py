"""Kept for the test modules that still import the upstream from here: it lives in `testkit`."""

from testkit.asgi_server import serve
from testkit.openai_server import OpenAIServer, Received, Reply

__all__ = ["OpenAIServer", "Received", "Reply", "serve"]
