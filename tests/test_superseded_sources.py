"""Store.superseded_sources: the SQL answers of SQLite and PostgreSQL equal the contract's reference
implementation (through get_fact and list_facts), on real stores, for histories with changed,
unchanged, re-asserted (case-folded) and deleted values and a history longer than the window."""

from __future__ import annotations

import random
import uuid

import pytest

import amber
from amber.errors import InvalidInput, StoreUnavailable
from amber.keys import SessionKey
from amber.records import NewFact, NewMessage
from amber.store.base import Store
from conftest import POSTGRES_URL, unreachable


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request, tmp_path):
    if request.param == "memory":
        s = await amber.open_store("memory://")
    elif request.param == "sqlite":
        s = await amber.open_store(f"sqlite:///{tmp_path / 'facts.db'}")
    else:
        try:
            s = await amber.open_store(f"{POSTGRES_URL}?schema=amber_superseded_sources")
        except StoreUnavailable as exc:
            unreachable(f"PostgreSQL at {POSTGRES_URL}", exc)
    yield s
    await s.close()


async def _history(store: amber.Store, tenant: str, user: str) -> list[str]:
    """Facts over a few attributes, some superseded (sometimes by the same value in other case);
    returns every fact id."""
    rng = random.Random(7)
    msgs = await store.append(SessionKey(tenant, user, "t"), [NewMessage(role="user", content=f"turn {i}")
                                                             for i in range(60)])
    ids: list[str] = []
    current: dict[str, str] = {}
    for i in range(90):
        attribute = rng.choice(["address", "phone", "employer", "pet", "never_changes"])
        value = rng.choice(["Oak Street", "oak street", "Harbour Road", "12 Elm", "cat"])
        sources = [m.id for m in rng.sample(msgs, rng.randint(0, 3))]
        supersedes = [current[attribute]] if attribute in current and attribute != "never_changes" else []
        fact = await store.record_fact(tenant, user, NewFact(attribute=attribute, value=value, text=f"{attribute} {value}",
                                                             source_message_ids=tuple(sources)),
                                       supersedes=supersedes)
        current[attribute] = fact.id
        ids.append(fact.id)
    await store.delete_fact(tenant, user, ids[5])
    return ids


async def test_sql_answers_equal_the_reference(store: amber.Store) -> None:
    tenant, user = f"t-{uuid.uuid4().hex[:8]}", "alice"
    ids = await _history(store, tenant, user)
    await _history(store, tenant, "bob")  # another user's facts never count
    some_stale = False
    for probe in ([ids[-1]], ids[:10], ids, [ids[5], "no-such-id"], []):
        for history in (200, 3, 0):
            got = await store.superseded_sources(tenant, user, probe, history=history)
            want = await Store.superseded_sources(store, tenant, user, probe, history=history)
            assert got == want, (probe[:3], history)
            some_stale |= bool(got)
    assert some_stale  # the history does hold stale turns: the comparison was not of empty sets
    assert await store.superseded_sources(tenant, "nobody", ids) == set()


async def test_not_an_audited_read(store: amber.Store) -> None:
    tenant, user = f"t-{uuid.uuid4().hex[:8]}", "alice"
    ids = await _history(store, tenant, user)
    await store.chain_audit(tenant)
    before = len(await store.list_audit(tenant, limit=10_000))
    assert await store.superseded_sources(tenant, user, ids)
    await Store.superseded_sources(store, tenant, user, ids)  # the default path, too
    await store.chain_audit(tenant)
    assert len(await store.list_audit(tenant, limit=10_000)) == before  # only ids of turns: no content read


async def test_bad_input_is_refused(store: amber.Store) -> None:
    with pytest.raises(InvalidInput):
        await store.superseded_sources("t", "u", "fact-id")  # a string, not a sequence of ids
    with pytest.raises(InvalidInput):
        await store.superseded_sources("t", "u", ["x"], history=-1)
    with pytest.raises(InvalidInput):
        await store.superseded_sources("t", "bad/user", ["x"])


async def test_postgres_analyze_refreshes_the_planner_statistics() -> None:
    import psycopg

    schema = f"amber_analyze_{uuid.uuid4().hex[:8]}"  # fresh: its tables were never analyzed
    try:
        store = await amber.open_store(f"{POSTGRES_URL}?schema={schema}")
    except StoreUnavailable as exc:
        unreachable(f"PostgreSQL at {POSTGRES_URL}", exc)

    def row_estimates() -> dict[str, float]:
        with psycopg.connect(POSTGRES_URL) as conn:
            return dict(conn.execute("SELECT c.relname, c.reltuples FROM pg_class c JOIN pg_namespace n"
                                     " ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r'",
                                     (schema,)).fetchall())

    try:
        await _history(store, "t", "alice")
        assert row_estimates()["facts"] < 0  # never analyzed: the planner guesses
        await store.analyze()
        after = row_estimates()
        assert after["facts"] == 89 and after["messages"] == 60  # 90 facts, one deleted
    finally:
        await store.close()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
