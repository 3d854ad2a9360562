"""AG-UI (the Agent-User Interaction protocol) at `/agui`: runs and reconnects over SSE, with the
`ag-ui-protocol` package's own models and encoder."""

from protocols.agui.router import router

__all__ = ["router"]
