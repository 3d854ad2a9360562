"""What browsers load: the chat page at `/ui`, and the policy that keeps `/docs` and `/redoc` offline.

The page is static files served by the service itself (no build step, no CDN) and talks only to the
public API (`POST /chat`, `GET /stream/{session_id}`, `GET /history/...`, `POST /chat/{message_id}/cancel`);
see issue #3, parts 6 and 7. The docs pages themselves come from `fastapi-offline`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles

__all__ = ["DOCS_HEADERS", "STATIC_DIR", "add_ui"]

STATIC_DIR = Path(__file__).parent / "static"

# Everything the page loads comes from this service; the browser enforces it, so a CDN link cannot creep
# in unnoticed. `data:` images are the empty favicon.
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


# Swagger UI and ReDoc need inline scripts and styles; everything they load must still come from here.
# ReDoc's bundle shows a logo from cdn.redoc.ly in its menu, unconditionally: this policy keeps the browser
# from asking for it (the menu hides the missing image), so the docs make no request to another host.
DOCS_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; worker-src 'self' blob:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'self'"
)
# Added to the answers of the docs pages, which `fastapi-offline` renders (by `protocols/edge.py`).
DOCS_HEADERS = {path: [(b"content-security-policy", DOCS_POLICY.encode())] for path in ("/docs", "/redoc")}


class RevalidatedFiles(StaticFiles):
    """Static files that browsers revalidate on every load (a cheap 304 by ETag), so a page served by a
    new version of the service never runs the previous version's script from cache. Each carries the
    page's headers, its content policy too: `/ui/chat.html` is the page as well (issue #13, item 7)."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(PAGE_HEADERS)
        return response


def add_ui(app: FastAPI, path: str = "/ui") -> None:
    """Serve `static/chat.html` at `path` and its scripts and styles under `path/` (the docs pages'
    policy is `DOCS_HEADERS`)."""

    async def chat_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "chat.html", media_type="text/html", headers=PAGE_HEADERS)

    app.add_api_route(path, chat_page, methods=["GET"], include_in_schema=False, response_class=FileResponse)
    app.mount(path, RevalidatedFiles(directory=STATIC_DIR), name="ui")
