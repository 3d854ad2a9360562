"""The chat page (`/ui`) and the offline docs: served in-process, then used in headless Chromium.

The browser tests drive Debian's chromium through Playwright. There the service runs as `python app.py`
(the Docker image's start command) on a free loopback port, on the embedded Redis, with the simulated
model showing its reasoning and paced slowly enough to reload or stop in the middle of an answer. Every
request the browser makes to a host other than the service is recorded and aborted.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Locator, Page, Request, Route, expect, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from config import Settings
from testkit.prerequisites import need
from testkit.service import ServiceProcess
from testkit.waiting import eventually_sync
from tests.conftest import AppClient

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
# Without the background-networking flags Chromium's own connections (updates, sync) are refused on a
# closed network and slow every start; QUIC and the GPU are of no use headless.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
# Per chunk of three words: 3 x STREAM_DELAY + CHUNK_DELAY = 0.4 s, so an answer takes several seconds:
# a page reloaded on a loaded machine comes back while it still runs.
PACING = {"STREAM_DELAY": "0.1", "CHUNK_DELAY": "0.1"}
# A tool for the simulated model to call: it calls one when the message names it.
QUESTION = "What is the weather in Paris? Please call get_weather."
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
ANSWER_TIMEOUT_MS = 30_000


class LiveServer(ServiceProcess):
    """`python app.py` (the image's start command) on the embedded Redis, paced for the browser."""

    def __init__(self) -> None:
        super().__init__({"LOG_LEVEL": "WARNING", "SIMULATED_REASONING": "true", **PACING})

    def history(self, session_id: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/history/{session_id}", timeout=5)
        response.raise_for_status()
        messages: list[dict[str, Any]] = response.json()["messages"]
        return messages


@pytest.fixture(scope="module")
def live_server() -> Iterator[LiveServer]:
    """The service on a free loopback port, run from an empty directory so no `.env` is read."""
    server = LiveServer()
    try:
        server.start(ready="/health", timeout=30)
    except (RuntimeError, AssertionError) as error:
        server.cleanup()
        pytest.fail(f"the service did not become healthy: {error}")
    try:
        yield server
    finally:
        server.stop(grace=15)
        server.cleanup()


def chromium() -> Iterator[Browser]:
    """Debian's chromium, started through Playwright for one module's browser tests, closed after them."""
    need(CHROMIUM.exists(), f"{CHROMIUM} is not installed (`make test` installs Debian's chromium)")
    with sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        except PlaywrightError as error:
            need(False, f"cannot start {CHROMIUM}: {error.message.splitlines()[0]}")
            raise
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from chromium()


@dataclass
class Tab:
    """A page in a fresh browser context, with what it asked of other hosts and which scripts failed."""

    page: Page
    server: LiveServer
    blocked: list[str] = field(default_factory=list)
    served: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)


def is_local(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme not in {"http", "https", "ws", "wss"} or parts.hostname in LOCAL_HOSTS


@pytest.fixture
def tab(browser: Browser, live_server: LiveServer) -> Iterator[Tab]:
    context = browser.new_context(base_url=live_server.url)
    context.set_default_timeout(ANSWER_TIMEOUT_MS)
    page = context.new_page()
    tab = Tab(page=page, server=live_server)

    def block(route: Route) -> None:
        tab.blocked.append(route.request.url)
        route.abort("blockedbyclient")

    def record(request: Request) -> None:
        if is_local(request.url):
            tab.served.append(urlsplit(request.url).path)

    context.route(lambda url: not is_local(url), block)
    page.on("request", record)
    page.on("pageerror", lambda error: tab.errors.append(str(error)))
    page.on("console", lambda m: tab.console_errors.append(m.text) if m.type == "error" else None)
    try:
        yield tab
    finally:
        context.close()


# --- Served in-process -----------------------------------------------------------------------------


async def test_chat_page_and_its_assets_are_served_from_the_service(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    async with app_client(make_settings()) as client:
        page = await client.get("/ui")
        script = await client.get("/ui/chat.js")
        names = ("answer.js", "api.js", "branches.js", "conversations.js", "render.js", "turn_actions.js")
        modules = [await client.get(f"/ui/{name}") for name in (*names, "turn_controls.js")]
        style = await client.get("/ui/chat.css")
        schema = (await client.get("/openapi.json")).json()

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'src="ui/chat.js"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert script.headers["cache-control"] == "no-cache"
    for module in modules:  # the modules chat.js imports
        assert module.status_code == 200
        assert "javascript" in module.headers["content-type"]
    assert style.status_code == 200
    assert not any(path.startswith("/ui") for path in schema["paths"])


async def test_docs_keep_their_paths_and_load_nothing_from_a_cdn(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    async with app_client(make_settings()) as client:
        docs = await client.get("/docs")
        redoc = await client.get("/redoc")
        schema = await client.get("/openapi.json")
        bundle = await client.get("/static-offline-docs/swagger-ui-bundle.js")

    assert schema.status_code == 200
    assert bundle.status_code == 200
    for page in (docs, redoc):
        assert page.status_code == 200
        assert "https://" not in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]


# --- Offline docs ---------------------------------------------------------------------------------


@pytest.mark.browser
def test_swagger_ui_renders_operations_with_other_hosts_blocked(tab: Tab) -> None:
    tab.page.goto("/docs")

    chat_operation = tab.page.locator(".opblock-post .opblock-summary-path[data-path='/chat']")
    expect(chat_operation).to_be_visible()
    expect(
        tab.page.locator(".opblock-get .opblock-summary-path[data-path='/history/{session_id}']")
    ).to_be_visible()
    assert tab.blocked == []
    assert tab.errors == []
    assert "/static-offline-docs/swagger-ui-bundle.js" in tab.served
    assert "/static-offline-docs/swagger-ui.css" in tab.served
    assert tab.console_errors == []


@pytest.mark.browser
def test_redoc_renders_operations_with_other_hosts_blocked(tab: Tab) -> None:
    tab.page.goto("/redoc")

    # ReDoc lays out the whole document before it shows a heading: slow on a busy machine.
    heading = tab.page.get_by_role("heading", name="Send a message and stream the answer")
    expect(heading).to_be_visible(timeout=30_000)
    expect(tab.page.get_by_role("heading", name="Get a session's history")).to_be_visible()
    assert tab.blocked == []
    assert tab.errors == []
    assert "/static-offline-docs/redoc.standalone.js" in tab.served
    # ReDoc's menu logo points at cdn.redoc.ly; the docs' content policy stops it in the browser.
    assert all("cdn.redoc.ly" in error and "Content Security Policy" in error for error in tab.console_errors)


# --- The chat page --------------------------------------------------------------------------------


def open_chat(tab: Tab, user_id: str) -> str:
    """Open /ui on a new session; return its id."""
    tab.page.goto("/ui")
    session_id = tab.page.locator("#session-id").inner_text()
    assert session_id
    tab.page.get_by_label("User id").fill(user_id)
    return session_id


def send(tab: Tab, text: str) -> None:
    tab.page.get_by_label("Message").fill(text)
    tab.page.get_by_role("button", name="Send").click()


def answer_text_when(tab: Tab, state: str) -> str:
    answer = tab.page.locator(".msg[data-role='assistant']").last
    expect(answer).to_have_attribute("data-state", state, timeout=ANSWER_TIMEOUT_MS)
    return answer.locator(".content").inner_text()


def conversation(tab: Tab) -> str:
    """What the page shows, for failure messages."""
    shown = tab.page.locator("#messages").inner_text()
    return f"page shows:\n{shown}\nconsole errors: {tab.console_errors}"


def wait_for_streamed_words(tab: Tab, words: int, part: str = ".content") -> str:
    """Wait until the running answer shows at least `words` words of its text (or of another `part`,
    such as its `.reasoning-text`); return that part so far."""
    selector = f".msg[data-role='assistant'][data-state='streaming'] {part}"
    try:
        tab.page.wait_for_function(
            """([selector, words]) => {
                const nodes = document.querySelectorAll(selector);
                const last = nodes[nodes.length - 1];
                return last && last.textContent.trim().split(/\\s+/).length >= words;
            }""",
            arg=[selector, words],
            timeout=ANSWER_TIMEOUT_MS,
        )
    except PlaywrightError:
        raise AssertionError(f"no streaming answer of {words} words; {conversation(tab)}") from None
    return tab.page.locator(selector).last.text_content() or ""


def stored_answer(tab: Tab, session_id: str) -> dict[str, Any]:
    answers = [m for m in tab.server.history(session_id) if m["role"] == "assistant"]
    assert len(answers) == 1
    return answers[0]


@pytest.mark.browser
def test_page_sends_a_message_and_shows_the_streamed_answer(tab: Tab) -> None:
    session_id = open_chat(tab, "ui-user")

    send(tab, "How do streaming answers work in this chat service?")

    partial = wait_for_streamed_words(tab, 3)
    final = answer_text_when(tab, "done")
    answer = stored_answer(tab, session_id)
    assert final == answer["content"]
    assert final.startswith(partial)
    assert len(partial) < len(final)  # it was shown while it streamed, not only at the end
    assert answer["finish_reason"] == "stop"
    assert answer["user_id"] == "ui-user"
    user_turn = tab.page.locator(".msg[data-role='user'] .content")
    expect(user_turn).to_have_text(["How do streaming answers work in this chat service?"])
    assert tab.blocked == []
    assert tab.errors == []
    assert tab.console_errors == []


@pytest.mark.browser
def test_answer_continues_where_it_was_after_a_reload(tab: Tab) -> None:
    session_id = open_chat(tab, "ui-user")
    send(tab, "Tell me about resumable streams and Redis replay logs, please.")
    wait_for_streamed_words(tab, 6)
    assert [m["role"] for m in tab.server.history(session_id)] == ["user"]  # still mid-answer

    tab.page.reload()

    expect(tab.page.locator("#session-id")).to_have_text(session_id)
    final = answer_text_when(tab, "done")
    assert final == stored_answer(tab, session_id)["content"]
    # Nothing twice: one question and one answer, each once.
    expect(tab.page.locator(".msg[data-role='user']")).to_have_count(1)
    expect(tab.page.locator(".msg[data-role='assistant']")).to_have_count(1)
    assert tab.blocked == []
    assert tab.errors == []
    assert tab.console_errors == []


@pytest.mark.browser
def test_stop_ends_the_answer_as_cancelled(tab: Tab) -> None:
    session_id = open_chat(tab, "ui-user")
    send(tab, "Explain the history of distributed systems in great detail.")
    wait_for_streamed_words(tab, 3)
    stop = tab.page.get_by_role("button", name="Stop")
    expect(stop).to_be_visible()

    stop.click()

    partial = answer_text_when(tab, "cancelled")
    expect(tab.page.locator(".msg[data-role='assistant'] .note")).to_have_text("Stopped")
    expect(stop).to_be_hidden()
    answer = stored_answer(tab, session_id)
    assert answer["finish_reason"] == "cancelled"
    assert partial == answer["content"]
    assert tab.blocked == []
    assert tab.errors == []
    assert tab.console_errors == []


@pytest.mark.browser
def test_history_is_shown_when_the_page_opens_a_session(tab: Tab) -> None:
    session_id = "ui-history-test"
    accepted = httpx.post(
        f"{tab.server.url}/chat",
        json={"session_id": session_id, "message": "Hello from curl", "user_id": "curl-user"},
        timeout=5,
    )
    assert accepted.status_code == 202
    eventually_sync(lambda: len(tab.server.history(session_id)) >= 2, "the answer is stored")

    tab.page.goto(f"/ui#session={session_id}")

    expect(tab.page.locator(".msg[data-role='user'] .content")).to_have_text(["Hello from curl"])
    answer = tab.page.locator(".msg[data-role='assistant']")
    expect(answer).to_have_attribute("data-state", "done")
    expect(answer.locator(".content")).to_have_text(stored_answer(tab, session_id)["content"])
    assert tab.blocked == []
    assert tab.errors == []
    assert tab.console_errors == []


@pytest.mark.browser
def test_a_second_tab_on_the_session_follows_the_answer_live(tab: Tab) -> None:
    session_id = open_chat(tab, "ui-user")
    follower = tab.page.context.new_page()
    follower.on("console", lambda m: tab.console_errors.append(m.text) if m.type == "error" else None)
    follower.goto(f"/ui#session={session_id}")
    expect(follower.locator("#connection")).to_have_attribute("data-state", "live")

    send(tab, "What does a second tab see?")

    expect(follower.locator(".msg[data-role='user'] .content")).to_have_text(["What does a second tab see?"])
    answer = follower.locator(".msg[data-role='assistant']")
    expect(answer).to_have_attribute("data-state", "done", timeout=ANSWER_TIMEOUT_MS)
    expect(answer.locator(".content")).to_have_text(stored_answer(tab, session_id)["content"])
    assert tab.blocked == []
    assert tab.console_errors == []


@pytest.mark.browser
def test_new_chat_starts_a_session_and_the_list_goes_back_to_the_old_one(tab: Tab) -> None:
    first = open_chat(tab, "ui-user")
    send(tab, "Remember this first session.")
    first_answer = answer_text_when(tab, "done")

    tab.page.get_by_role("button", name="New chat").click()

    expect(tab.page.locator("#session-id")).not_to_have_text(first)
    second = tab.page.locator("#session-id").inner_text()
    expect(tab.page.locator(".msg")).to_have_count(0)
    sessions = tab.page.get_by_role("navigation", name="Sessions")
    expect(sessions.locator(f"button[data-session-id='{second}']")).to_have_attribute("aria-current", "true")

    sessions.get_by_role("button", name="Remember this first session.").click()

    expect(tab.page.locator("#session-id")).to_have_text(first)
    expect(tab.page.locator(".msg[data-role='assistant'] .content")).to_have_text([first_answer])
    assert tab.blocked == []
    assert tab.console_errors == []


def post_chat(server: LiveServer, body: dict[str, Any]) -> None:
    """`POST /chat` as a backend would, not through the page."""
    accepted = httpx.post(f"{server.url}/chat", json=body, timeout=5)
    assert accepted.status_code == 202, accepted.text


def pretty_json(text: str) -> str:
    """How the page shows JSON text: indented by two, as the browser's `JSON.stringify` writes it."""
    return json.dumps(json.loads(text), indent=2, ensure_ascii=False)


def ask_for_the_weather(tab: Tab) -> str:
    """Open a session, and through the API ask in it for an answer that calls a tool; return the
    session once the page shows the question."""
    session_id = open_chat(tab, "ui-user")
    # Connected before the answer starts, so the page follows it as it streams.
    expect(tab.page.locator("#connection")).to_have_attribute("data-state", "live")
    post_chat(
        tab.server,
        {
            "session_id": session_id,
            "user_id": "api-user",
            "message": QUESTION,
            "tools": [WEATHER_TOOL],
        },
    )
    expect(tab.page.locator(".msg[data-role='user'] .content")).to_have_text([QUESTION])
    return session_id


def tool_calling_answer(tab: Tab, session_id: str) -> dict[str, Any]:
    """The session's answer that called the tool, once the page shows it finished."""
    expect(tab.page.locator(".msg[data-role='assistant']").first).to_have_attribute("data-state", "done")
    answer = next(m for m in tab.server.history(session_id) if m["role"] == "assistant")
    assert answer["finish_reason"] == "tool_calls", answer
    assert answer["reasoning"], answer
    return answer


def expect_parts(bubble: Locator, stored: dict[str, Any]) -> None:
    """The answer's bubble shows its stored reasoning, collapsed under "Thinking", and its tool calls:
    each one's name and its arguments pretty-printed."""
    thinking = bubble.locator("details.reasoning")
    expect(thinking.locator("summary")).to_have_text("Thinking")
    expect(thinking).to_have_js_property("open", False)
    expect(thinking.locator(".reasoning-text")).to_be_hidden()
    expect(thinking.locator(".reasoning-text")).to_have_text(stored["reasoning"])
    calls = stored.get("tool_calls") or []
    expect(bubble.locator(".tool-call")).to_have_count(len(calls))
    for position, call in enumerate(calls):
        shown = bubble.locator(".tool-call").nth(position)
        expect(shown).to_have_attribute("data-tool-call-id", call["id"])
        expect(shown.locator(".tool-name")).to_have_text(call["name"])
        expect(shown.locator(".tool-arguments")).to_have_text(pretty_json(call["arguments"]))


@pytest.mark.browser
def test_reasoning_and_tool_calls_are_shown_and_survive_a_reload(tab: Tab) -> None:
    session_id = ask_for_the_weather(tab)
    thought = wait_for_streamed_words(tab, 6, part=".reasoning-text")
    assert [m["role"] for m in tab.server.history(session_id)] == ["user"]  # still mid-answer

    tab.page.reload()

    # The running answer's reasoning so far comes back from the replay log; the rest follows live.
    running = tab.page.locator(".msg[data-role='assistant'][data-state='streaming']")
    expect(running.locator(".reasoning-text")).to_contain_text(thought)
    stored = tool_calling_answer(tab, session_id)
    answer = tab.page.locator(".msg[data-role='assistant']")
    expect_parts(answer, stored)
    assert json.loads(stored["tool_calls"][0]["arguments"])["city"] == "Paris"
    expect(answer).to_have_attribute("data-finish-reason", "tool_calls")
    answer.locator(".reasoning summary").click()
    expect(answer.locator(".reasoning-text")).to_be_visible()  # collapsed, not absent

    tab.page.reload()  # now from history

    expect(answer).to_have_attribute("data-state", "done")
    expect_parts(answer, stored)
    expect(answer.locator(".tool-result")).to_have_count(len(stored["tool_calls"]))
    expect(answer.locator(".tool-result:visible")).to_have_count(0)  # none has a result yet
    expect(tab.page.locator(".msg[data-role='user']")).to_have_count(1)
    assert tab.blocked == []
    assert tab.errors == []
    assert tab.console_errors == []


@pytest.mark.browser
def test_a_tool_result_appears_under_its_call_and_the_next_answer_resumes_after_a_reload(tab: Tab) -> None:
    session_id = ask_for_the_weather(tab)
    stored = tool_calling_answer(tab, session_id)
    # Six fields, which the simulated model quotes: a next answer long enough to reload in its middle.
    result = json.dumps(
        {
            "city": "Paris",
            "temperature_c": 21,
            "sky": "clear",
            "wind_kmh": 12,
            "humidity_percent": 60,
            "forecast": "sunny through the evening with a light breeze from the west",
        }
    )
    results = [{"tool_call_id": call["id"], "content": result} for call in stored["tool_calls"]]

    post_chat(tab.server, {"session_id": session_id, "user_id": "api-user", "tool_results": results})

    call = tab.page.locator(".tool-call").first
    expect(call.locator(".tool-result-content")).to_have_text(pretty_json(result))
    expect(call.locator(".tool-result")).to_be_visible()
    wait_for_streamed_words(tab, 3)  # shown while the next answer streams, not only once it ends
    assert tab.server.history(session_id)[-1]["role"] == "tool"  # still mid-answer

    tab.page.reload()

    expect(call.locator(".tool-result-content")).to_have_text(pretty_json(result))  # from history
    # The running answer's reasoning comes back from the replay log, before the answer ends.
    running = tab.page.locator(".msg[data-role='assistant'][data-state='streaming']")
    expect(running.locator(".reasoning-text")).not_to_be_empty()
    final = answer_text_when(tab, "done")
    follow_up = [m for m in tab.server.history(session_id) if m["role"] == "assistant"][-1]
    assert final == follow_up["content"]
    assert "Paris" in final  # it answered from the result
    answers = tab.page.locator(".msg[data-role='assistant']")
    expect(answers).to_have_count(2)
    expect_parts(answers.last, follow_up)
    expect_parts(answers.first, stored)
    expect(tab.page.locator(".msg[data-role='user']")).to_have_count(1)
    assert tab.blocked == []
    assert tab.errors == []
    assert tab.console_errors == []


class CuttableProxy:
    """A TCP relay in front of the service whose open connections a test can cut, as a network drop
    would: the browser sees its EventSource fail and reconnects by itself, with `Last-Event-ID`."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.open: list[socket.socket] = []
        self.closed = False
        self.requests = bytearray()  # everything browsers sent, to check the headers they resent
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:  # the service has gone (the test is ending)
                client.close()
                return
            with self.lock:
                if self.closed:  # accepted just before `close`: no one else will close these
                    client.close()
                    upstream.close()
                    return
                self.open += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, record: bool) -> None:
        try:
            while data := source.recv(65536):
                if record:
                    with self.lock:
                        self.requests += data
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self.lock:
            cut, self.open = self.open, []
        for sock in cut:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        with self.lock:
            self.closed = True
        self.listener.close()
        self.cut()


@pytest.fixture
def proxy(live_server: LiveServer) -> Iterator[CuttableProxy]:
    relay = CuttableProxy(int(urlsplit(live_server.url).port or 0))
    yield relay
    relay.close()


@pytest.mark.browser
def test_answer_resumes_after_the_network_drops(tab: Tab, proxy: CuttableProxy) -> None:
    tab.page.goto(f"http://127.0.0.1:{proxy.port}/ui")
    session_id = tab.page.locator("#session-id").inner_text()
    send(tab, "What happens when the connection drops mid-answer?")
    wait_for_streamed_words(tab, 3)

    proxy.cut()

    expect(tab.page.locator("#connection")).to_have_attribute("data-state", "reconnecting")
    final = answer_text_when(tab, "done")
    assert final == stored_answer(tab, session_id)["content"]
    # EventSource's own reconnect, resuming after the last event it had.
    assert re.search(
        rb"GET /stream/[^ ]+ HTTP/1.1\r\n(?:[^\r]+\r\n)*?last-event-id: \d+-\d+\r\n", proxy.requests, re.I
    )
    expect(tab.page.locator(".msg[data-role='assistant']")).to_have_count(1)
    expect(tab.page.locator("#connection")).to_have_attribute("data-state", "live")
    assert tab.blocked == []
    assert tab.errors == []
