"""The native stream as a browser's own `EventSource` reads it (issue #13, item 8): an answer's error
arrives as `answer_error`, and the `error` listener hears only the connection's own failures."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, expect

from testkit.ports import free_port
from testkit.service import ServiceProcess
from tests.test_ui import chromium

# What the README shows a browser client: listen for each named event; `error` is the connection's.
FOLLOW = """
async ([sessionId, messageId, events]) => {
  const seen = { answerErrors: [], connectionErrors: [], messages: 0, parseFailures: 0, ends: 0 };
  await fetch("/chat", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ session_id: sessionId, message: "Hello", user_id: "u1", message_id: messageId }),
  });
  const query = events ? `&events=${events}` : "";
  const source = new EventSource(`/stream/${sessionId}?message_id=${messageId}${query}`);
  source.onmessage = () => { seen.messages += 1; };
  source.addEventListener("end", () => { seen.ends += 1; });
  source.addEventListener("answer_error", (event) => {
    seen.answerErrors.push(JSON.parse(event.data));
  });
  return await new Promise((resolve) => {
    source.addEventListener("error", (event) => {
      // A connection error is a plain Event: no data to parse. The stream of one answer ends after
      // its last event, so the browser reports the connection closing: then the test has it all.
      if (event instanceof MessageEvent) {
        try { JSON.parse(event.data); } catch { seen.parseFailures += 1; }
      }
      seen.connectionErrors.push(event instanceof MessageEvent ? "message" : "connection");
      source.close();
      resolve(seen);
    });
  });
}
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from chromium()


@pytest.fixture
def failing_service(start_service: Callable[..., ServiceProcess]) -> ServiceProcess:
    """The service on the embedded Redis, whose model server is not there: every answer fails."""
    return start_service(
        AI_PROVIDER="openai",
        OPENAI_BASE_URL=f"http://127.0.0.1:{free_port()}/v1",
        OPENAI_API_KEY="not-used",
        AI_MAX_RETRIES="0",
        AI_TIMEOUT="5",
        LOG_LEVEL="WARNING",
    )


def follow_in_browser(browser: Browser, service: ServiceProcess, events: int | None) -> dict[str, Any]:
    context = browser.new_context(base_url=service.url)
    try:
        page = context.new_page()
        page.goto("/health/live")  # the service's origin, for same-origin requests
        seen: dict[str, Any] = page.evaluate(FOLLOW, [f"b{uuid.uuid4().hex[:8]}", str(uuid.uuid4()), events])
        return seen
    finally:
        context.close()


@pytest.mark.browser
def test_an_eventsource_gets_the_answer_error_apart_from_its_connection_errors(
    browser: Browser, failing_service: ServiceProcess
) -> None:
    seen = follow_in_browser(browser, failing_service, events=None)
    assert seen["connectionErrors"] == ["connection"]  # never an answer's event
    assert seen["parseFailures"] == 0
    assert seen["ends"] == 0
    (answer_error,) = seen["answerErrors"]
    assert answer_error["type"] == "error"
    assert answer_error["error"]["code"]
    assert answer_error["error"]["message"]
    # Every event is named: `onmessage` hears none of them (the README says so).
    assert seen["messages"] == 0


@pytest.mark.browser
def test_a_client_not_yet_updated_still_gets_error_with_events_1(
    browser: Browser, failing_service: ServiceProcess
) -> None:
    seen = follow_in_browser(browser, failing_service, events=1)
    assert seen["answerErrors"] == []
    assert seen["connectionErrors"] == ["message"]  # the old contract: the answer's error as `error`


@pytest.mark.browser
def test_the_chat_page_shows_the_answers_error_from_the_stream(
    browser: Browser, failing_service: ServiceProcess
) -> None:
    context = browser.new_context(base_url=failing_service.url)
    errors: list[str] = []
    try:
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto("/ui")
        page.get_by_label("Message").fill("Hello")
        page.get_by_role("button", name="Send").click()
        answer = page.locator(".msg[data-role='assistant']").last
        expect(answer).to_have_attribute("data-state", "error", timeout=30_000)
        # The stream's message, not history's generic "the answer failed".
        note = answer.locator(".note").inner_text()
        assert note.startswith("Error: ")
        assert "the answer failed" not in note
        expect(page.locator("#connection")).not_to_have_attribute("data-state", "offline")
    finally:
        context.close()
    assert errors == []
