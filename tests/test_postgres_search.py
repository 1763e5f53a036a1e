"""PostgreSQL lexical search with a large user: terms common in the user's rows are bounded to the
most recent rows holding them, rare terms still find every row, as SQLite's search does."""

from __future__ import annotations

import uuid

import psycopg

import amber
from amber.errors import StoreUnavailable
from amber.keys import SessionKey
from amber.records import NewMessage
from conftest import POSTGRES_URL, unreachable


async def test_common_terms_take_the_recent_rows_and_a_rare_term_still_wins() -> None:
    schema = f"amber_search_{uuid.uuid4().hex[:8]}"
    try:
        store = await amber.open_store(f"{POSTGRES_URL}?schema={schema}")
    except StoreUnavailable as exc:
        unreachable(f"PostgreSQL at {POSTGRES_URL}", exc)
    try:
        key = SessionKey("t", "u", "many")
        await store.append_one(key, NewMessage("user", "policy zebra noted long ago"))
        for b in range(3):  # "policy" in 3,001 of the user's rows: common (over 2,000)
            await store.append(key, [NewMessage("user", f"policy renewal {b}-{i}") for i in range(1000)])
        await store.append(SessionKey("other", "u", "c"),  # another tenant, same user id, same words
                           [NewMessage("user", f"policy zebra elsewhere {i}") for i in range(1000)])

        async def check() -> None:
            hits = await store.search_text("t", "u", "policy zebra", limit=5)
            assert hits[0].text == "policy zebra noted long ago"
            common = await store.search_text("t", "u", "policy", limit=7)
            assert len(common) == 7 and all(0.0 <= h.score <= 1.0 for h in hits + common)
            assert all(h.tenant == "t" and h.user == "u" and "elsewhere" not in h.text for h in hits + common)
            assert await store.search_text("t", "u", "elsewhere") == []

        await check()  # no planner statistics yet: every term is ranked over all its rows
        await store.analyze()  # now "policy" is known to be common for this user
        await check()
        recent = await store.search_text("t", "u", "policy", limit=7)
        assert all(h.text.startswith("policy renewal 2-") for h in recent)  # from the most recent rows
    finally:
        await store.close()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
