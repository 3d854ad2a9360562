"""The HTTP ceiling: a bare FastAPI endpoint that validates the same body as `POST /chat` and answers
202, on the same server settings. Nothing the service does per request can be cheaper than this.

Run it with `uvicorn --factory bench.ceiling:create`.
"""

from __future__ import annotations

from fastapi import FastAPI

from models import ChatRequest


def create() -> FastAPI:
    app = FastAPI()

    @app.post("/chat", status_code=202)
    async def chat(request: ChatRequest) -> dict[str, str]:
        return {"status": "streaming", "session_id": request.session_id}

    return app
