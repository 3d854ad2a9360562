"""A React page with the AI SDK's `useChat`, in headless Chromium, on the service's `/api/chat`.

The page (`tests/node-ui/page/`) is built with Vite from the pinned npm packages when the tests start,
and served by the test from its own loopback port; the service (`python app.py`, on a real
redis-server, with the simulated model reasoning and paced) allows that origin with `CORS_ORIGINS`.
The page holds nothing but `useChat({ id, transport, resume: true })`: after a reload mid-answer, the
SDK's resume request brings the running answer back from its start, and the page sees it complete.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from playwright.sync_api import Browser, Page, Request, expect
from starlette.staticfiles import StaticFiles

from testkit.asgi_server import serve
from testkit.node import node_for
from testkit.redis_server import RedisServer
from testkit.service import ServiceProcess
from tests.test_ai_sdk_clients import NODE_DIR, PACING
from tests.test_ui import chromium

ANSWER_TIMEOUT_MS = 30_000
BUILD_TIMEOUT = 180  # seconds: a cold Vite build of React and the SDK takes ten or so


@pytest.fixture(scope="module")
def page_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The useChat page, built with Vite into a directory of its own."""
    node = node_for(NODE_DIR)
    out = tmp_path_factory.mktemp("use-chat-page")
    vite = NODE_DIR / "node_modules" / "vite" / "bin" / "vite.js"
    command = [node, str(vite), "build", "--config", "page/vite.config.mjs", "--outDir", str(out)]
    built = subprocess.run(
        command, cwd=NODE_DIR, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False
    )
    assert built.returncode == 0, f"vite build failed:\n{built.stdout}\n{built.stderr}"
    return out


@pytest.fixture(scope="module")
def page_origin(page_files: Path) -> Iterator[str]:
    with serve(StaticFiles(directory=page_files, html=True), lifespan="off") as url:
        yield url


@pytest.fixture(scope="module")
def service(page_origin: str, shared_redis: RedisServer) -> Iterator[ServiceProcess]:
    process = ServiceProcess(
        {
            "REDIS_URL": shared_redis.url,
            "SIMULATED_REASONING": "true",
            "LOG_LEVEL": "WARNING",
            "CORS_ORIGINS": page_origin,
            # Slower than the clients' tests: the answer (28 words, about 4 s) must outlast a reload
            # of the page on a loaded machine.
            **PACING,
            "STREAM_DELAY": "0.15",
        }
    )
    try:
        process.start(ready="/health")
        yield process
    finally:
        process.cleanup()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from chromium()


def assistant_text(page: Page) -> str:
    return page.locator("li[data-role=assistant] .text").inner_text()


@pytest.mark.browser
def test_use_chat_page_reloaded_mid_answer_resumes_it_to_the_end(
    browser: Browser, page_origin: str, service: ServiceProcess
) -> None:
    chat_id = f"page-{uuid.uuid4().hex[:12]}"
    address = f"{page_origin}/index.html?" + urlencode({"chat": chat_id, "api": f"{service.url}/api/chat"})
    context = browser.new_context()
    context.set_default_timeout(ANSWER_TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    resumes: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    def record(request: Request) -> None:
        if request.method == "GET" and request.url.endswith(f"/api/chat/{chat_id}/stream"):
            resumes.append(request.url)

    page.on("request", record)
    try:
        page.goto(address)
        expect(page.get_by_test_id("status")).to_have_text("ready")
        page.get_by_label("Message").fill("Tell me about streaming")
        page.get_by_role("button", name="Send").click()
        answer = page.locator("li[data-role=assistant]")
        expect(answer.locator(".text")).to_contain_text("streaming")  # mid-answer: text has begun
        expect(answer).to_have_attribute("data-finish", "")
        partial = assistant_text(page)
        message_id = answer.get_attribute("data-message-id")

        page.reload()

        # The page asked for the running answer and got it back, whole, under the same message id.
        resumed = page.locator(f"li[data-message-id='{message_id}']")
        expect(resumed).to_have_attribute("data-finish", "stop")
        expect(page.get_by_test_id("status")).to_have_text("ready")
        turns = httpx.get(f"{service.url}/history/{chat_id}", timeout=5).json()["messages"]
        assert turns[-1]["message_id"] == message_id
        assert resumed.locator(".text").inner_text() == turns[-1]["content"]
        assert turns[-1]["content"].startswith(partial)
        assert len(turns[-1]["content"]) > len(partial)
        expect(resumed.locator("details.reasoning")).to_have_count(1)
        assert len(resumes) == 2  # one at each load: nothing ran at the first, the answer at the second
        assert errors == []
    finally:
        context.close()
