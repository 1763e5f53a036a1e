"""PostgreSQL lexical search with a large user: terms common in the user's rows are bounded to the
most recent rows holding them, rare terms still find every row, as SQLite's search does."""

from __future__ import annotations

import uuid

import psycopg

import amber
from amber.errors import StoreUnavailable
from conftest import POSTGRES_URL, check_common_and_rare_terms, fill_common_and_rare_terms, unreachable


async def test_common_terms_take_the_recent_rows_and_a_rare_term_still_wins() -> None:
    schema = f"amber_search_{uuid.uuid4().hex[:8]}"
    try:
        store = await amber.open_store(f"{POSTGRES_URL}?schema={schema}")
    except StoreUnavailable as exc:
        unreachable(f"PostgreSQL at {POSTGRES_URL}", exc)
    try:
        await fill_common_and_rare_terms(store, crowd=1000)  # another tenant, same user id, same words
        await check_common_and_rare_terms(store)  # no planner statistics yet: every term is ranked over all its rows
        await store.analyze()  # now "policy" is known to be common for this user
        await check_common_and_rare_terms(store)
        recent = await store.search_text("t", "u", "policy", limit=7)
        assert all(h.text.startswith("policy renewal 2-") for h in recent)  # from the most recent rows
    finally:
        await store.close()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
