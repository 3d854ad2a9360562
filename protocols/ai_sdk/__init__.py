"""The Vercel AI SDK's UI message stream (v1) at `/api/chat`: what `useChat` and its default transport
post to and resume from, on the service's answers (`router`), and the encoder of an answer's events."""

from protocols.ai_sdk.router import router

__all__ = ["router"]
