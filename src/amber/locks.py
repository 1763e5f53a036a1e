"""Per-session leases: serialise the turns of one conversation across workers.

    async with session_lease(store, key, ttl=30) as lease:
        history = await store.read_window(key, last=40)
        reply = await model(history)
        lease.ensure()                      # raises LeaseLost if another worker may own it now
        await store.append(key, [reply])

With a :class:`~amber.store.redis.RedisCachedStore` (or a redis-py asyncio client) the lease lives in
Redis and holds across processes and hosts; otherwise, or while Redis is unreachable, it falls back
to an in-process lock (one process only, and a warning is logged for the Redis case).

Semantics (details in ``docs/storage-redis.md``):

* At most one holder per session while the lease is valid. It expires ``ttl`` seconds after the
  last renewal; a background task renews it every ``ttl / 3``. A holder that stalls longer than
  ``ttl`` (GC pause, network partition) loses it: ``lease.lost`` turns True and ``ensure()`` raises.
* ``lease.fence`` is a fencing token: it increases with every grant of that session's lease (it
  is the Redis clock in microseconds, bumped past the previous fence), so a downstream system can
  refuse writes carrying a lower fence than it has seen. It stays increasing after a flush or
  restart as long as the Redis server's clock does not go backwards. Nothing stays in Redis for a
  session that is not leased for 7 days.
* The lease is an optimisation against duplicate or interleaved turns, not a correctness
  requirement of the store: appends stay ordered and idempotent in the durable store either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from .errors import Conflict, InvalidInput, StoreUnavailable
from .keys import SessionKey

__all__ = ["session_lease", "Lease", "LeaseLost", "LeaseTimeout"]

log = logging.getLogger("amber.locks")


class LeaseTimeout(Conflict):
    """Another worker held the session's lease for longer than ``wait``."""

    code = "lease_timeout"


class LeaseLost(Conflict):
    """The lease expired or was taken over; another worker may now be running this session's turn."""

    code = "lease_lost"


@dataclass
class Lease:
    key: SessionKey
    token: str
    fence: int
    backend: str  # "redis" | "local"
    ttl: float
    lost: bool = False
    _renewed_at: float = field(default_factory=time.monotonic, repr=False)

    def ensure(self) -> None:
        """Raise :class:`LeaseLost` unless this lease is still held (call it before side effects)."""
        if self.lost or (self.backend == "redis" and time.monotonic() - self._renewed_at >= self.ttl):
            self.lost = True
            raise LeaseLost(f"the lease on {self.key} was lost (fence {self.fence})")


# The fence is the Redis clock in microseconds, bumped past the last fence granted for the session:
# it keeps increasing even after the fence key expires (idle sessions leave nothing behind).
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local t = redis.call('TIME')
  local fence = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local last = tonumber(redis.call('GET', KEYS[2]) or '0')
  if last >= fence then fence = last + 1 end
  fence = string.format('%.0f', fence)
  redis.call('SET', KEYS[2], fence, 'PX', ARGV[3])
  return fence
end
return 0
"""
_FENCE_TTL_MS = 7 * 24 * 3600 * 1000
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# In-process fallback: one asyncio.Lock per session key, dropped when nobody uses it.
_local: dict[str, tuple[asyncio.Lock, int]] = {}
_local_fence = itertools.count(1)


def _resolve(target: Any, prefix: str | None) -> tuple[Any, str] | None:
    from .store.redis import RedisCachedStore

    if isinstance(target, RedisCachedStore):
        return target.redis, prefix or target.prefix
    try:
        import redis.asyncio as aioredis
    except ImportError:  # pragma: no cover
        return None
    if isinstance(target, aioredis.Redis):
        return target, prefix or "amber:"
    return None


@contextlib.asynccontextmanager
async def session_lease(
    target: Any,
    key: SessionKey,
    *,
    ttl: float = 30.0,
    wait: float | None = 60.0,
    prefix: str | None = None,
    fallback: bool = True,
) -> AsyncIterator[Lease]:
    """Hold the lease on ``key`` for the body of the ``async with``.

    ``target`` is a RedisCachedStore, a redis-py asyncio client, or any other store (in-process
    lock). ``wait`` is how long to wait for another holder (None: forever) before raising
    :class:`LeaseTimeout`. With ``fallback=False`` an unreachable Redis raises StoreUnavailable
    instead of degrading to an in-process lock.
    """
    if not isinstance(key, SessionKey):
        raise InvalidInput("session_lease needs a SessionKey")
    if ttl <= 0 or (wait is not None and wait < 0):
        raise InvalidInput("ttl must be > 0 and wait >= 0 or None")
    resolved = _resolve(target, prefix)
    if resolved is not None:
        client, pfx = resolved
        try:
            lease = await _redis_acquire(client, pfx, key, ttl, wait)
        except (LeaseTimeout, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - Redis unreachable
            if not fallback:
                raise StoreUnavailable(f"cannot take the lease on {key}: Redis is unreachable") from exc
            log.warning("Redis unreachable for the lease on %s; using an in-process lock: %r", key, exc)
        else:
            async with _redis_held(client, pfx, lease):
                yield lease
            return
    async with _local_held(key, ttl, wait) as lease:
        yield lease


def _redis_keys(prefix: str, key: SessionKey) -> list[str]:
    base = f"{prefix}{{{key.tenant}/{key.user}}}"
    return [f"{base}:lease:{key.thread}", f"{base}:fence:{key.thread}"]


async def _redis_acquire(client: Any, prefix: str, key: SessionKey, ttl: float, wait: float | None) -> Lease:
    token = os.urandom(12).hex()
    keys = _redis_keys(prefix, key)
    deadline = None if wait is None else time.monotonic() + wait
    delay = 0.005
    while True:
        fence = int(await client.eval(_ACQUIRE, 2, *keys, token, int(ttl * 1000), max(_FENCE_TTL_MS, int(ttl * 2000))))
        if fence:
            return Lease(key, token, fence, "redis", ttl)
        if deadline is not None and time.monotonic() >= deadline:
            raise LeaseTimeout(f"the lease on {key} is held by another worker (waited {wait}s)")
        pause = delay * (0.5 + random.random())
        if deadline is not None:
            pause = min(pause, max(0.0, deadline - time.monotonic()))
        await asyncio.sleep(pause)
        delay = min(delay * 2, 0.2)


@contextlib.asynccontextmanager
async def _redis_held(client: Any, prefix: str, lease: Lease) -> AsyncIterator[None]:
    keys = _redis_keys(prefix, lease.key)
    ttl_ms = int(lease.ttl * 1000)

    async def renew() -> None:
        while not lease.lost:
            await asyncio.sleep(lease.ttl / 3)
            try:
                ok = await client.eval(_RENEW, 1, keys[0], lease.token, ttl_ms)
            except Exception:  # noqa: BLE001 - keep trying until the lease would have expired
                if time.monotonic() - lease._renewed_at >= lease.ttl:
                    lease.lost = True
                continue
            if ok:
                lease._renewed_at = time.monotonic()
            else:
                lease.lost = True

    task = asyncio.create_task(renew())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if not lease.lost:
            try:
                await client.eval(_RELEASE, 1, keys[0], lease.token)
            except Exception as exc:  # noqa: BLE001 - it expires on its own after ttl
                log.warning("could not release the lease on %s (it expires in %ss): %r", lease.key, lease.ttl, exc)


@contextlib.asynccontextmanager
async def _local_held(key: SessionKey, ttl: float, wait: float | None) -> AsyncIterator[Lease]:
    name = str(key)
    lock, users = _local.get(name, (None, 0))
    if lock is None:
        lock = asyncio.Lock()
    _local[name] = (lock, users + 1)
    try:
        try:
            await asyncio.wait_for(lock.acquire(), wait)
        except asyncio.TimeoutError as exc:
            raise LeaseTimeout(f"the lease on {key} is held by another task (waited {wait}s)") from exc
        try:
            yield Lease(key, os.urandom(12).hex(), next(_local_fence), "local", ttl)
        finally:
            lock.release()
    finally:
        lock_, users = _local[name]
        if users <= 1:
            del _local[name]
        else:
            _local[name] = (lock_, users - 1)
