"""What routes receive: the services the lifespan built, and the caller, as typed FastAPI dependencies.

The lifespan yields the services builder's `Services` as its state, and each alias reads one from it (as
full-stack-fastapi-template's `api/deps.py` does); tests swap them with `dependency_overrides`. They are
`async def`: FastAPI runs a plain `def` dependency in its thread pool, a hop that cost a fifth of a
POST /chat (issue #6).
"""

from __future__ import annotations

import re
from typing import Annotated, cast

from fastapi import Depends, Query, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from admission import Admission, Principal, Unauthorized
from ai_service import ChatService
from archiver import ArchiveRunner
from config import Settings
from health import PubSubProbe, Readiness
from hub import StreamHub
from metrics import Metrics
from models import ID_PATTERN
from records.store import ConversationStore
from services import Services
from stores.answers import AnswerRegistry
from stores.history import HistoryStore
from telemetry import Telemetry
from usage.budgets import Budgets
from usage.ledger import UsageLedger

__all__ = [
    "AdmissionDep",
    "ArchiverDep",
    "BudgetsDep",
    "ChatServiceDep",
    "HistoryDep",
    "HubDep",
    "MetricsDep",
    "PrincipalDep",
    "ProbeDep",
    "ReadinessDep",
    "RecordsDep",
    "RegistryDep",
    "ServicesDep",
    "SettingsDep",
    "StreamPrincipalDep",
    "TelemetryDep",
    "UsageDep",
    "get_admission",
    "get_app_settings",
    "get_budgets",
    "get_chat_service",
    "get_history",
    "get_hub",
    "get_metrics",
    "get_probe",
    "get_readiness",
    "get_registry",
    "get_services",
    "get_telemetry",
    "get_usage",
    "key_principal",
    "require_key",
    "require_stream_access",
    "services_of",
]


def services_of(connection: HTTPConnection) -> Services:
    """The services the lifespan built, from a request's (or any connection's) state."""
    return cast(Services, connection.state.services)


async def get_services(request: Request) -> Services:
    """All of them in one dependency, for the busiest routes: FastAPI spends more on resolving each
    dependency (10-20 µs) than most routes' own work, so `POST /chat` takes one, not three."""
    return services_of(request)


async def get_chat_service(request: Request) -> ChatService:
    return services_of(request).chat


async def get_history(request: Request) -> HistoryStore:
    return services_of(request).history


async def get_app_settings(request: Request) -> Settings:
    return services_of(request).settings


async def get_registry(request: Request) -> AnswerRegistry:
    return services_of(request).answers


async def get_hub(request: Request) -> StreamHub:
    return services_of(request).hub


async def get_probe(request: Request) -> PubSubProbe:
    return services_of(request).probe


async def get_readiness(request: Request) -> Readiness:
    return services_of(request).readiness


async def get_metrics(request: Request) -> Metrics:
    return services_of(request).metrics


async def get_admission(request: Request) -> Admission:
    return services_of(request).admission


async def get_usage(request: Request) -> UsageLedger:
    return services_of(request).usage


async def get_budgets(request: Request) -> Budgets:
    return services_of(request).budgets


async def get_telemetry(request: Request) -> Telemetry:
    return services_of(request).telemetry


UsageDep = Annotated[UsageLedger, Depends(get_usage)]
BudgetsDep = Annotated[Budgets, Depends(get_budgets)]
TelemetryDep = Annotated[Telemetry, Depends(get_telemetry)]


async def get_records(request: Request) -> ConversationStore:
    return services_of(request).records


async def get_archiver(request: Request) -> ArchiveRunner:
    return services_of(request).archiver


ServicesDep = Annotated[Services, Depends(get_services)]
ChatServiceDep = Annotated[ChatService, Depends(get_chat_service)]
HistoryDep = Annotated[HistoryStore, Depends(get_history)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
RegistryDep = Annotated[AnswerRegistry, Depends(get_registry)]
HubDep = Annotated[StreamHub, Depends(get_hub)]
ProbeDep = Annotated[PubSubProbe, Depends(get_probe)]
ReadinessDep = Annotated[Readiness, Depends(get_readiness)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
AdmissionDep = Annotated[Admission, Depends(get_admission)]
RecordsDep = Annotated[ConversationStore, Depends(get_records)]
ArchiverDep = Annotated[ArchiveRunner, Depends(get_archiver)]


# --- The caller ----------------------------------------------------------------------------------

# Declared as security schemes, so the OpenAPI document has them and Swagger UI's Authorize works.
bearer_scheme = HTTPBearer(
    auto_error=False, description="`Authorization: Bearer <key>`, as OpenAI clients send it."
)
api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False, description="The API key.")

BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]
KeyHeaderDep = Annotated[str | None, Depends(api_key_scheme)]


def _presented(bearer: HTTPAuthorizationCredentials | None, header: str | None) -> str | None:
    return bearer.credentials if bearer is not None else header


async def key_principal(connection: HTTPConnection) -> Principal | None:
    """The caller as `require_key` finds them (the same schemes read the same headers), or None: for
    `protocols/direct.py`, which reads no dependencies."""
    presented = _presented(await bearer_scheme(connection), await api_key_scheme(connection))
    return services_of(connection).admission.principal(presented)


async def require_key(request: Request, bearer: BearerDep, header: KeyHeaderDep) -> Principal:
    """The caller, identified by their API key; 401 without a valid one (unless the service is open)."""
    principal = services_of(request).admission.principal(_presented(bearer, header))
    if principal is None:
        raise Unauthorized()
    return principal


async def require_stream_access(
    request: Request,
    bearer: BearerDep,
    header: KeyHeaderDep,
    token: Annotated[
        str | None,
        Query(
            max_length=256,
            pattern=r"^[A-Za-z0-9_.\-]+$",
            description="A `stream_token` from `POST /chat`, for clients that cannot send the API key.",
        ),
    ] = None,
) -> Principal:
    """The caller of a stream: an API key, or a stream token for the session in the path."""
    admission = services_of(request).admission
    principal = admission.principal(_presented(bearer, header))
    if principal is not None:
        return principal
    session_id = request.path_params.get("session_id", "")
    if token is not None and isinstance(session_id, str) and re.fullmatch(ID_PATTERN, session_id):
        principal = admission.token_principal(token, session_id)
        if principal is not None:
            return principal
        raise Unauthorized("The stream token is invalid, expired, or for another session")
    raise Unauthorized()


PrincipalDep = Annotated[Principal, Depends(require_key)]
StreamPrincipalDep = Annotated[Principal, Depends(require_stream_access)]
