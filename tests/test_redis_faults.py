"""Fault injection for the Redis hot layer, against PRIVATE redis-server processes (a free port, a
temp dir) that the tests kill, flush and restart; the shared Redis is never touched. The durable
store is a real SQLite file.

Every test checks the same promises: no caller sees an error, every acknowledged message is present
exactly once, and no read is stale (a read sees every append acknowledged before it began)."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

import amber
from amber.store.redis import RedisCachedStore

pytestmark = [pytest.mark.redis, pytest.mark.slow]

REDIS_SERVER = shutil.which("redis-server")
if REDIS_SERVER is None:  # pragma: no cover
    pytest.fail("redis-server is not installed; the fault tests need it", pytrace=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """A redis-server of our own, so killing it disturbs nobody else."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.dir = directory
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [str(REDIS_SERVER), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--dbfilename", "dump.rdb"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        import redis.asyncio as aioredis

        client = aioredis.Redis(port=self.port, socket_connect_timeout=0.2)
        try:
            for _ in range(200):
                try:
                    await client.ping()
                    return
                except Exception:  # noqa: BLE001 - still starting
                    await asyncio.sleep(0.025)
            raise RuntimeError("private redis-server did not start")
        finally:
            await client.aclose()

    async def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    async def command(self, *args: object) -> object:
        import redis.asyncio as aioredis

        client = aioredis.Redis(port=self.port)
        try:
            return await client.execute_command(*args)
        finally:
            await client.aclose()


@pytest.fixture
async def private_redis(tmp_path):
    server = PrivateRedis(tmp_path / "redis")
    await server.start()
    try:
        yield server
    finally:
        await server.kill()


@pytest.fixture
def db_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'amber.db'}"


async def _open(db_url: str, redis_url: str, **options) -> RedisCachedStore:
    options.setdefault("retry_interval", 0.05)
    options.setdefault("socket_timeout", 0.5)
    return await RedisCachedStore.wrap(await amber.open_store(db_url), redis_url, prefix="amber:", **options)


def _m(text: str, idem: str) -> amber.NewMessage:
    return amber.NewMessage(role="user", content=text, idempotency_key=idem)


KEYS = [amber.SessionKey("acme", f"u-{i % 2}", f"claim-{i}") for i in range(3)]


async def _stream_with_fault(db_url: str, fault) -> tuple[list[RedisCachedStore], dict]:  # type: ignore[no-untyped-def]
    """Writers append (with idempotency keys) and readers read through two wrappers while ``fault``
    runs; every read is checked against what was acknowledged before it began."""
    stores = [await _open(db_url, fault.redis.url), await _open(db_url, fault.redis.url)]
    fault.stores = stores
    acked: dict[amber.SessionKey, list[str]] = {k: [] for k in KEYS}
    done = asyncio.Event()
    per_writer = 40

    async def writer(store: RedisCachedStore, key: amber.SessionKey, tag: str) -> None:
        for i in range(per_writer):
            m = await store.append_one(key, _m(f"{tag} {i}", f"{tag}-{i}"))
            acked[key].append(m.id)
            await asyncio.sleep(0.002)

    async def reader(store: RedisCachedStore) -> None:
        while not done.is_set():
            for key in KEYS:
                before = set(acked[key])
                window = await store.read_window(key, last=200)
                ids = [m.id for m in window]
                assert before <= set(ids), "a read missed an acknowledged append (stale)"
                assert len(ids) == len(set(ids)) and [m.seq for m in window] == list(range(1, len(window) + 1))
                since = await store.read_since(key, 0)
                assert before <= {m.id for m in since}
            await asyncio.sleep(0.001)

    writers = [writer(stores[w % 2], key, f"w{w}-{key.thread}") for w in range(2) for key in KEYS]
    readers = [asyncio.create_task(reader(s)) for s in stores]
    fault_task = asyncio.create_task(fault.run(acked))
    try:
        await asyncio.gather(*writers)
        await fault_task
    finally:
        done.set()
        await asyncio.gather(*readers)
    return stores, acked


async def _check_final(stores: list[RedisCachedStore], acked: dict) -> None:  # type: ignore[no-untyped-def]
    for key, ids in acked.items():
        durable = await stores[0].inner.read_since(key)
        assert len(durable) == 2 * 40 and sorted(m.id for m in durable) == sorted(ids)  # each exactly once
        for store in stores:
            assert await store.read_since(key) == durable
            assert await store.read_window(key, last=10) == durable[-10:]


class _KillRestart:
    def __init__(self, redis: PrivateRedis) -> None:
        self.redis = redis
        self.stores: list[RedisCachedStore] = []

    async def run(self, acked: dict) -> None:  # type: ignore[no-untyped-def]
        while sum(map(len, acked.values())) < 60:
            await asyncio.sleep(0.005)
        await self.redis.kill()
        # Appends and reads go on against the durable store meanwhile; keep Redis down until both
        # wrappers have run into the outage (a fixed sleep is too short on a loaded machine).
        deadline = asyncio.get_running_loop().time() + 10
        while not all(s.stats["redis_errors"] > 0 for s in self.stores):
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        await self.redis.start()


class _Flush(_KillRestart):
    async def run(self, acked: dict) -> None:  # type: ignore[no-untyped-def]
        for threshold in (50, 120, 180):
            while sum(map(len, acked.values())) < threshold:
                await asyncio.sleep(0.005)
            await self.redis.command("FLUSHALL")


async def test_redis_killed_and_restarted_mid_stream(db_url, private_redis, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="amber.store.redis")
    stores, acked = await _stream_with_fault(db_url, _KillRestart(private_redis))
    try:
        assert all(s.stats["redis_errors"] > 0 for s in stores)  # the outage really hit both
        await _check_final(stores, acked)
        hits = [s.stats["hits"] for s in stores]
        for _ in range(3):  # a first read after the restart refills; a later one is served from Redis
            for key in KEYS:
                for s in stores:
                    await s.read_window(key, last=5)
            if all(s.stats["hits"] > h for s, h in zip(stores, hits)):
                break
            await asyncio.sleep(0.2)  # past the wrappers' retry_interval
        assert all(s.stats["hits"] > h for s, h in zip(stores, hits))  # reconnected, caching again
        down = [r for r in caplog.records if "unavailable" in r.getMessage()]
        back = [r for r in caplog.records if "reachable again" in r.getMessage()]
        assert 1 <= len(down) <= 2 < sum(s.stats["redis_errors"] for s in stores)  # rate limited
        assert back
    finally:
        for s in stores:
            await s.close()


async def test_redis_flushed_mid_stream(db_url, private_redis) -> None:
    stores, acked = await _stream_with_fault(db_url, _Flush(private_redis))
    try:
        await _check_final(stores, acked)
    finally:
        for s in stores:
            await s.close()


async def test_snapshot_restored_after_restart_is_never_served(db_url, private_redis) -> None:
    key = KEYS[0]
    store = await _open(db_url, private_redis.url)
    try:
        await store.append(key, [_m(f"m{i}", f"m{i}") for i in range(3)])
        assert len(await store.read_window(key)) == 3
        await private_redis.command("SAVE")  # the snapshot holds a 3-message window...
        await store.append(key, [_m(f"m{i}", f"m{i}") for i in range(3, 5)])
        await private_redis.kill()
        await private_redis.start()  # ...which a restart restores, with its then-current tag
        w = await private_redis.command("HGET", store._keys(key)[0], "w")
        assert w is not None and w.decode().startswith("1:3:")  # the stale entry is really there
        for _ in range(3):
            assert [m.content for m in await store.read_window(key)] == [f"m{i}" for i in range(5)]
        assert await store.read_since(key, 2) == await store.inner.read_since(key, 2)
    finally:
        await store.close()


class _Proxy:
    """A TCP proxy in front of a Redis that can be cut, to partition ONE client from Redis."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.server: asyncio.base_events.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.writers):
            w.close()
        self.writers.clear()
        await self.server.wait_closed()


@pytest.mark.parametrize("max_owed", [100_000, 1])  # 1: too many to remember, the prefix is dropped
async def test_invalidation_owed_during_a_partition_is_delivered_when_redis_answers(
    db_url, private_redis, max_owed
) -> None:
    keys = KEYS[:2]
    proxy = _Proxy(private_redis.port)
    await proxy.start()
    cut_off = await _open(db_url, f"redis://127.0.0.1:{proxy.port}/0", max_owed=max_owed)
    other = await _open(db_url, private_redis.url)
    try:
        from amber.locks import session_lease

        for key in keys:
            await cut_off.append_one(key, _m("before", "b"))
            assert [m.content for m in await other.read_window(key)] == ["before"]  # cached in Redis
        await proxy.cut()
        async with session_lease(other, keys[0], ttl=30) as lease:  # held across the settlement
            for key in keys:
                await cut_off.append_one(key, _m("during", "d"))  # no error: durable, invalidation owed
                assert [m.content for m in await cut_off.read_window(key)] == ["before", "during"]  # own reads fresh
            assert cut_off._owed or cut_off._owe_everything
            await proxy.start()  # same port: the partition heals
            await asyncio.sleep(0.1)  # past retry_interval
            await cut_off.read_window(keys[0])  # its first successful Redis call pays what it owes
            assert not cut_off._owed and not cut_off._owe_everything
            for key in keys:
                assert [m.content for m in await other.read_window(key)] == ["before", "during"]
            lease.ensure()  # dropping the cache never touches leases
            assert lease.backend == "redis"
    finally:
        await cut_off.close()
        await other.close()
        await proxy.cut()


async def test_redis_down_at_start_then_up(db_url, tmp_path) -> None:
    server = PrivateRedis(tmp_path / "late")
    store = await _open(db_url, server.url)  # nothing listens yet: not an error
    try:
        key = KEYS[1]
        await store.append_one(key, _m("a", "a"))
        assert [m.content for m in await store.read_window(key)] == ["a"]
        assert store.stats["hits"] == 0 and store.stats["redis_errors"] >= 1
        await server.start()
        await asyncio.sleep(0.1)
        await store.append_one(key, _m("b", "b"))
        for _ in range(3):
            assert [m.content for m in await store.read_window(key)] == ["a", "b"]
        assert store.stats["hits"] >= 2
    finally:
        await store.close()
        await server.kill()


async def test_redis_gone_for_good_never_surfaces_an_error(db_url, private_redis) -> None:
    store = await _open(db_url, private_redis.url)
    try:
        key = KEYS[2]
        await store.append_one(key, _m("x", "x"))
        await store.put_state(key, "agent", {"v": 1})
        await private_redis.kill()
        for i in range(20):
            await store.append_one(key, _m(f"y{i}", f"y{i}"))
            assert (await store.read_window(key, last=1))[0].content == f"y{i}"
            await store.put_state(key, "agent", {"v": i + 2})
            assert (await store.get_state(key, "agent")).data == {"v": i + 2}  # type: ignore[union-attr]
        await store.delete_session(key)
        assert await store.read_window(key) == []
        assert (await store.describe())["cache"]["available"] in (True, False)
    finally:
        await store.close()


async def test_paying_an_owed_invalidation_drops_every_owed_token(db_url, private_redis) -> None:
    """Writes whose BEGIN reached Redis but whose END did not leave in-flight tokens behind, owed for
    the session. A later invalidation of that session (another write's, here) must drop all of them:
    a token forgotten unpaid blocks every refill of the session until its deadline (a minute)."""
    store = await _open(db_url, private_redis.url)
    try:
        key = KEYS[0]
        await store.append_one(key, _m("hello", "h-0"))
        item = ("s", key.tenant, key.user, key.thread)
        for token in ("tokenA", "tokenB"):
            await store._run("BEGIN", store._keys(key), [f"fresh{token}", 60_000, 60_000, token])
            store._owe(item, token)
        await store._invalidate_session(key, token="tokenC", force=True)
        assert item not in store._owed
        assert await private_redis.command("HGET", store._keys(key)[0], "p") is None  # no token left behind
        await store.read_window(key, last=5)  # refills
        hits = store.stats["hits"]
        assert [m.content for m in await store.read_window(key, last=5)] == ["hello"]
        assert store.stats["hits"] == hits + 1
    finally:
        await store.close()
