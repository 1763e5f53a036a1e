"""Learning: rule extraction, model extraction (a deterministic ReplayChatCompletionClient stands in
for the LLM -- none is reachable here), consolidation, the learner's retries, and crash recovery
(a real subprocess SIGKILLed mid-batch against a real SQLite file)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from autogen_ext.models.replay import ReplayChatCompletionClient

import amber
from amber.embed import HashingEmbedder
from amber.learn import Learner, ModelExtractor, RuleExtractor, reindex, same_value
from amber.records import NewMessage

T0 = datetime(2024, 3, 1, 9, 0, tzinfo=timezone.utc)


def msg(text: str, role: str = "user", minutes: int = 0) -> NewMessage:
    return NewMessage(role=role, content=text, created_at=T0 + timedelta(minutes=minutes))


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[amber.Store]:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'learn.db'}"
    s = await amber.open_store(url)
    try:
        yield s
    finally:
        await s.close()


# -- rules -------------------------------------------------------------------------------------------
def test_rule_extractor_finds_what_support_conversations_hinge_on() -> None:
    r = RuleExtractor()
    got = {(c.attribute, c.value) for c in r.extract_text(
        "Hi, my claim number is C-7788 and my email is jo@example.com. Call me on +44 20 7946 0958. "
        "I prefer email. Please always send letters to my office. Restarting the router fixed it last time. "
        "The accident happened on 3 March 2024 near the station. My address is 12 High Street, Leeds."
    )}
    assert ("claim_number", "C-7788") in got
    assert ("email", "jo@example.com") in got
    assert ("phone", "+44 20 7946 0958") in got
    assert ("preference:contact_channel", "email") in got
    assert any(a.startswith("request:") and v == "always send letters to my office" for a, v in got)
    assert any(a.startswith("resolution:") and v == "Restarting the router" for a, v in got)
    assert any(a.startswith("event:") and "3 March 2024" in v for a, v in got)
    assert ("addres", "12 High Street, Leeds") in got
    # Assistant turns contribute identifiers only; tool/system turns nothing.
    assert {c.attribute for c in r.extract_text("Your policy number is P-12345. I prefer tea.", role="assistant")} \
        == {"policy_number"}
    assert r.extract_text("my claim number is C-1", role="tool") == []
    assert r.extract_text("I think it worked. Order 5 items.") == []


def test_same_value_merges_spelling_but_not_different_ids() -> None:
    assert same_value("12 High Street, Leeds", "12 high street leeds")
    assert same_value("12 High Street, Leeds", "12 High Streeet, Leeds")
    assert not same_value("P-1234", "P-1243")
    assert not same_value("12 High Street, Leeds", "40 Low Road, York")


# -- consolidation ------------------------------------------------------------------------------------
async def test_duplicates_merge_updates_supersede_and_provenance_is_kept(store: amber.Store) -> None:
    key = amber.SessionKey("t-learn", "u1", "s1")
    stored = await store.append(key, [
        msg("my policy number is P-1234", minutes=0),
        msg("ok, noted", role="assistant", minutes=1),
        msg("My policy number is P-1234.", minutes=2),
        msg("my policy number changed to P-9999", minutes=3),
    ])
    learner = Learner(store)
    assert await learner.drain() == 4
    history = await store.list_facts("t-learn", "u1", attribute="policy_number", include_superseded=True)
    current = [f for f in history if f.current]
    assert [f.value for f in current] == ["P-9999"]
    assert current[0].source_message_ids == (stored[3].id,)
    old = [f for f in history if f.value == "P-1234"]
    assert old and all(f.valid_to is not None for f in old)  # kept in history, closed
    merged = max(old, key=lambda f: len(f.source_message_ids))
    assert set(merged.source_message_ids) == {stored[0].id, stored[2].id}  # the duplicate merged provenance
    assert merged.valid_to == current[0].valid_from == stored[3].created_at
    assert learner.stats.facts.merged == 1 and learner.stats.facts.superseded == 1
    assert (await store.learn_queue_stats())["pending"] == 0


async def test_an_older_statement_processed_late_never_replaces_a_newer_one(store: amber.Store) -> None:
    key = amber.SessionKey("t-learn", "u2", "s1")
    first, second = await store.append(key, [msg("my city is Leeds", minutes=0), msg("my city is York", minutes=5)])
    # The newer statement is learned first (as when the older one's job failed and is retried later).
    jobs = await store.claim_learn_jobs(limit=10)
    for job in jobs:
        await store.fail_learn_job(job.id, "simulated outage", retry_in=0.0)
    learner = Learner(store)
    from amber.learn.consolidate import ConsolidationStats, consolidate

    stats = ConsolidationStats()
    [newer] = await store.read_since(key, 1)
    await consolidate(store, newer, RuleExtractor().extract_text(newer.content), stats)
    await learner.drain()
    current = await store.list_facts("t-learn", "u2", attribute="city")
    assert [f.value for f in current] == ["York"]
    assert learner.stats.facts.stale == 1


async def test_reprocessing_a_job_creates_no_duplicate_facts(store: amber.Store) -> None:
    key = amber.SessionKey("t-learn", "u3", "s1")
    await store.append(key, [msg("my claim number is C-7788 and my email is a@b.co")])
    learner = Learner(store, lease_seconds=0.05)
    jobs = await store.claim_learn_jobs(limit=10, lease_seconds=0.05)
    [m] = await store.read_since(key)
    from amber.learn.consolidate import ConsolidationStats, consolidate

    await consolidate(store, m, await RuleExtractor().extract(m), ConsolidationStats())  # crashed before complete
    await asyncio.sleep(0.1)  # let the lease lapse
    assert await learner.drain() == len(jobs)
    facts = await store.list_facts("t-learn", "u3", include_superseded=True)
    assert sorted(f.attribute for f in facts) == ["claim_number", "email"]
    assert learner.stats.facts.replayed == 2 and learner.stats.facts.created == 0


# -- model extraction ------------------------------------------------------------------------------------
def _client(*answers: str) -> ReplayChatCompletionClient:
    return ReplayChatCompletionClient(list(answers), model_info={
        "vision": False, "function_calling": False, "json_output": True, "family": "replay",
        "structured_output": True,
    })


async def test_model_extractor_turns_structured_output_into_facts(store: amber.Store) -> None:
    key = amber.SessionKey("t-model", "u1", "s1")
    await store.append(key, [msg("I'm insured with policy P-55 and I like calls after 6pm")])
    answer = json.dumps({"facts": [
        {"attribute": "policy_number", "value": "P-55", "text": "The user's policy number is P-55.",
         "kind": "identifier", "confidence": 0.95},
        {"attribute": "contact time", "value": "after 6pm", "text": "The user likes calls after 6pm."},
    ]})
    learner = Learner(store, extractor=ModelExtractor(_client(answer)))
    await learner.drain()
    facts = {f.attribute: f for f in await store.list_facts("t-model", "u1")}
    assert facts["policy_number"].value == "P-55" and facts["policy_number"].kind == "identifier"
    assert facts["contact_time"].text == "The user likes calls after 6pm."


async def test_malformed_model_output_is_retried_counted_and_parked_never_dropped(store: amber.Store) -> None:
    key = amber.SessionKey("t-model", "u2", "s1")
    await store.append(key, [msg("my order number is O-12345")])
    extractor = ModelExtractor(_client("not json at all", '{"facts": [{"attribute": 3}]}', "```json\n{oops"))
    learner = Learner(store, extractor=extractor, max_attempts=3, backoff=0.0)
    for _ in range(3):
        await learner.run_once()
    assert extractor.failures == 3
    stats = await store.learn_queue_stats("t-model")
    assert stats["dead"] == 1 and stats["pending"] == 0
    assert learner.stats.jobs_dead == 1 and learner.stats.jobs_retried == 2
    assert "malformed model output" in (learner.stats.last_error or "")
    assert await store.list_facts("t-model", "u2") == []
    # The message itself is untouched and still searchable.
    assert [h.text for h in await store.search_text("t-model", "u2", "order")] == ["my order number is O-12345"]


async def test_model_extractor_keeps_the_readable_facts_of_a_sloppy_answer_and_counts_the_rest(
        store: amber.Store, caplog: pytest.LogCaptureFixture) -> None:
    """Real models slip: a number where a string belongs, confidence null or 1.5, a bare list, prose
    around the JSON. One bad item must not cost the others, and what is left out is counted."""
    key = amber.SessionKey("t-model", "u3", "s1")
    await store.append(key, [msg("order 12345, policy P-77, email jo@example.com, call after 6pm")])
    answer = "Here are the facts:\n" + json.dumps([
        {"attribute": "order_number", "value": 12345, "text": "The user's order number is 12345."},
        {"attribute": "policy_number", "value": "P-77", "text": None, "confidence": None},
        {"attribute": "email", "value": "jo@example.com", "text": "The user's email is jo@example.com.",
         "confidence": 1.5},
        {"value": "after 6pm"},  # no attribute: unreadable
        "call after 6pm",  # not an object: unreadable
    ]) + "\nLet me know if you need more."
    extractor = ModelExtractor(_client(answer))
    learner = Learner(store, extractor=extractor, max_attempts=1)
    await learner.drain()
    facts = {f.attribute: f for f in await store.list_facts("t-model", "u3")}
    assert {a: f.value for a, f in facts.items()} == {
        "order_number": "12345", "policy_number": "P-77", "email": "jo@example.com"}
    assert facts["policy_number"].text == "policy number: P-77" and facts["policy_number"].confidence == 0.8
    assert facts["email"].confidence == 1.0
    assert extractor.rejected_items == 2 and extractor.failures == 0
    assert (await store.learn_queue_stats("t-model"))["dead"] == 0
    assert "2 of 5 facts in the model's answer were unreadable" in caplog.text


# -- embedding in batches ------------------------------------------------------------------------------
class CountingEmbedder(HashingEmbedder):
    def __init__(self) -> None:
        super().__init__(64)
        self.calls: list[int] = []

    async def embed(self, texts: Any) -> list[list[float]]:
        self.calls.append(len(texts))
        return await super().embed(texts)


async def test_learner_embeds_each_claimed_batch_in_one_call(store: amber.Store) -> None:
    key = amber.SessionKey("t-batch", "u1", "s1")
    await store.append(key, [msg(f"turn {i} about the weather", minutes=i) for i in range(10)]
                       + [msg("my claim number is C-1000", minutes=11)])
    emb = CountingEmbedder()
    learner = Learner(store, embedder=emb, batch_size=64)
    assert await learner.run_once() == 11
    assert emb.calls == [12]  # 11 turns + 1 new fact, one call
    hits = await store.search_vectors("t-batch", "u1", emb.name, (await emb.embed(["claim C-1000"]))[0], limit=3)
    assert hits and hits[0].kind in ("fact", "message")


async def test_async_with_learner_runs_in_the_background(store: amber.Store) -> None:
    key = amber.SessionKey("t-bg", "u1", "s1")
    async with Learner(store, poll_interval=0.02) as learner:
        await store.append(key, [msg("my member number is M-4242")])
        for _ in range(200):
            if await store.list_facts("t-bg", "u1"):
                break
            await asyncio.sleep(0.02)
        assert learner.running
    assert not learner.running
    assert [f.value for f in await store.list_facts("t-bg", "u1")] == ["M-4242"]


async def test_reindex_embeds_turns_and_facts_with_progress(store: amber.Store) -> None:
    key = amber.SessionKey("t-re", "u1", "s1")
    await store.append(key, [msg("my claim number is C-1"), msg("thanks", role="assistant"), msg("tool", role="tool")])
    await Learner(store).drain()
    seen: list[dict[str, int]] = []
    result = await reindex(store, "t-re", HashingEmbedder(32), batch_size=2, progress=seen.append)
    assert result["messages"] == 2 and result["facts"] == 1 and seen
    hits = await store.search_vectors("t-re", "u1", "hash-32", (await HashingEmbedder(32).embed(["claim"]))[0])
    assert {h.kind for h in hits} == {"message", "fact"}


# -- crash recovery ----------------------------------------------------------------------------------
CHILD = textwrap.dedent("""
    import asyncio, sys, pathlib
    import amber
    from amber.learn import Learner, RuleExtractor

    class SlowAfter(RuleExtractor):
        def __init__(self, marker, after):
            super().__init__()
            self.n, self.marker, self.after = 0, pathlib.Path(marker), after
        async def extract(self, message, context=()):
            self.n += 1
            if self.n == self.after:
                self.marker.write_text("mid-batch")
                await asyncio.sleep(3600)   # killed here, with part of the batch recorded
            return await super().extract(message, context)

    async def main():
        store = await amber.open_store(sys.argv[1])
        await Learner(store, extractor=SlowAfter(sys.argv[2], int(sys.argv[3])), lease_seconds=1.0).run_once(limit=64)

    asyncio.run(main())
""")


def _conversation() -> list[NewMessage]:
    out = []
    for i in range(40):
        if i % 4 == 0:
            out.append(msg(f"my policy number is P-{1000 + i // 8}", minutes=i))  # repeats, then updates
        elif i % 4 == 1:
            out.append(msg(f"my email is user{i // 20}@example.com", minutes=i))
        else:
            out.append(msg(f"small talk {i}", minutes=i))
    return out


def _fact_shape(facts: list[amber.Fact], ids: dict[str, int]) -> list[tuple[Any, ...]]:
    return sorted((f.attribute, f.value, f.current, tuple(sorted(ids[m] for m in f.source_message_ids)))
                  for f in facts)


async def test_learner_survives_sigkill_mid_batch_without_duplicate_facts(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'crash.db'}"
    key = amber.SessionKey("t-crash", "u1", "s1")
    async with await amber.open_store(url) as store:
        stored = await store.append(key, _conversation())
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    marker = tmp_path / "marker"
    child = subprocess.Popen([sys.executable, str(script), url, str(marker), "25"])
    try:
        for _ in range(600):
            if marker.exists() or child.poll() is not None:
                break
            await asyncio.sleep(0.05)
        assert marker.exists(), "the child never reached the middle of its batch"
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
    async with await amber.open_store(url) as store:
        partial = await store.list_facts("t-crash", "u1", include_superseded=True)
        assert partial, "the child recorded facts before it was killed"
        learner = Learner(store, lease_seconds=1.0)
        for _ in range(200):  # wait out the dead child's lease, then finish its batch
            await learner.drain()
            stats = await store.learn_queue_stats("t-crash")
            if stats["pending"] == 0 and stats["leased"] == 0:
                break
            await asyncio.sleep(0.1)
        assert stats == {"pending": 0, "leased": 0, "dead": 0}
        assert learner.stats.facts.replayed > 0
        recovered = await store.list_facts("t-crash", "u1", include_superseded=True)
    # The oracle: the same conversation learned without a crash, on the reference backend.
    async with await amber.open_store("memory://") as ref:
        ref_stored = await ref.append(key, _conversation())
        await Learner(ref).drain()
        expected = await ref.list_facts("t-crash", "u1", include_superseded=True)
    ids = {m.id: i for i, m in enumerate(stored)}
    ref_ids = {m.id: i for i, m in enumerate(ref_stored)}
    assert _fact_shape(recovered, ids) == _fact_shape(expected, ref_ids)
    current = [(f.attribute, f.value) for f in recovered if f.current]
    assert len(current) == len(set(current)) == 2


def test_rules_attribute_other_peoples_details_to_them_and_learn_nothing_from_questions() -> None:
    r = RuleExtractor()
    got = {(c.attribute, c.value): c.text for c in r.extract_text(
        "My colleague Aisha is with another insurer, policy P-369308.")}
    assert ("colleague_aisha:policy_number", "P-369308") in got
    assert not any(a == "policy_number" for a, _ in got)  # never the user's own policy number
    assert "Aisha" in got[("colleague_aisha:policy_number", "P-369308")]
    mixed = {(c.attribute, c.value) for c in r.extract_text(
        "My brother Tom's claim number is C-11111, and my claim number is C-22222.")}
    assert ("brother_tom:claim_number", "C-11111") in mixed and ("claim_number", "C-22222") in mixed
    assert ("claim_number", "C-11111") not in mixed
    assert {c.attribute for c in r.extract_text("By the way, Aisha has a new mobile: 07700 900 123.")} == {"aisha:phone"}
    assert r.extract_text("Is my address still 4 Oak Street?") == []
    # The value ends where a side remark starts; one attribute gets one value from one sentence.
    policy = [c for c in r.extract_text("My car insurance policy number is P-123456, it covers the Ford Focus.")]
    assert [(c.attribute, c.value) for c in policy] == [("policy_number", "P-123456")]
    moved = r.extract_text("Big news, we packed everything up and moved to Denver!", speaker="Nora")
    assert [(c.attribute, c.value) for c in moved] == [("home_location", "Denver")]
    assert "Nora" in moved[0].text  # who said it, so a question naming them finds it


def test_rules_keep_four_digit_numbers_and_learn_what_support_tells_the_user() -> None:
    r = RuleExtractor()
    # "in 4021" is an account ending, not a year: the value is not cut.
    savings = r.extract_text("My savings account is with Crestline Bank, the one ending in 4021.")
    assert [c.value for c in savings] == ["with Crestline Bank, the one ending in 4021"]
    assert [(c.attribute, c.value) for c in r.extract_text(
        "Switch the direct debit to my other account, the one ending 8507.")] == [("account_number", "8507")]
    # The agent naming the user's adjuster twice: one attribute, so the second supersedes the first.
    first = r.extract_text("Your claim adjuster is Marcus Lee.", role="assistant")
    second = r.extract_text("Your claim has been reassigned; your adjuster is now Laura Becker.", role="assistant")
    assert [(c.attribute, c.value) for c in first + second] == [("adjuster", "Marcus Lee"), ("adjuster", "Laura Becker")]
    assert r.extract_text("Your request is with the team; reviews take five days.", role="assistant") == []


# -- two people talking: the assistant-role speaker's own statements ----------------------------------
def test_a_person_named_assistant_states_their_own_facts_an_agent_only_the_users_identifiers() -> None:
    r = RuleExtractor()
    moved = r.extract_text("Big news, we packed everything up and moved to Denver!", role="assistant",
                           speaker="Melanie")
    assert [(c.attribute, c.value, c.text) for c in moved] == [
        ("melanie:home_location", "Denver", "Melanie lives in Denver.")]
    job = r.extract_text("I handed in my notice! I start at a design studio on Monday.", role="assistant",
                         speaker="Mateo Brennan")
    assert [(c.attribute, c.text) for c in job] == [("mateo_brennan:employer", "Mateo Brennan works at a design studio.")]
    # Whose identifier: "your ..." is still the user's; "my ..." is the speaker's own.
    mixed = {(c.attribute, c.value) for c in r.extract_text(
        "My order number is 55123 and your claim number is C-7788.", role="assistant", speaker="Melanie")}
    assert mixed == {("melanie:order_number", "55123"), ("claim_number", "C-7788")}
    # Their relatives are theirs, a named third person is that person (said by whom is kept).
    sister = r.extract_text("My sister Aisha has a new mobile: 07700 900 123.", role="assistant", speaker="Melanie")
    assert [(c.attribute, c.text) for c in sister] == [
        ("melanie:sister_aisha:phone", "Melanie's sister Aisha's phone number is 07700 900 123.")]
    aisha = r.extract_text("Aisha has a new mobile: 07700 900 123.", role="assistant", speaker="Melanie")
    assert [(c.attribute, c.text) for c in aisha] == [
        ("aisha:phone", "Aisha's phone number is 07700 900 123 (said by Melanie).")]
    # Agents (named by a role, or an id) keep the old semantics: what they tell the user, nothing about themselves.
    for agent in ("support", "Support", "assistant", "user_proxy", "Helper Bot", None):
        assert r.extract_text("I moved to Denver. I'd rather not guess.", role="assistant", speaker=agent) == []
        assert [(c.attribute, c.value) for c in r.extract_text(
            "Your claim number is C-7788.", role="assistant", speaker=agent)] == [("claim_number", "C-7788")]
    assert r.extract_text("Did you move to Denver?", role="assistant", speaker="Melanie") == []
    # A name outside ASCII is a person's too (learning and recall share one test, is_person_name).
    assert [c.text for c in r.extract_text("I moved to Lyon last month.", role="assistant", speaker="Zoë")] == [
        "Zoë lives in Lyon."]


async def test_the_other_persons_move_supersedes_their_old_city_never_the_users(store: amber.Store) -> None:
    key = amber.SessionKey("t-two", "pair", "s1")
    turns = [("user", "Nora", "I live in Lisbon now, it's a really friendly place."),
             ("assistant", "Melanie", "I live in Porto now, it's lovely."),
             ("assistant", "Melanie", "Big news, we packed everything up and moved to Denver!"),
             ("assistant", "support", "I moved to Boise.")]  # an agent's "I" is not learned
    await store.append(key, [NewMessage(role=role, content=text, author=author,
                                        created_at=T0 + timedelta(minutes=i))
                             for i, (role, author, text) in enumerate(turns)])
    await Learner(store).drain()
    facts = await store.list_facts("t-two", "pair", include_superseded=True)
    current = {(f.attribute, f.value, f.text) for f in facts if f.current}
    assert current == {("home_location", "Lisbon", "The user lives in Lisbon (said by Nora)."),
                       ("melanie:home_location", "Denver", "Melanie lives in Denver.")}
    porto = [f for f in facts if f.value == "Porto"]
    assert len(porto) == 1 and porto[0].valid_to is not None  # Melanie's own old city, superseded
