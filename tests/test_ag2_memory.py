"""amber.ag2.remember: learned facts and past turns reach a classic agent's model as ONE quoted-data
block within a token budget, never in the agent's history or the stored transcript. Real AG2
agents, real SQLite files, scripted model replies (ScriptedModelClient)."""

from __future__ import annotations

import time
from typing import Any, Iterator

import pytest
from test_ag2_support import model_agent, texts, user_agent

from amber import InvalidInput, NewFact, SessionKey
from amber.ag2 import persist, remember
from amber.recall import BLOCK_OPEN
from amber.sync import SyncStore
from amber.tokens import estimate_tokens

FIRST = SessionKey("acme", "alice", "claim-1")
LATER = SessionKey("acme", "alice", "claim-2")  # a new conversation of the same user


@pytest.fixture
def store(tmp_path: Any) -> Iterator[SyncStore]:
    sync = SyncStore.open(f"sqlite:///{tmp_path}/amber.db")
    yield sync
    sync.close()


def blocks(messages: list[dict[str, Any]]) -> list[str]:
    return [m["content"] for m in messages if m.get("role") == "system" and str(m.get("content")).startswith(BLOCK_OPEN)]


def tell_policy(store: SyncStore, key: SessionKey = FIRST, number: str = "P-12345") -> None:
    assistant, _ = model_agent("assistant", "Noted.")
    persist(assistant, store, key)
    user_agent().initiate_chat(assistant, message=f"My policy number is {number}", max_turns=1, silent=True)


def test_a_new_conversation_recalls_the_fact_as_quoted_data(store: SyncStore) -> None:
    tell_policy(store)
    assistant, calls = model_agent("assistant", "It is P-12345.")
    persist(assistant, store, LATER)
    memory = remember(assistant, store, LATER)
    assert memory.learn_now() >= 1
    facts = [h for h in memory.search("policy number") if h.kind == "fact"]
    assert facts and "P-12345" in facts[0].text

    user = user_agent()
    user.initiate_chat(assistant, message="What is my policy number?", max_turns=1, silent=True)
    sent = calls[-1]
    [block] = blocks(sent)
    assert "The user's policy number is P-12345." in block
    # Leading system messages: the agent's own, then the block, then the conversation.
    assert [m["role"] for m in sent[:3]] == ["system", "system", "user"]
    assert memory.last_block == block
    # Never in the agent's history, never in the store.
    assert not blocks(assistant.chat_messages[user])
    assert not any(m.content.startswith(BLOCK_OPEN) for m in store.read_since(LATER))
    assert [m.content for m in store.read_since(LATER)] == ["What is my policy number?", "It is P-12345."]


def test_the_block_is_rebuilt_each_turn_never_piles_up(store: SyncStore) -> None:
    tell_policy(store)
    assistant, calls = model_agent("assistant", ["one", "two", "three"])
    memory = remember(assistant, store, LATER)
    memory.learn_now()
    user_agent(reply="and my policy number?").initiate_chat(
        assistant, message="What is my policy number?", max_turns=3, silent=True
    )
    assert len(calls) == 3
    assert [len(blocks(c)) for c in calls] == [1, 1, 1]


def test_the_block_fits_the_token_budget(store: SyncStore) -> None:
    for i in range(40):
        store.record_fact(
            "acme", "alice",
            NewFact(attribute=f"policy_{i}", value=f"P-{i:05d}",
                    text=f"The user's policy number for vehicle {i} is P-{i:05d}, renewed every year in spring."),
        )
    assistant, calls = model_agent("assistant", "ok")
    remember(assistant, store, LATER, max_tokens=120, limit=40, modes=("lexical",))
    user_agent().initiate_chat(assistant, message="list my policy numbers", max_turns=1, silent=True)
    [block] = blocks(calls[-1])
    assert estimate_tokens(block) <= 120
    assert block.count("[fact ") >= 1


def test_memory_is_per_user(store: SyncStore) -> None:
    tell_policy(store, SessionKey("acme", "bob", "claim-1"), number="P-99999")
    tell_policy(store)
    assistant, calls = model_agent("assistant", "ok")
    memory = remember(assistant, store, SessionKey("acme", "bob", "claim-2"))
    memory.learn_now()
    user_agent().initiate_chat(assistant, message="What is my policy number?", max_turns=1, silent=True)
    seen = " ".join(texts(calls[-1]))
    assert "P-99999" in seen and "P-12345" not in seen


def test_nothing_recalled_means_the_model_input_is_unchanged(store: SyncStore) -> None:
    assistant, calls = model_agent("assistant", "hello")
    memory = remember(assistant, store, LATER)
    user_agent().initiate_chat(assistant, message="hi there", max_turns=1, silent=True)
    assert texts(calls[-1]) == ["You are a helpful AI Assistant.", "hi there"]
    assert memory.last_block is None


async def test_recall_under_a_initiate_chat(store: SyncStore) -> None:
    tell_policy(store)
    assistant, calls = model_agent("assistant", "ok")
    remember(assistant, store, LATER).learn_now()
    await user_agent().a_initiate_chat(assistant, message="What is my policy number?", max_turns=1, silent=True)
    assert any("P-12345" in b for b in blocks(calls[-1]))


def test_learn_true_runs_a_learner_until_closed(store: SyncStore) -> None:
    assistant, _ = model_agent("assistant", "Noted.")
    persist(assistant, store, FIRST)
    memory = remember(assistant, store, FIRST, learn=True)
    user_agent().initiate_chat(assistant, message="My policy number is P-12345", max_turns=1, silent=True)
    deadline = time.monotonic() + 60  # a bound on waiting for the background task, not a timing assertion
    while not store.list_facts("acme", "alice") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [f.value for f in store.list_facts("acme", "alice")] == ["P-12345"]
    memory.close()
    memory.close()  # idempotent


def test_bad_options_raise_amber_errors(store: SyncStore) -> None:
    assistant, _ = model_agent("assistant", "ok")
    with pytest.raises(InvalidInput):
        remember(assistant, store, LATER, max_tokens=0)
    with pytest.raises(InvalidInput):
        remember(assistant, store, LATER, limit=0)
    with pytest.raises(InvalidInput):
        remember("assistant", store, LATER)  # type: ignore[arg-type]
