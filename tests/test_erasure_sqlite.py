"""Erasure on SQLite (3.40 here: no FTS5 secure-delete): a user with 10,000 messages, facts, state and
vectors holding a sentinel is exported, then erased while a real Learner is mid-batch for that user.
Afterwards: 0 sentinel bytes in the database file, its WAL and shared-memory files (the FTS5 index
lives in the database file), 0 readable through the API, 0 records of the other user deleted, and
nothing back from the late learning job or a restore of the backup taken before. Retention pruning
scrubs the same way. Figures printed.

No LLM: the extractor is a deterministic stand-in (see test_erasure_postgres._ErasingExtractor).
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import uuid
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import amber
import amber.store.sqlite as sqlite_store
from amber.keys import SessionKey
from amber.learn import Learner
from amber.records import NewFact, NewMessage, VectorItem
from amber.transfer import export_jsonl, restore_jsonl
from test_erasure_postgres import _Embedder, _ErasingExtractor

N_MESSAGES = 10_000
N_SESSIONS = 10
N_FACTS = 100


def _hits(db: Path, needle: bytes) -> dict[str, int]:
    out = {}
    for suffix in ("", "-wal", "-shm", "-journal"):
        p = Path(str(db) + suffix)
        out[suffix or "db"] = p.read_bytes().lower().count(needle.lower()) if p.exists() else 0
    return out


async def test_erasing_a_user_scrubs_the_file_the_wal_and_the_fts_index(tmp_path, capsys) -> None:
    db = tmp_path / "amber.db"
    sentinel = f"zqx{uuid.uuid4().hex[:12]}"  # FTS5 stores terms lower-cased: grep case-insensitively
    needle = sentinel.encode()
    tenant = "bank"
    store = await amber.open_store(f"sqlite:///{db}")
    try:
        keys = [SessionKey(tenant, "gone", f"claim-{i}") for i in range(N_SESSIONS)]
        per = N_MESSAGES // N_SESSIONS
        for k in keys:
            for start in range(0, per, 500):
                await store.append(k, [NewMessage("user", f"policy {sentinel} number {start + i} of {k.thread}")
                                       for i in range(500)])
            await store.put_state(k, "agent", {"note": f"customer {sentinel}"})
        first = await store.read_since(keys[0], 0, limit=50)
        await store.put_vectors(tenant, "gone", "toy", [VectorItem("message", m.id, (1.0, 0.0, 0.5)) for m in first])
        for i in range(N_FACTS):
            await store.record_fact(tenant, "gone", NewFact(f"policy_{i}", sentinel, f"policy {i} is {sentinel}",
                                                            source_message_ids=(first[i % 50].id,)))
        kept = SessionKey(tenant, "kept", "claim-x")
        await store.append(kept, [NewMessage("user", f"keep {i}") for i in range(50)])
        await store.record_fact(tenant, "kept", NewFact("policy", "K-1", "policy K-1"))
        await store.complete_learn_jobs([j.id for j in await store.claim_learn_jobs(
            limit=100_000, lease_seconds=0.0, tenant=tenant) if j.key.user == "kept"])
        assert len(await store.search_text(tenant, "gone", sentinel)) > 0
        before = _hits(db, needle)
        assert before["db"] + before["-wal"] > N_MESSAGES

        backup = [line async for line in export_jsonl(store, tenant)]
        exported = sum(line.count(sentinel) for line in backup)

        extractor = _ErasingExtractor(store, tenant, "gone")
        await Learner(store, extractor=extractor, embedder=_Embedder(), tenant=tenant, batch_size=10).drain()
        receipt = extractor.receipt
        assert receipt is not None and receipt.counts["messages"] == N_MESSAGES and receipt.counts["facts"] == N_FACTS
        after_erasure = _hits(db, needle)

        readable = 0
        for k in keys:
            readable += len(await store.read_since(k)) + int(await store.get_state(k, "agent") is not None)
        readable += len(await store.list_facts(tenant, "gone", include_superseded=True))
        readable += len(await store.search_text(tenant, "gone", sentinel))
        readable += len(await store.search_vectors(tenant, "gone", "toy", (1.0, 0.0, 0.5)))
        assert readable == 0
        assert len(await store.read_since(kept)) == 50 and len(await store.list_facts(tenant, "kept")) == 1

        report = await restore_jsonl(store, tenant, backup)
        assert report.counts["withheld_erased"] >= N_MESSAGES + N_FACTS
        assert await store.list_facts(tenant, "gone", include_superseded=True) == []
        after_restore = _hits(db, needle)
    finally:
        await store.close()
    after_close = _hits(db, needle)
    with capsys.disabled():
        print(f"\nSQLite erasure figures: {N_MESSAGES} messages + {N_FACTS} facts + {N_SESSIONS} states; exported "
              f"{exported} sentinel hits first; sentinel hits before erasure {before}, after erasure "
              f"{after_erasure}, after restoring the older backup {after_restore}, after close {after_close}; "
              f"readable via API: {readable}")
    assert after_erasure == {"db": 0, "-wal": 0, "-shm": 0, "-journal": 0}
    assert sum(after_restore.values()) == 0 and sum(after_close.values()) == 0


async def test_prune_scrubs_expired_content_from_the_file(tmp_path) -> None:
    db = tmp_path / "amber.db"
    sentinel = f"zqx{uuid.uuid4().hex[:12]}"
    old = datetime.now(timezone.utc) - timedelta(days=90)
    async with await amber.open_store(f"sqlite:///{db}") as store:
        key = SessionKey("bank", "u", "t")
        await store.append(key, [NewMessage("user", f"old {sentinel} {i}", created_at=old) for i in range(300)])
        young = await store.append(key, [NewMessage("user", f"young {i}") for i in range(5)])
        assert sum(_hits(db, sentinel.encode()).values()) > 0
        receipt = await store.prune("bank", before={"messages": datetime.now(timezone.utc) - timedelta(days=30)})
        assert receipt.counts["messages"] == 300
        assert sum(_hits(db, sentinel.encode()).values()) == 0
        assert [m.id for m in await store.read_since(key)] == [m.id for m in young]
        assert (await store.get_session(key)).message_count == 5  # type: ignore[union-attr]


def _fts_check(db: Path) -> None:
    """FTS5's own consistency check of both lexical indexes against their content tables."""
    conn = sqlite3.connect(db)
    try:
        for table in ("messages_fts", "facts_fts"):
            conn.execute(f"INSERT INTO {table} ({table}) VALUES ('integrity-check')")
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


async def test_a_thousand_erasures_leave_the_lexical_index_readable(tmp_path) -> None:
    """Regression: every erasure scrubbed the index with FTS5 'optimize', which in SQLite 3.40 adds
    two levels to the index structure each time; past 2,000 levels FTS5 refuses the index ("database
    disk image is malformed"), so erasure ~1,000 failed and lexical search broke for every user (seen
    as the failed cleanup of `amber.bench.scale` at 1,000 users). The scrub now rebuilds an index
    whose level count has grown past half the limit."""
    db = tmp_path / "amber.db"
    words = [f"zqx{uuid.uuid4().hex[:12]}" for _ in range(1_200)]
    async with await amber.open_store(f"sqlite:///{db}?synchronous=normal") as store:
        key = SessionKey("bank", "gone", "t")
        gone = [m for i in range(0, len(words), 500)
                for m in await store.append(key, [NewMessage("user", f"claim {w}") for w in words[i:i + 500]])]
        kept = SessionKey("bank", "kept", "t")
        await store.append(kept, [NewMessage("user", f"keep {i} harbour") for i in range(20)])
        await store.record_fact("bank", "kept", NewFact("port", "harbour", "the port is the harbour"))
        most = 0
        for m in gone:
            assert await store.delete_message(key, m.id)
            with closing(sqlite3.connect(db)) as conn:
                most = max(most, sqlite_store.fts5_levels(conn, "messages_fts"))
        assert len(await store.search_text("bank", "kept", "harbour", limit=50)) == 21
        assert await store.search_text("bank", "gone", words[-1]) == []
        assert await store.read_since(key) == []
    assert most < sqlite_store._FTS5_CORRUPT_LEVELS
    _fts_check(db)
    assert sum(sum(_hits(db, w.encode()).values()) for w in words) == 0


async def test_opening_repairs_an_index_an_older_amber_left_unreadable(tmp_path) -> None:
    """A file whose lexical index an older Amber drove past FTS5's 2,000 levels (each erasure ran
    'optimize'): every search and write touching it failed. Opening the store rebuilds it."""
    db = tmp_path / "amber.db"
    async with await amber.open_store(f"sqlite:///{db}") as store:
        for start in range(0, 2_500, 500):
            await store.append(SessionKey("bank", "old", "t"), [NewMessage("user", f"note {start + i}")
                                                                 for i in range(500)])
        await store.append(SessionKey("bank", "kept", "t"), [NewMessage("user", "harbour master")])
    conn = sqlite3.connect(db, isolation_level=None)
    try:  # what the old scrub did, erasure after erasure (raw deletes: only the index matters here)
        rids = [r[0] for r in conn.execute("SELECT rid FROM messages WHERE user_id = 'old' ORDER BY rid")]
        for rid in rids[:-1]:  # each adds one or two levels
            if sqlite_store.fts5_levels(conn, "messages_fts") > sqlite_store._FTS5_CORRUPT_LEVELS:
                break
            conn.execute("BEGIN")
            conn.execute("DELETE FROM messages WHERE rid = ?", (rid,))
            conn.execute("INSERT INTO messages_fts (messages_fts) VALUES ('optimize')")
            conn.execute("COMMIT")
        assert sqlite_store.fts5_levels(conn, "messages_fts") > sqlite_store._FTS5_CORRUPT_LEVELS
        with pytest.raises(sqlite3.DatabaseError, match="malformed"):
            conn.execute("SELECT rowid FROM messages_fts WHERE messages_fts MATCH 'harbour'").fetchall()
    finally:
        conn.close()
    async with await amber.open_store(f"sqlite:///{db}") as store:
        assert [h.text for h in await store.search_text("bank", "kept", "harbour")] == ["harbour master"]
        assert len(await store.search_text("bank", "old", "note", limit=5000)) == 2_500 - rids.index(rid)
    _fts_check(db)


def _owed(db: Path) -> list[tuple[str, int]]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT fts_table, erasures FROM fts_scrub_owed ORDER BY fts_table").fetchall()


async def _load_sentinel_user(store, sentinel: str, user: str = "gone") -> None:
    await store.append(SessionKey("bank", user, "t"), [NewMessage("user", f"policy {sentinel} {i}") for i in range(300)])
    await store.record_fact("bank", user, NewFact("policy", sentinel, f"policy is {sentinel}"))
    await store.append(SessionKey("bank", "kept", "t"), [NewMessage("user", "keep this harbour")])


async def test_a_deferred_scrub_is_owed_durably_and_done_by_the_timer_a_call_or_close(tmp_path) -> None:
    """erasure_scrub_delay > 0: the erasure returns once the rows are gone (nothing readable through
    any API), leaving a durable marker; the scrub then runs on its timer, when asked, or at close."""
    db = tmp_path / "amber.db"
    s1, s2, s3 = (f"zqx{uuid.uuid4().hex[:12]}" for _ in range(3))
    async with await amber.open_store(f"sqlite:///{db}?erasure_scrub_delay=3600") as store:
        await _load_sentinel_user(store, s1, "a")
        await _load_sentinel_user(store, s2, "b")
        await store.delete_user("bank", "a")
        await store.delete_user("bank", "b")
        assert await store.search_text("bank", "a", s1) == [] and await store.read_since(SessionKey("bank", "a", "t")) == []
        assert _owed(db) == [("facts_fts", 2), ("messages_fts", 2)]  # two erasures, one scrub owed
        assert await store.scrub_erasures() is True
        assert _owed(db) == [] and sum(_hits(db, s1.encode()).values()) + sum(_hits(db, s2.encode()).values()) == 0
        assert await store.scrub_erasures() is False  # nothing owed: no index rewrite
        await store.append(SessionKey("bank", "c", "t"), [NewMessage("user", f"claim {s3} {i}") for i in range(50)])
        await store.delete_session(SessionKey("bank", "c", "t"))
        assert _owed(db) == [("messages_fts", 1)]
    assert _owed(db) == [] and sum(_hits(db, s3.encode()).values()) == 0  # close ran it
    assert [h.text for h in await _search_kept(db)] == ["keep this harbour"] * 2

    s4 = f"zqx{uuid.uuid4().hex[:12]}"
    async with await amber.open_store(f"sqlite:///{db}?erasure_scrub_delay=0.2") as store:
        await _load_sentinel_user(store, s4, "d")
        await store.delete_user("bank", "d")
        for _ in range(300):  # the timer fires after 0.2 s (scrub, then WAL checkpoint); allow a loaded machine time
            if not _owed(db) and sum(_hits(db, s4.encode()).values()) == 0:
                break
            await asyncio.sleep(0.1)
        assert _owed(db) == [] and sum(_hits(db, s4.encode()).values()) == 0


async def _search_kept(db: Path) -> list:
    async with await amber.open_store(f"sqlite:///{db}") as store:
        return await store.search_text("bank", "kept", "harbour")


async def test_a_scrub_owed_by_a_process_that_died_is_done_at_the_next_open(tmp_path) -> None:
    db = tmp_path / "amber.db"
    sentinel = f"zqx{uuid.uuid4().hex[:12]}"
    script = (
        "import asyncio, os, sys\n"
        "import amber\n"
        "from amber.keys import SessionKey\n"
        "from amber.records import NewMessage\n"
        "async def main():\n"
        f"    store = await amber.open_store('sqlite:///{db}?erasure_scrub_delay=3600')\n"
        f"    await store.append(SessionKey('bank', 'gone', 't'), [NewMessage('user', 'policy {sentinel} %d' % i)"
        " for i in range(300)])\n"
        "    await store.delete_user('bank', 'gone')\n"
        "    sys.stdout.flush()\n"
        "    os._exit(0)  # dies within the delay: no close, no timer\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert _owed(db) == [("messages_fts", 1)] and sum(_hits(db, sentinel.encode()).values()) > 0
    store = await amber.open_store(f"sqlite:///{db}")
    try:
        assert _owed(db) == [] and sum(_hits(db, sentinel.encode()).values()) == 0
    finally:
        await store.close()
    _fts_check(db)
