"""AutoGen AgentChat integration: durable model context, long-term memory, and team state.

* :class:`DurableChatCompletionContext` -- a ``ChatCompletionContext`` that writes every message
  through to the store and reads its window back from it (``amber.autogen.context``).
* :class:`AmberMemory` -- a ``Memory`` that recalls learned facts and past turns into the model
  context as one quoted data block within a token budget (``amber.autogen.memory``).
* :class:`TeamStateKeeper` -- saves ``agent/team.save_state()`` by session key as a run progresses
  and loads it in a new process (``amber.autogen.state``).

Adapters are thin translators: no SQL here, only calls to :class:`amber.Store`.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["DurableChatCompletionContext", "AmberMemory", "TeamStateKeeper"]

_WHERE = {
    "DurableChatCompletionContext": "amber.autogen.context",
    "AmberMemory": "amber.autogen.memory",
    "TeamStateKeeper": "amber.autogen.state",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'amber.autogen' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
