"""A scriptable model server speaking OpenAI's Chat Completions streaming wire format: the upstream of
the service's `openai` provider in the tests. Serve it with `testkit.asgi_server.serve`.

A reply streams text tokens and, between them, any raw delta: tool calls split across many deltas
(`tool_call`), parallel ones (several indexes), `reasoning_content` (vLLM, DeepSeek, Ollama), `reasoning`
(OpenRouter) and `refusal` deltas. Like OpenAI, it refuses (400) a conversation in which a tool call has
no result or a result has no call, so every test that sends tool turns upstream checks their pairing.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.types import Receive, Scope, Send

__all__ = ["OpenAIServer", "Received", "Reply", "pairing_error", "tool_call"]

# One streamed delta: text (a `content` delta), or the `delta` object itself, sent as it is.
Token = str | Mapping[str, Any]


@dataclass
class Reply:
    """What the model server does with one request."""

    status: int = 200
    tokens: Sequence[Token] = ("Hello", " there", ", friend.")
    delay: float = 0.0  # seconds before each token after the first
    finish_reason: str | None = "stop"  # None: end the stream cleanly without finishing the answer
    usage: tuple[int, int] | None = None  # prompt and completion tokens, sent when the client asks
    reasoning_tokens: int | None = None  # with `usage`: its `completion_tokens_details.reasoning_tokens`
    drop_after: int | None = None  # drop the connection after this many tokens
    hold_after_done: float = 0.0  # seconds the stream stays open after `[DONE]` (unless the client leaves)
    headers: dict[str, str] = field(default_factory=dict)  # for example Retry-After on a 429
    message: str = "scripted failure"
    # When given, the reply waits for the test to set it before it answers anything; not set within 10 s,
    # the request fails (504), so that a test whose client waited on its own reply fails.
    hold: threading.Event | None = None


def tool_call(
    index: int,
    name: str,
    arguments: str,
    *,
    call_id: str | None,
    pieces: int = 1,
    name_late: bool = False,
) -> list[dict[str, Any]]:
    """The deltas that stream one tool call as OpenAI does: its id and name first, then its arguments in
    `pieces` parts. `call_id=None` sends no id; `name_late` sends the name after the first piece."""
    head: dict[str, Any] = {"index": index, "type": "function", "function": {"arguments": ""}}
    if call_id is not None:
        head["id"] = call_id
    if not name_late:
        head["function"]["name"] = name
    size = -(-len(arguments) // pieces) if arguments else 1
    parts = [arguments[start : start + size] for start in range(0, len(arguments), size)]
    deltas = [{"tool_calls": [head]}]
    deltas += [{"tool_calls": [{"index": index, "function": {"arguments": part}}]} for part in parts]
    if name_late:
        deltas.insert(2, {"tool_calls": [{"index": index, "function": {"name": name}}]})
    return deltas


def pairing_error(messages: Sequence[Mapping[str, Any]]) -> str | None:
    """What OpenAI says of a conversation whose tool calls and results are not paired, or None."""
    awaiting: list[str] = []  # the last assistant message's calls still without a result
    for message in messages:
        if message.get("role") == "tool":
            if message.get("tool_call_id") not in awaiting:
                return (
                    "Invalid parameter: messages with role 'tool' must be a response to a preceeding "
                    "message with 'tool_calls'."
                )
            awaiting.remove(message["tool_call_id"])
            continue
        if awaiting:
            break
        awaiting = [call["id"] for call in message.get("tool_calls") or ()]
    if awaiting:
        return (
            "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
            f"'tool_call_id'. The following tool_call_ids did not have response messages: {awaiting[0]}"
        )
    return None


@dataclass
class Received:
    body: dict[str, Any]
    headers: dict[str, str]
    at: float  # time.monotonic() when it arrived
    peer: tuple[str, int] | None = None  # the client's address and port: one per connection


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
            client = scope.get("client")
            peer = (client[0], client[1]) if client else None
            self.requests.append(Received(body=body, headers=headers, at=time.monotonic(), peer=peer))
        given = headers.get("authorization", "").removeprefix("Bearer ")
        if given != self.api_key:
            # As OpenAI does, the message quotes the key it got: the service must not pass it on.
            await self._error(send, 401, f"Incorrect API key provided: {given}.", "invalid_api_key")
            return
        if body.get("model") not in self.models:
            await self._error(send, 404, f"The model `{body.get('model')}` does not exist", "model_not_found")
            return
        unpaired = pairing_error(body.get("messages") or ())
        if unpaired is not None:
            await self._error(send, 400, unpaired, None)
            return
        reply = self._next_reply()
        if reply.hold is not None and not await asyncio.to_thread(reply.hold.wait, 10):
            await self._error(send, 504, "the held reply was never released", None)
            return
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

        def chunk(delta: Mapping[str, Any], finish: str | None = None) -> dict[str, Any]:
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
                delta = {"content": token} if isinstance(token, str) else token
                if not await event(chunk(delta)):
                    return
            if reply.drop_after is not None and reply.drop_after >= len(reply.tokens):
                raise DropConnection
            if reply.finish_reason is not None:
                await event(chunk({}, reply.finish_reason))
                options = body.get("stream_options") or {}
                if reply.usage is not None and options.get("include_usage"):
                    prompt, completion = reply.usage
                    usage: dict[str, Any] = {
                        "prompt_tokens": prompt,
                        "completion_tokens": completion,
                        "total_tokens": prompt + completion,
                    }
                    if reply.reasoning_tokens is not None:
                        usage["completion_tokens_details"] = {"reasoning_tokens": reply.reasoning_tokens}
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
                if reply.hold_after_done:
                    await asyncio.wait({watcher}, timeout=reply.hold_after_done)
                    if watcher.done():  # the client left after `[DONE]`: nothing more to send
                        completed = True
                        return
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
