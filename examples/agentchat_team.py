"""A RoundRobinGroupChat whose state survives the process: run it, stop, run it again from scratch.

    python examples/agentchat_team.py --store sqlite:///amber-team.db     # run it twice

Each run builds the team anew, and TeamStateKeeper loads the session's saved team state before
running and saves it after every message and when the run ends (also on errors and cancellation).
The second run continues the first: the group chat manager's thread and each agent's own
durable context hold both.

Models are AutoGen's ReplayChatCompletionClient: the replies are CANNED strings, so this runs without
an LLM; the continuity it shows is real. Swap in your own model clients.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.conditions import MaxMessageTermination
from autogen_agentchat.teams import RoundRobinGroupChat
from autogen_ext.models.replay import ReplayChatCompletionClient

import amber
from amber.autogen import DurableChatCompletionContext, TeamStateKeeper

KEY = amber.SessionKey("acme", "u-42", "claim-7788-review")


def build_team(store: amber.Store, run: int) -> RoundRobinGroupChat:
    agents = [
        AssistantAgent(
            name,
            ReplayChatCompletionClient([f"{name} speaking (canned reply, run {run})"]),
            system_message=f"You are the {name}.",
            # Each agent has its own view of the shared session.
            model_context=DurableChatCompletionContext(store, KEY, agent_name=name, window=40),
        )
        for name in ("adjuster", "reviewer")
    ]
    return RoundRobinGroupChat(agents, termination_condition=MaxMessageTermination(3))


async def main(url: str) -> None:
    async with await amber.open_store(url) as store:
        saved = await store.get_state(KEY, "team")
        run = 1 + (len(saved.data["agent_states"]["RoundRobinGroupChatManager"]["message_thread"]) // 3
                   if saved else 0)
        print(f"store {store.url}, session {KEY}, pid {os.getpid()}, run {run}")
        keeper = TeamStateKeeper(store, KEY, build_team(store, run))
        # For several worker processes, serialise a session's turns across them, e.g.:
        #   TeamStateKeeper(store, KEY, team, lock=lambda k: amber.locks.session_lease(redis_store, k))
        result = await keeper.run(task=f"Review claim C-7788 (request {run})")
        for m in result.messages:
            print(f"  {m.source}: {m.content}")
        adjuster = DurableChatCompletionContext(store, KEY, agent_name="adjuster")
        print(f"state version {keeper.version}; the adjuster's context now holds "
              f"{len(await adjuster.get_messages())} messages")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", default="sqlite:///amber-team.db")
    asyncio.run(main(parser.parse_args().store))
