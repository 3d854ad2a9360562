"""Admission: who may call, on which sessions, and how much (keys and stream tokens, session ownership,
rate limits, stream slots and the process's capacity), in front of the service.

Every limit that must hold across instances lives in Redis, under names from `KeySpace`.
"""

from admission.clients import SseClients
from admission.errors import Overloaded, RateLimited, SessionForbidden, SessionNotFound, Unauthorized
from admission.gate import Admission
from admission.keys import KeyRing, Principal, StreamTokens
from admission.limits import Capacity, RateLimiter, StreamSlots
from admission.owners import SessionOwners

__all__ = [
    "Admission",
    "Capacity",
    "KeyRing",
    "Overloaded",
    "Principal",
    "RateLimited",
    "RateLimiter",
    "SessionForbidden",
    "SessionNotFound",
    "SessionOwners",
    "SseClients",
    "StreamSlots",
    "StreamTokens",
    "Unauthorized",
]
