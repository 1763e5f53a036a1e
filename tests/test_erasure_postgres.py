"""Erasure on PostgreSQL with the Redis layer in front: a user with 10,000 messages, facts, state and
vectors holding a sentinel is exported (right of access), then erased while a real Learner is in the
middle of a batch for that user. Checked afterwards, and printed as figures:

* 0 sentinel records readable through any API, 0 records of the other user deleted;
* 0 sentinel bytes in any Redis value or in the Redis snapshot (RDB) taken after the erasure;
* nothing resurrected by the late learning job, a cache refill, or a restore of the older backup;
* what remains in PostgreSQL's own files: table+index files after VACUUM, after VACUUM FULL, and the
  WAL (measured on a private cluster whose files this test can read; see docs/governance-audit.md).

Private servers (a PostgreSQL cluster and a redis-server on free ports in temp dirs) so the file
greps see only this test's data and nothing shared is touched. No LLM: the extractor is a
deterministic stand-in that proposes one fact per message (docstring of _ErasingExtractor).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Sequence

import pytest

import amber
from amber.keys import SessionKey
from amber.learn import Learner
from amber.learn.extract import Candidate
from amber.records import Message, NewFact, NewMessage, VectorItem
from amber.transfer import export_jsonl, restore_jsonl
from conftest import unreachable
from pgservers import PrivatePostgres, free_port, system_bin_dir

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

N_MESSAGES = 10_000
N_SESSIONS = 10
N_FACTS = 100


def _grep(paths: Sequence[Path], needle: bytes) -> tuple[int, int]:
    """(files containing needle, total occurrences)."""
    files = hits = 0
    for p in paths:
        try:
            data = p.read_bytes()
        except OSError:
            continue
        n = data.count(needle)
        if n:
            files += 1
            hits += n
    return files, hits


@pytest.fixture(scope="module")
def private_pg():  # type: ignore[no-untyped-def]
    bin_dir = system_bin_dir()
    if bin_dir is None:
        unreachable("a system PostgreSQL (initdb) for a private cluster", RuntimeError("no initdb found"))
    server = PrivatePostgres(bin_dir, settings={"fsync": "on", "synchronous_commit": "on"})
    try:
        server.init().start()
    except Exception as exc:
        server.destroy()
        unreachable("a private PostgreSQL cluster", exc)
    yield server
    server.destroy()


@pytest.fixture(scope="module")
def private_redis():  # type: ignore[no-untyped-def]
    exe = shutil.which("redis-server")
    if exe is None:
        unreachable("redis-server (for a private Redis)", RuntimeError("redis-server not on PATH"))
    root = Path(tempfile.mkdtemp(prefix="amber-redis-"))
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(root), "--dbfilename", "dump.rdb"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    import socket

    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0", root
    proc.terminate()
    proc.wait(timeout=10)
    shutil.rmtree(root, ignore_errors=True)


class _ErasingExtractor:
    """Deterministic stand-in for a model extractor (no LLM is reachable here): proposes one fact per
    message quoting it. The first call erases the user -- the erasure lands while the learner holds
    the claimed jobs and the loaded messages, the window in which a naive store resurrects facts."""

    name = "erasing-test-extractor"

    def __init__(self, store: amber.Store, tenant: str, user: str) -> None:
        self.store, self.tenant, self.user, self.receipt = store, tenant, user, None

    async def extract(self, message: Message, context: Sequence[Message] = ()) -> list[Candidate]:
        if self.receipt is None:
            self.receipt = await self.store.delete_user(self.tenant, self.user)
        return [Candidate("said", message.content, f"the user said {message.content}")]


class _Embedder:
    """Deterministic 4-dim embedder (hash of the text), enough to exercise the vector path."""

    name = "toy-hash"
    dim = 4

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [[float((hash(t) >> s) & 0xFF) + 1.0 for s in (0, 8, 16, 24)] for t in texts]


async def test_erasing_a_user_with_10000_messages_leaves_nothing_behind(private_pg, private_redis, capsys) -> None:
    redis_url, redis_dir = private_redis
    sentinel = f"SENTINEL{uuid.uuid4().hex[:12]}"
    needle = sentinel.encode()
    tenant = "bank"
    store = await amber.open_store(private_pg.url, cache=redis_url)
    try:
        # -- the data: the victim and a bystander ------------------------------------------------------
        keys = [SessionKey(tenant, "gone", f"claim-{i}") for i in range(N_SESSIONS)]
        per = N_MESSAGES // N_SESSIONS
        for k in keys:
            for start in range(0, per, 500):
                await store.append(k, [NewMessage("user", f"policy {sentinel} number {start + i} of {k.thread}")
                                       for i in range(500)])
            await store.put_state(k, "agent", {"note": f"customer {sentinel}"})
        stored = await store.read_since(keys[0], 0, limit=50)
        await store.put_vectors(tenant, "gone", "toy", [VectorItem("message", m.id, (1.0, 0.0, 0.5)) for m in stored])
        for i in range(N_FACTS):
            await store.record_fact(tenant, "gone", NewFact(f"policy_{i}", sentinel, f"policy {i} is {sentinel}",
                                                            source_message_ids=(stored[i % 50].id,)))
        kept = SessionKey(tenant, "kept", "claim-x")
        await store.append(kept, [NewMessage("user", f"keep {i}") for i in range(50)])
        await store.record_fact(tenant, "kept", NewFact("policy", "K-1", "policy K-1"))
        await store.put_state(kept, "agent", {"note": "keep"})
        for k in keys + [kept]:
            assert len(await store.read_window(k, last=100)) > 0  # warm the Redis cache
            await store.get_state(k, "agent")
        kept_before = (len(await store.read_since(kept)), len(await store.list_facts(tenant, "kept")))
        # the bystander's learning jobs are done; the victim's stay claimable (a lease of 0 s)
        await store.complete_learn_jobs([j.id for j in await store.claim_learn_jobs(
            limit=100_000, lease_seconds=0.0, tenant=tenant) if j.key.user == "kept"])

        # -- right of access: export before erasure --------------------------------------------------
        backup = [line async for line in export_jsonl(store, tenant)]
        exported = sum(line.count(sentinel) for line in backup)
        assert exported >= N_MESSAGES + N_FACTS

        # -- erase while a real Learner is mid-batch -------------------------------------------------
        extractor = _ErasingExtractor(store, tenant, "gone")
        learner = Learner(store, extractor=extractor, embedder=_Embedder(), tenant=tenant, batch_size=10)
        await learner.run_once()
        receipt = extractor.receipt
        assert receipt is not None and receipt.counts["messages"] == N_MESSAGES
        assert receipt.counts["facts"] == N_FACTS and receipt.counts["states"] == N_SESSIONS
        await learner.drain()  # anything left over for the erased user: nothing must come back

        # -- 0 readable through any API ---------------------------------------------------------------
        readable = 0
        for k in keys:
            readable += len(await store.read_window(k)) + len(await store.read_since(k))  # refills the cache
            readable += int(await store.get_state(k, "agent") is not None)
        readable += len(await store.list_facts(tenant, "gone", include_superseded=True))
        readable += len(await store.search_text(tenant, "gone", sentinel))
        readable += len(await store.search_vectors(tenant, "gone", "toy", (1.0, 0.0, 0.5)))
        readable += len(await store.search_vectors(tenant, "gone", "toy-hash", (1.0, 1.0, 1.0, 1.0)))
        readable += len(await store.list_sessions(tenant, "gone"))
        assert readable == 0
        kept_after = (len(await store.read_since(kept)), len(await store.list_facts(tenant, "kept")))
        assert kept_after == kept_before and (await store.get_state(kept, "agent")) is not None
        other_deleted = (kept_before[0] - kept_after[0]) + (kept_before[1] - kept_after[1])

        # -- restore of the older backup withholds the erased user ------------------------------------
        report = await restore_jsonl(store, tenant, backup)
        assert report.counts["withheld_erased"] >= N_MESSAGES + N_FACTS
        for k in keys:
            assert await store.read_since(k) == []
        assert await store.list_facts(tenant, "gone", include_superseded=True) == []

        # -- the audit trail: erasure receipt, chain intact, no content ------------------------------
        from amber.governance.audit import verify_audit

        receipts = await store.list_audit(tenant, operation="user.delete")
        assert sum(e.count for e in receipts) == N_MESSAGES + N_FACTS + N_SESSIONS
        assert (await verify_audit(store, tenant)).ok

        # -- Redis: values and a snapshot -------------------------------------------------------------
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(redis_url)
        redis_hits = 0
        async for name in r.scan_iter(count=1000):
            kind = (await r.type(name)).decode()
            if kind == "hash":
                values = list((await r.hgetall(name)).values())
            elif kind == "string":
                values = [await r.get(name)]
            elif kind == "list":
                values = await r.lrange(name, 0, -1)
            else:
                values = [await r.dump(name) or b""]
            redis_hits += sum(v.count(needle) for v in values if v)
        await r.save()
        await r.aclose()
        rdb_hits = _grep([redis_dir / "dump.rdb"], needle)[1]
        assert redis_hits == 0 and rdb_hits == 0
    finally:
        await store.close()

    # -- PostgreSQL files: what VACUUM leaves, what VACUUM FULL leaves, the WAL ------------------------
    import psycopg

    async with await psycopg.AsyncConnection.connect(private_pg.url, autocommit=True) as conn:
        await conn.execute("CHECKPOINT")
        tables = ("messages", "facts", "states", "vectors", "learn_jobs", "sessions", "audit")

        async def files() -> list[Path]:
            cur = await conn.execute("SELECT current_setting('data_directory')")
            data_dir = Path((await cur.fetchone())[0])
            cur = await conn.execute(
                "SELECT pg_relation_filepath(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname IN ('amber', 'pg_toast') AND pg_relation_filepath(c.oid) IS NOT NULL")
            out = []
            for (rel,) in await cur.fetchall():
                out.extend(Path(p) for p in sorted((data_dir / rel).parent.glob(Path(rel).name + "*")))
            return out

        for t in tables:
            await conn.execute(f"VACUUM amber.{t}")
        await conn.execute("CHECKPOINT")
        after_vacuum = _grep(await files(), needle)
        for t in tables:
            await conn.execute(f"VACUUM FULL amber.{t}")
        await conn.execute("CHECKPOINT")
        after_full = _grep(await files(), needle)
        cur = await conn.execute("SELECT current_setting('data_directory')")
        wal = _grep(sorted((Path((await cur.fetchone())[0]) / "pg_wal").glob("0*")), needle)
    with capsys.disabled():
        print(f"\nerasure figures: {N_MESSAGES} messages + {N_FACTS} facts + {N_SESSIONS} state blobs erased; "
              f"exported before erasure: {exported} sentinel hits; readable via API after: {readable}; "
              f"other user's records deleted: {other_deleted}; Redis values: {redis_hits}, Redis RDB: {rdb_hits}; "
              f"restore withheld {report.counts['withheld_erased']} records; "
              f"PostgreSQL table+index files after VACUUM: {after_vacuum[1]} hits in {after_vacuum[0]} files; "
              f"after VACUUM FULL: {after_full[1]} hits in {after_full[0]} files; "
              f"WAL segments: {wal[1]} hits in {wal[0]} files")
    assert after_full == (0, 0)
