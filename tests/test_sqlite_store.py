"""SQLite-specific behaviour beyond the shared conformance clauses: group commit, FTS5 input safety,
the vector matrix cache seeing other handles' writes, and the ``amber bench store`` command."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import amber
from amber import NewFact, NewMessage, SessionKey
from conftest import check_common_and_rare_terms, fill_common_and_rare_terms
from amber.records import VectorItem


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'amber.db'}"


async def test_concurrent_appends_share_transactions(url: str) -> None:
    async with await amber.open_store(url) as store:
        before = await store.describe()
        keys = [SessionKey("t", "u", f"s{i}") for i in range(64)]
        await asyncio.gather(*(store.append_one(k, NewMessage("user", f"m{i}")) for i, k in enumerate(keys)))
        after = await store.describe()
    ops = after["write_operations"] - before["write_operations"]
    transactions = after["write_transactions"] - before["write_transactions"]
    assert ops == 64
    assert transactions <= 16, f"64 concurrent appends took {transactions} transactions: no group commit"


async def test_a_failing_write_does_not_sink_its_batch_mates(url: str) -> None:
    key = SessionKey("t", "u", "cas")
    async with await amber.open_store(url) as store:
        await store.put_state(key, "s", {"v": 0})
        results = await asyncio.gather(
            store.append_one(key, NewMessage("user", "a")),
            store.put_state(key, "s", {"v": 1}, expected_version=7),  # conflicts
            store.append_one(key, NewMessage("user", "b")),
            return_exceptions=True,
        )
        assert isinstance(results[1], amber.VersionConflict)
        assert [m.content for m in await store.read_since(key)] == ["a", "b"]
        assert (await store.get_state(key, "s")).version == 1


@pytest.mark.parametrize("query", ['"unbalanced', "NEAR(a b", "a AND OR NOT", "*", "col:value", "x^2 - (y)"])
async def test_search_text_never_parses_user_input_as_fts_syntax(url: str, query: str) -> None:
    key = SessionKey("t", "u", "fts")
    async with await amber.open_store(url) as store:
        await store.append_one(key, NewMessage("user", "value of a NEAR b and x y"))
        hits = await store.search_text("t", "u", query)
    assert all(0.0 <= h.score <= 1.0 for h in hits)


async def test_lexical_index_follows_writes_and_deletes_from_other_handles(url: str) -> None:
    key = SessionKey("t", "u", "idx")
    async with await amber.open_store(url) as reader, await amber.open_store(url) as writer:
        await writer.append_one(key, NewMessage("user", "my policy number is P-12345"))
        await writer.record_fact("t", "u", NewFact("policy_number", "P-12345", "policy number P-12345"))
        hits = await reader.search_text("t", "u", "policy P-12345")
        assert {h.kind for h in hits} == {"message", "fact"}
        await writer.delete_user("t", "u")
        assert await reader.search_text("t", "u", "policy P-12345") == []


async def test_vector_cache_sees_other_handles_and_matches_brute_force(url: str) -> None:
    rng = np.random.default_rng(3)
    async with await amber.open_store(url) as a, await amber.open_store(url) as b:
        key = SessionKey("t", "u", "vec")
        msgs = await a.append(key, [NewMessage("user", f"m{i}") for i in range(600)])
        vecs = rng.normal(size=(600, 16)).astype(np.float32)
        await a.put_vectors("t", "u", "toy", [VectorItem("message", m.id, tuple(map(float, v)))
                                            for m, v in zip(msgs[:300], vecs[:300])])
        q = rng.normal(size=16)
        first = await b.search_vectors("t", "u", "toy", tuple(q), limit=10)  # b caches 300 vectors
        await a.put_vectors("t", "u", "toy", [VectorItem("message", m.id, tuple(map(float, v)))
                                            for m, v in zip(msgs[300:], vecs[300:])])
        hits = await b.search_vectors("t", "u", "toy", tuple(q), limit=10)  # must see a's new vectors
        unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
        expected = np.argsort(-(unit @ (q / np.linalg.norm(q))), kind="stable")[:10]
        assert [h.id for h in hits] == [msgs[i].id for i in expected]
        assert [h.id for h in first] == [msgs[i].id for i in np.argsort(-(unit[:300] @ q), kind="stable")[:10]]
        await a.delete_session(key)
        assert await b.search_vectors("t", "u", "toy", tuple(q)) == []


async def test_superseded_facts_leave_vector_results(url: str) -> None:
    async with await amber.open_store(url) as store:
        old = await store.record_fact("t", "u", NewFact("address", "1 Old Rd", "address 1 Old Rd"))
        new = await store.record_fact("t", "u", NewFact("address", "2 New St", "address 2 New St"),
                                      supersedes=[old.id])
        await store.put_vectors("t", "u", "toy", [VectorItem("fact", old.id, (1.0, 0.0)),
                                                 VectorItem("fact", new.id, (0.0, 1.0))])
        hits = await store.search_vectors("t", "u", "toy", (1.0, 0.0))
        assert [h.id for h in hits] == [new.id]
        with pytest.raises(amber.InvalidInput):
            await store.put_vectors("t", "u", "toy", [VectorItem("fact", new.id, (1.0, 0.0, 0.0))])


async def test_schema_leaves_room_for_encryption_and_a_hash_chain(url: str, tmp_path: Path) -> None:
    async with await amber.open_store(url) as store:
        await store.append_one(SessionKey("t", "u", "s"), NewMessage("user", "x"))
    conn = sqlite3.connect(tmp_path / "amber.db")
    try:
        cols = {t: {r[1] for r in conn.execute(f"PRAGMA table_info({t})")} for t in ("messages", "states", "facts", "audit")}
        assert {"enc_key_id", "payload", "content"} <= cols["messages"]
        assert "enc_key_id" in cols["states"] and "enc_key_id" in cols["facts"]
        assert "chain_hash" in cols["audit"]
        for table in ("sessions", "messages", "states", "facts", "vectors", "learn_jobs", "audit"):
            first = [r for r in conn.execute(f"PRAGMA table_info({table})") if r[1] == "tenant_id"]
            assert first, f"{table} has no tenant_id"
        for index in conn.execute("SELECT name, tbl_name FROM sqlite_master WHERE type = 'index' AND tbl_name IN "
                                  "('sessions','messages','states','facts','vectors','audit')").fetchall():
            head = conn.execute(f"PRAGMA index_info({index[0]})").fetchone()
            assert head[2] in ("tenant_id", "id"), f"index {index[0]} does not lead with tenant_id"
    finally:
        conn.close()


@pytest.mark.slow
def test_bench_store_command_prints_one_json_object_last(tmp_path: Path) -> None:
    from amber.cli import main

    url = f"sqlite:///{tmp_path / 'bench.db'}"
    result = CliRunner().invoke(main, ["--store", url, "bench", "store", "--scale", "0.03",
                                       "--window-messages", "60", "--processes", "2", "--vectors", "1500",
                                       "--dim", "8"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) > 3 and all(line.startswith("#") for line in lines[:-1])
    data = json.loads(lines[-1])
    assert data["backend"] == "sqlite" and data["synchronous"] == "FULL"
    for section in ("fsync", "append_1_writer", "window_read_last50"):
        assert data[section]["p50_ms"] > 0 and data[section]["p99_ms"] >= data[section]["p50_ms"]
    assert set(data["throughput_appends_per_s"]) == {"tasks_1", "tasks_4", "tasks_16", "tasks_64",
                                                     "tasks_64_one_session", "processes_2"}
    assert all(v > 0 for v in data["throughput_appends_per_s"].values())
    search = data["search_one_user"]
    assert search["messages"] == 1500 and "synthetic" in search["vectors"]
    for section in ("vector_search_cached", "vector_search_after_one_vector_write", "text_search_common_word",
                    "text_search_rare_word"):
        assert search[section]["n"] > 0 and search[section]["p50_ms"] > 0
    conn = sqlite3.connect(tmp_path / "bench.db")
    try:  # the benchmark tenant was deleted again
        assert conn.execute("SELECT count(*) FROM messages WHERE tenant_id = ?", (data["tenant"],)).fetchone()[0] == 0
    finally:
        conn.close()


@pytest.mark.parametrize("crowd", [0, 3000], ids=["user-owns-the-file", "user-in-a-crowd"])
async def test_common_terms_cost_bounded_work_and_rare_terms_still_win(url: str, crowd: int) -> None:
    """A term in most of a user's rows (over _COMMON_TERM_ROWS) takes the bounded path; a rare term
    still finds its one old row first, and no row of another tenant or user ever comes back."""
    async with await amber.open_store(url) as store:
        await fill_common_and_rare_terms(store, crowd)
        await check_common_and_rare_terms(store)


async def test_facts_of_a_user_who_holds_most_messages_are_found_when_others_facts_crowd_them(url: str) -> None:
    """The user holds most of the file's messages, so facts are ranked without the scope filter
    first; another user's many matching facts fill that candidate list, and the scoped search
    still returns this user's own facts (and only them)."""
    async with await amber.open_store(url) as store:
        await store.append(SessionKey("t", "mine", "s"), [NewMessage("user", f"routine note {i}") for i in range(40)])
        await store.append_one(SessionKey("t", "crowd", "s"), NewMessage("user", "hello"))
        for i in range(60):
            await store.record_fact("t", "crowd", NewFact(attribute=f"locker_{i}", value=str(i),
                                                          text=f"parcel locker code is {i}", kind="statement"))
        mine = [await store.record_fact("t", "mine", NewFact(attribute=f"locker_{i}", value=f"M{i}",
                                                             text=f"my parcel locker code is M{i}", kind="statement"))
                for i in range(3)]
        hits = await store.search_text("t", "mine", "parcel locker code", limit=5, kinds=("fact",))
        assert sorted(h.id for h in hits) == sorted(f.id for f in mine)
        assert all(h.user == "mine" and h.kind == "fact" for h in hits)


async def test_a_version_1_file_is_migrated_and_its_messages_stay_searchable(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import amber.store.sqlite as backend
    from amber.store.sqlite_schema import MIGRATIONS, SCHEMA_VERSION

    key = SessionKey("t", "u", "old")
    monkeypatch.setattr(backend, "MIGRATIONS", MIGRATIONS[:1])
    monkeypatch.setattr(backend, "SCHEMA_VERSION", 1)
    async with await amber.open_store(url) as store:
        await store.append_one(key, NewMessage("user", "claim C-7788 water damage"))
        await store.record_fact("t", "u", NewFact("claim", "C-7788", "claim number C-7788"))
        assert (await store.describe())["schema_version"] == 1
    monkeypatch.undo()
    async with await amber.open_store(url) as store:
        info = await store.describe()
        assert info["schema_version"] == SCHEMA_VERSION
        assert info["migrations_applied_by_this_open"] == list(range(2, SCHEMA_VERSION + 1))
        hits = await store.search_text("t", "u", "C-7788")
        assert {h.kind for h in hits} == {"message", "fact"}
        await store.append_one(key, NewMessage("user", "claim C-7788 closed"))
        assert len(await store.search_text("t", "u", "closed", kinds=("message",))) == 1
        await store.delete_session(key)
        assert await store.search_text("t", "u", "C-7788", kinds=("message",)) == []


async def test_vector_cache_grows_in_place_and_reloads_on_replace_or_delete(url: str) -> None:
    """Added vectors (from any handle) are appended to a cached matrix; a replaced or deleted vector
    makes the next search reload, so it never ranks a stale vector."""
    async with await amber.open_store(url) as reader, await amber.open_store(url) as writer:
        key = SessionKey("t", "u", "grow")
        msgs = await writer.append(key, [NewMessage("user", f"m{i}") for i in range(3)])
        assert await reader.search_vectors("t", "u", "toy", (1.0, 0.0)) == []  # caches an empty set first
        await writer.put_vectors("t", "u", "toy", [VectorItem("message", msgs[0].id, (1.0, 0.0))])
        assert [h.id for h in await reader.search_vectors("t", "u", "toy", (1.0, 0.0))] == [msgs[0].id]
        first = reader._vector_cache[("t", "u", "toy")]
        await writer.put_vectors("t", "u", "toy", [VectorItem("message", msgs[1].id, (0.0, 1.0))])
        hits = await reader.search_vectors("t", "u", "toy", (0.0, 1.0))
        grown = reader._vector_cache[("t", "u", "toy")]
        assert [h.id for h in hits] == [msgs[1].id, msgs[0].id]
        assert grown is first and len(grown) == 2  # appended in place, not reloaded
        await writer.put_vectors("t", "u", "toy", [VectorItem("message", msgs[0].id, (0.0, 1.0)),
                                                  VectorItem("message", msgs[1].id, (1.0, 0.0))])  # re-embedded
        hits = await reader.search_vectors("t", "u", "toy", (1.0, 0.0))
        assert [h.id for h in hits] == [msgs[1].id, msgs[0].id] and hits[0].score == pytest.approx(1.0)
        await writer.delete_session(key)
        assert await reader.search_vectors("t", "u", "toy", (1.0, 0.0)) == []


async def test_concurrent_retries_in_one_batch_store_one_message(url: str) -> None:
    """Appends of one batch are inserted together; the same idempotency key sent by 8 tasks at once
    (so in one transaction) must still be stored once, and every caller gets that message."""
    key = SessionKey("t", "u", "retry")
    async with await amber.open_store(url) as store:
        others = [store.append_one(SessionKey("t", "u", f"o{i}"), NewMessage("user", f"o{i}")) for i in range(8)]
        same = [store.append_one(key, NewMessage("user", "pay claim C-1", idempotency_key="k-1")) for _ in range(8)]
        results = await asyncio.gather(*others, *same)
        stored = await store.read_since(key)
    assert len(stored) == 1 and {m.id for m in results[8:]} == {stored[0].id}
    assert [m.seq for m in results[:8]] == [1] * 8


_RANKING_TEXTS = [
    "my car insurance policy number is P-4411",
    "the car broke down again on the motorway, the car is old",
    "which insurance covers a rental car? insurance questions again",
    "policy renewal is due in May",
    "café opening hours changed; the café near the office",  # accents: FTS5 folds them away
    "my_user_name is on the new card",  # "_" splits tokens: "my_user_name" is a three-token phrase
    "nothing relevant here at all",
    "number please, the number on the card",
]


async def test_ranking_a_users_matches_in_python_agrees_with_fts5_bm25(url: str) -> None:
    """_bm25_in_scope reproduces FTS5's own bm25 when the user's rows are the whole table (the only
    difference it makes on purpose is the IDF's row count: the user's rows, not the table's)."""
    from amber.store.sqlite import _bm25_in_scope, _fts_query, _scope_token

    async with await amber.open_store(url) as store:
        await store.append(SessionKey("t", "u", "s"), [NewMessage("user", t) for t in _RANKING_TEXTS * 3])
    conn = sqlite3.connect(url.removeprefix("sqlite:///"))
    try:
        scope = f'scope : "{_scope_token("t", "u")}"'
        for query in ("car insurance policy number", "cafe", "my_user_name card", "insurance"):
            terms = _fts_query(query)
            assert terms is not None
            match = f"{scope} AND content : ({' OR '.join(terms)})"
            expected = conn.execute("SELECT rowid, rank FROM messages_fts WHERE messages_fts MATCH ? "
                                    "ORDER BY rank, rowid LIMIT 10", (match,)).fetchall()
            counts = {t: conn.execute("SELECT count(*) FROM messages_fts WHERE messages_fts MATCH ?",
                                      (f"{scope} AND content : ({t})",)).fetchone()[0] for t in terms}
            got = _bm25_in_scope(conn, "messages_fts", "content", scope, counts, 10)
            assert expected, query
            assert list(got) == [rowid for rowid, _ in expected], query
            assert list(got.values()) == pytest.approx([rank for _, rank in expected], rel=1e-9), query
    finally:
        conn.close()


async def test_a_users_matches_in_a_crowded_file_are_ranked_by_the_users_own_term_counts(url: str) -> None:
    """In a file where other users hold nearly every row, one user's lexical search is ranked over
    that user's rows (the IDF counts the user's rows, not the file's): "number", in every other
    user's rows but one of mine, is what tells my rows apart, and "garden", in most of mine and
    nobody else's, is not. FTS5's bm25 over the whole file would rank the other way round."""
    async with await amber.open_store(url) as store:
        crowd = [NewMessage("user", f"reference number {i} for the account") for i in range(400)]
        for u in range(5):
            await store.append(SessionKey("t", f"crowd{u}", "s"), crowd)
        mine = await store.append(SessionKey("t", "me", "s"), [
            NewMessage("user", "the garden needs watering"),
            NewMessage("user", "my membership number is M-77"),
            NewMessage("user", "garden party on Sunday in the garden"),
            NewMessage("user", "garden shed keys are with Ann"),
            NewMessage("user", "the weather was fine"),
        ])
        hits = await store.search_text("t", "me", "garden number", limit=3, kinds=("message",))
        assert [h.id for h in hits][0] == mine[1].id
        assert {h.user for h in hits} == {"me"} and len(hits) == 3
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


async def test_checkpoint_empties_the_wal_and_keeps_every_message(url: str, tmp_path: Path) -> None:
    wal = tmp_path / "amber.db-wal"
    key = SessionKey("t", "u", "s")
    async with await amber.open_store(url) as store:
        await store.append(key, [NewMessage("user", f"m{i}") for i in range(200)])
        assert wal.exists() and wal.stat().st_size > 0  # the appends sit in the WAL until a checkpoint
        assert await store.checkpoint() is True
        assert wal.stat().st_size == 0
        assert [m.content for m in await store.read_since(key)] == [f"m{i}" for i in range(200)]
    with sqlite3.connect(tmp_path / "amber.db") as raw:  # in the file itself, not only in the WAL
        assert raw.execute("SELECT count(*) FROM messages").fetchone()[0] == 200
