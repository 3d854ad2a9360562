"""Answer sources behind `ChatService`: the simulated model, or any OpenAI-compatible model server.

`create_answer_source(settings)` picks one by `AI_PROVIDER`. The OpenAI-compatible source owns an
`AsyncOpenAI` client; the lifespan creates it through the factory and closes it with `close_answer_source`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from models import AIHealth
from providers.base import AnswerSource
from providers.openai_compatible import OpenAIAnswerSource
from providers.simulated import SimulatedAnswerSource

if TYPE_CHECKING:
    from config import Settings

__all__ = ["close_answer_source", "create_answer_source", "provider_health"]

logger = logging.getLogger(__name__)


def create_answer_source(settings: Settings) -> AnswerSource:
    """The answer source `AI_PROVIDER` names. Call it in the lifespan: the openai one owns a client."""
    if settings.ai_provider == "openai":
        source = OpenAIAnswerSource.from_settings(settings)
        logger.info("answers come from model %r at %s", source.model, source.location)
        return source
    return SimulatedAnswerSource(stream_delay=settings.stream_delay, chunk_delay=settings.chunk_delay)


async def close_answer_source(source: AnswerSource) -> None:
    """Release what the source holds (the openai client's connections)."""
    if isinstance(source, OpenAIAnswerSource):
        await source.aclose()


def provider_health(settings: Settings) -> AIHealth:
    """The provider and model, as `/health` shows them."""
    return AIHealth(
        provider=settings.ai_provider,
        model=settings.served_model,
        base_url=settings.model_location() if settings.ai_provider == "openai" else None,
    )
