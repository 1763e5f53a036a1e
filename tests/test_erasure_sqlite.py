"""Erasure on SQLite (3.40 here: no FTS5 secure-delete): a user with 10,000 messages, facts, state and
vectors holding a sentinel is exported, then erased while a real Learner is mid-batch for that user.
Afterwards: 0 sentinel bytes in the database file, its WAL and shared-memory files (the FTS5 index
lives in the database file), 0 readable through the API, 0 records of the other user deleted, and
nothing back from the late learning job or a restore of the backup taken before. Retention pruning
scrubs the same way. Figures printed.

No LLM: the extractor is a deterministic stand-in (see test_erasure_postgres._ErasingExtractor).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import amber
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
