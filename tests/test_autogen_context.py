"""DurableChatCompletionContext on real SQLite files: exact round-trips of every AutoGen message type,
windows, views, clear/save/load state, idempotency, the memory seam and the component config."""

from __future__ import annotations

import asyncio

import pytest
from autogen_core import FunctionCall, Image
from autogen_core.model_context import ChatCompletionContext
from autogen_core.models import (
    AssistantMessage,
    FunctionExecutionResult,
    FunctionExecutionResultMessage,
    SystemMessage,
    UserMessage,
)
from autogen_ext.models.replay import ReplayChatCompletionClient
from PIL import Image as PILImage

import amber
from amber.autogen import DurableChatCompletionContext
from amber.autogen.context import HeadAndTail, LastN, TokenBudget, Unbounded, idempotent_turn

KEY = amber.SessionKey("acme", "u-42", "claim-7788")


@pytest.fixture
async def store(tmp_path):
    s = await amber.open_store(f"sqlite:///{tmp_path}/ctx.db")
    yield s
    await s.close()


def _image() -> Image:
    pil = PILImage.new("RGB", (4, 3))
    for x in range(4):
        for y in range(3):
            pil.putpixel((x, y), (x * 60, y * 80, (x + y) * 20))
    return Image.from_pil(pil)


def every_message_type() -> list:
    return [
        SystemMessage(content="You are a claims assistant."),
        UserMessage(content="My policy number is P-12345 — ünïcödé ✓", source="user"),
        UserMessage(content=["What is in this photo?", _image(), "and this?"], source="user"),
        AssistantMessage(
            content=[
                FunctionCall(id="call_1", name="lookup_policy", arguments='{"policy": "P-12345"}'),
                FunctionCall(id="call_2", name="lookup_claim", arguments='{"claim": "C-7788"}'),
            ],
            thought="I need both records first.",
            source="support",
        ),
        FunctionExecutionResultMessage(
            content=[
                FunctionExecutionResult(content='{"holder": "A. Jones"}', name="lookup_policy", call_id="call_1"),
                FunctionExecutionResult(content="not found", name="lookup_claim", call_id="call_2", is_error=True),
            ]
        ),
        AssistantMessage(content="Your policy P-12345 is active.", thought=None, source="support"),
    ]


async def test_every_llm_message_type_round_trips_exactly_through_a_fresh_store(store, tmp_path):
    ctx = DurableChatCompletionContext(store, KEY, agent_name="support")
    originals = every_message_type()
    for message in originals:
        await ctx.add_message(message)

    # A different store handle on the same file: nothing comes from this process's memory.
    async with await amber.open_store(f"sqlite:///{tmp_path}/ctx.db") as other:
        back = await DurableChatCompletionContext(other, KEY, agent_name="support").get_messages()

    assert [type(m) for m in back] == [type(m) for m in originals]
    assert [m.model_dump(mode="json") for m in back] == [m.model_dump(mode="json") for m in originals]
    image = back[2].content[1]
    assert isinstance(image, Image)
    assert list(image.image.getdata()) == list(originals[2].content[1].image.getdata())
    assert back[3].thought == "I need both records first." and back[3].content[1].id == "call_2"
    assert back[4].content[1].is_error is True

    stored = await store.read_since(KEY)
    assert [m.role for m in stored] == ["system", "user", "user", "assistant", "tool", "assistant"]
    assert stored[2].content == "What is in this photo?\n[image]\nand this?"  # text form for search
    assert stored[3].content.startswith("lookup_policy(")
    assert {m.payload_format for m in stored} == {"autogen.llm/1"}
    assert stored[1].author == "user" and stored[3].author == "support"


@pytest.mark.parametrize("index", range(6), ids=[
    "system", "user-text", "user-multimodal-image", "assistant-function-calls-thought", "function-results",
    "assistant-text"])
async def test_each_llm_message_type_round_trips_alone(tmp_path, index):
    url = f"sqlite:///{tmp_path}/one.db"
    message = every_message_type()[index]
    async with await amber.open_store(url) as s:
        if isinstance(message, FunctionExecutionResultMessage):  # a window never starts with orphan results
            await DurableChatCompletionContext(s, KEY).add_message(every_message_type()[3])
        await DurableChatCompletionContext(s, KEY).add_message(message)
    async with await amber.open_store(url) as s:  # reopened: read from the file
        back = (await DurableChatCompletionContext(s, KEY).get_messages())[-1]
    assert type(back) is type(message)
    assert back.model_dump(mode="json") == message.model_dump(mode="json")


async def test_messages_from_other_adapters_are_seen_in_the_unnamed_view(store):
    await store.append(KEY, [
        amber.NewMessage("user", "written over REST", author="u-42"),
        amber.NewMessage("assistant", "an AG2 reply", author="assistant"),
        amber.NewMessage("event", "not for models"),
    ])
    back = await DurableChatCompletionContext(store, KEY).get_messages()
    assert [m.model_dump() for m in back] == [
        UserMessage(content="written over REST", source="u-42").model_dump(),
        AssistantMessage(content="an AG2 reply", source="assistant").model_dump(),
    ]


async def test_add_message_is_write_through_and_get_messages_sees_other_handles(store, tmp_path):
    a = DurableChatCompletionContext(store, KEY)
    async with await amber.open_store(f"sqlite:///{tmp_path}/ctx.db") as other:
        b = DurableChatCompletionContext(other, KEY)
        await a.add_message(UserMessage(content="one", source="user"))
        assert [m.content for m in await b.get_messages()] == ["one"]
        await b.add_message(AssistantMessage(content="two", source="bot"))
        assert [m.content for m in await a.get_messages()] == ["one", "two"]


async def test_views_of_one_session_are_separate(store):
    a = DurableChatCompletionContext(store, KEY, agent_name="planner")
    b = DurableChatCompletionContext(store, KEY, agent_name="critic")
    await a.add_message(UserMessage(content="task", source="user"))
    await a.add_message(AssistantMessage(content="plan", source="planner"))
    await b.add_message(UserMessage(content="plan", source="planner"))
    assert [(type(m).__name__, m.content) for m in await a.get_messages()] == [
        ("UserMessage", "task"), ("AssistantMessage", "plan")]
    assert [(type(m).__name__, m.content) for m in await b.get_messages()] == [("UserMessage", "plan")]
    assert await DurableChatCompletionContext(store, KEY).get_messages() == []


async def test_last_n_window_and_orphan_tool_results(store):
    ctx = DurableChatCompletionContext(store, KEY, agent_name="a", window=3)
    other = DurableChatCompletionContext(store, KEY, agent_name="b")
    for i in range(10):
        await ctx.add_message(UserMessage(content=f"u{i}", source="user"))
        await other.add_message(UserMessage(content=f"noise{i}", source="user"))  # interleaved view
    assert [m.content for m in await ctx.get_messages()] == ["u7", "u8", "u9"]

    await ctx.add_message(AssistantMessage(content=[FunctionCall(id="c", name="f", arguments="{}")], source="a"))
    await ctx.add_message(FunctionExecutionResultMessage(
        content=[FunctionExecutionResult(content="ok", name="f", call_id="c")]))
    await ctx.add_message(AssistantMessage(content="done", source="a"))
    ctx2 = DurableChatCompletionContext(store, KEY, agent_name="a", window=LastN(n=2))
    # The last 2 would start with a tool result whose call fell out of the window: dropped, like AutoGen.
    assert [m.content for m in await ctx2.get_messages()] == ["done"]


async def test_token_budget_keeps_the_most_recent_that_fit(store):
    ctx = DurableChatCompletionContext(store, KEY, window=TokenBudget(max_tokens=40))
    for i in range(30):
        await ctx.add_message(UserMessage(content=f"message number {i} about policy P-{i:05d}", source="user"))
    window = await ctx.get_messages()
    assert 0 < len(window) < 30
    assert window[-1].content.startswith("message number 29")
    from amber.autogen._codec import estimate_message_tokens

    assert sum(estimate_message_tokens(m) for m in window) <= 40
    contents = [m.content for m in window]
    assert contents == [f"message number {i} about policy P-{i:05d}" for i in range(30 - len(window), 30)]

    # With a model client, its count_tokens decides (Replay counts whitespace-separated words).
    by_client = DurableChatCompletionContext(
        store, KEY, window=TokenBudget(max_tokens=12), model_client=ReplayChatCompletionClient([]))
    assert [m.content[:17] for m in await by_client.get_messages()] == [
        "message number 28", "message number 29"]  # 6 words each


async def test_head_and_tail(store):
    ctx = DurableChatCompletionContext(store, KEY, window=HeadAndTail(head=2, tail=3))
    for i in range(4):
        await ctx.add_message(UserMessage(content=f"m{i}", source="user"))
    assert [m.content for m in await ctx.get_messages()] == ["m0", "m1", "m2", "m3"]
    for i in range(4, 10):
        await ctx.add_message(UserMessage(content=f"m{i}", source="user"))
    assert [m.content for m in await ctx.get_messages()] == [
        "m0", "m1", "Skipped 5 messages.", "m7", "m8", "m9"]


async def test_clear_starts_the_window_afresh_and_deletes_nothing(store):
    ctx = DurableChatCompletionContext(store, KEY, agent_name="a")
    await ctx.add_message(UserMessage(content="before", source="user"))
    await ctx.clear()
    assert await ctx.get_messages() == []
    await ctx.add_message(UserMessage(content="after", source="user"))
    # A fresh context (another request, another process) sees the same window.
    assert [m.content for m in await DurableChatCompletionContext(store, KEY, agent_name="a").get_messages()] == [
        "after"]
    assert [m.content for m in await store.read_since(KEY)] == ["before", "after"]


async def test_save_state_is_a_reference_and_load_state_duplicates_nothing(store):
    ctx = DurableChatCompletionContext(store, KEY, agent_name="a")
    for i in range(50):
        await ctx.add_message(UserMessage(content=f"long message {i} " * 20, source="user"))
    state = await ctx.save_state()
    assert state["session"] == str(KEY) and state["agent_name"] == "a"
    assert len(repr(state)) < 200  # a reference, not the transcript

    fresh = DurableChatCompletionContext(store, KEY, agent_name="a")
    await fresh.load_state(state)
    await fresh.load_state(state)
    assert len(await fresh.get_messages()) == 50
    assert len(await store.read_since(KEY)) == 50

    # Loading a state saved before a clear() restores that window, as AutoGen's load_state would.
    await ctx.clear()
    assert await ctx.get_messages() == []
    await ctx.load_state(state)
    assert len(await ctx.get_messages()) == 50

    with pytest.raises(amber.InvalidInput):
        await DurableChatCompletionContext(store, KEY, agent_name="b").load_state(state)
    with pytest.raises(amber.InvalidInput):
        await ctx.load_state({"something": "else"})


async def test_load_state_imports_autogen_plain_context_state_once(store):
    from autogen_core.model_context import UnboundedChatCompletionContext

    plain = UnboundedChatCompletionContext()
    for message in every_message_type():
        await plain.add_message(message)
    autogen_state = await plain.save_state()

    ctx = DurableChatCompletionContext(store, KEY, agent_name="support")
    await ctx.load_state(autogen_state)
    await ctx.load_state(autogen_state)  # again: idempotent
    back = await ctx.get_messages()
    assert [m.model_dump(mode="json") for m in back] == [
        m.model_dump(mode="json") for m in every_message_type()]
    assert len(await store.read_since(KEY)) == len(every_message_type())

    with pytest.raises(amber.InvalidInput):
        await ctx.load_state({"messages": [{"type": "NoSuchMessage"}]})
    assert len(await store.read_since(KEY)) == len(every_message_type())


async def test_idempotency_retry_versus_a_user_saying_yes_twice(store):
    ctx = DurableChatCompletionContext(store, KEY)
    await ctx.add_message(UserMessage(content="Shall I file it?", source="bot"))
    yes = UserMessage(content="yes", source="user")
    await ctx.add_message(yes)
    await ctx.add_message(AssistantMessage(content="Filed. Also cancel the old one?", source="bot"))
    await ctx.add_message(yes)  # a legitimate second "yes": stored again
    assert [m.content for m in await ctx.get_messages()][-3:] == ["yes", "Filed. Also cancel the old one?", "yes"]

    # The same message right after itself is a retry (a re-sent turn, a re-delivered buffer): once.
    await ctx.add_message(yes)
    assert [m.content for m in await ctx.get_messages()][-3:] == ["yes", "Filed. Also cancel the old one?", "yes"]

    # Two workers running the same step from the same starting point store it once.
    a = DurableChatCompletionContext(store, KEY)
    b = DurableChatCompletionContext(store, KEY)
    reply = AssistantMessage(content="Cancelled.", source="bot")
    tip_before = len(await store.read_since(KEY))
    key_a = await _key_for(a, reply)
    key_b = await _key_for(b, reply)
    assert key_a == key_b
    await asyncio.gather(
        store.append_one(KEY, _new(reply, key_a)), store.append_one(KEY, _new(reply, key_b)))
    assert len(await store.read_since(KEY)) == tip_before + 1


async def _key_for(ctx, message):
    from amber.autogen import _codec

    tip = await ctx._fetch(ctx._store or await ctx._ready(), last=1, after=0)
    return _codec.derive_key("after", str(ctx.session_key), ctx.agent_name or "", tip[-1].idempotency_key,
                             _codec.canonical_json(message))


def _new(message, key):
    from amber.autogen import _codec

    return _codec.to_new_message(message, view=None, idempotency_key=key)


async def test_idempotent_turn_makes_a_replayed_request_store_nothing_twice(store):
    async def request() -> None:
        ctx = DurableChatCompletionContext(store, KEY)  # built per request
        with idempotent_turn("req-0001"):
            await ctx.add_message(UserMessage(content="yes", source="user"))
            await ctx.add_message(AssistantMessage(content="Filed.", source="bot"))

    await request()
    await request()  # the load balancer retried the request after the first one had committed
    assert [m.content for m in await store.read_since(KEY)] == ["yes", "Filed."]
    with pytest.raises(amber.InvalidInput):
        with idempotent_turn(""):
            pass


async def test_memory_block_is_merged_into_the_leading_system_message_and_never_stored(store):
    ctx = DurableChatCompletionContext(store, KEY, initial_messages=[SystemMessage(content="Be brief.")])
    await ctx.add_message(UserMessage(content="hi", source="user"))
    ctx.set_memory_block("<memory>policy P-12345</memory>")
    ctx.set_memory_block("<memory>claim C-7788</memory>")  # replaces, never piles up
    messages = await ctx.get_messages()
    assert [type(m).__name__ for m in messages] == ["SystemMessage", "UserMessage"]
    assert messages[0].content == "Be brief.\n\n<memory>claim C-7788</memory>"

    bare = DurableChatCompletionContext(store, amber.SessionKey("acme", "u-42", "other"))
    await bare.add_message(UserMessage(content="hi", source="user"))
    bare.set_memory_block("<memory>x</memory>")
    assert [type(m).__name__ for m in await bare.get_messages()] == ["SystemMessage", "UserMessage"]
    bare.set_memory_block(None)
    assert [type(m).__name__ for m in await bare.get_messages()] == ["UserMessage"]

    stored = await store.read_since(KEY)
    assert [m.content for m in stored] == ["Be brief.", "hi"]  # initial message once; no memory text
    # initial_messages are written once, not per construction
    again = DurableChatCompletionContext(store, KEY, initial_messages=[SystemMessage(content="Be brief.")])
    assert len(await again.get_messages()) == 2


async def test_isolation_two_users_and_two_tenants_with_the_same_thread_id(store):
    keys = [
        amber.SessionKey("acme", "alice", "t-1"),
        amber.SessionKey("acme", "bob", "t-1"),
        amber.SessionKey("globex", "alice", "t-1"),
    ]
    for key in keys:
        await DurableChatCompletionContext(store, key).add_message(UserMessage(content=f"secret of {key}", source="user"))
    for key in keys:
        seen = [m.content for m in await DurableChatCompletionContext(store, key).get_messages()]
        assert seen == [f"secret of {key}"]


async def test_component_config_round_trips_with_a_store_object_and_with_a_url(store, tmp_path):
    url = f"sqlite:///{tmp_path}/ctx.db"
    ctx = DurableChatCompletionContext(store, KEY, agent_name="a", window=TokenBudget(max_tokens=500),
                                       model_client=ReplayChatCompletionClient(["x"]))
    await ctx.add_message(UserMessage(content="hello", source="user"))
    model = ctx.dump_component()
    assert model.provider == "amber.autogen.DurableChatCompletionContext"
    assert url not in model.model_dump_json()  # the URL is a secret: masked in JSON

    loaded = ChatCompletionContext.load_component(model)  # synchronous; store opened lazily
    assert isinstance(loaded, DurableChatCompletionContext)
    assert loaded.dump_component().config["window"] == {"kind": "tokens", "max_tokens": 500}
    try:
        assert [m.content for m in await loaded.get_messages()] == ["hello"]
    finally:
        await loaded.close()

    by_url = DurableChatCompletionContext(url, str(KEY), window=7)
    try:
        assert [m.content for m in await by_url.get_messages()] == []  # unnamed view is empty
        round_tripped = ChatCompletionContext.load_component(by_url.dump_component())
        assert round_tripped.dump_component().config["window"] == {"kind": "last", "n": 7}
    finally:
        await by_url.close()

    import json

    masked = json.loads(model.model_dump_json())
    with pytest.raises(amber.InvalidInput, match="masked"):
        ChatCompletionContext.load_component(masked)


def test_a_password_in_the_url_never_reaches_a_json_config():
    from amber.autogen.context import DurableChatCompletionContextConfig

    config = DurableChatCompletionContextConfig(store_url="postgresql://app:hunter2@db/amber", session=str(KEY))
    assert "hunter2" not in config.model_dump_json()
    assert "hunter2" not in repr(config)


async def test_bad_input_is_an_amber_error_and_loses_nothing(store):
    ctx = DurableChatCompletionContext(store, KEY)
    await ctx.add_message(UserMessage(content="kept", source="user"))
    with pytest.raises(amber.InvalidInput):
        await ctx.add_message({"role": "user", "content": "a dict"})  # type: ignore[arg-type]
    with pytest.raises(amber.InvalidInput):
        await ctx.add_message(UserMessage(content="bad \udc80 surrogate", source="user"))
    with pytest.raises(amber.MessageTooLarge):
        await ctx.add_message(UserMessage(content="x" * (store.limits.max_message_bytes + 1), source="user"))
    with pytest.raises(amber.InvalidSessionKey):
        DurableChatCompletionContext(store, "not a key")
    with pytest.raises(amber.InvalidInput):
        DurableChatCompletionContext(store, KEY, window=0)
    with pytest.raises(amber.InvalidInput):
        DurableChatCompletionContext(store, KEY, agent_name="no spaces allowed")
    with pytest.raises(amber.InvalidStoreURL):
        await DurableChatCompletionContext("nosuch://x", KEY).get_messages()
    assert [m.content for m in await ctx.get_messages()] == ["kept"]


async def test_unbounded_reads_every_message_of_the_view(store):
    ctx = DurableChatCompletionContext(store, KEY, window=Unbounded())
    await store.append(KEY, [amber.NewMessage("user", f"m{i}") for i in range(300)])
    assert len(await ctx.get_messages()) == 300
