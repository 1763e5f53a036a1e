"""The pattern users write -- an agent built per request -- made durable with Amber.

    python examples/agentchat_per_request.py [--store sqlite:///amber-example.db]

Each "request" builds a brand-new AssistantAgent (as a FastAPI handler would) and still continues
the conversation, because its model context reads the session from the store by key.

The model here is AutoGen's ReplayChatCompletionClient: its replies are CANNED (fixed strings), so
the example runs without an LLM. What it shows is real: the messages the model *receives* on the
third request include what the user said in the first. Swap in your own model client.
"""

from __future__ import annotations

import argparse
import asyncio

from autogen_agentchat.agents import AssistantAgent
from autogen_ext.models.replay import ReplayChatCompletionClient

import amber
from amber.autogen import DurableChatCompletionContext


async def handle_request(store: amber.Store, user_id: str, ticket_id: str, text: str, canned: str) -> None:
    # The key comes from YOUR domain (user + ticket), never from a per-request random id.
    key = amber.SessionKey(tenant="acme", user=user_id, thread=ticket_id)
    model = ReplayChatCompletionClient([canned])  # canned reply; use your real model client
    agent = AssistantAgent(
        "support",
        model_client=model,
        system_message="You are a claims assistant.",
        model_context=DurableChatCompletionContext(store, key, window=40),
    )
    result = await agent.run(task=text)
    received = model.create_calls[0]["messages"]
    print(f"\nuser: {text}\nassistant (canned): {result.messages[-1].content}")
    print(f"  the model received {len(received)} messages:")
    for m in received:
        print(f"    {m.type}: {m.content}")


async def main(url: str) -> None:
    async with await amber.open_store(url) as store:
        await handle_request(store, "u-42", "claim-7788", "My policy number is P-12345.", "Noted.")
        await handle_request(store, "u-42", "claim-7788", "It is about water damage.", "Understood.")
        await handle_request(store, "u-42", "claim-7788", "What is my policy number?", "(canned answer)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", default="memory://per-request-example")
    asyncio.run(main(parser.parse_args().store))
