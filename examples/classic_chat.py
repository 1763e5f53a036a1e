"""Classic AutoGen (AG2, ``from autogen import ConversableAgent``) with Amber: a conversation in one
process, continued by a fresh process with new agent objects, on one SQLite file.

    python examples/classic_chat.py                          # store: sqlite:///amber-classic.db here
    python examples/classic_chat.py --store postgresql://app@db:5432/amber

Process 1: the user says "My policy number is P-12345"; the process exits.
Process 2: new agents, same key. ``persist`` puts the stored history back, ``remember`` recalls the
learned fact into the model's input as quoted data, and the user asks for the policy number.

A real model is used when one is configured (an OpenAI-compatible endpoint):

    OPENAI_API_KEY=...  [OPENAI_BASE_URL=https://...]  [AMBER_DEMO_MODEL=gpt-4o-mini]

Without one there are no answers -- no canned replies: the model client records what it was sent
and raises, and the example prints exactly the messages the model would have received. (The user's
message is stored anyway: Amber writes it before a reply is attempted.)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

from autogen import ConversableAgent

from amber.ag2 import persist, remember

KEY = "acme/customer-42/claims"  # tenant/user/thread: derive it from your own ids, never per request


class ModelNotConfigured(RuntimeError):
    pass


class NoModelClient:
    """An AG2 ModelClient that answers nothing: it prints what it was sent, then raises."""

    def __init__(self, config: dict[str, Any], **kwargs: Any) -> None:
        pass

    def create(self, params: dict[str, Any]) -> SimpleNamespace:
        print("\nNo model is configured (set OPENAI_API_KEY). The model would have received:")
        for m in params["messages"]:
            print(f"  [{m['role']}] {m.get('content')}")
        raise ModelNotConfigured("no model configured")

    def message_retrieval(self, response: Any) -> list[str]:
        return []

    def cost(self, response: Any) -> float:
        return 0.0

    @staticmethod
    def get_usage(response: Any) -> dict[str, Any]:
        return {}


def build_assistant() -> ConversableAgent:
    api_key = os.environ.get("OPENAI_API_KEY")
    if api_key:
        entry = {"model": os.environ.get("AMBER_DEMO_MODEL", "gpt-4o-mini"), "api_key": api_key}
        if os.environ.get("OPENAI_BASE_URL"):
            entry["base_url"] = os.environ["OPENAI_BASE_URL"]
        return ConversableAgent("assistant", llm_config={"config_list": [entry], "cache_seed": None},
                                system_message="You are a claims assistant. Answer briefly.")
    assistant = ConversableAgent(
        "assistant",
        llm_config={"config_list": [{"model": "none", "model_client_cls": "NoModelClient"}], "cache_seed": None},
        system_message="You are a claims assistant. Answer briefly.",
    )
    assistant.register_model_client(NoModelClient)
    return assistant


def chat(store: str, message: str, *, recall: bool) -> None:
    assistant = build_assistant()
    user = ConversableAgent("customer", llm_config=False, human_input_mode="NEVER")
    persist(assistant, store, KEY)            # write-through history, rehydrated on attach
    if recall:
        memory = remember(assistant, store, KEY)
        memory.learn_now()                    # `amber worker` does this in the background in production
    try:
        user.initiate_chat(assistant, message=message, max_turns=1, clear_history=False, silent=True)
        print(f"\nassistant: {assistant.last_message(user)['content']}")
    except ModelNotConfigured:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default="sqlite:///amber-classic.db")
    parser.add_argument("--phase", choices=["1", "2"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "1":
        print("process 1: the customer gives a policy number")
        chat(args.store, "My policy number is P-12345", recall=False)
    elif args.phase == "2":
        print("\nprocess 2: fresh agents, same key")
        chat(args.store, "What is my policy number?", recall=True)
    else:
        for phase in ("1", "2"):  # two real processes: nothing survives in Python objects
            subprocess.run([sys.executable, __file__, "--store", args.store, "--phase", phase], check=True)


if __name__ == "__main__":
    main()
