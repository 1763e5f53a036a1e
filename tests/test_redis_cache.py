"""The Redis hot layer against the real shared Redis (DB 15, a fresh key prefix per test, cleaned
up afterwards; the server is never flushed) over real SQLite files.

Covers: cache hits really happen, cross-process freshness (two wrappers with their own
connections, and a second OS process), the write protocol under a crashed writer and a racing
refill, and that deletions remove cached copies from Redis."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import uuid

import pytest

import amber
from amber.store.redis import RedisCachedStore

from conftest import REDIS_URL, unreachable

pytestmark = pytest.mark.redis


@pytest.fixture
async def prefix():
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        await client.ping()
    except Exception as exc:  # noqa: BLE001
        unreachable(f"Redis at {REDIS_URL}", exc)
    p = f"amber-test:{uuid.uuid4().hex[:10]}:"
    try:
        yield p
    finally:
        keys = [k async for k in client.scan_iter(match=f"{p}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.fixture
def db_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'amber.db'}"


async def _open(db_url: str, prefix: str, **options) -> RedisCachedStore:
    return await RedisCachedStore.wrap(await amber.open_store(db_url), REDIS_URL, prefix=prefix, **options)


def _m(text: str, idem: str | None = None) -> amber.NewMessage:
    return amber.NewMessage(role="user", content=text, idempotency_key=idem)


KEY = amber.SessionKey("acme", "u-1", "claim-1")


async def test_open_store_routes_cache_url_and_reports_capability(db_url, prefix) -> None:
    async with await amber.open_store(f"{db_url}?cache={REDIS_URL}") as store:
        assert isinstance(store, RedisCachedStore)
        assert amber.Capability.CACHE in store.capabilities
        assert amber.Capability.DURABLE in store.capabilities  # the inner store's are kept
        info = await store.describe()
        assert info["cache"]["backend"] == "redis" and info["cache"]["available"] is True
    with pytest.raises(amber.InvalidStoreURL):
        await amber.open_store("memory://", cache="http://not-redis")


async def test_reads_are_served_from_redis_and_match_the_durable_store(db_url, prefix) -> None:
    async with await _open(db_url, prefix) as store:
        await store.append(KEY, [_m(f"m{i}") for i in range(30)])
        await store.put_state(KEY, "agent", {"step": 1})
        for _ in range(3):
            window = await store.read_window(KEY, last=10)
            since = await store.read_since(KEY, 25)
            state = await store.get_state(KEY, "agent")
        assert store.stats["hits"] >= 9
        assert window == await store.inner.read_window(KEY, last=10)
        assert since == await store.inner.read_since(KEY, 25)
        assert state == await store.inner.get_state(KEY, "agent")
        budget = sum(m.tokens for m in window[-4:])
        assert await store.read_window(KEY, max_tokens=budget) == await store.inner.read_window(KEY, max_tokens=budget)


async def test_window_longer_than_the_cache_is_answered_by_the_durable_store(db_url, prefix) -> None:
    async with await _open(db_url, prefix, cache_messages=5) as store:
        await store.append(KEY, [_m(f"m{i}") for i in range(12)])
        assert [m.seq for m in await store.read_window(KEY, last=5)] == [8, 9, 10, 11, 12]
        assert [m.seq for m in await store.read_window(KEY, last=8)] == list(range(5, 13))
        assert len(await store.read_window(KEY)) == 12  # all of it, though only 5 are cached
        assert [m.seq for m in await store.read_since(KEY, 2, limit=3)] == [3, 4, 5]
        assert len(await store.read_window(KEY, max_tokens=10_000)) == 12


async def test_write_through_one_wrapper_is_seen_by_the_next_read_of_another(db_url, prefix) -> None:
    a, b = await _open(db_url, prefix), await _open(db_url, prefix)  # separate Redis pools
    try:
        for i in range(20):
            await a.append_one(KEY, _m(f"turn {i}"))
            assert (await b.read_window(KEY, last=1))[0].content == f"turn {i}"
            await b.put_state(KEY, "team", {"turn": i})
            got = await a.get_state(KEY, "team")
            assert got is not None and got.data == {"turn": i}
        assert b.stats["hits"] > 10 and a.stats["hits"] > 10  # the cache was in the path, and warm
    finally:
        await a.close()
        await b.close()


_CHILD = textwrap.dedent("""
    import asyncio, sys
    import amber
    from amber.store.redis import RedisCachedStore

    async def main(db_url, redis_url, prefix, n):
        store = await RedisCachedStore.wrap(await amber.open_store(db_url), redis_url, prefix=prefix)
        key = amber.SessionKey("acme", "u-1", "claim-1")
        for i in range(n):
            await store.append_one(key, amber.NewMessage("assistant", f"from child {i}", idempotency_key=f"c{i}"))
            print(f"ack {i}", flush=True)
            assert sys.stdin.readline().strip() == "next"
        await store.close()

    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
""")


async def test_write_acknowledged_in_another_process_is_seen_by_the_next_read(db_url, prefix) -> None:
    async with await _open(db_url, prefix) as store:
        await store.append_one(KEY, _m("hello"))
        assert len(await store.read_window(KEY, last=50)) == 1  # warm the cache
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _CHILD, db_url, REDIS_URL, prefix, "8",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        assert child.stdin is not None and child.stdout is not None
        try:
            for i in range(8):
                line = (await asyncio.wait_for(child.stdout.readline(), 60)).decode().strip()
                assert line == f"ack {i}"
                window = await store.read_window(KEY, last=50)
                assert window[-1].content == f"from child {i}" and len(window) == i + 2
                child.stdin.write(b"next\n")
                await child.stdin.drain()
            assert await asyncio.wait_for(child.wait(), 60) == 0
        finally:
            if child.returncode is None:
                child.kill()
        assert store.stats["hits"] + store.stats["fills"] >= 8


async def test_writer_crashing_between_commit_and_end_leaves_no_fresh_looking_stale_window(db_url, prefix) -> None:
    async with await _open(db_url, prefix) as reader, await _open(db_url, prefix) as writer:
        await writer.append_one(KEY, _m("before"))
        assert [m.content for m in await reader.read_window(KEY)] == ["before"]  # cached
        # The writer runs BEGIN and the durable commit, then "crashes": END never runs.
        assert await writer._begin(KEY, "deadbeef") is not None
        await writer.inner.append(KEY, [_m("committed")])
        assert [m.content for m in await reader.read_window(KEY)] == ["before", "committed"]
        assert [m.content for m in await reader.read_since(KEY)] == ["before", "committed"]
        # While the crashed writer's token is live nobody refills, so every read goes below.
        fills = reader.stats["fills"]
        await reader.read_window(KEY)
        assert reader.stats["fills"] == fills


async def test_refill_racing_a_write_is_refused(db_url, prefix) -> None:
    async with await _open(db_url, prefix) as reader, await _open(db_url, prefix) as writer:
        await writer.inner.append(KEY, [_m("old")])  # durable only: the cache starts cold
        keys = reader._keys(KEY)
        # 1. The reader misses and learns the current tag, then reads the durable store...
        res = await reader._scripts["READ_WINDOW"](keys=keys, args=[reader._run_id, "n1", 60_000, "tail", -1, 0, -1])
        assert res[0] == 0 and len(res) == 2
        tag = res[1]
        stale = await reader.inner.read_window(KEY)
        # 2. ...meanwhile a writer begins, commits and crashes before END...
        await writer._begin(KEY, "cafe01")
        await writer.inner.append(KEY, [_m("new")])
        # 3. ...so the reader's fill with the pre-commit window must be refused.
        from amber.store.redis import _encode_message

        filled = await reader._scripts["FILL_WINDOW"](keys=keys, args=[
            reader._run_id, tag, 60_000, KEY.thread, 1, stale[-1].seq, *(_encode_message(m) for m in stale)])
        assert filled == 0
        assert [m.content for m in await reader.read_window(KEY)] == ["old", "new"]


async def test_a_completed_write_invalidates_a_refill_that_started_before_it(db_url, prefix) -> None:
    async with await _open(db_url, prefix) as reader, await _open(db_url, prefix) as writer:
        await writer.inner.append(KEY, [_m("old")])  # durable only: the cache starts cold
        keys = reader._keys(KEY)
        res = await reader._scripts["READ_WINDOW"](keys=keys, args=[reader._run_id, "n2", 60_000, "tail", -1, 0, -1])
        tag, stale = res[1], await reader.inner.read_window(KEY)
        await writer.append_one(KEY, _m("new"))  # BEGIN, commit, END all happen in between
        from amber.store.redis import _encode_message

        filled = await reader._scripts["FILL_WINDOW"](keys=keys, args=[
            reader._run_id, tag, 60_000, KEY.thread, 1, 1, *(_encode_message(m) for m in stale)])
        assert filled == 0
        assert [m.content for m in await reader.read_window(KEY)] == ["old", "new"]


async def test_idempotent_retry_and_version_conflict_keep_the_cache_correct(db_url, prefix) -> None:
    async with await _open(db_url, prefix) as a, await _open(db_url, prefix) as b:
        first = await a.append_one(KEY, _m("once", "k1"))
        again = await b.append_one(KEY, _m("once", "k1"))
        assert again.id == first.id
        assert [m.content for m in await a.read_window(KEY)] == ["once"]
        await a.put_state(KEY, "s", {"v": 1}, expected_version=0)
        with pytest.raises(amber.VersionConflict):
            await b.put_state(KEY, "s", {"v": 2}, expected_version=0)
        got = await b.get_state(KEY, "s")
        assert got is not None and got.version == 1 and got.data == {"v": 1}
        assert await a.get_state(KEY, "missing") is None
        await b.put_state(KEY, "missing", {"now": "here"})
        got = await a.get_state(KEY, "missing")  # a cached "absent" must not survive a write
        assert got is not None and got.data == {"now": "here"}


async def _redis_dump(store: RedisCachedStore) -> str:
    text = []
    async for k in store.redis.scan_iter(match=f"{store.prefix}*"):
        if await store.redis.type(k) == b"hash":
            text.append(json.dumps({f.decode(): v.decode() for f, v in (await store.redis.hgetall(k)).items()}))
    return "\n".join(text)


async def test_deleting_a_session_or_user_removes_cached_copies(db_url, prefix) -> None:
    async with await _open(db_url, prefix) as a, await _open(db_url, prefix) as b:
        gone, kept = amber.SessionKey("acme", "alice", "t1"), amber.SessionKey("acme", "bob", "t1")
        other = amber.SessionKey("acme", "alice", "t2")
        for k in (gone, kept, other):
            await a.append_one(k, _m(f"secret of {k.user}/{k.thread}"))
            await a.put_state(k, "agent", {"secret": f"state of {k.user}/{k.thread}"})
            await b.read_window(k)
            await b.get_state(k, "agent")
        assert "secret of alice/t1" in await _redis_dump(a)
        await a.delete_session(gone)
        assert await b.read_window(gone) == [] and await b.get_state(gone, "agent") is None
        dump = await _redis_dump(a)
        assert "secret of alice/t1" not in dump and "state of alice/t1" not in dump
        assert "secret of alice/t2" in dump
        await a.delete_user("acme", "alice")
        assert await b.read_window(other) == [] and await b.get_state(other, "agent") is None
        dump = await _redis_dump(a)
        assert "secret of alice" not in dump and "state of alice" not in dump
        assert [m.content for m in await b.read_window(kept)] == ["secret of bob/t1"]


async def test_concurrent_writers_and_readers_through_two_wrappers(db_url, prefix) -> None:
    a, b = await _open(db_url, prefix), await _open(db_url, prefix)
    acked: list[str] = []
    try:
        async def writer(store: RedisCachedStore, tag: str) -> None:
            for i in range(15):
                m = await store.append_one(KEY, _m(f"{tag}{i}", f"{tag}{i}"))
                acked.append(m.id)

        async def reader(store: RedisCachedStore) -> None:
            for _ in range(30):
                before = set(acked)
                seen = {m.id for m in await store.read_window(KEY, last=200)}
                assert before <= seen
                await asyncio.sleep(0)

        await asyncio.gather(writer(a, "a"), writer(b, "b"), reader(a), reader(b))
        final = await a.read_since(KEY)
        assert [m.seq for m in final] == list(range(1, 31))
        assert final == await a.inner.read_since(KEY) == await b.read_since(KEY)
    finally:
        await a.close()
        await b.close()
