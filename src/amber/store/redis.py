"""A Redis hot layer in front of a durable store (extra ``[redis]``).

``RedisCachedStore`` caches recent session windows and state blobs in Redis and delegates
everything else to the durable store it wraps. Redis never holds the only copy of anything: a
write is acknowledged only after the store below committed it.

Every worker pointed at the same Redis sees an acknowledged write on its next read: each write
runs BEGIN (new session nonce + an in-flight token) -> durable commit -> END (another new nonce),
and a cached entry is served only while the nonce it was filled under is still current. The full
protocol and its safety argument are in ``docs/storage-redis.md``.

If Redis is down, flushed or restarted, reads and writes go straight to the durable store (a
rate-limited warning is logged), invalidations that could not be delivered are remembered and
delivered once Redis answers again, and the client reconnects on its own.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import time
from datetime import datetime
from typing import Any, Awaitable, Mapping, Sequence, TypeVar

from ..errors import Conflict, InvalidInput, InvalidStoreURL, MissingDependency, VersionConflict
from ..keys import SessionKey, validate_part
from ..records import (
    DeletionReceipt,
    Message,
    NewMessage,
    SessionInfo,
    StateBlob,
)
from . import redis_scripts as lua
from .delegating import DelegatingStore
from ..governance.audit import reads_not_audited
from .base import Capability, Store, digest, encode_json, select_window, validate_limit, validate_state_name

__all__ = ["RedisCachedStore"]

log = logging.getLogger("amber.store.redis")
T = TypeVar("T")


def _import_redis() -> Any:
    try:
        import redis.asyncio as aioredis
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise MissingDependency("redis", "redis") from exc
    return aioredis


def _consecutive_tail(msgs: list[Message]) -> list[Message]:
    """The longest suffix of ``msgs`` whose seqs are consecutive."""
    i = len(msgs) - 1
    while i > 0 and msgs[i - 1].seq == msgs[i].seq - 1:
        i -= 1
    return msgs[max(i, 0):]


def _nonce() -> str:
    return os.urandom(9).hex()


def _redact(url: str) -> str:
    from . import redact_url

    return redact_url(url)


# -- record codecs (JSON: a cache must never unpickle what it reads from the network) -------------
def _encode_message(m: Message) -> bytes:
    return json.dumps(
        [m.seq, m.id, m.role, m.content, m.payload, m.payload_format, m.author, m.idempotency_key,
         m.created_at.isoformat(), m.metadata, m.tokens, m.content_hash],
        ensure_ascii=False, separators=(",", ":"),
    ).encode("utf-8")


def _decode_message(key: SessionKey, raw: bytes) -> Message:
    seq, id_, role, content, payload, fmt, author, idem, created, meta, tokens, chash = json.loads(raw)
    return Message(key, seq, id_, role, content, payload, fmt, author, idem,
                   datetime.fromisoformat(created), meta, tokens, chash)


def _encode_state(blob: StateBlob | None) -> bytes:
    if blob is None:
        return b""
    return json.dumps(
        [blob.version, blob.data, blob.updated_at.isoformat()], ensure_ascii=False, separators=(",", ":")
    ).encode("utf-8")


def _decode_state(key: SessionKey, name: str, raw: bytes) -> StateBlob | None:
    if not raw:
        return None
    version, data, updated = json.loads(raw)
    return StateBlob(key, name, version, data, datetime.fromisoformat(updated))


_RUN = object()  # placeholder in script arguments for the run id, filled in at call time


class _Unavailable(Exception):
    """Internal: Redis cannot be used for this call; fall back to the durable store."""


_MAX_PIPELINES = 4  # script calls of concurrent tasks share pipelines; at most this many in flight
_LOCAL_MESSAGES = 50_000  # decoded messages kept in process across all locally held windows


class RedisCachedStore(DelegatingStore):
    """A durable store with a Redis cache in front. Open with :meth:`wrap` or
    ``amber.open_store(url, cache="redis://...")``."""

    def __init__(self, inner: Store, client: Any, redis_url: str, *, prefix: str, ttl: float,
                 pending_ttl: float, cache_messages: int, max_state_bytes: int, retry_interval: float,
                 warn_interval: float, max_owed: int, close_inner: bool) -> None:
        super().__init__(inner, close_inner=close_inner)
        self._redis = client
        self._redis_url = _redact(redis_url)
        self._prefix = prefix
        self._ttl_ms = int(ttl * 1000)
        self._pending_ms = int(pending_ttl * 1000)
        self._cache_messages = cache_messages
        self._max_state_bytes = max_state_bytes
        self._retry_interval = retry_interval
        self._warn_interval = warn_interval
        self._max_owed = max_owed
        self._run_id: str | None = None
        self._down_until = 0.0
        self._down_since: float | None = None
        self._last_warning = -1e9
        self._suppressed = 0
        # Invalidations that could not be delivered; paid before this process trusts the cache again.
        self._owed: dict[tuple[str, ...], set[str]] = {}  # item -> our in-flight tokens to drop
        self._owe_everything = False
        # Decoded messages by their exact cached bytes: a message never changes once stored, and
        # whether the bytes may be served is still decided by Redis, so this only saves the parse.
        self._decoded: dict[tuple[SessionKey, bytes], Message] = {}
        # Decoded windows by their exact Redis 'w' value (first:last:tag): READ_WINDOW answers "your
        # copy is current" instead of sending the items when the caller names the current 'w'. The
        # check is the same atomic tag check that decides whether Redis's own bytes may be served.
        self._windows: collections.OrderedDict[SessionKey, tuple[bytes, int, list[Message]]] = (
            collections.OrderedDict())
        self._window_messages = 0
        # Script calls of concurrent tasks are coalesced into pipelines (one round trip for many).
        self._calls: collections.deque[tuple[str, Sequence[str], list[Any], asyncio.Future[Any]]] = (
            collections.deque())
        self._in_flight = 0
        self._senders = 0
        self._send_tasks: set[asyncio.Future[Any]] = set()
        self.stats = {"hits": 0, "local_hits": 0, "misses": 0, "fills": 0, "bypassed": 0, "redis_errors": 0,
                      "pipelines": 0, "pipelined_calls": 0}
        self._scripts = {name: client.register_script(getattr(lua, name)) for name in (
            "READ_WINDOW", "FILL_WINDOW", "READ_STATE", "FILL_STATE", "BEGIN", "END", "WIPE_SESSION",
            "BEGIN_USER", "WIPE_USER")}
        self.url = inner.url if "cache=" in inner.url else f"{inner.url}{'&' if '?' in inner.url else '?'}cache={self._redis_url}"
        self.capabilities = frozenset(inner.capabilities | {Capability.CACHE})

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    async def wrap(
        cls,
        inner: Store,
        redis_url: str,
        *,
        prefix: str = "amber:",
        ttl: float = 3600.0,
        pending_ttl: float = 60.0,
        cache_messages: int = 200,
        max_state_bytes: int = 262_144,
        socket_timeout: float = 0.5,
        retry_interval: float = 1.0,
        warn_interval: float = 30.0,
        max_owed: int = 100_000,
        close_inner: bool = True,
        max_connections: int | None = 64,
    ) -> "RedisCachedStore":
        """Put a Redis cache in front of ``inner``.

        ``prefix`` namespaces every key (several deployments may share one Redis); ``ttl`` is how
        long an idle session stays cached; ``pending_ttl`` bounds how long a crashed writer keeps
        its session uncached (it must exceed your longest durable commit); ``cache_messages`` is
        the newest-messages window kept per session. A Redis that is down at start is not an error:
        the store serves from ``inner`` and connects when Redis answers. ``close_inner``: closing
        this store closes ``inner`` too.
        """
        aioredis = _import_redis()
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        if not isinstance(redis_url, str) or not redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise InvalidStoreURL(f"invalid cache URL {_redact(str(redis_url))!r}: expected redis://host:port/db")
        if not isinstance(prefix, str) or not prefix or any(c in prefix for c in "{}"):
            raise InvalidInput("prefix must be a non-empty string without braces")
        if not 1 <= cache_messages <= 5000:
            raise InvalidInput("cache_messages must be between 1 and 5000")
        if pending_ttl <= 0 or ttl < pending_ttl:
            raise InvalidInput("need 0 < pending_ttl <= ttl")
        holder: list[RedisCachedStore] = []

        async def on_connect(conn: Any) -> None:
            # Learn the server's boot id on every (re)connection: entries tagged with another run
            # id (e.g. restored from a snapshot after a restart) are never served.
            await conn.on_connect()
            run_id = "unknown"
            try:
                await conn.send_command("INFO", "server")
                info = await conn.read_response()
                for line in (info.decode() if isinstance(info, bytes) else str(info)).splitlines():
                    if line.startswith("run_id:"):
                        run_id = line.split(":", 1)[1].strip()
            except aioredis.ResponseError:  # INFO renamed away: restarts are then not detected
                log.warning("Redis INFO is unavailable; restored snapshots cannot be detected")
            if holder:
                holder[0]._run_id = run_id

        try:
            client = aioredis.Redis.from_url(
                redis_url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_timeout,
                # One immediate retry on a broken connection: after a Redis restart the pool still
                # holds dead sockets. Every script is safe to run twice. Timeouts are not retried.
                retry=Retry(NoBackoff(), 1, supported_errors=(aioredis.ConnectionError,)),
                redis_connect_func=on_connect,
                max_connections=max_connections,
            )
        except ValueError as exc:
            raise InvalidStoreURL(f"invalid cache URL {_redact(redis_url)!r}: {exc}") from exc
        store = cls(inner, client, redis_url, prefix=prefix, ttl=ttl, pending_ttl=pending_ttl,
                    cache_messages=cache_messages, max_state_bytes=max_state_bytes,
                    retry_interval=retry_interval, warn_interval=warn_interval, max_owed=max_owed,
                    close_inner=close_inner)
        holder.append(store)
        try:
            await client.ping()
        except Exception as exc:  # noqa: BLE001 - Redis down at start: serve from the durable store
            store._mark_down(exc)
        return store

    @property
    def redis(self) -> Any:
        """The redis-py asyncio client (shared with :func:`amber.locks.session_lease`)."""
        return self._redis

    @property
    def prefix(self) -> str:
        return self._prefix

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._redis.aclose()
        finally:
            if self._close_inner:
                await self._inner.close()

    async def describe(self) -> Mapping[str, Any]:
        inner = dict(await self._inner.describe())
        inner["cache"] = {
            "backend": "redis", "url": self._redis_url, "prefix": self._prefix,
            "available": self._available(), "run_id": self._run_id, "owed_invalidations": len(self._owed),
            **self.stats,
        }
        return inner

    # -- keys ----------------------------------------------------------------------------------------
    def _user_key(self, tenant: str, user: str) -> str:
        return f"{self._prefix}{{{tenant}/{user}}}:u"

    def _session_prefix(self, tenant: str, user: str) -> str:
        return f"{self._prefix}{{{tenant}/{user}}}:s:"

    def _keys(self, key: SessionKey) -> list[str]:
        return [self._session_prefix(key.tenant, key.user) + key.thread, self._user_key(key.tenant, key.user)]

    # -- availability ------------------------------------------------------------------------------
    def _available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _mark_down(self, exc: BaseException) -> None:
        now = time.monotonic()
        self.stats["redis_errors"] += 1
        self._down_until = now + self._retry_interval
        if self._down_since is None:
            self._down_since = now
        if now - self._last_warning >= self._warn_interval:
            more = f" ({self._suppressed} similar warnings suppressed)" if self._suppressed else ""
            log.warning("Redis cache %s unavailable, serving from the durable store: %r%s",
                        self._redis_url, exc, more)
            self._last_warning = now
            self._suppressed = 0
        else:
            self._suppressed += 1

    async def _run(self, name: str, keys: Sequence[str], args: Sequence[Any], *, force: bool = False) -> Any:
        """Run one script; raise _Unavailable (after noting why) if Redis cannot be used. ``force``
        tries even while the circuit is open (invalidations after a commit must not be skipped on a
        stale belief that Redis is down)."""
        if self._closed or not (force or self._available()):
            raise _Unavailable
        try:
            if self._run_id is None:
                await self._redis.ping()  # connects, and the connect hook learns the run id
            run_before = self._run_id
            args = [run_before if a is _RUN else a for a in args]
            result = await self._call(name, keys, args)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - redis errors, OSError, timeouts, script errors
            self._mark_down(exc)
            raise _Unavailable from exc
        if self._run_id != run_before:
            raise _Unavailable  # reconnected to another server run mid-call: trust nothing from it
        if self._down_since is not None:
            log.warning("Redis cache %s reachable again after %.1fs", self._redis_url,
                        time.monotonic() - self._down_since)
            self._down_since = None
        return result

    async def _call(self, name: str, keys: Sequence[str], args: list[Any]) -> Any:
        """One script call. Alone, it goes out at once; while other calls are in flight it queues,
        and a sender task sends everything queued in one pipeline (one round trip for many tasks'
        BEGINs, ENDs and reads). Each call's result or error is its own."""
        if self._in_flight == 0 and not self._calls:
            self._in_flight += 1
            try:
                return await self._scripts[name](keys=keys, args=args)
            finally:
                self._in_flight -= 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls.append((name, keys, args, future))
        if self._senders < _MAX_PIPELINES:
            self._senders += 1
            task = asyncio.ensure_future(self._send_queued())
            self._send_tasks.add(task)
            task.add_done_callback(self._send_tasks.discard)
        return await future

    async def _send_queued(self) -> None:
        # A task of its own: a cancelled caller must not cancel its neighbours' calls.
        try:
            while self._calls:
                batch = list(self._calls)
                self._calls.clear()
                self._in_flight += 1
                try:
                    results = await self._pipeline(batch)
                except BaseException as exc:  # noqa: BLE001 - handed to every caller of the batch
                    results = [exc] * len(batch)
                    if not isinstance(exc, Exception):
                        for *_, future in batch:
                            if not future.done():
                                future.set_exception(exc)
                        raise
                finally:
                    self._in_flight -= 1
                for (*_, future), result in zip(batch, results):
                    if future.done():  # the caller was cancelled
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._senders -= 1

    async def _pipeline(self, batch: Sequence[tuple[str, Sequence[str], list[Any], Any]]) -> list[Any]:
        """EVALSHA each call in one pipeline (no MULTI: each script is atomic on its own). Scripts
        the server does not know (flushed, restarted) are loaded and those calls sent again."""
        from redis.exceptions import NoScriptError

        todo = list(range(len(batch)))
        results: list[Any] = [None] * len(batch)
        for attempt in range(2):
            pipe = self._redis.pipeline(transaction=False)
            for i in todo:
                name, keys, args, _ = batch[i]
                pipe.evalsha(self._scripts[name].sha, len(keys), *keys, *args)
            self.stats["pipelines"] += 1
            self.stats["pipelined_calls"] += len(todo)
            replies = await pipe.execute(raise_on_error=False)
            missing = [i for i, r in zip(todo, replies) if isinstance(r, NoScriptError)]
            for i, r in zip(todo, replies):
                results[i] = r
            if not missing or attempt:
                break
            for name in sorted({batch[i][0] for i in missing}):
                await self._redis.script_load(getattr(lua, name))
            todo = missing
        return results

    async def _settle_owed(self) -> bool:
        """Deliver the invalidations owed from an outage. True if none is outstanding."""
        if not self._owed and not self._owe_everything:
            return True
        if not self._available():
            return False
        if self._owe_everything:
            try:
                await self._flush_prefix()
            except _Unavailable:
                return False
            self._owe_everything = False
            self._owed.clear()
            return True
        for item, tokens in list(self._owed.items()):
            try:
                if item[0] == "s":
                    await self._invalidate_session(SessionKey(item[1], item[2], item[3]))
                else:
                    paying = set(tokens)
                    await self._run("WIPE_USER", [self._user_key(item[1], item[2])],
                                    [_nonce(), self._ttl_ms, ",".join(sorted(paying)),
                                     self._session_prefix(item[1], item[2])])
                    self._paid(item, paying)
            except _Unavailable:
                return False
        return not self._owed

    async def _flush_prefix(self) -> None:
        """Too many owed invalidations to remember: drop every key under our prefix (safe, like a
        FLUSHDB: nonces never repeat, so nothing stale can come back)."""
        if not self._available():
            raise _Unavailable
        try:
            batch: list[bytes] = []
            # Cache hashes only (":s:<thread>" and ":u"): leases and fence counters must survive.
            escaped = "".join("\\" + c if c in "*?[]\\" else c for c in self._prefix)
            async for k in self._redis.scan_iter(match=escaped + "{*}:[su]*", count=1000):
                batch.append(k)
                if len(batch) >= 500:
                    await self._redis.unlink(*batch)
                    batch = []
            if batch:
                await self._redis.unlink(*batch)
        except Exception as exc:  # noqa: BLE001
            self._mark_down(exc)
            raise _Unavailable from exc

    def _owe(self, item: tuple[str, ...], token: str = "") -> None:
        if self._owe_everything:
            return
        tokens = self._owed.setdefault(item, set())
        if token:
            tokens.add(token)
        if len(self._owed) > self._max_owed:
            self._owe_everything = True
            self._owed.clear()
            log.error("more than %d cache invalidations owed; the whole cache prefix %r will be dropped "
                      "when Redis answers", self._max_owed, self._prefix)

    async def _cache_usable(self, key: SessionKey) -> bool:
        if not await self._settle_owed():
            # Could not pay what we owe: other workers may still be served stale entries for those
            # sessions until we can (or until their TTL); this process at least never is.
            return False
        return True

    # -- transcripts ---------------------------------------------------------------------------------
    async def append(self, key: SessionKey, messages: Sequence[NewMessage]) -> list[Message]:
        token = _nonce()
        begin = await self._begin(key, token)
        try:
            stored = await self._inner.append(key, messages)
        except (InvalidInput, VersionConflict):
            await self._end(key, token, begin, ["none"])  # refused before anything was written
            raise
        except BaseException:
            await self._end(key, token, begin, ["fail"])
            raise
        seqs = [m.seq for m in stored]
        # A batch starting at seq 1 tells END the session was empty before -- unless it was a retry
        # returning messages stored earlier (then later messages may exist): invalidate instead.
        maybe_retry = bool(seqs) and seqs[0] == 1 and any(m.idempotency_key is not None for m in messages)
        if stored and not maybe_retry and seqs == list(range(seqs[0], seqs[0] + len(seqs))):
            op: list[Any] = ["append", seqs[0], seqs[-1], *(_encode_message(m) for m in stored)]
        else:
            op = ["fail"] if stored else ["none"]
        await self._end(key, token, begin, op, added=stored)
        return stored

    async def read_window(
        self, key: SessionKey, *, last: int | None = None, max_tokens: int | None = None
    ) -> list[Message]:
        validate_limit(last, "last")
        validate_limit(max_tokens, "max_tokens")
        if last == 0:
            return []
        if (last is not None and last > self._cache_messages) or not await self._cache_usable(key):
            self.stats["bypassed"] += 1
            return await self._inner.read_window(key, last=last, max_tokens=max_tokens)
        n = -1 if last is None else last
        local = self._windows.get(key)
        try:
            res = await self._run("READ_WINDOW", self._keys(key), [
                _RUN, _nonce(), self._ttl_ms, "tail", n, 0, -1, *(local[:2] if local else (b"", 0))])
        except _Unavailable:
            self.stats["bypassed"] += 1
            return await self._inner.read_window(key, last=last, max_tokens=max_tokens)
        if res[0] in (1, 3):
            first = int(res[1])
            msgs = self._window_items(key, local, res)
            answer = self._select(msgs, first, last, max_tokens)
            if answer is not None:
                self.stats["hits"] += 1
                return self._audited(key, answer)
            self.stats["misses"] += 1
            return await self._inner.read_window(key, last=last, max_tokens=max_tokens)
        self.stats["misses"] += 1
        if res[0] == 2 or len(res) < 2:  # not covered, or a write is in flight: no fill
            return await self._inner.read_window(key, last=last, max_tokens=max_tokens)
        tag = res[1]
        with reads_not_audited():  # the fill is ours; the caller's answer is audited below
            msgs = await self._inner.read_window(key, last=self._cache_messages)
        # The cache holds consecutive seqs only: after a deleted message (a gap) only the run
        # after the last gap is cached, and reads reaching further back go to the store.
        run = _consecutive_tail(msgs)
        first = msgs[0].seq if msgs else 1
        last_seq = msgs[-1].seq if msgs else 0
        try:
            filled = await self._run("FILL_WINDOW", self._keys(key), [
                _RUN, tag, self._ttl_ms, key.thread, run[0].seq if run else 1, last_seq,
                *(_encode_message(m) for m in run)])
            self.stats["fills"] += int(filled == 1)
        except _Unavailable:
            pass
        answer = self._select(msgs, first, last, max_tokens)
        if answer is None:
            return await self._inner.read_window(key, last=last, max_tokens=max_tokens)
        return self._audited(key, answer)

    def _audited(self, key: SessionKey, msgs: list[Message]) -> list[Message]:
        """Reads answered from Redis never reach the durable store, so they are audited here."""
        self._inner.audit_read(key.tenant, "message.read", user=key.user, thread=key.thread,
                               record_ids=[m.id for m in msgs], digests=[m.content_hash for m in msgs])
        return msgs

    def _window_items(self, key: SessionKey, local: tuple[bytes, int, list[Message]] | None,
                      res: Sequence[Any]) -> list[Message]:
        """The messages of a READ_WINDOW hit: from our decoded copy ({3}: Redis confirmed it is
        current and covers the range), or decoded from the reply ({1}), which then becomes our copy
        when it runs to the window's last seq."""
        if res[0] == 3:
            assert local is not None
            self.stats["local_hits"] += 1
            self._windows.move_to_end(key)
            a, b, base = int(res[3]), int(res[4]), local[1]
            return local[2][a - base:b - base + 1]
        last, w, a = int(res[2]), res[3], int(res[4])
        msgs = self._decode_all(key, res[5:])
        if msgs and msgs[-1].seq == last and msgs[0].seq == a and len(msgs) == last - a + 1:
            self._remember(key, w, msgs)
        return msgs

    def _remember(self, key: SessionKey, w: bytes, msgs: list[Message]) -> None:
        old = self._windows.pop(key, None)
        if old is not None:
            self._window_messages -= len(old[2])
        self._windows[key] = (w, msgs[0].seq, msgs)
        self._window_messages += len(msgs)
        while self._window_messages > _LOCAL_MESSAGES and len(self._windows) > 1:
            _, (_, _, dropped) = self._windows.popitem(last=False)
            self._window_messages -= len(dropped)

    def _forget(self, key: SessionKey) -> None:
        old = self._windows.pop(key, None)
        if old is not None:
            self._window_messages -= len(old[2])

    def _forget_user(self, tenant: str, user: str) -> None:
        for key in [k for k in self._windows if k.tenant == tenant and k.user == user]:
            self._forget(key)
        self._decoded = {k: m for k, m in self._decoded.items() if not (k[0].tenant == tenant and k[0].user == user)}

    def _decode_all(self, key: SessionKey, raws: Sequence[bytes]) -> list[Message]:
        cache = self._decoded
        if len(cache) > 50_000:
            cache.clear()
        out = []
        for raw in raws:
            m = cache.get((key, raw))
            if m is None:
                m = cache[(key, raw)] = _decode_message(key, raw)
            out.append(m)
        return out

    @staticmethod
    def _select(msgs: list[Message], first: int, last: int | None, max_tokens: int | None) -> list[Message] | None:
        """The requested window from a cached suffix (starting at seq ``first``), or None when the
        suffix is too short to know the answer."""
        if last is not None:
            msgs = msgs[-last:]
        keep = select_window([m.tokens for m in reversed(msgs)], last, max_tokens)
        if first > 1 and keep == len(msgs) and (last is None or keep < last):
            return None  # the budget may reach further back than the cache does
        return msgs[len(msgs) - keep:] if keep else []

    async def read_since(self, key: SessionKey, after_seq: int = 0, *, limit: int | None = None) -> list[Message]:
        validate_limit(after_seq, "after_seq", allow_none=False)
        validate_limit(limit)
        if limit == 0:
            return []
        if await self._cache_usable(key):
            local = self._windows.get(key)
            try:
                res = await self._run("READ_WINDOW", self._keys(key), [
                    _RUN, _nonce(), self._ttl_ms, "since", 0, after_seq, -1 if limit is None else limit,
                    *(local[:2] if local else (b"", 0))])
            except _Unavailable:
                res = None
            if res is not None and res[0] in (1, 3):
                self.stats["hits"] += 1
                return self._audited(key, self._window_items(key, local, res))
        self.stats["bypassed"] += 1
        return await self._inner.read_since(key, after_seq, limit=limit)

    # -- state ---------------------------------------------------------------------------------------
    async def get_state(self, key: SessionKey, name: str) -> StateBlob | None:
        validate_state_name(name)
        if not await self._cache_usable(key):
            self.stats["bypassed"] += 1
            return await self._inner.get_state(key, name)
        try:
            res = await self._run("READ_STATE", self._keys(key), [_RUN, _nonce(), self._ttl_ms, name])
        except _Unavailable:
            self.stats["bypassed"] += 1
            return await self._inner.get_state(key, name)
        if res[0] == 1:
            self.stats["hits"] += 1
            blob = _decode_state(key, name, res[1])
            self._inner.audit_read(
                key.tenant, "state.read", user=key.user, thread=key.thread,
                record_ids=[] if blob is None else [f"{name}@{blob.version}"],
                digests=[] if blob is None else [digest(encode_json(dict(blob.data), "state"))])
            return blob
        self.stats["misses"] += 1
        blob = await self._inner.get_state(key, name)
        if len(res) >= 2:
            raw = _encode_state(blob)
            if len(raw) <= self._max_state_bytes:
                try:
                    filled = await self._run("FILL_STATE", self._keys(key),
                                             [_RUN, res[1], self._ttl_ms, key.thread, name, raw])
                    self.stats["fills"] += int(filled == 1)
                except _Unavailable:
                    pass
        return blob

    async def put_state(
        self, key: SessionKey, name: str, data: Mapping[str, Any], *, expected_version: int | None = None
    ) -> StateBlob:
        validate_state_name(name)
        token = _nonce()
        begin = await self._begin(key, token)
        try:
            blob = await self._inner.put_state(key, name, data, expected_version=expected_version)
        except (InvalidInput, VersionConflict):
            await self._end(key, token, begin, ["none"])
            raise
        except BaseException:
            await self._end(key, token, begin, ["fail"])
            raise
        raw = _encode_state(blob)
        await self._end(key, token, begin, ["state", name, raw if len(raw) <= self._max_state_bytes else b""])
        return blob

    async def restore_session(
        self, key: SessionKey, messages: Sequence[Message], states: Sequence[StateBlob] = (), *,
        created_at: datetime | None = None, updated_at: datetime | None = None, last_seq: int | None = None,
    ) -> SessionInfo | None:
        """A write like any other (BEGIN -> durable commit -> END), ending in an invalidation: the
        session's cached window and state are refilled from the store on the next read."""
        token = _nonce()
        begin = await self._begin(key, token)
        try:
            info = await self._inner.restore_session(key, messages, states, created_at=created_at,
                                                     updated_at=updated_at, last_seq=last_seq)
        except (InvalidInput, Conflict):
            await self._end(key, token, begin, ["none"])  # refused: nothing was written
            raise
        except BaseException:
            await self._end(key, token, begin, ["fail"])
            raise
        self._forget(key)
        await self._end(key, token, begin, ["fail"])
        return info

    # -- the write protocol --------------------------------------------------------------------------
    async def _begin(self, key: SessionKey, token: str) -> list[Any] | None:
        """BEGIN: a fresh session nonce (every cached entry of the session stops being valid) and an
        in-flight token (nobody refills until END or the token's deadline). None if Redis is
        unavailable; the END then falls back to a plain invalidation."""
        if not await self._settle_owed():
            return None
        fresh = _nonce()
        try:
            prev, e = await self._run("BEGIN", self._keys(key), [fresh, self._pending_ms, self._ttl_ms, token])
            return [prev, fresh, e]
        except _Unavailable:
            return None

    async def _end(self, key: SessionKey, token: str, begin: list[Any] | None, op: list[Any], *,
                   added: Sequence[Message] = ()) -> None:
        """END, after the durable commit: another fresh nonce, and write-through when provably safe.

        Without a BEGIN, Redis may have come back while we committed and another worker may have
        refilled the cache from the durable store before our commit: so we invalidate anyway, even
        if the circuit says Redis is down, and owe the invalidation only if Redis really refuses."""
        try:
            if begin is None:  # our token may still have landed (e.g. a reply lost): drop it too
                await self._invalidate_session(key, token=token, force=True)
                return
            prev, began, e = begin
            res = await self._run("END", self._keys(key), [
                _RUN, _nonce(), self._ttl_ms, token, prev, began, e, op[0], key.thread,
                self._cache_messages, *op[1:]])
        except _Unavailable:
            self._owe(("s", key.tenant, key.user, key.thread), token)
            return
        self._follow_end(key, res, added if op[0] == "append" else ())

    def _follow_end(self, key: SessionKey, res: Any, added: Sequence[Message]) -> None:
        """Keep our decoded copy in step with END's write-through: END proved the new window is the
        one it replaced plus this write, so our copy of the replaced one plus ``added`` is it."""
        local = self._windows.get(key)
        if not isinstance(res, list) or len(res) != 2:
            return
        new_w, from_w = res
        if from_w:
            if local is None or local[0] != from_w:
                return
            msgs = local[2] + list(added)
        elif added:
            msgs = list(added)
        else:
            return
        first = int(new_w.split(b":", 2)[0])
        keep = [m for m in msgs if m.seq >= first]
        if keep and all(m.seq == keep[0].seq + i for i, m in enumerate(keep)):
            self._remember(key, new_w, keep)
        else:
            self._forget(key)

    async def _invalidate_session(self, key: SessionKey, *, token: str = "", force: bool = False) -> None:
        # The wipe also drops the in-flight tokens owed for this session: forgetting them unpaid would
        # leave them in Redis, blocking every refill of the session until their deadline.
        item = ("s", key.tenant, key.user, key.thread)
        paying = set(self._owed.get(item, ()))
        tokens = ",".join(sorted(paying | ({token} if token else set())))
        await self._run("WIPE_SESSION", self._keys(key), [_nonce(), self._ttl_ms, tokens, key.thread], force=force)
        self._paid(item, paying)

    def _paid(self, item: tuple[str, ...], tokens: set[str]) -> None:
        """An invalidation of ``item`` went through, dropping ``tokens``. What was owed for it before
        the call is paid; what was owed during the call (a write that failed meanwhile) stays owed."""
        owed = self._owed.get(item)
        if owed is None:
            return
        if owed <= tokens:
            del self._owed[item]
        else:
            owed -= tokens

    # -- deletion ------------------------------------------------------------------------------------
    async def delete_session(self, key: SessionKey) -> DeletionReceipt:
        self._forget(key)  # deleted content does not linger in this process either
        self._decoded = {k: m for k, m in self._decoded.items() if k[0] != key}
        token = _nonce()
        await self._begin(key, token)
        try:
            return await self._inner.delete_session(key)
        finally:
            try:  # also removes the cached copies of the deleted data from Redis
                await self._invalidate_session(key, token=token, force=True)
            except _Unavailable:
                self._owe(("s", key.tenant, key.user, key.thread), token)

    async def delete_message(self, key: SessionKey, message_id: str) -> bool:
        """As delete_session: the session's cached window (holding the message) is wiped from Redis
        and from this process, whatever the outcome; readers refill from the store below."""
        return await self._rewrite_one(key, self._inner.delete_message(key, message_id))

    async def correct_message(
        self, key: SessionKey, message_id: str, content: str, *, reason: str | None = None
    ) -> Message:
        """As delete_message: the old content must not be served from, or linger in, the cache."""
        return await self._rewrite_one(key, self._inner.correct_message(key, message_id, content, reason=reason))

    async def _rewrite_one(self, key: SessionKey, write: Awaitable[T]) -> T:
        self._forget(key)
        self._decoded = {k: m for k, m in self._decoded.items() if k[0] != key}
        token = _nonce()
        await self._begin(key, token)  # nobody refills until the wipe below (or the token's deadline)
        try:
            return await write
        finally:
            try:
                await self._invalidate_session(key, token=token, force=True)
            except _Unavailable:
                self._owe(("s", key.tenant, key.user, key.thread), token)

    async def delete_user(self, tenant: str, user: str) -> DeletionReceipt:
        validate_part("tenant", tenant)
        validate_part("user", user)
        self._forget_user(tenant, user)
        token = _nonce()
        ukey = [self._user_key(tenant, user)]
        if await self._settle_owed():
            try:
                await self._run("BEGIN_USER", ukey, [_nonce(), self._pending_ms, self._ttl_ms, token])
            except _Unavailable:
                pass
        try:
            return await self._inner.delete_user(tenant, user)
        finally:
            item = ("u", tenant, user)
            paying = set(self._owed.get(item, ())) | {token}
            try:
                await self._run("WIPE_USER", ukey, [
                    _nonce(), self._ttl_ms, ",".join(sorted(paying)), self._session_prefix(tenant, user)], force=True)
                self._paid(item, paying)
            except _Unavailable:
                self._owe(("u", tenant, user), token)

    async def prune(self, tenant: str, *, before: Mapping[str, datetime]) -> DeletionReceipt:
        """Retention through the durable store, then every cached session of the tenant's users is
        dropped from Redis (cached copies of pruned records must not outlive them)."""
        validate_part("tenant", tenant)
        users: set[str] = set()
        offset = 0
        while True:
            page = await self._inner.list_users(tenant, limit=1000, offset=offset)
            users.update(page)
            if len(page) < 1000:
                break
            offset += len(page)
        receipt = await self._inner.prune(tenant, before=before)
        for user in sorted(users):
            item = ("u", tenant, user)
            paying = set(self._owed.get(item, ()))
            try:
                await self._run("WIPE_USER", [self._user_key(tenant, user)], [
                    _nonce(), self._ttl_ms, ",".join(sorted(paying)), self._session_prefix(tenant, user)], force=True)
                self._paid(item, paying)
            except _Unavailable:
                self._owe(("u", tenant, user), "")
        return receipt

    # Facts, search, vectors, the learning queue and the audit trail are not cached: DelegatingStore
    # forwards them to the durable store below.
