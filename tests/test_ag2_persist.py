"""amber.ag2.persist on real AG2 ConversableAgents, real SQLite files, scripted model replies
(ScriptedModelClient, registered with register_model_client: no LLM is reachable in tests)."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Iterator

import pytest
from test_ag2_support import model_agent, texts, user_agent

from amber import InvalidInput, InvalidSessionKey, SessionKey
from amber.ag2 import AgentHistory, import_oai_messages, persist
from amber.sync import SyncStore

KEY = SessionKey("acme", "u-42", "claim-7788")


@pytest.fixture
def store(tmp_path: Any) -> Iterator[SyncStore]:
    sync = SyncStore.open(f"sqlite:///{tmp_path}/amber.db")
    yield sync
    sync.close()


def stored(store: SyncStore, key: SessionKey = KEY) -> list[tuple[str, str, str]]:
    """(author, role, content) of every stored message, in order."""
    return [(m.author or "", m.role, m.content) for m in store.read_since(key)]


def test_both_messages_of_a_turn_are_stored_once_with_roles(store: SyncStore) -> None:
    assistant, _ = model_agent("assistant", "Noted.")
    user = user_agent()
    persist(assistant, store, KEY)
    persist(user, store, KEY)
    result = user.initiate_chat(assistant, message="My policy number is P-12345", max_turns=1, silent=True)
    assert texts(result.chat_history) == ["My policy number is P-12345", "Noted."]
    assert stored(store) == [("user", "user", "My policy number is P-12345"), ("assistant", "assistant", "Noted.")]


def test_each_message_is_durable_before_the_next_reply_is_generated(store: SyncStore) -> None:
    assistant, _ = model_agent("assistant", "ok")
    user = user_agent(reply="second")
    persist(assistant, store, KEY)
    seen_at_reply: list[list[str]] = []

    def spy(recipient: Any, messages: Any, sender: Any, config: Any) -> tuple[bool, None]:
        seen_at_reply.append([c for _, _, c in stored(store)])
        return False, None  # let the model reply

    assistant.register_reply([user_agent("x").__class__, None], spy, position=0)
    user.initiate_chat(assistant, message="first", max_turns=2, silent=True)
    # When the assistant starts each reply, the message it is replying to is already stored.
    assert seen_at_reply == [["first"], ["first", "ok", "second"]]


def test_early_end_by_is_termination_msg_keeps_everything(store: SyncStore) -> None:
    assistant, _ = model_agent("assistant", ["Your claim is filed.", "All done. TERMINATE"])
    user = user_agent(reply="anything else?", is_termination_msg=lambda m: "TERMINATE" in (m.get("content") or ""))
    persist(assistant, store, KEY)
    user.initiate_chat(assistant, message="File my claim", silent=True)
    assert [c for _, _, c in stored(store)] == [
        "File my claim",
        "Your claim is filed.",
        "anything else?",
        "All done. TERMINATE",
    ]


def test_max_turns_1_only_the_sender_persisted_keeps_the_last_reply(store: SyncStore) -> None:
    # On the last turn of max_turns the user receives the reply without generating one: no AG2 hook
    # runs, only receive(). Persist ONLY the user to prove receipt is captured.
    assistant, _ = model_agent("assistant", "Policy P-12345 is active.")
    user = user_agent()
    persist(user, store, KEY)
    user.initiate_chat(assistant, message="Is P-12345 active?", max_turns=1, silent=True)
    assert stored(store) == [
        ("user", "user", "Is P-12345 active?"),
        ("assistant", "assistant", "Policy P-12345 is active."),
    ]


def test_only_the_assistant_persisted_is_complete(store: SyncStore) -> None:
    assistant, _ = model_agent("assistant", ["a1", "a2", "a3"])
    user = user_agent(reply="more")
    persist(assistant, store, KEY)
    result = user.initiate_chat(assistant, message="start", max_turns=3, silent=True)
    assert [c for _, _, c in stored(store)] == texts(result.chat_history)
    assert len(result.chat_history) == 6


def test_both_persisted_no_duplicates_over_many_turns(store: SyncStore) -> None:
    assistant, _ = model_agent("assistant", ["same", "same", "same"])
    user = user_agent(reply="again")  # repeated identical content must still be stored each time
    persist(assistant, store, KEY)
    persist(user, store, KEY)
    result = user.initiate_chat(assistant, message="again", max_turns=3, silent=True)
    rows = store.read_since(KEY)
    assert [m.content for m in rows] == texts(result.chat_history) == ["again", "same"] * 3
    assert len({m.idempotency_key for m in rows}) == 6


def test_exception_in_a_reply_function_loses_nothing_said_before(store: SyncStore) -> None:
    assistant, _ = model_agent("assistant", ["first answer", "never"])
    user = user_agent(reply="follow-up")
    persist(assistant, store, KEY)
    calls = {"n": 0}

    def explode(recipient: Any, messages: Any, sender: Any, config: Any) -> tuple[bool, None]:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("tool backend down")
        return False, None

    assistant.register_reply([user.__class__, None], explode, position=0)
    with pytest.raises(RuntimeError, match="tool backend down"):
        user.initiate_chat(assistant, message="question", max_turns=3, silent=True)
    assert [c for _, _, c in stored(store)] == ["question", "first answer", "follow-up"]


def test_new_agent_objects_continue_with_clear_history_false(store: SyncStore) -> None:
    assistant, _ = model_agent("assistant", "Noted.")
    user = user_agent()
    persist(assistant, store, KEY)
    user.initiate_chat(assistant, message="My policy number is P-12345", max_turns=1, silent=True)

    # "Restart": new objects, same names, same key.
    assistant2, calls = model_agent("assistant", "It is P-12345.")
    user2 = user_agent()
    history = persist(assistant2, store, KEY)
    assert isinstance(history, AgentHistory)
    assert texts(history.history("user")) == ["My policy number is P-12345", "Noted."]
    user2.initiate_chat(assistant2, message="What is my policy number?", max_turns=1, silent=True, clear_history=False)
    sent = texts(calls[-1])
    assert "My policy number is P-12345" in sent and sent[-1] == "What is my policy number?"
    assert [c for _, _, c in stored(store)] == [
        "My policy number is P-12345",
        "Noted.",
        "What is my policy number?",
        "It is P-12345.",
    ]
    # The rehydrated history is the agent's own view: its messages as assistant, the user's as user.
    assert [m["role"] for m in assistant2.chat_messages[user2]][:2] == ["user", "assistant"]


def test_clear_history_true_starts_fresh_in_memory_but_keeps_the_store(store: SyncStore) -> None:
    assistant, _ = model_agent("assistant", "Noted.")
    persist(assistant, store, KEY)
    user_agent().initiate_chat(assistant, message="hello", max_turns=1, silent=True)

    assistant2, calls = model_agent("assistant", "Hi again")
    persist(assistant2, store, KEY)
    user_agent().initiate_chat(assistant2, message="hello", max_turns=1, silent=True)  # clear_history=True
    assert texts(calls[-1]) == ["You are a helpful AI Assistant.", "hello"]
    # Same content at a new position is a new message, not a duplicate.
    assert [c for _, _, c in stored(store)] == ["hello", "Noted.", "hello", "Hi again"]


def test_both_persisted_after_restart_still_no_duplicates(store: SyncStore) -> None:
    for round_ in range(2):
        assistant, _ = model_agent("assistant", f"reply {round_}")
        user = user_agent()
        persist(assistant, store, KEY)
        persist(user, store, KEY)
        user.initiate_chat(assistant, message=f"ask {round_}", max_turns=1, silent=True, clear_history=False)
        assert len(user.chat_messages[assistant]) == 2 * (round_ + 1)
    assert [c for _, _, c in stored(store)] == ["ask 0", "reply 0", "ask 1", "reply 1"]


def test_two_users_are_isolated(store: SyncStore) -> None:
    alice = SessionKey("acme", "alice", "chat")
    bob = SessionKey("acme", "bob", "chat")
    a1, _ = model_agent("assistant", "ok")
    persist(a1, store, alice)
    user_agent().initiate_chat(a1, message="My policy number is P-11111", max_turns=1, silent=True)
    b1, _ = model_agent("assistant", "ok")
    persist(b1, store, bob)
    user_agent().initiate_chat(b1, message="My policy number is P-22222", max_turns=1, silent=True)

    b2, calls = model_agent("assistant", "ok")
    persist(b2, store, bob)
    user_agent().initiate_chat(b2, message="What is my policy number?", max_turns=1, silent=True, clear_history=False)
    seen = " ".join(texts(calls[-1]))
    assert "P-22222" in seen and "P-11111" not in seen
    assert [c for _, _, c in stored(store, alice)] == ["My policy number is P-11111", "ok"]


async def test_a_initiate_chat_inside_a_running_loop(store: SyncStore) -> None:
    assistant, calls = model_agent("assistant", "async ok")
    user = user_agent()
    persist(assistant, store, KEY)
    persist(user, store, KEY)
    await user.a_initiate_chat(assistant, message="from an event loop", max_turns=2, silent=True)
    assert [c for _, _, c in stored(store)] == ["from an event loop", "async ok", "please go on", "async ok"]
    assert asyncio.get_running_loop().is_running()


def test_store_given_as_url_and_key_as_string(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path}/by-url.db"
    assistant, _ = model_agent("assistant", "ok")
    history = persist(assistant, url, "acme/u-42/claim-7788")
    user = user_agent()
    persist(user, url, "acme/u-42/claim-7788")
    user.initiate_chat(assistant, message="hi", max_turns=1, silent=True)
    assert history.store is persist(user_agent("other"), url, "acme/u-42/x").store  # one store per URL
    assert [m.content for m in history.store.read_since(KEY)] == ["hi", "ok"]


def test_async_store_with_a_private_loop(tmp_path: Any) -> None:
    import amber

    inner = asyncio.run(amber.open_store("memory://ag2-async-store"))
    assistant, _ = model_agent("assistant", "ok")
    history = persist(assistant, inner, KEY)
    user_agent().initiate_chat(assistant, message="hi", max_turns=1, silent=True)
    assert [m.content for m in history.store.read_since(KEY)] == ["hi", "ok"]


def test_bad_arguments_raise_amber_errors(store: SyncStore) -> None:
    assistant, _ = model_agent("assistant", "ok")
    with pytest.raises(InvalidInput):
        persist(assistant, 42, KEY)  # type: ignore[arg-type]
    with pytest.raises(InvalidSessionKey):
        persist(assistant, store, "not a key")
    with pytest.raises(InvalidInput):
        persist(assistant, store, KEY, last=-1)
    persist(assistant, store, KEY)
    with pytest.raises(InvalidInput, match="already persisted"):
        persist(assistant, store, KEY)
    with pytest.raises(InvalidInput):
        persist("assistant", store, KEY)  # type: ignore[call-overload]


def test_an_unstorable_message_fails_clearly_and_keeps_earlier_ones(store: SyncStore) -> None:
    assistant, _ = model_agent("assistant", "ok")
    user = user_agent()
    persist(user, store, KEY)
    user.initiate_chat(assistant, message="kept", max_turns=1, silent=True)
    with pytest.raises(InvalidInput):
        user.send({"content": "bad \x00 byte"}, assistant, request_reply=False, silent=True)
    assert [c for _, _, c in stored(store)] == ["kept", "ok"]


def test_last_limits_what_is_rehydrated(store: SyncStore) -> None:
    assistant, _ = model_agent("assistant", "ok")
    persist(assistant, store, KEY)
    user_agent().initiate_chat(assistant, message="one", max_turns=2, silent=True)  # 4 messages

    assistant2, calls = model_agent("assistant", "ok")
    persist(assistant2, store, KEY, last=2)
    user_agent().initiate_chat(assistant2, message="next", max_turns=1, silent=True, clear_history=False)
    assert texts(calls[-1])[1:] == ["please go on", "ok", "next"]
    assert len(store.read_since(KEY)) == 6  # positions continue after all stored messages


def test_import_oai_messages_dump_then_rehydrate(store: SyncStore, tmp_path: Any) -> None:
    # What users saved by hand: the assistant's history with the user, as JSON.
    dump = [
        {"content": "My policy number is P-12345", "role": "user", "name": "user"},
        {"content": "Noted.", "role": "assistant", "name": "assistant"},
    ]
    path = tmp_path / "chat_state.json"
    path.write_text(json.dumps({"user": dump}))
    loaded = json.loads(path.read_text())
    assert import_oai_messages(store, KEY, loaded, agent="assistant") == 2
    assert import_oai_messages(store, KEY, loaded, agent="assistant") == 0  # idempotent
    assert stored(store) == [("user", "user", "My policy number is P-12345"), ("assistant", "assistant", "Noted.")]

    assistant, calls = model_agent("assistant", "P-12345")
    persist(assistant, store, KEY)
    user_agent().initiate_chat(assistant, message="What is my policy number?", max_turns=1, silent=True, clear_history=False)
    assert texts(calls[-1])[1:] == ["My policy number is P-12345", "Noted.", "What is my policy number?"]
    assert len(store.read_since(KEY)) == 4


def test_import_rejects_bad_input_before_writing(store: SyncStore) -> None:
    good = {"content": "fine", "role": "user"}
    with pytest.raises(InvalidInput):
        import_oai_messages(store, KEY, [good, {"role": "user"}], agent="assistant", peer="user")
    with pytest.raises(InvalidInput):
        import_oai_messages(store, KEY, [good], agent="assistant")  # no peer for a list
    with pytest.raises(InvalidInput):
        import_oai_messages(store, KEY, "not messages", agent="assistant", peer="user")  # type: ignore[arg-type]
    assert store.read_since(KEY) == []


def _group(names: tuple[str, ...] = ("analyst", "reviewer"), tag: str = "") -> tuple[Any, Any, dict[str, list[Any]]]:
    from autogen import GroupChat, GroupChatManager

    calls: dict[str, list[Any]] = {}
    agents = [user_agent("user", reply="continue")]
    for name in names:
        agent, calls[name] = model_agent(name, f"{name} {tag}".strip())
        agents.append(agent)
    chat = GroupChat(agents=agents, messages=[], max_round=3, speaker_selection_method="round_robin")
    return agents[0], GroupChatManager(chat, llm_config=False), calls


async def test_group_chat_under_a_initiate_chat_and_resume_with_new_objects(store: SyncStore) -> None:
    from amber.ag2 import GroupChatHistory

    user, manager, _ = _group(tag="1")
    history = persist(manager, store, KEY)
    assert isinstance(history, GroupChatHistory)
    await user.a_initiate_chat(manager, message="Assess claim C-7788", silent=True)
    assert stored(store) == [
        ("user", "user", "Assess claim C-7788"),
        ("analyst", "assistant", "analyst 1"),
        ("reviewer", "assistant", "reviewer 1"),
    ]
    assert [m["content"] for m in history.messages()] == ["Assess claim C-7788", "analyst 1", "reviewer 1"]

    user2, manager2, calls = _group(tag="2")
    history2 = persist(manager2, store, KEY)
    resumed = history2.resume()
    assert resumed is not None
    last_agent, last_message = resumed
    assert last_agent.name == "reviewer" and last_message["content"] == "reviewer 1"
    # The replay put the history into the agents without storing anything again.
    assert len(store.read_since(KEY)) == 3
    await last_agent.a_initiate_chat(manager2, message=last_message, clear_history=False, silent=True)
    assert [c for _, _, c in stored(store)] == ["Assess claim C-7788", "analyst 1", "reviewer 1", "continue", "analyst 2"]
    assert texts(calls["analyst"][-1])[1:] == ["Assess claim C-7788", "analyst 1", "reviewer 1", "continue"]


def test_group_resume_with_nothing_stored_returns_none_and_double_persist_is_refused(store: SyncStore) -> None:
    _, manager, _ = _group()
    history = persist(manager, store, KEY)
    assert history.resume() is None
    with pytest.raises(InvalidInput, match="already persisted"):
        persist(manager, store, KEY)
    with pytest.raises(InvalidInput):
        persist(manager, store, KEY, last=3)  # type: ignore[call-overload]
