"""What routes receive: the services the lifespan built, as typed FastAPI dependencies.

The lifespan yields them as its state, and each alias reads one from the request (as
full-stack-fastapi-template's `api/deps.py` does); tests swap them with `dependency_overrides`. They are
`async def`: FastAPI runs a plain `def` dependency in its thread pool, a hop that cost a fifth of a
POST /chat (issue #6).
"""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from ai_service import ChatService
from config import Settings
from health import PubSubProbe
from hub import StreamHub
from stores.answers import AnswerRegistry
from stores.history import HistoryStore

__all__ = [
    "ChatServiceDep",
    "HistoryDep",
    "HubDep",
    "ProbeDep",
    "RegistryDep",
    "SettingsDep",
    "get_app_settings",
    "get_chat_service",
    "get_history",
    "get_hub",
    "get_probe",
    "get_registry",
]


async def get_chat_service(request: Request) -> ChatService:
    return cast(ChatService, request.state.chat_service)


async def get_history(request: Request) -> HistoryStore:
    return cast(HistoryStore, request.state.history)


async def get_app_settings(request: Request) -> Settings:
    return cast(Settings, request.state.settings)


async def get_registry(request: Request) -> AnswerRegistry:
    return cast(AnswerRegistry, request.state.registry)


async def get_hub(request: Request) -> StreamHub:
    return cast(StreamHub, request.state.hub)


async def get_probe(request: Request) -> PubSubProbe:
    return cast(PubSubProbe, request.state.probe)


ChatServiceDep = Annotated[ChatService, Depends(get_chat_service)]
HistoryDep = Annotated[HistoryStore, Depends(get_history)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
RegistryDep = Annotated[AnswerRegistry, Depends(get_registry)]
HubDep = Annotated[StreamHub, Depends(get_hub)]
ProbeDep = Annotated[PubSubProbe, Depends(get_probe)]
