"""Learners racing over one store: several :class:`Learner` s (as ``amber worker`` next to an
in-process learner, or two worker processes) consolidating turns that state the same value must
leave one current fact holding every source, never one fact per learner. Run against real SQLite
files (separate handles: separate connections and writer threads) and real PostgreSQL (separate
pools), plus the in-memory reference."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest

import amber
from amber.errors import StoreUnavailable
from amber.learn import Learner
from amber.records import Fact, NewMessage
from amber.store.delegating import DelegatingStore
from conftest import POSTGRES_URL, unreachable

T0 = datetime(2024, 3, 1, 9, 0, tzinfo=timezone.utc)

OpenHandle = Callable[[], Awaitable[amber.Store]]


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def open_handle(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OpenHandle]:
    """Opens another handle on one store each call; all of them are closed at the end."""
    url = {
        "memory": f"memory://learn-{uuid.uuid4().hex}",
        "sqlite": f"sqlite:///{tmp_path / 'learn.db'}",
        "postgres": f"{POSTGRES_URL}{'&' if '?' in POSTGRES_URL else '?'}schema=amber_learn_concurrency",
    }[request.param]
    handles: list[amber.Store] = []

    async def open_() -> amber.Store:
        try:
            handles.append(await amber.open_store(url))
        except StoreUnavailable as exc:
            unreachable(f"the store at {url}", exc)
        return handles[-1]

    try:
        yield open_
    finally:
        for h in handles:
            await h.close()


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"  # learners are limited to it: the shared server holds other jobs


class ReadTogether(DelegatingStore):
    """Holds this learner's first read of an attribute until every learner has read it, so all of
    them decide on the same picture: the race the review found, made certain instead of likely."""

    def __init__(self, inner: amber.Store, barrier: asyncio.Barrier) -> None:
        super().__init__(inner, close_inner=False)
        self._barrier = barrier
        self._waited = False

    async def list_facts(self, tenant: str, user: str, *, attribute: str | None = None, **kw: Any) -> list[Fact]:
        facts = await super().list_facts(tenant, user, attribute=attribute, **kw)
        if attribute is not None and not self._waited:
            self._waited = True
            await asyncio.wait_for(self._barrier.wait(), timeout=30)
        return facts


def _email_turns(n: int) -> list[NewMessage]:
    spellings = ["my email is bob@example.com", "My email is Bob@Example.com.", "my email is bob@example.com!"]
    return [NewMessage(role="user", content=spellings[i % 3], created_at=T0 + timedelta(minutes=i)) for i in range(n)]


async def _only_current(store: amber.Store, tenant: str, user: str, attribute: str) -> Fact:
    current = await store.list_facts(tenant, user, attribute=attribute)
    assert len(current) == 1, f"{len(current)} current facts: {[(f.value, f.source_message_ids) for f in current]}"
    return current[0]


async def test_two_learners_reading_the_same_empty_attribute_record_one_fact(
    open_handle: OpenHandle, tenant: str
) -> None:
    writer = await open_handle()
    key_a, key_b = amber.SessionKey(tenant, "bob", "chat-a"), amber.SessionKey(tenant, "bob", "chat-b")
    (a,) = await writer.append(key_a, _email_turns(1))
    (b,) = await writer.append(key_b, _email_turns(1))
    barrier = asyncio.Barrier(2)
    learners = [Learner(ReadTogether(await open_handle(), barrier), tenant=tenant, batch_size=1) for _ in range(2)]
    # One job each: both read "no email yet" before either writes.
    assert sum(await asyncio.gather(*(ln.run_once() for ln in learners))) == 2
    fact = await _only_current(writer, tenant, "bob", "email")
    assert set(fact.source_message_ids) == {a.id, b.id}  # the loser re-read and merged into the winner
    assert sum(ln.stats.facts.conflicts for ln in learners) >= 1
    assert sum(ln.stats.facts.created for ln in learners) == 1
    assert sum(ln.stats.facts.merged for ln in learners) == 1
    assert (await writer.learn_queue_stats(tenant))["pending"] == 0


async def test_learners_draining_one_queue_merge_every_statement_into_one_fact(
    open_handle: OpenHandle, tenant: str
) -> None:
    writer = await open_handle()
    stated: set[str] = set()
    for chat in range(4):
        stored = await writer.append(amber.SessionKey(tenant, "bob", f"chat-{chat}"), _email_turns(4))
        stated.update(m.id for m in stored)
    # backoff 0: a job whose candidate lost every attempt is retried at once, as it would be later
    learners = [Learner(await open_handle(), tenant=tenant, batch_size=2, backoff=0.0) for _ in range(3)]
    for _ in range(10):
        await asyncio.gather(*(ln.drain() for ln in learners))
        if not (await writer.learn_queue_stats(tenant))["pending"]:
            break
    assert (await writer.learn_queue_stats(tenant))["pending"] == 0
    fact = await _only_current(writer, tenant, "bob", "email")
    assert set(fact.source_message_ids) == stated
    assert all(ln.stats.jobs_dead == 0 for ln in learners)


# -- one message, several values of one attribute --------------------------------------------------
# Not a race, but the same question of what consolidation may write: the replay check that took the
# second value of a message for a re-run of the first.
async def _values(store: amber.Store, tenant: str, attribute: str) -> dict[str, tuple[str, ...]]:
    return {f.value: f.source_message_ids for f in await store.list_facts(tenant, "bob", attribute=attribute)}


async def test_two_values_of_one_attribute_in_one_message_are_both_current(
    open_handle: OpenHandle, tenant: str
) -> None:
    store = await open_handle()
    key = amber.SessionKey(tenant, "bob", "chat")
    m1, m2, m3, m4 = await store.append(key, [
        NewMessage(role="user", content=text, created_at=T0 + timedelta(minutes=i)) for i, text in enumerate([
            "my order is 11111", "order 12345 and order 67890", "order 67890 and order 55555", "my order is 99999"])])
    learner = Learner(store, tenant=tenant, batch_size=1)
    assert await learner.run_once(limit=2) == 2  # m1, m2
    assert await _values(store, tenant, "order_number") == {"12345": (m2.id,), "67890": (m2.id,)}
    (old,) = [f for f in await store.list_facts(tenant, "bob", include_superseded=True) if f.value == "11111"]
    assert old.valid_to == m2.created_at  # what the message did not restate is superseded as usual
    assert (learner.stats.facts.created, learner.stats.facts.superseded, learner.stats.facts.replayed) == (3, 1, 0)

    from amber.learn.consolidate import ConsolidationStats, consolidate
    from amber.learn.rules import RuleExtractor

    again = ConsolidationStats()  # a re-run of m2's job recognises both values, writes nothing
    facts = await consolidate(store, m2, RuleExtractor().extract_text(m2.content), again)
    assert (again.replayed, again.created, again.merged) == (2, 0, 0)
    assert sorted(f.value for f in facts) == ["12345", "67890"]

    await learner.run_once()  # m3 restates 67890 (merged) beside a new 55555; 12345 is superseded
    assert await _values(store, tenant, "order_number") == {"67890": (m2.id, m3.id), "55555": (m3.id,)}
    await learner.run_once()  # one later value replaces the set
    assert await _values(store, tenant, "order_number") == {"99999": (m4.id,)}


# -- a statement learned late -------------------------------------------------------------------------
async def test_an_older_value_learned_late_enters_history_already_superseded(
    open_handle: OpenHandle, tenant: str
) -> None:
    from amber.learn.consolidate import ConsolidationStats, consolidate
    from amber.learn.rules import RuleExtractor

    store = await open_handle()
    key = amber.SessionKey(tenant, "bob", "chat")
    first, second = await store.append(key, [
        NewMessage(role="user", content="my city is Leeds", created_at=T0),
        NewMessage(role="user", content="my city is York", created_at=T0 + timedelta(minutes=5))])
    for job in await store.claim_learn_jobs(limit=10, tenant=tenant):  # Leeds' job fails, York's is learned
        await store.fail_learn_job(job.id, "simulated outage", retry_in=0.0)
    (york,) = await consolidate(store, second, RuleExtractor().extract_text(second.content), ConsolidationStats())
    learner = Learner(store, tenant=tenant)
    await learner.drain()  # the retried Leeds job arrives late
    assert learner.stats.facts.stale == 1
    assert await store.list_facts(tenant, "bob", attribute="city") == [york]  # the current fact is untouched
    (leeds,) = [f for f in await store.list_facts(tenant, "bob", attribute="city", include_superseded=True)
                if f.value == "Leeds"]
    assert (leeds.valid_from, leeds.valid_to, leeds.superseded_by) == (first.created_at, york.valid_from, york.id)
    assert leeds.source_message_ids == (first.id,)
    assert await store.superseded_sources(tenant, "bob", [york.id]) == {first.id}  # recall marks the turn outdated
    again = ConsolidationStats()  # a re-run of the late job recognises it
    assert await consolidate(store, first, RuleExtractor().extract_text(first.content), again) == []
    assert (again.replayed, again.stale) == (1, 0)
    assert len(await store.list_facts(tenant, "bob", include_superseded=True)) == 2
