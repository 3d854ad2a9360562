"""The chat page's sidebar comes from the service's conversation record (issue #15): it survives a new
browser profile, and renaming, pinning, deleting and searching through the page change (or ask) the
service, which the tests check through the Conversations API.

The service runs as `python app.py` on the embedded Redis and an SQLite record in its own empty
directory, with the simulated model at full speed; the page runs in Debian's chromium through
Playwright, each test in fresh browser contexts (profiles), every request to another host aborted.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from playwright.sync_api import (
    APIResponse,
    Browser,
    BrowserContext,
    Locator,
    Page,
    Response,
    Route,
    expect,
)

from testkit.service import ServiceProcess
from testkit.waiting import eventually_sync
from tests.test_ui import ANSWER_TIMEOUT_MS, browser, is_local

__all__ = ["browser"]  # the module's Chromium, shared with test_ui.py's

# Before any script of the page: every violation of its Content-Security-Policy (an inline handler or
# style, an `eval`) is kept, and none may happen.
WATCH_POLICY = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`);
});
"""


class RecordService(ServiceProcess):
    """The service, with the simulated model at full speed, and its API as a test reads it."""

    def __init__(self) -> None:
        super().__init__({"LOG_LEVEL": "WARNING", "STREAM_DELAY": "0", "CHUNK_DELAY": "0"})

    def get(self, path: str, **params: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", params=params, timeout=5)

    def conversations(self, user_id: str) -> list[dict[str, Any]]:
        response = self.get("/conversations", user_id=user_id)
        response.raise_for_status()
        found: list[dict[str, Any]] = response.json()["conversations"]
        return found

    def titles(self, user_id: str) -> list[str]:
        return [c["title"] for c in self.conversations(user_id)]

    def ratings(self, message_id: str) -> list[tuple[str, str]]:
        """The (user, rating) rows of an answer's feedback in the service's SQLite record."""
        path = self.directory() / "conversations.db"
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as database:
            rows = database.execute(
                "SELECT user_id, rating FROM feedback WHERE message_id = ?", (message_id,)
            ).fetchall()
        return [(str(user), str(rating)) for user, rating in rows]

    def chat(self, session_id: str, user: str, message: str) -> None:
        """A conversation as another client would start it, waited for until the record has it."""
        body = {"session_id": session_id, "message": message, "user_id": user}
        accepted = httpx.post(f"{self.url}/chat", json=body, timeout=5)
        assert accepted.status_code == 202, accepted.text
        eventually_sync(
            lambda: any(c["id"] == session_id and c["message_count"] >= 2 for c in self.conversations(user)),
            f"{session_id} answered and archived",
        )


@pytest.fixture(scope="module")
def record_service() -> Iterator[RecordService]:
    service = RecordService()
    try:
        service.start(ready="/health", timeout=30)
        yield service
    finally:
        service.stop(grace=15)
        service.cleanup()


@dataclass
class Profiles:
    """Fresh browser contexts (as a new browser profile: no localStorage) on the service."""

    browser: Browser
    service: RecordService
    contexts: list[BrowserContext] = field(default_factory=list)
    pages: list[Page] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def page(self, user_id: str, session_id: str | None = None) -> Page:
        """The chat page in a new profile, as `user_id`."""
        context = self.browser.new_context(base_url=self.service.url)
        self.contexts.append(context)
        context.set_default_timeout(ANSWER_TIMEOUT_MS)

        def block(route: Route) -> None:
            self.blocked.append(route.request.url)
            route.abort("blockedbyclient")

        context.route(lambda url: not is_local(url), block)
        context.add_init_script(WATCH_POLICY)
        page = context.new_page()
        self.pages.append(page)
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.goto(f"/ui#session={session_id}" if session_id else "/ui")
        user = page.get_by_label("User id")
        user.fill(user_id)
        user.dispatch_event("change")  # as leaving the field does
        return page


@pytest.fixture
def profiles(browser: Browser, record_service: RecordService) -> Iterator[Profiles]:
    made = Profiles(browser, record_service)
    yield made
    violations = [page.evaluate("window.__violations") for page in made.pages]
    for context in made.contexts:
        context.close()
    assert made.blocked == []
    assert made.errors == []
    assert not any(violations), violations


def sidebar(page: Page) -> Locator:
    return page.get_by_role("navigation", name="Sessions")


def item(page: Page, title: str) -> Locator:
    """A conversation's entry in the sidebar, by its title."""
    return (
        sidebar(page)
        .locator("li.conversation")
        .filter(has=page.get_by_role("button", name=title, exact=True))
    )


def titles_shown(page: Page) -> Locator:
    return sidebar(page).locator("li.conversation button.open")


def settled(profiles: Profiles, session_id: str, user_id: str, message: str) -> tuple[Page, Locator]:
    """`user_id`'s page on a conversation of one exchange, once every list it asked for is answered;
    the page, and its list of conversations."""
    profiles.service.chat(session_id, user_id, message)
    page = profiles.page(user_id, session_id)
    listing = page.locator("#session-list")
    expect(titles_shown(page)).to_have_text([message])
    expect(listing).to_have_attribute("aria-busy", "false")
    return page, listing


def changing(method: str) -> Callable[[Response], bool]:
    """The service's answer to the page's PATCH or DELETE of a conversation: waited for before the test
    reads the record (on a loaded machine, the write may take longer than an `expect` waits)."""
    return lambda response: response.request.method == method and "/conversations/" in response.url


@pytest.mark.browser
def test_the_sidebar_comes_from_the_service_in_a_new_browser_profile(profiles: Profiles) -> None:
    service = profiles.service
    service.chat("side-older", "side-user", "An older conversation about tides")
    first = profiles.page("side-user")
    session_id = first.locator("#session-id").inner_text()
    first.get_by_label("Message").fill("Plan a walk along the coast")
    first.get_by_role("button", name="Send").click()
    expect(first.locator(".msg[data-role='assistant']").last).to_have_attribute("data-state", "done")
    eventually_sync(lambda: session_id in [c["id"] for c in service.conversations("side-user")], "archived")

    # Another browser profile: nothing in its storage, the list is the service's, newest first.
    second = profiles.page("side-user")
    expect(titles_shown(second)).to_have_text(
        ["New chat", "Plan a walk along the coast", "An older conversation about tides"]
    )
    assert service.titles("side-user") == ["Plan a walk along the coast", "An older conversation about tides"]
    second.get_by_role("button", name="Plan a walk along the coast", exact=True).click()
    expect(second.locator("#session-id")).to_have_text(session_id)
    expect(second.locator(".msg[data-role='user'] .content")).to_have_text(["Plan a walk along the coast"])
    expect(second.locator(".msg[data-role='assistant']")).to_have_attribute("data-state", "done")
    # Another user's list is not this one's.
    other = profiles.page("side-someone-else")
    expect(titles_shown(other)).to_have_text(["New chat"])


@pytest.mark.browser
def test_a_list_asked_for_before_a_rename_does_not_undo_it(profiles: Profiles) -> None:
    """The page asks for its list now and then (after an answer, on a new user id). A list that was on
    its way while the user renamed a conversation was read before the rename: when it arrives after
    the rename's answer, it must not put the old title back (CI saw it happen on a loaded machine)."""
    service = profiles.service
    page, listing = settled(profiles, "stale-a", "stale-user", "A question about tides")

    # Every list the page asks for from now on is read from the service at once, and answered later.
    held: list[tuple[Route, APIResponse]] = []
    holding = True

    def hold(route: Route) -> None:
        if not holding or route.request.method != "GET":
            route.continue_()
            return
        held.append((route, route.fetch()))

    page.route("**/conversations?*", hold)
    page.get_by_label("User id").dispatch_event("change")  # the page asks for its list again
    expect(listing).to_have_attribute("aria-busy", "true")
    eventually_sync(lambda: page.evaluate("true") and held, "the list was read before the rename")

    item(page, "A question about tides").get_by_role("button", name="Rename").click()
    sidebar(page).get_by_label("New title").fill("Tides, renamed")
    with page.expect_response(changing("PATCH")) as renamed:
        sidebar(page).get_by_role("button", name="Save").click()
    assert renamed.value.ok
    expect(titles_shown(page)).to_have_text(["Tides, renamed"])
    assert service.titles("stale-user") == ["Tides, renamed"]

    holding = False
    for route, response in held:  # the lists read before the rename arrive now
        route.fulfill(response=response)
    expect(listing).to_have_attribute("aria-busy", "false")  # every list asked for has been answered
    expect(titles_shown(page)).to_have_text(["Tides, renamed"])


@pytest.mark.browser
def test_a_title_being_typed_keeps_the_focus_when_the_list_is_answered_meanwhile(profiles: Profiles) -> None:
    """A list answered while a new title is typed draws the sidebar again: the field keeps the focus
    and what was typed, and the next keys go on into it (they went nowhere, and a rename sent the old
    title, when the list came in the middle of typing)."""
    service = profiles.service
    page, listing = settled(profiles, "typing-a", "typing-user", "A question about waves")

    item(page, "A question about waves").get_by_role("button", name="Rename").click()
    field = sidebar(page).get_by_label("New title")
    expect(field).to_be_focused()
    page.keyboard.press("ControlOrMeta+A")
    page.keyboard.type("Waves")
    with page.expect_response(lambda response: "/conversations?" in response.url):
        page.get_by_label("User id").dispatch_event("change")  # the page asks for its list again
    expect(listing).to_have_attribute("aria-busy", "false")  # the answer read, the sidebar drawn again

    page.keyboard.type(" and tides")
    expect(field).to_be_focused()
    expect(field).to_have_value("Waves and tides")
    with page.expect_response(changing("PATCH")) as renamed:
        page.keyboard.press("Enter")
    assert renamed.value.ok
    expect(titles_shown(page)).to_have_text(["Waves and tides"])
    assert service.titles("typing-user") == ["Waves and tides"]


@pytest.mark.browser
def test_rename_pin_and_delete_through_the_sidebar_change_the_record(profiles: Profiles) -> None:
    service = profiles.service
    service.chat("edit-a", "edit-user", "First question")
    service.chat("edit-b", "edit-user", "Second question")
    page = profiles.page("edit-user", "edit-a")
    expect(titles_shown(page)).to_have_text(["Second question", "First question"])

    entry = item(page, "First question")
    entry.get_by_role("button", name="Rename").click()
    sidebar(page).get_by_label("New title").fill("  Questions   about tides ")
    with page.expect_response(changing("PATCH")) as renamed:
        sidebar(page).get_by_role("button", name="Save").click()
        expect(titles_shown(page)).to_have_text(["Second question", "Questions about tides"])
    assert renamed.value.ok
    expect(titles_shown(page)).to_have_text(["Second question", "Questions about tides"])
    assert service.titles("edit-user") == ["Second question", "Questions about tides"]

    with page.expect_response(changing("PATCH")) as pinned:
        item(page, "Questions about tides").get_by_role("button", name="Pin").click()
        expect(titles_shown(page)).to_have_text(["Questions about tides", "Second question"])
    assert pinned.value.ok
    assert {c["id"]: c["pinned"] for c in service.conversations("edit-user")}["edit-a"] is True
    page.reload()  # pinned ones first, as the service says
    expect(titles_shown(page)).to_have_text(["Questions about tides", "Second question"])
    expect(item(page, "Questions about tides").get_by_role("button", name="Unpin")).to_have_attribute(
        "aria-pressed", "true"
    )

    # Deleting the open conversation: gone from the service, and the page moves to a new chat.
    item(page, "Questions about tides").get_by_role("button", name="Delete").click()
    with page.expect_response(changing("DELETE")) as deleted:
        item(page, "Questions about tides").get_by_role("button", name="Confirm delete").click()
    assert deleted.value.ok
    expect(titles_shown(page)).to_have_text(["New chat", "Second question"])
    expect(page.locator("#session-id")).not_to_have_text("edit-a")
    expect(page.locator(".msg")).to_have_count(0)
    assert service.titles("edit-user") == ["Second question"]
    assert service.get("/conversations/edit-a").status_code == 404
    assert service.get("/history/edit-a").json()["messages"] == []

    # A second thought: Cancel keeps it.
    item(page, "Second question").get_by_role("button", name="Delete").click()
    item(page, "Second question").get_by_role("button", name="Cancel").click()
    expect(item(page, "Second question").get_by_role("button", name="Delete")).to_be_visible()
    assert service.titles("edit-user") == ["Second question"]


@pytest.mark.browser
def test_a_change_shows_at_once_and_is_taken_back_if_the_service_refuses_it(profiles: Profiles) -> None:
    """A rename shows while its PATCH is on its way; when the service refuses it, the page puts back
    what the service has and says why (here the PATCH is held, then answered as by a service whose
    database is down)."""
    service = profiles.service
    service.chat("refused-a", "refused-user", "A question about storms")
    page = profiles.page("refused-user", "refused-a")
    expect(titles_shown(page)).to_have_text(["A question about storms"])
    held: list[Route] = []

    def hold(route: Route) -> None:
        if route.request.method == "PATCH":
            held.append(route)
        else:
            route.continue_()

    page.route("**/conversations/*", hold)
    item(page, "A question about storms").get_by_role("button", name="Rename").click()
    sidebar(page).get_by_label("New title").fill("Storms,   renamed")
    sidebar(page).get_by_role("button", name="Save").click()
    expect(titles_shown(page)).to_have_text(["Storms, renamed"])
    eventually_sync(lambda: page.evaluate("true") and held, "the PATCH was sent")

    message = "The conversation record is temporarily unavailable"  # as `records.store.reachable` says
    with page.expect_response(changing("PATCH")):
        held[0].fulfill(status=503, json={"error": {"code": "database_unavailable", "message": message}})
    expect(titles_shown(page)).to_have_text(["A question about storms"])
    expect(sidebar(page).get_by_role("status")).to_have_text(f"Could not change the conversation: {message}")
    assert service.titles("refused-user") == ["A question about storms"]
    # The browser reports the refused request on its console; nothing else may be there.
    assert [e for e in profiles.errors if "status of 503" not in e] == []
    profiles.errors.clear()


@pytest.mark.browser
def test_search_lists_the_conversations_whose_messages_match(profiles: Profiles) -> None:
    everything = ["New chat", "A recipe for lemon cake", "How do glaciers carve valleys"]
    service = profiles.service
    service.chat("find-a", "find-user", "How do glaciers carve valleys")
    service.chat("find-b", "find-user", "A recipe for lemon cake")
    page = profiles.page("find-user")
    expect(titles_shown(page)).to_have_text(everything)

    search = page.get_by_role("searchbox", name="Search conversations")
    search.fill("glaciers")
    expect(titles_shown(page)).to_have_text(["How do glaciers carve valleys"])
    expect(sidebar(page).locator(".snippet")).to_contain_text(["glaciers"])
    api = service.get("/conversations/search", user_id="find-user", q="glaciers").json()
    assert [c["id"] for c in api["conversations"]] == ["find-a"]

    search.fill("volcano")
    expect(titles_shown(page)).to_have_count(0)
    expect(sidebar(page).get_by_role("status")).to_have_text("No conversation matches.")

    search.press("Escape")  # back to the whole list
    expect(titles_shown(page)).to_have_text(everything)


@pytest.mark.browser
def test_thumbs_up_then_down_rates_the_answer_once_in_the_record(profiles: Profiles) -> None:
    service = profiles.service
    page = profiles.page("rate-user")
    page.get_by_label("Message").fill("Rate this answer")
    page.get_by_role("button", name="Send").click()
    answer = page.locator(".msg[data-role='assistant']").last
    expect(answer).to_have_attribute("data-state", "done")
    message_id = answer.get_attribute("data-message-id")
    assert message_id

    # Enabled once the answer is in the conversation record (the page reads its tree), then clicked.
    answer.get_by_role("button", name="Good answer").click()
    expect(answer.get_by_role("button", name="Good answer")).to_have_attribute("aria-pressed", "true")
    assert service.ratings(message_id) == [("rate-user", "up")]

    answer.get_by_role("button", name="Bad answer").click()
    expect(answer.get_by_role("button", name="Bad answer")).to_have_attribute("aria-pressed", "true")
    expect(answer.get_by_role("button", name="Good answer")).to_have_attribute("aria-pressed", "false")
    assert service.ratings(message_id) == [("rate-user", "down")]  # replaced, not added
    metrics = httpx.get(f"{service.url}/metrics", timeout=5).text
    assert 'chat_feedback_total{model="simulated",rating="down"} 1.0' in metrics


# --- Edit, regenerate and branches: `POST /chat` with `parent_id`, `POST /chat/{message_id}/regenerate`
# and `POST /conversations/{id}/branch` (issue #15) through the page ---------------------------------------


def send_and_wait(page: Page, text: str) -> Locator:
    """Send through the composer; the answer once it is done."""
    page.get_by_label("Message", exact=True).fill(text)
    page.get_by_role("button", name="Send").click()
    answer = page.locator(".msg[data-role='assistant']").last
    expect(answer).to_have_attribute("data-state", "done")
    return answer


def history_of(service: RecordService, session_id: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = service.get(f"/history/{session_id}").json()["messages"]
    return messages


@pytest.mark.browser
def test_edit_makes_a_branch_and_the_switcher_goes_between_them(profiles: Profiles) -> None:
    service = profiles.service
    page = profiles.page("branch-user")
    session_id = page.locator("#session-id").inner_text()
    send_and_wait(page, "Alpha question")
    send_and_wait(page, "Beta question")
    users = page.locator(".msg[data-role='user']")

    users.last.get_by_role("button", name="Edit").click()
    page.get_by_label("Edit the message").fill("Gamma question")
    page.get_by_role("button", name="Save and send").click()

    expect(page.locator(".msg[data-role='assistant']").last).to_have_attribute("data-state", "done")
    expect(users.locator(".content")).to_have_text(["Alpha question", "Gamma question"])
    expect(users.last.locator(".branch-position")).to_have_text("2 / 2")
    assert [m["content"] for m in history_of(service, session_id) if m["role"] == "user"] == [
        "Alpha question",
        "Gamma question",
    ]
    tree = service.get(f"/conversations/{session_id}").json()["messages"]
    edits = [m for m in tree if m["turn"]["role"] == "user" and m["turn"]["content"] != "Alpha question"]
    assert len({m.get("parent_id") for m in edits}) == 1  # Beta and Gamma follow the same exchange

    users.last.get_by_role("button", name="Previous version").click()
    expect(users.locator(".content")).to_have_text(["Alpha question", "Beta question"])
    expect(users.last.locator(".branch-position")).to_have_text("1 / 2")
    eventually_sync(
        lambda: (
            [m["content"] for m in history_of(service, session_id) if m["role"] == "user"]
            == ["Alpha question", "Beta question"]
        ),
        "the first branch is the active one again",
    )


@pytest.mark.browser
def test_regenerate_gives_a_second_answer_and_the_switcher_goes_back(profiles: Profiles) -> None:
    service = profiles.service
    page = profiles.page("regen-user")
    session_id = page.locator("#session-id").inner_text()
    first = send_and_wait(page, "Tell me about rivers").get_attribute("data-message-id")

    page.locator(".msg[data-role='assistant']").last.get_by_role("button", name="Regenerate").click()

    answer = page.locator(".msg[data-role='assistant']")
    expect(answer).to_have_count(1)
    expect(answer).not_to_have_attribute("data-message-id", first or "")
    expect(answer).to_have_attribute("data-state", "done")
    second = answer.get_attribute("data-message-id")
    expect(answer.locator(".branch-position")).to_have_text("2 / 2")
    stored = [m["message_id"] for m in history_of(service, session_id) if m["role"] == "assistant"]
    assert stored == [second]

    answer.get_by_role("button", name="Previous version").click()
    expect(answer).to_have_attribute("data-message-id", first or "")
    expect(answer.locator(".branch-position")).to_have_text("1 / 2")
    eventually_sync(
        lambda: (
            [m["message_id"] for m in history_of(service, session_id) if m["role"] == "assistant"] == [first]
        ),
        "the first answer is the active one again",
    )
