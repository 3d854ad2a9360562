"""The service on both model paths for the OpenAI clients' tests (conftest's `backend` fixture): the
simulated model, and the `openai` provider in front of the scriptable model server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from langchain_openai import ChatOpenAI
from openai import OpenAI
from pydantic import SecretStr

from testkit.openai_server import OpenAIServer, Reply, tool_call

__all__ = ["Backend", "calls_reply"]


@dataclass
class Backend:
    """The service's base URL and the model it answers with; `script` tells the model server what to
    answer when there is one (the simulated model decides for itself)."""

    url: str
    model: str
    server: OpenAIServer | None

    def script(self, *replies: Reply) -> None:
        if self.server is not None:
            self.server.script(*replies)

    def openai(self) -> OpenAI:
        return OpenAI(base_url=f"{self.url}/v1", api_key="k", max_retries=0)

    def chat_model(self, **options: Any) -> ChatOpenAI:
        """langchain-openai's chat model on the service, with these options (`use_responses_api`, ...)."""
        return ChatOpenAI(
            model=self.model, base_url=f"{self.url}/v1", api_key=SecretStr("k"), max_retries=0, **options
        )


def calls_reply(*calls: tuple[str, str]) -> Reply:
    """The model server calls these tools (name, arguments), each streamed in pieces."""
    deltas = [
        delta
        for index, (name, arguments) in enumerate(calls)
        for delta in tool_call(index, name, arguments, call_id=f"call_{index}", pieces=3)
    ]
    return Reply(tokens=deltas, finish_reason="tool_calls")
