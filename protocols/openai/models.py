"""`GET /v1/models`: the one model that answers."""

from __future__ import annotations

from fastapi import APIRouter

from errors import ServiceError
from protocols.deps import ChatServiceDep
from protocols.errors import OpenAIErrorResponse
from protocols.openai.wire import ModelCard, ModelList

__all__ = ["ModelNotFound", "router"]

router = APIRouter()


class ModelNotFound(ServiceError):
    status = 404
    code = "model_not_found"


@router.get("/models", response_model=ModelList, summary="List models (OpenAI-compatible)")
async def list_models(service: ChatServiceDep) -> ModelList:
    """The model that answers (`AI_MODEL` for the openai provider), owned by its `AI_PROVIDER`."""
    return ModelList(data=[ModelCard(id=service.source.model, owned_by=service.source.name)])


@router.get(
    "/models/{model_id:path}",
    response_model=ModelCard,
    summary="Describe a model (OpenAI-compatible)",
    responses={404: {"model": OpenAIErrorResponse, "description": "Not the model that answers."}},
)
async def retrieve_model(model_id: str, service: ChatServiceDep) -> ModelCard:
    """The model that answers, when `model_id` names it."""
    if model_id != service.source.model:
        raise ModelNotFound(f"The model {model_id!r} does not exist.", param="model")
    return ModelCard(id=model_id, owned_by=service.source.name)
