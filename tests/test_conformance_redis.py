"""The store conformance suite through the Redis hot layer, over each durable backend that exists.

Real Redis (AMBER_TEST_REDIS_URL, DB 15 by default); every test uses its own key prefix, so the
shared server is never flushed and tests cannot see each other's cache entries."""

from __future__ import annotations

import importlib.util
import uuid

import pytest

import amber
from amber.store.redis import RedisCachedStore
from amber.testing import StoreConformance

from conftest import POSTGRES_URL, REDIS_URL, unreachable

pytestmark = pytest.mark.redis


async def _check_redis() -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        await client.ping()
    except Exception as exc:  # noqa: BLE001
        unreachable(f"Redis at {REDIS_URL}", exc)
    finally:
        await client.aclose()


def _prefix() -> str:
    return f"amber-test:{uuid.uuid4().hex[:10]}:"


async def _drop(prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


class TestRedisOverMemory(StoreConformance):
    @pytest.fixture
    async def open_handle(self):
        await _check_redis()
        name, prefix = f"conf-{uuid.uuid4().hex}", _prefix()

        async def open_() -> amber.Store:
            inner = await amber.open_store(f"memory://{name}")
            return await RedisCachedStore.wrap(inner, REDIS_URL, prefix=prefix)

        yield open_
        await _drop(prefix)


class TestRedisOverSQLite(StoreConformance):
    @pytest.fixture
    async def open_handle(self, tmp_path):
        await _check_redis()
        url, prefix = f"sqlite:///{tmp_path / 'conformance.db'}", _prefix()

        async def open_() -> amber.Store:
            return await RedisCachedStore.wrap(await amber.open_store(url), REDIS_URL, prefix=prefix)

        yield open_
        await _drop(prefix)


@pytest.mark.skipif(importlib.util.find_spec("amber.store.postgres") is None,
                    reason="the PostgreSQL backend has not landed yet")
@pytest.mark.postgres
class TestRedisOverPostgres(StoreConformance):
    @pytest.fixture
    async def open_handle(self):
        await _check_redis()
        prefix = _prefix()
        try:
            probe = await amber.open_store(POSTGRES_URL)
            await probe.close()
        except Exception as exc:  # noqa: BLE001
            unreachable(f"PostgreSQL at {POSTGRES_URL}", exc)

        async def open_() -> amber.Store:
            return await RedisCachedStore.wrap(await amber.open_store(POSTGRES_URL), REDIS_URL, prefix=prefix)

        yield open_
        await _drop(prefix)
