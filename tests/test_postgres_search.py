"""PostgreSQL lexical search with a large user: terms common in the user's rows are bounded to the
most recent rows holding them, rare terms still find every row, as SQLite's search does."""

from __future__ import annotations

import uuid
from typing import AsyncIterator

import psycopg
import pytest

import amber
from amber.errors import StoreUnavailable
from conftest import POSTGRES_URL, check_common_and_rare_terms, fill_common_and_rare_terms, unreachable


@pytest.fixture
async def store() -> AsyncIterator[amber.Store]:
    """A PostgreSQL store in a schema of its own, dropped afterwards."""
    schema = f"amber_search_{uuid.uuid4().hex[:8]}"
    try:
        opened = await amber.open_store(f"{POSTGRES_URL}?schema={schema}")
    except StoreUnavailable as exc:
        unreachable(f"PostgreSQL at {POSTGRES_URL}", exc)
    try:
        yield opened
    finally:
        await opened.close()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


async def test_common_terms_take_the_recent_rows_and_a_rare_term_still_wins(store: amber.Store) -> None:
    await fill_common_and_rare_terms(store, crowd=1000)  # another tenant, same user id, same words
    await check_common_and_rare_terms(store)  # no planner statistics yet: every term is ranked over all its rows
    await store.analyze()  # now "policy" is known to be common for this user
    await check_common_and_rare_terms(store)
    recent = await store.search_text("t", "u", "policy", limit=7)
    assert all(h.text.startswith("policy renewal 2-") for h in recent)  # from the most recent rows


async def test_a_small_users_rare_terms_are_found_the_same_through_the_index_or_the_users_rows(
    store: amber.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small user in a large table: when the query's terms are in many other users' rows, the
    search reads the user's own rows instead of the lexical index's postings (_INDEX_POSTINGS_PER_ROW
    decides). Either route must give the same hits: forced one way, then the other."""
    import amber.store.postgres as backend

    crowd = [amber.NewMessage("user", f"reference number {i} for the account") for i in range(500)]
    for u in range(4):
        await store.append(amber.SessionKey("t", f"crowd{u}", "s"), crowd)
    mine = await store.append(amber.SessionKey("t", "me", "s"), [
        amber.NewMessage("user", "the garden needs watering"),
        amber.NewMessage("user", "my membership number is M-77"),
        amber.NewMessage("user", "the account statement arrived"),
        amber.NewMessage("user", "the weather was fine"),
    ])
    await store.record_fact("t", "me", amber.NewFact("membership_number", "M-77", "Membership number is M-77."))
    await store.analyze()  # "number" and "account" are now known to be in most rows of the table
    answers = {}
    for route, postings_per_row in (("index", 1e6), ("own rows", 1e-6)):
        monkeypatch.setattr(backend, "_INDEX_POSTINGS_PER_ROW", postings_per_row)
        hits = await store.search_text("t", "me", "membership number account", limit=5)
        answers[route] = [(h.kind, h.id, round(h.score, 9)) for h in hits]
        assert {h.user for h in hits} == {"me"}
    assert answers["index"] == answers["own rows"]
    assert [kind for kind, _, _ in answers["index"]].count("message") == 2
    assert mine[1].id in {hid for _, hid, _ in answers["index"]}
