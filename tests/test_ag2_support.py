"""Shared helpers for the AG2 tests (no tests here): a deterministic model client and agent builders.

No LLM is reachable in tests, so model replies come from :class:`ScriptedModelClient`, a real
implementation of AG2's ``ModelClient`` protocol registered with ``register_model_client``. It
answers from a script and records every message list it was sent, which is what the tests assert
on ("what did the model see?"). The subprocess tests import this module by path.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable, Sequence

from autogen import ConversableAgent

Reply = str | Callable[[list[dict[str, Any]]], str]


class ScriptedModelClient:
    """AG2 ModelClient protocol: ``create``, ``message_retrieval``, ``cost``, ``get_usage``.

    ``replies``: the texts to answer with, in order (the last one repeats), or a function of the
    messages sent. ``calls``: a list that receives a copy of each request's ``messages``."""

    def __init__(self, config: dict[str, Any], *, replies: Sequence[Reply] | Reply, calls: list[Any]) -> None:
        self.model = config.get("model", "scripted")
        self.replies = [replies] if callable(replies) or isinstance(replies, str) else list(replies)
        self.calls = calls
        self.turn = 0

    def create(self, params: dict[str, Any]) -> SimpleNamespace:
        messages = [dict(m) for m in params["messages"]]
        self.calls.append(messages)
        reply = self.replies[min(self.turn, len(self.replies) - 1)]
        self.turn += 1
        text = reply(messages) if callable(reply) else reply
        message = SimpleNamespace(content=text, tool_calls=None, function_call=None)
        return SimpleNamespace(choices=[SimpleNamespace(message=message)], model=self.model, usage=None)

    def message_retrieval(self, response: SimpleNamespace) -> list[str]:
        return [choice.message.content for choice in response.choices]

    def cost(self, response: SimpleNamespace) -> float:
        return 0.0

    @staticmethod
    def get_usage(response: SimpleNamespace) -> dict[str, Any]:
        return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "cost": 0.0, "model": response.model}


def model_agent(
    name: str, replies: Sequence[Reply] | Reply, calls: list[Any] | None = None, **kwargs: Any
) -> tuple[ConversableAgent, list[Any]]:
    """A ConversableAgent whose LLM is a ScriptedModelClient; returns it and its call log."""
    calls = [] if calls is None else calls
    agent = ConversableAgent(
        name,
        llm_config={
            "config_list": [{"model": "scripted", "model_client_cls": "ScriptedModelClient"}],
            "cache_seed": None,  # AG2 would otherwise cache replies on disk
        },
        human_input_mode="NEVER",
        **kwargs,
    )
    agent.register_model_client(ScriptedModelClient, replies=replies, calls=calls)
    return agent, calls


def user_agent(name: str = "user", reply: str = "please go on", **kwargs: Any) -> ConversableAgent:
    """A human-side agent without an LLM (its messages are stored with role 'user')."""
    return ConversableAgent(name, llm_config=False, human_input_mode="NEVER", default_auto_reply=reply, **kwargs)


def texts(messages: Sequence[dict[str, Any]]) -> list[str]:
    return [m.get("content") or "" for m in messages]
