"""Real AutoGen AgentChat agents and teams on a real SQLite file, driven by deterministic model
clients (AutoGen's ReplayChatCompletionClient, and small scripted clients defined here -- no LLM).

The scenarios are the broken patterns users write (shared/seeds): the agent built per request, the
chat that ends early, the team rebuilt each turn, two requests for one session at once."""

from __future__ import annotations

import asyncio
from typing import Any, Sequence

import pytest
from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.conditions import HandoffTermination, MaxMessageTermination, TextMentionTermination
from autogen_agentchat.messages import HandoffMessage, TextMessage
from autogen_agentchat.teams import RoundRobinGroupChat, SelectorGroupChat, Swarm
from autogen_core import CancellationToken, FunctionCall
from autogen_core.models import CreateResult, ModelFamily, ModelInfo, RequestUsage, UserMessage
from autogen_ext.models.replay import ReplayChatCompletionClient

import amber
from amber.autogen import DurableChatCompletionContext, TeamStateKeeper

KEY = amber.SessionKey("acme", "u-42", "claim-7788")
TOOLS_INFO = ModelInfo(vision=False, function_calling=True, json_output=False, family=ModelFamily.UNKNOWN,
                       structured_output=False)


@pytest.fixture
async def store(tmp_path):
    s = await amber.open_store(f"sqlite:///{tmp_path}/agents.db")
    yield s
    await s.close()


def texts(messages: Sequence[Any]) -> list[str]:
    return [m.content if isinstance(m.content, str) else repr(m.content) for m in messages]


def support_agent(store, key, replies, *, name="support", window=None) -> tuple[AssistantAgent, Any]:
    client = ReplayChatCompletionClient(replies)
    agent = AssistantAgent(name, client, system_message="You help with insurance claims.",
                           model_context=DurableChatCompletionContext(store, key, window=window))
    return agent, client


async def test_continuity_over_several_turns_in_one_process(store):
    agent, client = support_agent(store, KEY, ["Noted.", "Got it.", "Policy P-12345, claim C-7788."])
    await agent.run(task="My policy number is P-12345.")
    await agent.run(task="My claim id is C-7788.")
    result = await agent.run(task="What are my policy and claim?")
    assert result.messages[-1].content == "Policy P-12345, claim C-7788."
    model_input = texts(client.create_calls[-1]["messages"])
    assert model_input == ["You help with insurance claims.", "My policy number is P-12345.", "Noted.",
                           "My claim id is C-7788.", "Got it.", "What are my policy and claim?"]
    assert len(await store.read_since(KEY)) == 6


async def test_an_agent_built_per_request_keeps_its_history(store):
    async def handle_request(text: str, reply: str) -> list[str]:
        agent, client = support_agent(store, KEY, [reply], window=40)  # the "broken" pattern, now fine
        await agent.run(task=text)
        return texts(client.create_calls[0]["messages"])

    await handle_request("My policy number is P-12345", "Thanks.")
    await handle_request("It is about water damage", "Understood.")
    seen = await handle_request("What is my policy number?", "P-12345")
    assert "My policy number is P-12345" in seen and "Understood." in seen
    assert seen[-1] == "What is my policy number?"


async def test_isolation_agents_of_two_users_and_two_tenants(store):
    alice = amber.SessionKey("acme", "alice", "t-1")
    bob = amber.SessionKey("acme", "bob", "t-1")
    other_tenant = amber.SessionKey("globex", "alice", "t-1")
    for key, secret in ((alice, "P-11111"), (bob, "P-22222"), (other_tenant, "P-33333")):
        agent, _ = support_agent(store, key, ["ok"])
        await agent.run(task=f"my policy is {secret}")
    for key, secret in ((alice, "P-11111"), (bob, "P-22222"), (other_tenant, "P-33333")):
        agent, client = support_agent(store, key, ["ok"])
        await agent.run(task="what is my policy?")
        joined = " ".join(texts(client.create_calls[0]["messages"]))
        assert secret in joined
        assert {"P-11111", "P-22222", "P-33333"} - {secret} & set(joined.split()) == set()
        assert sum(s in joined for s in ("P-11111", "P-22222", "P-33333")) == 1


async def test_tool_calls_round_trip_through_a_real_agent(store):
    def lookup_policy(policy: str) -> str:
        """Look up a policy."""
        return f"{policy}: active, holder A. Jones"

    calls = [
        CreateResult(finish_reason="function_calls", usage=RequestUsage(0, 0), cached=False,
                     content=[FunctionCall(id="c1", name="lookup_policy", arguments='{"policy": "P-12345"}')],
                     thought="Look it up first."),
        "It is active.",
    ]
    client = ReplayChatCompletionClient(calls, model_info=TOOLS_INFO)
    agent = AssistantAgent("support", client, tools=[lookup_policy], reflect_on_tool_use=True,
                           model_context=DurableChatCompletionContext(store, KEY))
    await agent.run(task="Is P-12345 active?")
    fresh = await DurableChatCompletionContext(store, KEY).get_messages()
    assert [type(m).__name__ for m in fresh] == [
        "UserMessage", "AssistantMessage", "FunctionExecutionResultMessage", "AssistantMessage"]
    assert fresh[1].thought == "Look it up first." and fresh[1].content[0].arguments == '{"policy": "P-12345"}'
    assert fresh[2].content[0].content == "P-12345: active, holder A. Jones"
    # What the model saw on the reflection call is exactly what a fresh process reads back.
    assert [m.model_dump() for m in client.create_calls[1]["messages"][1:]] == [m.model_dump() for m in fresh[:3]]


# -- teams --------------------------------------------------------------------------------------------
def round_robin(store, key, replies: dict[str, list[str]], *, max_messages=4, max_turns=None, termination=None):
    agents = [
        AssistantAgent(name, ReplayChatCompletionClient(replies[name]), system_message=f"You are {name}.",
                       model_context=DurableChatCompletionContext(store, key, agent_name=name))
        for name in ("adjuster", "reviewer")
    ]
    condition = termination if termination is not None else MaxMessageTermination(max_messages)
    return RoundRobinGroupChat(agents, termination_condition=condition, max_turns=max_turns)


async def view(store, key, name) -> list[str]:
    return texts(await DurableChatCompletionContext(store, key, agent_name=name).get_messages())


async def test_team_rebuilt_per_request_resumes_from_saved_state(store):
    team = round_robin(store, KEY, {"adjuster": ["a1"], "reviewer": ["r1"]}, max_messages=3)
    keeper = TeamStateKeeper(store, KEY, team)
    first = await keeper.run(task="Assess claim C-7788")
    assert texts(first.messages) == ["Assess claim C-7788", "a1", "r1"]
    saved = keeper.version
    assert saved and saved >= 2

    # Next request: everything rebuilt from scratch.
    team2 = round_robin(store, KEY, {"adjuster": ["a2"], "reviewer": ["r2"]}, max_messages=3)
    keeper2 = TeamStateKeeper(store, KEY, team2)
    second = await keeper2.run(task="Any fraud signals?")
    assert texts(second.messages) == ["Any fraud signals?", "a2", "r2"]
    state = (await store.get_state(KEY, "team")).data
    thread = [m["content"] for m in state["agent_states"]["RoundRobinGroupChatManager"]["message_thread"]]
    assert thread == ["Assess claim C-7788", "a1", "r1", "Any fraud signals?", "a2", "r2"]
    # The adjuster's own context holds its whole conversation, including the reviewer's r1 relayed to it.
    assert await view(store, KEY, "adjuster") == ["Assess claim C-7788", "a1", "r1", "Any fraud signals?", "a2"]
    assert await view(store, KEY, "reviewer") == ["Assess claim C-7788", "a1", "r1", "Any fraud signals?",
                                                  "a2", "r2"]


async def test_team_state_never_keeps_a_copy_of_what_memory_recalled(store):
    """AutoGen puts each MemoryQueryEvent (the recalled memories) into the group chat's message thread.
    Saved with the team state, it would be a copy of the user's memory that forget() never reaches."""
    from autogen_core.memory import MemoryContent, MemoryMimeType

    from amber.autogen import AmberMemory

    memory = AmberMemory(store, KEY)
    await memory.add(MemoryContent(content="The user's claim number is C-7788.", mime_type=MemoryMimeType.TEXT))
    agent = AssistantAgent("support", ReplayChatCompletionClient(["Your claim is C-7788."]), memory=[memory],
                           model_context=DurableChatCompletionContext(store, KEY, agent_name="support"))
    team = RoundRobinGroupChat([agent], termination_condition=MaxMessageTermination(2))
    result = await TeamStateKeeper(store, KEY, team).run(task="Which claim was it?")
    assert "MemoryQueryEvent" in [type(m).__name__ for m in result.messages]  # recall did happen
    thread = (await store.get_state(KEY, "team")).data["agent_states"]["RoundRobinGroupChatManager"]["message_thread"]
    assert [m["type"] for m in thread] == ["TextMessage", "TextMessage"]
    assert "The user's claim number" not in repr(thread)
    # The saved state still resumes: the next request's team continues the same thread.
    team2 = RoundRobinGroupChat([AssistantAgent(
        "support", ReplayChatCompletionClient(["Anything else?"]),
        model_context=DurableChatCompletionContext(store, KEY, agent_name="support"))],
        termination_condition=MaxMessageTermination(2))
    await TeamStateKeeper(store, KEY, team2).run(task="Thanks")
    thread = (await store.get_state(KEY, "team")).data["agent_states"]["RoundRobinGroupChatManager"]["message_thread"]
    assert [m["content"] for m in thread] == ["Which claim was it?", "Your claim is C-7788.", "Thanks", "Anything else?"]


async def test_a_chat_ended_by_a_termination_condition_keeps_every_message(store):
    team = round_robin(store, KEY, {"adjuster": ["checking", "never sent"], "reviewer": ["approved TERMINATE"]},
                       termination=TextMentionTermination("TERMINATE"))
    keeper = TeamStateKeeper(store, KEY, team)
    result = await keeper.run(task="Review C-7788")
    assert "TERMINATE" in result.stop_reason or "mention" in result.stop_reason.lower()
    assert await view(store, KEY, "reviewer") == ["Review C-7788", "checking", "approved TERMINATE"]
    assert (await store.get_state(KEY, "team")).version == keeper.version


async def test_a_chat_ended_by_max_turns_keeps_every_message(store):
    team = round_robin(store, KEY, {"adjuster": ["a1", "a2"], "reviewer": ["r1"]}, max_messages=100, max_turns=3)
    keeper = TeamStateKeeper(store, KEY, team)
    result = await keeper.run(task="go")
    assert texts(result.messages) == ["go", "a1", "r1", "a2"]
    assert await view(store, KEY, "adjuster") == ["go", "a1", "r1", "a2"]
    state = (await store.get_state(KEY, "team")).data
    assert [m["content"] for m in state["agent_states"]["RoundRobinGroupChatManager"]["message_thread"]] == [
        "go", "a1", "r1", "a2"]


class FailingAfter(ReplayChatCompletionClient):
    """Replays its answers, then fails like an unreachable model endpoint would."""

    async def create(self, messages, **kwargs):  # type: ignore[override]
        if self._current_index >= len(self.chat_completions):
            raise ConnectionError("model endpoint unreachable")
        return await super().create(messages, **kwargs)


async def test_a_chat_ended_by_an_exception_keeps_every_message_and_resumes(store):
    agents = [
        AssistantAgent("adjuster", ReplayChatCompletionClient(["a1", "a2"]),
                       model_context=DurableChatCompletionContext(store, KEY, agent_name="adjuster")),
        AssistantAgent("reviewer", FailingAfter(["r1"]),
                       model_context=DurableChatCompletionContext(store, KEY, agent_name="reviewer")),
    ]
    team = RoundRobinGroupChat(agents, termination_condition=MaxMessageTermination(10))
    keeper = TeamStateKeeper(store, KEY, team)
    with pytest.raises(Exception, match="unreachable"):
        await keeper.run(task="go")
    # go, a1, r1, a2 were produced before the reviewer's model failed: all of them are durable.
    assert await view(store, KEY, "reviewer") == ["go", "a1", "r1", "a2"]
    assert await view(store, KEY, "adjuster") == ["go", "a1", "r1", "a2"]
    blob = await store.get_state(KEY, "team")
    assert blob is not None and blob.version == keeper.version
    thread = [m["content"] for m in blob.data["agent_states"]["RoundRobinGroupChatManager"]["message_thread"]]
    assert thread == ["go", "a1", "r1", "a2"]

    # The model is back: a rebuilt team picks up where it stopped -- the reviewer speaks next.
    team2 = round_robin(store, KEY, {"adjuster": ["a3"], "reviewer": ["r2"]}, max_messages=2)
    resumed = await TeamStateKeeper(store, KEY, team2).run()
    assert texts(resumed.messages) == ["r2", "a3"]
    # AutoGen re-delivers a2 to the reviewer whose turn failed; it is not stored twice.
    assert await view(store, KEY, "reviewer") == ["go", "a1", "r1", "a2", "r2"]
    assert await view(store, KEY, "adjuster") == ["go", "a1", "r1", "a2", "r2", "a3"]


class Gate(ReplayChatCompletionClient):
    """Replays answers but blocks on call number ``block_at`` until cancelled (a slow model)."""

    def __init__(self, replies, block_at: int, reached: asyncio.Event):
        super().__init__(replies)
        self._block_at, self._reached = block_at, reached

    async def create(self, messages, **kwargs):  # type: ignore[override]
        if self._current_index == self._block_at:
            self._reached.set()
            waiting = asyncio.ensure_future(asyncio.Event().wait())
            kwargs["cancellation_token"].link_future(waiting)  # as real clients link their HTTP call
            await waiting
        return await super().create(messages, **kwargs)


async def test_a_cancelled_chat_keeps_every_message_and_its_state(store):
    reached = asyncio.Event()
    agents = [
        AssistantAgent("adjuster", Gate(["a1", "a2"], 1, reached),
                       model_context=DurableChatCompletionContext(store, KEY, agent_name="adjuster")),
        AssistantAgent("reviewer", ReplayChatCompletionClient(["r1"]),
                       model_context=DurableChatCompletionContext(store, KEY, agent_name="reviewer")),
    ]
    team = RoundRobinGroupChat(agents, termination_condition=MaxMessageTermination(10))
    keeper = TeamStateKeeper(store, KEY, team)
    token = CancellationToken()
    run = asyncio.create_task(keeper.run(task="go", cancellation_token=token))
    await asyncio.wait_for(reached.wait(), 30)
    token.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, 30)
    assert await view(store, KEY, "adjuster") == ["go", "a1", "r1"]
    blob = await store.get_state(KEY, "team")
    assert blob is not None and blob.version == keeper.version
    thread = [m["content"] for m in blob.data["agent_states"]["RoundRobinGroupChatManager"]["message_thread"]]
    assert thread == ["go", "a1", "r1"]


async def test_a_chat_whose_task_is_cancelled_stops_promptly_and_keeps_its_state(store):
    # The caller cancels the asyncio task (e.g. the HTTP client went away), not the AutoGen token.
    reached = asyncio.Event()
    agents = [
        AssistantAgent("adjuster", ReplayChatCompletionClient(["a1"]),
                       model_context=DurableChatCompletionContext(store, KEY, agent_name="adjuster")),
        AssistantAgent("reviewer", Gate(["r1"], 0, reached),
                       model_context=DurableChatCompletionContext(store, KEY, agent_name="reviewer")),
    ]
    keeper = TeamStateKeeper(store, KEY, RoundRobinGroupChat(agents, termination_condition=MaxMessageTermination(9)))
    run = asyncio.create_task(keeper.run(task="go"))
    await asyncio.wait_for(reached.wait(), 30)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, 30)  # the blocked model call was cancelled through the run's token
    assert await view(store, KEY, "reviewer") == ["go", "a1"]
    blob = await store.get_state(KEY, "team")
    assert blob.version == keeper.version
    assert [m["content"] for m in blob.data["agent_states"]["RoundRobinGroupChatManager"]["message_thread"]] == [
        "go", "a1"]


async def test_two_requests_at_once_in_one_process_take_turns(store):
    async def request(task: str, reply: str) -> list[str]:
        team = round_robin(store, KEY, {"adjuster": [reply], "reviewer": [reply.upper()]}, max_messages=3)
        return texts((await TeamStateKeeper(store, KEY, team).run(task=task)).messages)

    results = await asyncio.gather(request("first", "x1"), request("second", "y1"))
    assert sorted(results) == [["first", "x1", "X1"], ["second", "y1", "Y1"]]
    thread = [m["content"] for m in
              (await store.get_state(KEY, "team")).data["agent_states"]["RoundRobinGroupChatManager"]["message_thread"]]
    # Serialised: the second request loaded the first one's state; neither overwrote the other.
    assert len(thread) == 6 and set(thread) == {"first", "x1", "X1", "second", "y1", "Y1"}


async def test_a_stale_writer_gets_a_version_conflict_and_corrupts_nothing(store):
    team_a = round_robin(store, KEY, {"adjuster": ["a1"], "reviewer": ["r1"]}, max_messages=3)
    team_b = round_robin(store, KEY, {"adjuster": ["b1"], "reviewer": ["s1"]}, max_messages=3)
    keeper_a, keeper_b = TeamStateKeeper(store, KEY, team_a), TeamStateKeeper(store, KEY, team_b)
    await keeper_a.load()
    await keeper_b.load()  # both start from "no state" (another process, no shared lock)
    await keeper_a.run(task="from A")
    saved = await store.get_state(KEY, "team")
    await team_b.run(task="from B")  # B runs on its stale state, outside the keeper
    with pytest.raises(amber.VersionConflict) as info:
        await keeper_b.save()
    assert info.value.actual == saved.version
    after = await store.get_state(KEY, "team")
    assert after.version == saved.version and after.data == saved.data

    # A keeper that never loaded does not overwrite a saved state blindly either.
    with pytest.raises(amber.VersionConflict):
        await TeamStateKeeper(store, KEY, team_b).save()
    assert (await store.get_state(KEY, "team")).data == saved.data


async def test_a_cross_process_lock_factory_is_held_for_the_whole_turn(store):
    events: list[str] = []

    class Lease:
        def __init__(self, key):
            self.key = key

        async def __aenter__(self):
            events.append(f"acquire {self.key}")

        async def __aexit__(self, *exc):
            events.append(f"release {self.key}")

    team = round_robin(store, KEY, {"adjuster": ["a1"], "reviewer": ["r1"]}, max_messages=3)
    keeper = TeamStateKeeper(store, KEY, team, lock=Lease)
    async for item in keeper.run_stream(task="go"):
        events.append(type(item).__name__)
    assert events[0] == f"acquire {KEY}" and events[-1] == f"release {KEY}"
    assert "TaskResult" in events


async def test_selector_group_chat_resumes_in_a_rebuilt_team(store):
    def build(adjuster, reviewer, selector):
        agents = [
            AssistantAgent("adjuster", ReplayChatCompletionClient(adjuster), description="assesses damage",
                           model_context=DurableChatCompletionContext(store, KEY, agent_name="adjuster")),
            AssistantAgent("reviewer", ReplayChatCompletionClient(reviewer), description="reviews",
                           model_context=DurableChatCompletionContext(store, KEY, agent_name="reviewer")),
        ]
        return SelectorGroupChat(agents, model_client=ReplayChatCompletionClient(selector),
                                 termination_condition=MaxMessageTermination(3), allow_repeated_speaker=True)

    first = await TeamStateKeeper(store, KEY, build(["a1"], ["r1"], ["adjuster", "reviewer"])).run(task="go")
    assert texts(first.messages) == ["go", "a1", "r1"]
    second = await TeamStateKeeper(store, KEY, build(["a2"], ["r2"], ["reviewer", "adjuster"])).run(task="more")
    assert texts(second.messages) == ["more", "r2", "a2"]
    state = (await store.get_state(KEY, "team")).data
    thread = [m["content"] for m in state["agent_states"]["SelectorGroupChatManager"]["message_thread"]]
    assert thread == ["go", "a1", "r1", "more", "r2", "a2"]
    assert await view(store, KEY, "reviewer") == ["go", "a1", "r1", "more", "r2"]


async def test_swarm_handoff_to_a_human_between_requests(store):
    def build(replies):
        agent = AssistantAgent(
            "claims", ReplayChatCompletionClient(replies, model_info=TOOLS_INFO), handoffs=["user"],
            model_context=DurableChatCompletionContext(store, KEY, agent_name="claims"))
        return Swarm([agent], termination_condition=HandoffTermination(target="user") | TextMentionTermination("TERMINATE"))

    ask_user = CreateResult(finish_reason="function_calls", usage=RequestUsage(0, 0), cached=False,
                            content=[FunctionCall(id="h1", name="transfer_to_user", arguments="{}")])
    # Request 1: the agent needs the claim id and hands off to the human.
    first = await TeamStateKeeper(store, KEY, build([ask_user])).run(task="I want to report damage.")
    assert isinstance(first.messages[-1], HandoffMessage) and first.messages[-1].target == "user"

    # Request 2, with everything rebuilt: the human answers the handoff.
    team = build(["Thanks, claim C-7788 is registered. TERMINATE"])
    keeper = TeamStateKeeper(store, KEY, team)
    result = await keeper.run(task=HandoffMessage(source="user", target="claims", content="Claim id C-7788."))
    assert isinstance(result.messages[-1], TextMessage)
    assert "C-7788" in result.messages[-1].content
    seen = await view(store, KEY, "claims")
    assert seen[0] == "I want to report damage." and "Claim id C-7788." in seen
    state = (await store.get_state(KEY, "team")).data
    assert len(state["agent_states"]["SwarmGroupChatManager"]["message_thread"]) >= 4


async def test_keeper_also_keeps_a_single_agent_state(store):
    agent, _ = support_agent(store, KEY, ["hello"])
    keeper = TeamStateKeeper(store, KEY, agent, name="agent:support")
    await keeper.run(task="hi")
    blob = await store.get_state(KEY, "agent:support")
    assert blob.data["llm_context"]["session"] == str(KEY)  # a reference to the transcript, not a copy
    with pytest.raises(amber.InvalidInput):
        TeamStateKeeper(store, KEY, object())  # type: ignore[arg-type]


async def test_memory_seam_with_a_real_agent(store):
    ctx = DurableChatCompletionContext(store, KEY)
    client = ReplayChatCompletionClient(["ok", "ok"])
    agent = AssistantAgent("support", client, system_message="Be brief.", model_context=ctx)
    ctx.set_memory_block("[memory] policy: P-12345")
    await agent.run(task="hi")
    sent = client.create_calls[0]["messages"]
    # Agent system message + the block as one contiguous leading run: mergeable by any client.
    assert [type(m).__name__ for m in sent] == ["SystemMessage", "SystemMessage", "UserMessage"]
    assert sent[1].content == "[memory] policy: P-12345"
    assert "P-12345" not in " ".join(m.content for m in await store.read_since(KEY))
    assert isinstance(sent[2], UserMessage)
