"""Restart continuity across real OS processes on one SQLite file: a fresh Python process with freshly
built agents and teams sees the first process's messages and team state -- also after the first one
was SIGKILLed in the middle of a team run. Models are AutoGen's ReplayChatCompletionClient (canned,
deterministic; no LLM)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import amber
from amber.autogen import DurableChatCompletionContext

KEY = amber.SessionKey("acme", "u-42", "claim-7788")

SCRIPT = textwrap.dedent(
    """
    import asyncio, json, os, signal, sys
    import amber
    from amber.autogen import DurableChatCompletionContext, TeamStateKeeper
    from autogen_agentchat.agents import AssistantAgent
    from autogen_agentchat.conditions import MaxMessageTermination
    from autogen_agentchat.teams import RoundRobinGroupChat
    from autogen_ext.models.replay import ReplayChatCompletionClient

    url, mode = sys.argv[1], sys.argv[2]
    key = amber.SessionKey("acme", "u-42", "claim-7788")

    class KillAt(ReplayChatCompletionClient):
        # SIGKILLs its own process on call number `at`, once the team's checkpoint of the message
        # before has landed in the store -- a crash mid-run, after the last checkpoint.
        def __init__(self, replies, at, store, wait_for):
            super().__init__(replies)
            self.at, self.store, self.wait_for = at, store, wait_for

        async def create(self, messages, **kwargs):
            if self._current_index == self.at:
                while True:
                    blob = await self.store.get_state(key, "team")
                    thread = blob.data["agent_states"]["RoundRobinGroupChatManager"]["message_thread"] if blob else []
                    if self.wait_for in [m["content"] for m in thread]:
                        break
                    await asyncio.sleep(0.01)
                os.kill(os.getpid(), signal.SIGKILL)
            return await super().create(messages, **kwargs)

    def team(store, adjuster, reviewer, max_messages):
        agents = [
            AssistantAgent("adjuster", adjuster, model_context=DurableChatCompletionContext(store, key, agent_name="adjuster")),
            AssistantAgent("reviewer", reviewer, model_context=DurableChatCompletionContext(store, key, agent_name="reviewer")),
        ]
        return RoundRobinGroupChat(agents, termination_condition=MaxMessageTermination(max_messages))

    def contents(messages):
        return [m.content for m in messages]

    async def main():
        store = await amber.open_store(url)
        out = {"pid": os.getpid()}
        if mode == "first":
            # A single support agent (its own session) and a team, as process 1 of a deployment.
            solo = amber.SessionKey("acme", "u-42", "solo")
            agent = AssistantAgent("support", ReplayChatCompletionClient(["Noted."]),
                                   model_context=DurableChatCompletionContext(store, solo, window=40))
            await agent.run(task="My policy number is P-12345.")
            t = team(store, ReplayChatCompletionClient(["a1"]), ReplayChatCompletionClient(["r1"]), 3)
            keeper = TeamStateKeeper(store, key, t)
            out["team"] = contents((await keeper.run(task="Assess claim C-7788")).messages)
            out["version"] = keeper.version
        elif mode == "second":
            solo = amber.SessionKey("acme", "u-42", "solo")
            client = ReplayChatCompletionClient(["Your policy number is P-12345."])
            agent = AssistantAgent("support", client,
                                   model_context=DurableChatCompletionContext(store, solo, window=40))
            await agent.run(task="What is my policy number?")
            out["model_input"] = contents(client.create_calls[0]["messages"])
            t = team(store, ReplayChatCompletionClient(["a2"]), ReplayChatCompletionClient(["r2"]), 3)
            keeper = TeamStateKeeper(store, key, t)
            out["loaded"] = await keeper.load()
            out["loaded_version"] = keeper.version
            out["team"] = contents((await keeper.run(task="Any fraud signals?")).messages)
        elif mode == "crash":
            t = team(store, ReplayChatCompletionClient(["a1", "a2"]),
                     KillAt(["r1"], 1, store, wait_for="a2"), 10)
            await TeamStateKeeper(store, key, t).run(task="go")
            out["error"] = "survived the SIGKILL"
        elif mode == "leased":
            # Two of these run at once: turns serialised across processes by a Redis lease.
            import redis.asyncio as aioredis
            from amber.locks import session_lease
            redis_url, prefix, go, name = sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
            client = aioredis.from_url(redis_url)
            t = team(store, ReplayChatCompletionClient([name + "-a"]), ReplayChatCompletionClient([name + "-r"]), 3)
            keeper = TeamStateKeeper(store, key, t, lock=lambda k: session_lease(client, k, prefix=prefix))
            while not os.path.exists(go):
                await asyncio.sleep(0.005)
            out["team"] = contents((await keeper.run(task="from " + name)).messages)
            await client.aclose()
        elif mode == "resume":
            t = team(store, ReplayChatCompletionClient(["a3"]), ReplayChatCompletionClient(["r2"]), 2)
            keeper = TeamStateKeeper(store, key, t)
            out["team"] = contents((await keeper.run()).messages)
        await store.close()
        print(json.dumps(out), flush=True)

    asyncio.run(main())
    """
)


def run(tmp_path, url: str, mode: str) -> subprocess.CompletedProcess:
    script = tmp_path / "agentchat_process.py"
    script.write_text(SCRIPT)
    return subprocess.run([sys.executable, str(script), url, mode], capture_output=True, text=True, timeout=300)


def start(tmp_path, url: str, mode: str, *args: str) -> subprocess.Popen:
    script = tmp_path / "agentchat_process.py"
    script.write_text(SCRIPT)
    return subprocess.Popen([sys.executable, str(script), url, mode, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def result(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


async def test_a_fresh_process_sees_the_first_ones_messages_and_team_state(tmp_path):
    url = f"sqlite:///{tmp_path}/restart.db"
    first = result(run(tmp_path, url, "first"))
    assert first["team"] == ["Assess claim C-7788", "a1", "r1"]
    second = result(run(tmp_path, url, "second"))
    assert second["pid"] != first["pid"]
    assert second["model_input"][1:] == ["My policy number is P-12345.", "Noted.", "What is my policy number?"]
    assert second["loaded"] is True and second["loaded_version"] == first["version"]
    assert second["team"] == ["Any fraud signals?", "a2", "r2"]

    async with await amber.open_store(url) as store:
        thread = [m["content"] for m in
                  (await store.get_state(KEY, "team")).data["agent_states"]["RoundRobinGroupChatManager"][
                      "message_thread"]]
        assert thread == ["Assess claim C-7788", "a1", "r1", "Any fraud signals?", "a2", "r2"]
        adjuster = await DurableChatCompletionContext(store, KEY, agent_name="adjuster").get_messages()
        assert [m.content for m in adjuster] == ["Assess claim C-7788", "a1", "r1", "Any fraud signals?", "a2"]


async def test_a_team_killed_mid_run_resumes_in_a_fresh_process(tmp_path):
    url = f"sqlite:///{tmp_path}/crash.db"
    crashed = run(tmp_path, url, "crash")
    assert crashed.returncode == -signal.SIGKILL, (crashed.returncode, crashed.stdout, crashed.stderr[-2000:])

    async with await amber.open_store(url) as store:
        # Everything said before the crash is durable, including a2, which the reviewer received just
        # before its model call was cut off.
        reviewer = await DurableChatCompletionContext(store, KEY, agent_name="reviewer").get_messages()
        assert [m.content for m in reviewer] == ["go", "a1", "r1", "a2"]

    resumed = result(run(tmp_path, url, "resume"))
    assert resumed["team"] == ["r2", "a3"]  # the reviewer, whose turn was cut off, speaks first

    async with await amber.open_store(url) as store:
        reviewer = await DurableChatCompletionContext(store, KEY, agent_name="reviewer").get_messages()
        assert [m.content for m in reviewer] == ["go", "a1", "r1", "a2", "r2"]  # a2 not duplicated
        adjuster = await DurableChatCompletionContext(store, KEY, agent_name="adjuster").get_messages()
        assert [m.content for m in adjuster] == ["go", "a1", "r1", "a2", "r2", "a3"]
        blob = await store.get_state(KEY, "team")
        thread = [m["content"] for m in blob.data["agent_states"]["RoundRobinGroupChatManager"]["message_thread"]]
        assert thread == ["go", "a1", "r1", "a2", "r2", "a3"]


async def test_two_processes_running_one_session_at_once_take_turns_with_a_redis_lease(tmp_path):
    import uuid

    import redis.asyncio as aioredis

    from conftest import REDIS_URL, unreachable

    client = aioredis.from_url(REDIS_URL)
    try:
        await client.ping()
    except Exception as exc:  # noqa: BLE001 - any connection failure means the server is not there
        unreachable("Redis", exc)
    finally:
        await client.aclose()

    url = f"sqlite:///{tmp_path}/leased.db"
    prefix = f"amber-test-{uuid.uuid4().hex}:"  # our own keys in the shared test DB
    go = tmp_path / "go"
    procs = [start(tmp_path, url, "leased", REDIS_URL, prefix, str(go), name) for name in ("p1", "p2")]
    go.touch()
    outputs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
        outputs.append(json.loads(stdout.strip().splitlines()[-1]))
    assert sorted(o["team"] for o in outputs) == [["from p1", "p1-a", "p1-r"], ["from p2", "p2-a", "p2-r"]]

    async with await amber.open_store(url) as store:
        blob = await store.get_state(KEY, "team")
        thread = [m["content"] for m in blob.data["agent_states"]["RoundRobinGroupChatManager"]["message_thread"]]
    # Whichever went second loaded the first one's state: both turns are in it, neither overwritten.
    assert sorted(thread[:3] + thread[3:]) == sorted(["from p1", "p1-a", "p1-r", "from p2", "p2-a", "p2-r"])
    assert thread[0].startswith("from") and thread[3].startswith("from")
