"""The scenarios users report, across real process boundaries: each run is a new Python process with
new AG2 agent objects and one SQLite file in between. Model replies come from ScriptedModelClient
(tests/test_ag2_support.py), which also records what the model was sent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

TESTS_DIR = Path(__file__).resolve().parent

SCRIPT = r'''
import json, sys
sys.path.insert(0, sys.argv[1])
from test_ag2_support import model_agent, user_agent, texts
from autogen import GroupChat, GroupChatManager
from amber.ag2 import persist, remember

mode, url, key = sys.argv[2:5]
out = {}
if mode == "say":            # run 1: the user states a fact; the process then exits
    assistant, _ = model_agent("assistant", "Noted, thank you.")
    persist(assistant, url, key)
    user_agent().initiate_chat(assistant, message=sys.argv[5], max_turns=1, silent=True)
elif mode == "ask":          # run 2: new objects, continue the conversation
    assistant, calls = model_agent("assistant", "Your policy number is on file.")
    persist(assistant, url, key)
    memory = remember(assistant, url, key)
    memory.learn_now()  # what `amber worker` would have done in the background
    out["facts"] = [[h.kind, h.text] for h in memory.search("What is my policy number?") if h.kind == "fact"]
    user_agent().initiate_chat(assistant, message="What is my policy number?", max_turns=1, silent=True,
                               clear_history=False)
    out["model_saw"] = texts(calls[-1])
elif mode == "crash":        # a reply function raises; the process dies with it
    assistant, _ = model_agent("assistant", "first answer")
    persist(assistant, url, key)
    n = {"calls": 0}
    def explode(recipient, messages, sender, config):
        n["calls"] += 1
        if n["calls"] == 2:
            raise RuntimeError("tool backend down")
        return False, None
    assistant.register_reply([user_agent("x").__class__, None], explode, position=0)
    user_agent(reply="my claim id is C-7788").initiate_chat(assistant, message="hello", max_turns=3, silent=True)
elif mode in ("group1", "group2"):
    analyst, acalls = model_agent("analyst", "analysis " + mode)
    reviewer, rcalls = model_agent("reviewer", "review " + mode)
    user = user_agent("user", reply="continue please")
    chat = GroupChat(agents=[user, analyst, reviewer], messages=[], max_round=3, speaker_selection_method="round_robin")
    manager = GroupChatManager(chat, llm_config=False)
    history = persist(manager, url, key)
    if mode == "group1":
        user.initiate_chat(manager, message="Assess claim C-7788", silent=True)
    else:
        last_agent, last_message = history.resume()
        out["resumed_from"] = [last_agent.name, last_message["content"]]
        last_agent.initiate_chat(manager, message=last_message, clear_history=False, silent=True)
        out["analyst_saw"] = texts(acalls[-1])
print("RESULT:" + json.dumps(out))
'''


def run(tmp_path: Path, *args: str, expect_ok: bool = True) -> dict[str, Any]:
    script = tmp_path / "classic_run.py"
    script.write_text(SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(TESTS_DIR), *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    if not expect_ok:
        assert proc.returncode != 0, proc.stdout
        return {"stderr": proc.stderr}
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT:")][-1]
    return json.loads(line[len("RESULT:") :])


def read(url: str, key: str) -> list[tuple[str, str]]:
    import asyncio

    import amber

    async def go() -> list[tuple[str, str]]:
        async with await amber.open_store(url) as store:
            return [(m.role, m.content) for m in await store.read_since(amber.SessionKey.parse(key))]

    return asyncio.run(go())


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/amber.db"


def test_policy_number_survives_a_restart_and_users_stay_isolated(tmp_path: Path, url: str) -> None:
    run(tmp_path, "say", url, "acme/alice/support", "My policy number is P-12345")
    run(tmp_path, "say", url, "acme/bob/support", "My policy number is P-99999")

    out = run(tmp_path, "ask", url, "acme/alice/support")
    alice = out["model_saw"]
    assert "My policy number is P-12345" in alice
    assert alice[-1] == "What is my policy number?"
    assert not any("P-99999" in text for text in alice)
    # Recall returns it as a learned fact, and the model got it in the memory block too.
    assert out["facts"][0] == ["fact", "The user's policy number is P-12345."]
    assert any(t.startswith("<amber-memory>") and "The user's policy number is P-12345." in t for t in alice)

    out = run(tmp_path, "ask", url, "acme/bob/support")
    bob = out["model_saw"]
    assert "My policy number is P-99999" in bob and not any("P-12345" in t for t in bob)
    assert [text for _, text in out["facts"]] == ["The user's policy number is P-99999."]

    assert read(url, "acme/alice/support") == [
        ("user", "My policy number is P-12345"),
        ("assistant", "Noted, thank you."),
        ("user", "What is my policy number?"),
        ("assistant", "Your policy number is on file."),
    ]


def test_a_process_killed_by_an_exception_loses_nothing_said_before(tmp_path: Path, url: str) -> None:
    failed = run(tmp_path, "crash", url, "acme/carol/claim", expect_ok=False)
    assert "tool backend down" in failed["stderr"]
    assert read(url, "acme/carol/claim") == [
        ("user", "hello"),
        ("assistant", "first answer"),
        ("user", "my claim id is C-7788"),
    ]
    saw = run(tmp_path, "ask", url, "acme/carol/claim")["model_saw"]
    history = [t for t in saw if not t.startswith(("<amber-memory>", "You are"))]
    assert history[:3] == ["hello", "first answer", "my claim id is C-7788"]


def test_group_chat_resumes_in_a_new_process(tmp_path: Path, url: str) -> None:
    run(tmp_path, "group1", url, "acme/dave/board")
    assert read(url, "acme/dave/board") == [
        ("user", "Assess claim C-7788"),
        ("assistant", "analysis group1"),
        ("assistant", "review group1"),
    ]
    out = run(tmp_path, "group2", url, "acme/dave/board")
    assert out["resumed_from"] == ["reviewer", "review group1"]
    # The analyst in the new process was given the whole earlier conversation.
    assert out["analyst_saw"][1:] == ["Assess claim C-7788", "analysis group1", "review group1", "continue please"]
    # The re-sent last message did not duplicate; the new turns were appended.
    assert read(url, "acme/dave/board") == [
        ("user", "Assess claim C-7788"),
        ("assistant", "analysis group1"),
        ("assistant", "review group1"),
        ("user", "continue please"),
        ("assistant", "analysis group2"),
    ]
