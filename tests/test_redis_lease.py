"""Per-session leases (amber.locks) in the real shared Redis (a fresh key prefix per test), the
in-process fallback, and an unreachable Redis (a port nothing listens on)."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest

import amber
from amber.locks import LeaseLost, LeaseTimeout, session_lease
from amber.store.redis import RedisCachedStore

from conftest import REDIS_URL, unreachable
from test_redis_faults import free_port

pytestmark = pytest.mark.redis

KEY = amber.SessionKey("acme", "u-1", "claim-9")


@pytest.fixture
async def stores():
    import redis.asyncio as aioredis

    probe = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        await probe.ping()
    except Exception as exc:  # noqa: BLE001
        unreachable(f"Redis at {REDIS_URL}", exc)
    prefix, name = f"amber-test:{uuid.uuid4().hex[:10]}:", f"lease-{uuid.uuid4().hex}"
    # Two "workers": separate wrappers, separate Redis connection pools, one shared store.
    a = await RedisCachedStore.wrap(await amber.open_store(f"memory://{name}"), REDIS_URL, prefix=prefix)
    b = await RedisCachedStore.wrap(await amber.open_store(f"memory://{name}"), REDIS_URL, prefix=prefix)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()
        keys = [k async for k in probe.scan_iter(match=f"{prefix}*")]
        if keys:
            await probe.delete(*keys)
        await probe.aclose()


async def test_lease_serialises_turns_across_workers_with_increasing_fences(stores) -> None:
    inside, most, fences = 0, 0, []

    async def turn(store: RedisCachedStore, i: int) -> None:
        nonlocal inside, most
        async with session_lease(store, KEY, ttl=5) as lease:
            assert lease.backend == "redis"
            inside += 1
            most = max(most, inside)
            fences.append(lease.fence)
            history = await store.read_window(KEY)
            await asyncio.sleep(0.002)  # give the other worker every chance to interleave
            lease.ensure()
            await store.append_one(KEY, amber.NewMessage("user", f"turn {i} saw {len(history)}"))
            inside -= 1

    await asyncio.gather(*(turn(stores[i % 2], i) for i in range(12)))
    assert most == 1
    assert fences == sorted(fences) and len(set(fences)) == 12
    msgs = await stores[0].read_since(KEY)
    # Serialised turns: the k-th appended message saw exactly the k messages before it.
    assert [int(m.content.split()[-1]) for m in msgs] == list(range(12))


async def test_lease_wait_times_out_with_a_clear_error(stores) -> None:
    a, b = stores
    async with session_lease(a, KEY, ttl=5):
        with pytest.raises(LeaseTimeout) as err:
            async with session_lease(b, KEY, ttl=5, wait=0.05):
                pass  # pragma: no cover
        assert isinstance(err.value, amber.Conflict) and str(KEY) in str(err.value)
    async with session_lease(b, KEY, ttl=5, wait=0.05) as lease:  # released: free again
        assert lease.backend == "redis"


async def test_lease_taken_over_is_reported_lost(stores) -> None:
    a, b = stores
    async with session_lease(a, KEY, ttl=0.3) as lease:
        lease_key = f"{a.prefix}{{{KEY.tenant}/{KEY.user}}}:lease:{KEY.thread}"
        await a.redis.delete(lease_key)  # as if it had expired during a long pause...
        async with session_lease(b, KEY, ttl=5, wait=1) as other:  # ...and another worker took it
            assert other.fence > lease.fence
            for _ in range(100):
                if lease.lost:
                    break
                await asyncio.sleep(0.02)
            with pytest.raises(LeaseLost):
                lease.ensure()
            other.ensure()  # the new holder is unaffected, and the old one's exit does not release it
        assert await a.redis.exists(lease_key) == 0


async def test_in_process_fallback_without_redis() -> None:
    store = await amber.open_store("memory://")
    inside, most = 0, 0

    async def turn() -> None:
        nonlocal inside, most
        async with session_lease(store, KEY) as lease:
            assert lease.backend == "local"
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.001)
            inside -= 1

    await asyncio.gather(*(turn() for _ in range(8)))
    assert most == 1
    async with session_lease(store, KEY):
        with pytest.raises(LeaseTimeout):
            async with session_lease(store, KEY, wait=0.01):
                pass  # pragma: no cover


async def test_unreachable_redis_falls_back_or_raises(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="amber.locks")
    store = await RedisCachedStore.wrap(await amber.open_store("memory://"), f"redis://127.0.0.1:{free_port()}/0")
    try:
        async with session_lease(store, KEY) as lease:
            assert lease.backend == "local"
        assert any("in-process lock" in r.getMessage() for r in caplog.records)
        with pytest.raises(amber.StoreUnavailable):
            async with session_lease(store, KEY, fallback=False):
                pass  # pragma: no cover
        with pytest.raises(amber.InvalidInput):
            async with session_lease(store, "acme/u/t"):  # type: ignore[arg-type]
                pass  # pragma: no cover
    finally:
        await store.close()
