"""A scriptable model server speaking OpenAI's Chat Completions streaming wire format: the upstream of
the service's `openai` provider in the tests. Serve it with `testkit.asgi_server.serve`."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.types import Receive, Scope, Send

__all__ = ["OpenAIServer", "Received", "Reply"]


@dataclass
class Reply:
    """What the model server does with one request."""

    status: int = 200
    tokens: Sequence[str] = ("Hello", " there", ", friend.")
    delay: float = 0.0  # seconds before each token after the first
    finish_reason: str | None = "stop"  # None: end the stream cleanly without finishing the answer
    usage: tuple[int, int] | None = None  # prompt and completion tokens, sent when the client asks
    drop_after: int | None = None  # drop the connection after this many tokens
    headers: dict[str, str] = field(default_factory=dict)  # for example Retry-After on a 429
    message: str = "scripted failure"


@dataclass
class Received:
    body: dict[str, Any]
    headers: dict[str, str]
    at: float  # time.monotonic() when it arrived


class DropConnection(Exception):
    """Raised inside the app after the response began: uvicorn then closes the connection mid-body."""


class OpenAIServer:
    """A Chat Completions server on loopback, scriptable per test.

    `script(...)` queues what the next requests get (then the default `Reply()`); `requests` records what
    it received; `disconnected` is set when a client hangs up before its stream is complete.
    """

    api_key = "test-key-abc123"
    models = ("test-model",)

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[Received] = []
        self.disconnected = threading.Event()
        self._script: list[Reply] = []
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self._script.clear()
            self.requests.clear()
            self.disconnected.clear()

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self._script.extend(replies)

    def _next_reply(self) -> Reply:
        with self._lock:
            return self._script.pop(0) if self._script else Reply()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = {key.decode().lower(): value.decode() for key, value in scope["headers"]}
        if scope["method"] != "POST" or scope["path"] != "/v1/chat/completions":
            await self._json(
                send, 404, {"error": {"message": "no such route", "type": "invalid_request_error"}}
            )
            return
        body = json.loads(b"".join(chunks))
        with self._lock:
            self.requests.append(Received(body=body, headers=headers, at=time.monotonic()))
        given = headers.get("authorization", "").removeprefix("Bearer ")
        if given != self.api_key:
            # As OpenAI does, the message quotes the key it got: the service must not pass it on.
            await self._error(send, 401, f"Incorrect API key provided: {given}.", "invalid_api_key")
            return
        if body.get("model") not in self.models:
            await self._error(send, 404, f"The model `{body.get('model')}` does not exist", "model_not_found")
            return
        reply = self._next_reply()
        if reply.status != 200:
            await self._error(send, reply.status, reply.message, None, reply.headers)
            return
        await self._stream(body, reply, receive, send)

    async def _stream(self, body: dict[str, Any], reply: Reply, receive: Receive, send: Send) -> None:
        async def hang_up() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        watcher = asyncio.create_task(hang_up())
        chunk_id = "chatcmpl-test"

        async def event(data: dict[str, Any] | str) -> bool:
            """Send one SSE event; False once the client has gone."""
            if watcher.done():
                return False
            text = data if isinstance(data, str) else json.dumps(data)
            await send(
                {"type": "http.response.body", "body": f"data: {text}\n\n".encode(), "more_body": True}
            )
            return True

        def chunk(delta: dict[str, str], finish: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": 0,
                "model": body["model"],
                "choices": [choice],
            }

        completed = False
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")],
                }
            )
            if not await event(chunk({"role": "assistant", "content": ""})):
                return
            for index, token in enumerate(reply.tokens):
                if reply.drop_after is not None and index == reply.drop_after:
                    raise DropConnection
                if index and reply.delay:
                    await asyncio.wait({watcher}, timeout=reply.delay)
                if not await event(chunk({"content": token})):
                    return
            if reply.drop_after is not None and reply.drop_after >= len(reply.tokens):
                raise DropConnection
            if reply.finish_reason is not None:
                await event(chunk({}, reply.finish_reason))
                options = body.get("stream_options") or {}
                if reply.usage is not None and options.get("include_usage"):
                    prompt, completion = reply.usage
                    usage = {
                        "prompt_tokens": prompt,
                        "completion_tokens": completion,
                        "total_tokens": prompt + completion,
                    }
                    await event(
                        {
                            "id": chunk_id,
                            "object": "chat.completion.chunk",
                            "created": 0,
                            "model": body["model"],
                            "choices": [],
                            "usage": usage,
                        }
                    )
                await event("[DONE]")
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            completed = True
        except DropConnection:
            completed = True  # the server hung up, not the client
            raise
        finally:
            if not completed:
                # The client went away: the watcher sees it at once, or sending to it failed first.
                await asyncio.wait({watcher}, timeout=1)
                if watcher.done():
                    self.disconnected.set()
            watcher.cancel()

    @staticmethod
    async def _json(send: Send, status: int, body: object, headers: dict[str, str] | None = None) -> None:
        raw = [(b"content-type", b"application/json")]
        raw += [(key.lower().encode(), value.encode()) for key, value in (headers or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})

    async def _error(
        self, send: Send, status: int, message: str, code: str | None, headers: dict[str, str] | None = None
    ) -> None:
        error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
        await self._json(send, status, {"error": error}, headers)
