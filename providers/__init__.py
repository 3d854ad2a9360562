"""Answer sources behind `ChatService`, by the `AI_PROVIDER` name that picks one.

Each provider is one module with a `create(settings) -> AnswerSource` factory, and one line in
`PROVIDERS`. A module is imported only when its provider is created: `config` reads `PROVIDERS` to
check `AI_PROVIDER`, and the provider modules import `config`, so this package imports neither.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Protocol

from providers.base import AnswerSource

__all__ = ["PROVIDERS", "ProviderChoice", "create_answer_source"]

# AI_PROVIDER -> the module that implements it.
PROVIDERS: Mapping[str, str] = {
    "simulated": "providers.simulated",
    "openai": "providers.openai_compatible",
}


class ProviderChoice(Protocol):
    """The settings as this package sees them: `config.Settings`, which it cannot import (see above)."""

    @property
    def ai_provider(self) -> str: ...


def create_answer_source(settings: ProviderChoice) -> AnswerSource:
    """The answer source `AI_PROVIDER` names, from its module's `create(settings)`.

    Call it in the lifespan, which closes the source with `aclose()`: a source may own a client.
    """
    module = importlib.import_module(PROVIDERS[settings.ai_provider])
    create: Callable[[ProviderChoice], AnswerSource] = module.create
    return create(settings)
