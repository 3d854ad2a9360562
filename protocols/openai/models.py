"""`GET /v1/models`: the one model that answers."""

from __future__ import annotations

from fastapi import APIRouter

from errors import ServiceError
from protocols.deps import SettingsDep
from protocols.errors import OpenAIErrorResponse
from protocols.openai.wire import ModelCard, ModelList

__all__ = ["ModelNotFound", "router"]

router = APIRouter()


class ModelNotFound(ServiceError):
    status = 404
    code = "model_not_found"


@router.get("/models", response_model=ModelList, summary="List models (OpenAI-compatible)")
async def list_models(settings: SettingsDep) -> ModelList:
    """The model that answers: `AI_MODEL` for the openai provider, `simulated` otherwise."""
    return ModelList(data=[ModelCard(id=settings.served_model, owned_by=settings.ai_provider)])


@router.get(
    "/models/{model_id:path}",
    response_model=ModelCard,
    summary="Describe a model (OpenAI-compatible)",
    responses={404: {"model": OpenAIErrorResponse, "description": "Not the model that answers."}},
)
async def retrieve_model(model_id: str, settings: SettingsDep) -> ModelCard:
    """The model that answers, when `model_id` names it."""
    if model_id != settings.served_model:
        raise ModelNotFound(f"The model {model_id!r} does not exist.", param="model")
    return ModelCard(id=model_id, owned_by=settings.ai_provider)
