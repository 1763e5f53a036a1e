"""Amber's demo: a conversation in one process, continued by a fresh process, on one SQLite file.

    python examples/demo.py                      # store: sqlite:///amber-demo.db in the current directory
    python examples/demo.py --store sqlite:////var/lib/app/amber.db

Process 1 builds an AutoGen AssistantAgent whose model context is a DurableChatCompletionContext and
holds a short conversation: the user gives a policy number and a claim id. Process 2 is a fresh
Python process with freshly built agents: it shows the conversation is back, and asks about it.

A real model is used when one is configured (an OpenAI-compatible endpoint):

    OPENAI_API_KEY=...  [OPENAI_BASE_URL=https://...]  [AMBER_DEMO_MODEL=gpt-4o-mini]

Without one there are no answers -- no canned or fake replies: the demo says so plainly and prints
exactly the messages the model would have received.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys
from typing import Any, AsyncGenerator, Sequence

from autogen_core.models import (
    ChatCompletionClient,
    CreateResult,
    LLMMessage,
    ModelFamily,
    ModelInfo,
    RequestUsage,
)

import amber
from amber.autogen import DurableChatCompletionContext, TeamStateKeeper

POLICY = "P-12345"
CLAIM = "C-7788"
PROCESS_1_TURNS = [
    f"Hi, I need to report water damage in my kitchen. My policy number is {POLICY}.",
    f"The claim id your colleague gave me is {CLAIM}.",
]
PROCESS_2_TURN = "Which policy number and claim id did I give you earlier?"
SYSTEM = "You are a claims assistant at an insurer. Answer briefly, using what the customer told you."


# -- the model: a real one from the environment, or none at all -------------------------------------
class ModelNotConfigured(RuntimeError):
    pass


class NoModel(ChatCompletionClient):
    """A ChatCompletionClient that answers nothing: it keeps what it was sent, and raises."""

    def __init__(self) -> None:
        self.received: list[LLMMessage] = []

    async def create(self, messages: Sequence[LLMMessage], **kwargs: Any) -> CreateResult:
        self.received = list(messages)
        raise ModelNotConfigured("no model is configured")

    def create_stream(self, messages: Sequence[LLMMessage], **kwargs: Any) -> AsyncGenerator[Any, None]:
        raise ModelNotConfigured("no model is configured")

    async def close(self) -> None:
        pass

    def actual_usage(self) -> RequestUsage:
        return RequestUsage(prompt_tokens=0, completion_tokens=0)

    def total_usage(self) -> RequestUsage:
        return RequestUsage(prompt_tokens=0, completion_tokens=0)

    def count_tokens(self, messages: Sequence[LLMMessage], **kwargs: Any) -> int:
        return 0

    def remaining_tokens(self, messages: Sequence[LLMMessage], **kwargs: Any) -> int:
        return 0

    @property
    def capabilities(self) -> Any:  # deprecated in AutoGen, still abstract
        return self.model_info

    @property
    def model_info(self) -> ModelInfo:
        return ModelInfo(vision=False, function_calling=False, json_output=False,
                         family=ModelFamily.UNKNOWN, structured_output=False)


def model_from_env() -> tuple[Any, str]:
    """(client, description). The demo, not the library, reads the environment."""
    api_key = os.environ.get("OPENAI_API_KEY")
    if not api_key:
        return NoModel(), "none (set OPENAI_API_KEY, optionally OPENAI_BASE_URL and AMBER_DEMO_MODEL)"
    model = os.environ.get("AMBER_DEMO_MODEL", "gpt-4o-mini")
    base_url = os.environ.get("OPENAI_BASE_URL")
    try:
        from autogen_ext.models.openai import OpenAIChatCompletionClient
    except ImportError:
        print("A model is configured, but AutoGen's OpenAI client is not installed:\n"
              "    pip install 'autogen-ext[openai]'\nContinuing WITHOUT a model.")
        return NoModel(), "none (autogen-ext[openai] is not installed)"
    options: dict[str, Any] = {"model": model, "api_key": api_key}
    if base_url:
        options["base_url"] = base_url
        options["model_info"] = ModelInfo(vision=False, function_calling=True, json_output=False,
                                          family=ModelFamily.UNKNOWN, structured_output=False)
    return OpenAIChatCompletionClient(**options), f"{model} at {base_url or 'api.openai.com'}"


# -- one process's part ---------------------------------------------------------------------------
def banner(step: int, store: amber.Store, location: str, key: amber.SessionKey) -> None:
    print(f"\n=== process {step}: pid {os.getpid()} ===")
    print(f"store:   {store.url}  ({location})")
    print(f"session: {key}")


def show(messages: Sequence[Any]) -> None:
    for i, m in enumerate(messages, 1):
        source = getattr(m, "source", None)
        who = f"{m.type}" + (f" from {source}" if source else "")
        print(f"  [{i}] {who}: {m.content}")


async def one_turn(keeper: TeamStateKeeper, model: Any, text: str, *, show_input: bool) -> None:
    print(f"\nuser: {text}")
    try:
        result = await keeper.run(task=text)
    except ModelNotConfigured:
        print("assistant: (NO MODEL IS CONFIGURED, so there is no answer. The message above is stored.)")
        if show_input:
            print("Exactly what the model would have received:")
            show(model.received)
        return
    except Exception as exc:  # a configured model that fails: say so, the conversation is still stored
        print(f"assistant: (the model call failed: {type(exc).__name__}: {exc}. The message above is stored.)")
        return
    print(f"assistant: {result.messages[-1].content}")


async def run_step(step: int, url: str, key: amber.SessionKey) -> None:
    model, description = model_from_env()
    async with await amber.open_store(url) as store:
        location = (await store.describe()).get("path", store.url)
        banner(step, store, str(location), key)
        print(f"model:   {description}")
        if isinstance(model, NoModel):
            print("NO MODEL IS CONFIGURED: the assistant will not answer (no canned replies); "
                  "the demo prints what the model would receive instead.")

        # Freshly built in each process, as a web handler would: everything comes back by key.
        agent = _agent(store, key, model)
        keeper = TeamStateKeeper(store, key, agent, name="agent:claims")
        if step == 1:
            previous = await store.get_session(key)
            if previous is not None:  # a rerun of the demo starts the conversation afresh, explicitly
                receipt = await store.delete_session(key)
                print(f"(deleted {receipt.counts.get('messages', 0)} messages of an earlier demo run; audited)")
            for text in PROCESS_1_TURNS:
                await one_turn(keeper, model, text, show_input=False)
        else:
            history = await agent.model_context.get_messages()
            print(f"\nThe conversation is back: {len(history)} messages read from the store by this "
                  f"fresh process (pid {os.getpid()}), written by process 1:")
            show(history)
            await keeper.load()
            state = await agent.save_state()
            print(f"\nAgent state loaded: version {keeper.version} of '{key}' state 'agent:claims', "
                  f"a reference to the session rather than a copy: {dict(state['llm_context'])}")
            await one_turn(keeper, model, PROCESS_2_TURN, show_input=True)
        await model.close()


def _agent(store: amber.Store, key: amber.SessionKey, model: Any) -> Any:
    from autogen_agentchat.agents import AssistantAgent

    return AssistantAgent(
        "claims",
        model_client=model,
        system_message=SYSTEM,
        model_context=DurableChatCompletionContext(store, key, window=40),
    )


# -- the orchestrator: two separate processes -------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default="sqlite:///amber-demo.db", help="store URL (default: %(default)s)")
    parser.add_argument("--session", default="demo/alice/claim-C-7788",
                        help="tenant/user/thread (default: %(default)s)")
    parser.add_argument("--step", type=int, choices=(1, 2), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    # A stable key from the domain (customer + claim), never a per-run random id: that is the point.
    key = amber.SessionKey.parse(args.session)

    if args.step:
        # With no model configured, the model call raises inside AutoGen's tracing span, and
        # OpenTelemetry logs a harmless "Failed to detach context" traceback; keep the demo readable.
        logging.getLogger("opentelemetry.context").setLevel(logging.CRITICAL)
        asyncio.run(run_step(args.step, args.store, key))
        return 0

    print(f"Amber demo (orchestrator pid {os.getpid()}): two separate Python processes, one store.")
    for step in (1, 2):
        done = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--step", str(step), "--store", args.store,
             "--session", str(key)],
            check=False,
        )
        if done.returncode != 0:
            print(f"process {step} failed (exit status {done.returncode})", file=sys.stderr)
            return done.returncode
    print(f"\nDone. Inspect it yourself:  amber --store {args.store} history {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
