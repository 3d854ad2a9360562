"""The OpenAI-compatible API under `/v1`: Chat Completions, Responses and Models, on the service's model.

Any OpenAI client (the official SDKs, LangChain, Open WebUI, the Vercel AI SDK) can use the service as
its backend. Every error under `/v1`, unknown paths included, has OpenAI's shape (`protocols.errors`
chooses it by path), so the clients raise their usual exceptions.
"""

from fastapi import APIRouter

from protocols.errors import OPENAI_PREFIX
from protocols.openai import chat, models, responses

__all__ = ["router"]

router = APIRouter(prefix=OPENAI_PREFIX, tags=["openai"])
router.include_router(chat.router)
router.include_router(responses.router)
router.include_router(models.router)
