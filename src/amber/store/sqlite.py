"""The embedded default backend: one SQLite file, safe for many tasks and many processes.

How it stays correct and fast (see docs/storage-sqlite.md):

* WAL journal, ``synchronous=FULL`` by default: a COMMIT returns after the WAL is fsynced, so an
  acknowledged append survives a crash or power loss. ``synchronous=normal`` is an explicit,
  documented opt-out (an OS crash or power loss may then drop the last commits).
* ONE writer per store handle: a dedicated thread with its own connection takes every queued write,
  runs them in ONE ``BEGIN IMMEDIATE`` transaction (rerun with a SAVEPOINT per write if one fails
  on its own, so one failing compare-and-set does not sink its neighbours), COMMITs once (one
  fsync) and only then resolves each caller's future. Concurrent appends from many tasks therefore
  share fsyncs (group commit).
* Reads run on a small thread pool, each thread with its own read-only connection, so readers never
  wait behind the writer (WAL readers see the last committed snapshot).
* "database is locked" never reaches a caller: every statement runs with ``busy_timeout`` and the
  whole transaction is retried until ``lock_timeout`` (60 s by default) has passed; only then does
  the caller get :class:`~amber.errors.StoreUnavailable`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import math
import os
import queue
import random
import re
import sqlite3
import threading
import time
import unicodedata
from collections import OrderedDict
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar
from urllib.parse import parse_qs, urlsplit

from ..audit import current_actor
from ..errors import (
    AmberError,
    InvalidInput,
    InvalidStoreURL,
    MessageTooLarge,
    MigrationError,
    MissingDependency,
    NotFound,
    StoreUnavailable,
    VersionConflict,
)
from ..keys import SessionKey, validate_part
from .vector_index import ANN_THRESHOLD, VectorIndex
from ..records import (
    AuditEvent,
    DeletionReceipt,
    Fact,
    Hit,
    LearnJob,
    Message,
    NewFact,
    NewMessage,
    SessionInfo,
    StateBlob,
    VectorItem,
    utcnow,
)
from ..governance.audit import AuditedReads
from .base import (
    SUPERSEDED_HISTORY,
    Capability,
    PreparedMessage,
    Store,
    StoreLimits,
    check_current_facts,
    check_superseding_fact,
    decode_json,
    digest,
    encode_json,
    new_id,
    prepare_correction,
    prepare_fact,
    prepare_message,
    prepare_restore,
    prepare_restored_facts,
    restore_conflict,
    stale_sources,
    superseded_query_ids,
    validate_expect_current,
    validate_history_write,
    validate_job_ids,
    validate_limit,
    validate_state_name,
    validate_tenant_filter,
    vector_digest,
)
from .memory import lexical_terms
from .sqlite_schema import MIGRATIONS, SCHEMA_VERSION, applied_versions

__all__ = ["SQLiteStore", "open_sqlite", "sqlite_path_from_url"]

T = TypeVar("T")

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_SYNCHRONOUS = {"full": 2, "normal": 1}
_MAX_BATCH_OPS = 512  # writes folded into one transaction
_READER_MMAP_BYTES = 1 << 30  # address space only; pages are the OS's file cache
_BUSY_SLICE_MS = 2000  # one busy_timeout wait; the retry loop repeats it until lock_timeout


def _us(dt: datetime) -> int:
    delta = dt.astimezone(timezone.utc) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _dt(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _now_us() -> int:
    return _us(utcnow())


def _is_busy(exc: BaseException) -> bool:
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def sqlite_path_from_url(url: str) -> tuple[str, dict[str, str]]:
    """``sqlite:///relative.db`` -> ``relative.db``; ``sqlite:////abs/x.db`` -> ``/abs/x.db``."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite":
        raise InvalidStoreURL(f"not a sqlite URL: {url!r}")
    if parts.netloc:
        raise InvalidStoreURL(
            f"invalid SQLite URL {url!r}: use sqlite:///relative/path.db or sqlite:////absolute/path.db "
            "(three slashes, then the path)"
        )
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not path or path.endswith("/") or path == ":memory:":
        raise InvalidStoreURL(f"invalid SQLite URL {url!r}: it names no database file")
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    return path, options


# -- the writer thread ------------------------------------------------------------------------------


class _WriteOp:
    """One queued write: a function of the write connection, and where its outcome goes.

    A write may also name a ``group``: a function that runs many such writes of one batch together
    (e.g. every append of a batch in a few ``executemany`` calls) from their ``payload``s. It must
    give the same outcome as running each ``fn`` in turn; ``fn`` is what runs when writes are
    isolated after a failure."""

    __slots__ = ("fn", "future", "loop", "group", "payload")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any], loop: asyncio.AbstractEventLoop,
                 group: Callable[[sqlite3.Connection, list[Any]], list[Any]] | None = None,
                 payload: Any = None) -> None:
        self.fn = fn
        self.loop = loop
        self.group = group
        self.payload = payload
        self.future: asyncio.Future[Any] = loop.create_future()


_STOP = object()


def _resolve(outcomes: list[tuple[_WriteOp, bool, Any]]) -> None:
    """On the caller's event loop: hand each caller its outcome (one loop wake-up per batch)."""
    for op, ok, value in outcomes:
        if op.future.done():  # the caller was cancelled; the write itself stands
            continue
        if ok:
            op.future.set_result(value)
        else:
            op.future.set_exception(value)


class _Writer(threading.Thread):
    """Owns the only write connection of a store handle and group-commits queued operations.

    Callers on one event loop do not hand their writes to this thread one by one: writes submitted
    during one turn of the loop are buffered and passed over together at the end of that turn
    (``loop.call_soon``), so when many tasks were just woken by the previous COMMIT they all land in
    the next transaction. A lone writer pays nothing for this but one ``call_soon`` hop. Outcomes
    go back the same way: one ``call_soon_threadsafe`` per loop per transaction, not one per write.
    """

    def __init__(self, conn: sqlite3.Connection, lock_timeout: float, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.conn = conn
        self.lock_timeout = lock_timeout
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.batches = 0
        self.ops = 0
        self.stopped = False
        self._pending: dict[asyncio.AbstractEventLoop, list[_WriteOp]] = {}
        self._pending_lock = threading.Lock()

    def submit(self, fn: Callable[[sqlite3.Connection], Any],
               group: Callable[[sqlite3.Connection, list[Any]], list[Any]] | None = None,
               payload: Any = None) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        op = _WriteOp(fn, loop, group, payload)
        with self._pending_lock:
            ops = self._pending.get(loop)
            if ops is None:
                self._pending[loop] = [op]
                loop.call_soon(self.flush, loop)
            else:
                ops.append(op)
        return op.future

    def flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """Pass the writes one loop buffered in this turn to the writer thread, in call order."""
        with self._pending_lock:
            ops = self._pending.pop(loop, None)
            if not ops:
                return
            if not self.stopped:
                self.queue.put(ops)
                return
        _resolve([(op, False, StoreUnavailable("the store is closed")) for op in ops])

    def stop(self) -> None:
        with self._pending_lock:
            self.stopped = True
            leftovers = [ops for ops in self._pending.values()]
            self._pending.clear()
        for ops in leftovers:  # buffered before close() but not yet flushed: still written
            self.queue.put(ops)
        self.queue.put(_STOP)

    def run(self) -> None:
        self.conn.execute("PRAGMA busy_timeout = 0")  # lock waits are polled by _run_batch
        stopping = False
        while not stopping:
            item = self.queue.get()
            if item is _STOP:
                break
            batch: list[_WriteOp] = list(item)
            while len(batch) < _MAX_BATCH_OPS:
                try:
                    nxt = self.queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stopping = True  # finish what was queued before close(), then exit
                    break
                batch.extend(nxt)
            self._run_batch(batch)
        try:
            self.conn.close()
        except sqlite3.Error:
            pass

    def _run_batch(self, batch: list[_WriteOp]) -> None:
        deadline = time.monotonic() + self.lock_timeout
        attempt = 0
        # Optimistic first: no SAVEPOINT per write. Only if one write fails (a compare-and-set
        # conflict, bad input) is the batch rolled back and run again with one SAVEPOINT per write,
        # so the failure is undone alone and its batch mates still commit.
        isolate = False
        while True:
            attempt += 1
            try:
                outcomes = self._attempt(batch, isolate)
            except _NeedsIsolation:
                self._rollback()
                isolate = True
                continue
            except sqlite3.Error as exc:
                self._rollback()
                if _is_busy(exc) and time.monotonic() < deadline:
                    # Another process holds the write lock. SQLite's own busy handler sleeps 1, 2,
                    # 5, 10 ... 100 ms between tries, so a lock freed after 1 ms could cost 25 ms;
                    # poll in short jittered steps instead (busy_timeout is 0 on this connection).
                    time.sleep(min(0.0002 * 1.5 ** min(attempt, 20), 0.005) * random.uniform(0.5, 1.5))
                    continue
                error = StoreUnavailable(
                    f"SQLite write failed after {attempt} attempt(s): {exc}"
                    + (f" (waited longer than lock_timeout={self.lock_timeout}s)" if _is_busy(exc) else "")
                )
                error.__cause__ = exc
                self._deliver([(op, False, error) for op in batch])
                return
            except BaseException as exc:  # a bug in an op: fail the batch, keep the thread alive
                self._rollback()
                self._deliver([(op, False, exc) for op in batch])
                return
            self.batches += 1
            self.ops += len(batch)
            self._deliver(outcomes)
            return

    @staticmethod
    def _deliver(outcomes: list[tuple[_WriteOp, bool, Any]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_WriteOp, bool, Any]]] = {}
        for outcome in outcomes:
            by_loop.setdefault(outcome[0].loop, []).append(outcome)
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, items)
            except RuntimeError:  # that loop is closed: nobody is waiting any more
                pass

    def _attempt(self, batch: list[_WriteOp], isolate: bool) -> list[tuple[_WriteOp, bool, Any]]:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        outcomes: list[tuple[_WriteOp, bool, Any]] = []
        if not isolate:
            i = 0
            while i < len(batch):
                op = batch[i]
                try:
                    if op.group is not None:  # this write and the same kind that follow it, together
                        j = i + 1
                        while j < len(batch) and batch[j].group is op.group:
                            j += 1
                        values = op.group(conn, [o.payload for o in batch[i:j]])
                        outcomes.extend((o, True, v) for o, v in zip(batch[i:j], values))
                        i = j
                        continue
                    outcomes.append((op, True, op.fn(conn)))
                    i += 1
                except AmberError as exc:
                    if len(batch) > 1:
                        raise _NeedsIsolation() from exc
                    conn.execute("ROLLBACK")  # a lone write that failed: nothing to commit
                    return [(op, False, exc)]
                except sqlite3.Error as exc:
                    if _is_busy(exc) or not conn.in_transaction:
                        raise  # retry or fail the whole batch
                    if len(batch) > 1:
                        raise _NeedsIsolation() from exc
                    conn.execute("ROLLBACK")
                    return [(op, False, _store_error(exc))]
            conn.execute("COMMIT")  # one fsync for the whole batch (synchronous=FULL)
            return outcomes
        for op in batch:
            conn.execute("SAVEPOINT op")
            try:
                value = op.fn(conn)
            except AmberError as exc:
                # The caller's own error (conflict, bad input): undo only this op.
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                outcomes.append((op, False, exc))
                continue
            except sqlite3.Error as exc:
                if _is_busy(exc) or not conn.in_transaction:
                    raise  # retry or fail the whole batch
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                outcomes.append((op, False, _store_error(exc)))
                continue
            conn.execute("RELEASE op")
            outcomes.append((op, True, value))
        conn.execute("COMMIT")  # one fsync for the whole batch (synchronous=FULL)
        return outcomes

    def _rollback(self) -> None:
        try:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass


class _NeedsIsolation(Exception):
    """A write of a multi-write batch failed on its own: rerun the batch with savepoints."""


def _store_error(exc: sqlite3.Error) -> StoreUnavailable:
    error = StoreUnavailable(f"SQLite error: {exc}")
    error.__cause__ = exc
    return error


# -- the store ----------------------------------------------------------------------------------------


class SQLiteStore(AuditedReads, Store):
    """A store in one SQLite file. Open it with ``amber.open_store("sqlite:///path.db")``."""

    def __init__(
        self,
        path: str,
        *,
        url: str,
        synchronous: str,
        lock_timeout: float,
        readers: int,
        limits: StoreLimits,
        vector_cache_mb: int = 512,
        vector_ann_threshold: int | None = ANN_THRESHOLD,
        erasure_scrub_delay: float = 0.0,
    ) -> None:
        self.path = path
        self.url = url
        self.limits = limits
        self.capabilities = frozenset({
            Capability.DURABLE, Capability.MULTI_PROCESS, Capability.LEXICAL_SEARCH, Capability.VECTOR_SEARCH,
        })
        self._synchronous = synchronous
        self._lock_timeout = lock_timeout
        self._busy_ms = max(1, min(_BUSY_SLICE_MS, int(lock_timeout * 1000)))
        self._readers = readers
        self._closed = False
        self._local = threading.local()
        self._read_conns: list[sqlite3.Connection] = []
        self._read_conns_lock = threading.Lock()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._writer: _Writer | None = None
        self._journal_mode = "?"
        self._applied_here: list[int] = []
        self._vector_cache: OrderedDict[tuple[str, str, str], VectorIndex] = OrderedDict()
        self._vector_ann_threshold = vector_ann_threshold
        self._vector_cache_lock = threading.Lock()
        self._vector_cache_bytes = 0
        self._vector_cache_limit = vector_cache_mb * 1_048_576
        self._scrub_delay = erasure_scrub_delay
        self._scrub_handle: asyncio.TimerHandle | None = None
        self._scrub_task: asyncio.Future[None] | None = None
        self._scrub_owed_here = False  # this handle deferred a scrub that has not run yet
        from ..governance.audit import ReadAuditBuffer  # lazily: governance imports the store package

        self._reads = ReadAuditBuffer(self._write_reads, chain=self.chain_audit)

    # -- setup ------------------------------------------------------------------------------------
    def _connect(self, *, read_only: bool) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=self._busy_ms / 1000
            )
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open SQLite database {self.path!r}: {exc}") from exc

        def configure() -> None:
            conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            if read_only:
                conn.execute("PRAGMA query_only = 1")
                # Searches touch random pages of big indexes: read them through the OS page cache
                # (shared by every reader) instead of a read() per page into a 2 MB private cache.
                conn.execute(f"PRAGMA mmap_size = {_READER_MMAP_BYTES}")
            else:
                conn.execute(f"PRAGMA synchronous = {self._synchronous.upper()}")
                # Deleted rows and freed pages are overwritten with zeros: erased content does not
                # linger in the file (docs/governance-audit.md).
                conn.execute("PRAGMA secure_delete = ON")

        try:
            self._retry(configure, "connection setup")
        except BaseException:
            conn.close()
            raise
        return conn

    def _retry(self, fn: Callable[[], T], what: str) -> T:
        """Run ``fn`` until it stops failing with "database is locked", at most ``lock_timeout``."""
        deadline = time.monotonic() + self._lock_timeout
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except sqlite3.Error as exc:
                if _is_busy(exc) and time.monotonic() < deadline:
                    time.sleep(min(0.02 * attempt, 0.5) * random.uniform(0.5, 1.0))
                    continue
                raise StoreUnavailable(f"SQLite {what} failed on {self.path!r}: {exc}") from exc

    def _setup(self) -> None:
        parent = Path(self.path).parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            if not parent.is_dir():
                raise NotADirectoryError(str(parent))
        except OSError as exc:
            raise StoreUnavailable(
                f"cannot create the SQLite database {self.path!r}: its directory {str(parent)!r} "
                f"cannot be created ({exc.strerror or exc})"
            ) from exc
        if os.path.isdir(self.path):
            raise StoreUnavailable(f"cannot use {self.path!r} as a SQLite database: it is a directory")
        conn = self._connect(read_only=False)
        try:
            self._journal_mode = self._retry(
                lambda: str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower(), "journal_mode=WAL"
            )
            self._retry(lambda: self._migrate(conn), "migration")
            rebuilt = self._retry(lambda: _repair_fts_levels(conn), "lexical index repair")
            if rebuilt:
                import logging

                logging.getLogger("amber.audit").warning(
                    "rebuilt the lexical index(es) %s of %s: their FTS5 structure had grown past %d levels"
                    " (repeated erasures with SQLite 3.40's FTS5)", ", ".join(rebuilt), self.path, _FTS5_REBUILD_LEVELS)
            self._retry(lambda: _scrub_owed_at_open(conn), "owed lexical index scrub")
        except BaseException:
            conn.close()
            raise
        self._writer = _Writer(conn, self._lock_timeout, name=f"amber-sqlite-writer:{Path(self.path).name}")
        self._writer.start()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self._readers, thread_name_prefix="amber-sqlite-reader"
        )

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")  # serialises concurrent openers: one migrates, others see it done
        try:
            done = applied_versions(conn)
            unknown = done - {v for v, _, _ in MIGRATIONS}
            if unknown:
                raise MigrationError(
                    f"{self.path!r} has schema version(s) {sorted(unknown)} that this Amber does not know; "
                    "upgrade amber-memory"
                )
            applied = []
            for version, name, migrate in MIGRATIONS:
                if version in done:
                    continue
                try:
                    migrate(conn)
                except sqlite3.Error as exc:
                    if _is_busy(exc):
                        raise
                    raise MigrationError(f"migration {version} ({name}) failed on {self.path!r}: {exc}") from exc
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at, applied_by) VALUES (?, ?, ?, ?)",
                    (version, name, _now_us(), f"pid:{os.getpid()}"),
                )
                applied.append(version)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
            self._applied_here = applied
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # -- plumbing ---------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable(f"the store {self.url} is closed")

    async def _write(self, fn: Callable[[sqlite3.Connection], T],
                     group: Callable[[sqlite3.Connection, list[Any]], list[Any]] | None = None,
                     payload: Any = None) -> T:
        self._check_open()
        assert self._writer is not None
        return await self._writer.submit(fn, group, payload)

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect(read_only=True)
            self._local.conn = conn
            with self._read_conns_lock:
                self._read_conns.append(conn)
        return conn

    def _read_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._reader()

        def once() -> T:
            conn.execute("BEGIN")  # one snapshot for every statement of this read
            try:
                return fn(conn)
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

        return self._retry(once, "read")

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        self._check_open()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._read_sync, fn)

    # -- lifecycle --------------------------------------------------------------------------------
    async def close(self) -> None:
        if self._closed:
            return
        task = self._scrub_task
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            await asyncio.wait([task])  # a timed scrub under way: let it finish (its errors are logged)
        if self._writer is not None and (self._scrub_owed_here or self._scrub_handle is not None):
            try:  # an erasure of this handle deferred its index scrub: do it before closing
                await self.scrub_erasures()
            except AmberError as exc:
                import logging

                logging.getLogger("amber.audit").warning(
                    "scrubbing erased terms at close of %s failed (still owed; done at next open): %s", self.url, exc)
        if self._writer is not None:  # buffered read entries, then chain what this handle audited
            try:
                await self._reads.close()
            except AmberError as exc:
                import logging

                logging.getLogger("amber.audit").error("audit: read entries lost at close of %s: %s", self.url, exc)
        self._closed = True
        writer, pool = self._writer, self._pool
        with self._vector_cache_lock:
            indexes = list(self._vector_cache.values())

        def shutdown() -> None:
            for index in indexes:  # background graph builds stop after their current chunk
                index.close(wait=None)
            if writer is not None:
                writer.stop()
                writer.join()  # drains writes queued before close(); then closes its connection
            if pool is not None:
                pool.shutdown(wait=True)
            with self._read_conns_lock:
                for conn in self._read_conns:
                    try:
                        conn.close()
                    except sqlite3.Error:
                        pass
                self._read_conns.clear()

        await asyncio.to_thread(shutdown)

    async def describe(self) -> Mapping[str, Any]:
        def query(conn: sqlite3.Connection) -> dict[str, Any]:
            versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
            return {"schema_version": max(versions) if versions else 0, "migrations": versions}

        info = await self._read(query)
        size = sum(os.path.getsize(p) for p in (self.path, self.path + "-wal") if os.path.exists(p))
        return {
            "backend": "sqlite",
            "url": self.url,
            "path": os.path.abspath(self.path),
            "journal_mode": self._journal_mode,
            "synchronous": self._synchronous.upper(),
            "durable": self._synchronous == "full",
            "multi_process": True,
            "lock_timeout_seconds": self._lock_timeout,
            "schema_version": info["schema_version"],
            "migrations_applied_by_this_open": list(self._applied_here),
            "file_size_bytes": size,
            "sqlite_version": sqlite3.sqlite_version,
            "write_transactions": self._writer.batches if self._writer else 0,
            "write_operations": self._writer.ops if self._writer else 0,
        }

    # -- audit of reads (asynchronous) and the hash chain -----------------------------------------
    async def _write_reads(self, entries: Sequence[Any]) -> None:
        rows = [(e.tenant, _us(e.at), e.actor, e.operation, e.user, e.thread, e.count,
                 json.dumps(list(e.record_ids)), json.dumps(list(e.digests))) for e in entries]

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO audit (tenant_id, at, actor, operation, user_id, thread_id, count, record_ids, digests)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

        await self._write(op)

    async def chain_audit(self, tenant: str | None = None) -> dict[str, tuple[int, str]]:
        from ..governance.audit import GENESIS, chain_links

        if tenant is not None:
            validate_part("tenant", tenant)
        await self._reads.flush()

        def op(conn: sqlite3.Connection) -> tuple[dict[str, tuple[int, str]], bool]:
            # SQLite has one writer at a time: the write transaction is the chain lock.
            if tenant is not None:
                tenants = [tenant]
            else:
                tenants = [r[0] for r in conn.execute("SELECT DISTINCT tenant_id FROM audit WHERE chain_seq IS NULL")]
            heads: dict[str, tuple[int, str]] = {}
            more = False
            for t in tenants:
                row = conn.execute("SELECT chain_seq, chain_hash FROM audit_heads WHERE tenant_id = ?", (t,)).fetchone()
                head = (0, GENESIS) if row is None else (row[0], row[1])
                rows = conn.execute(f"SELECT {_AUDIT_COLS} FROM audit WHERE tenant_id = ? AND chain_seq IS NULL"
                                    " ORDER BY id LIMIT 5000", (t,)).fetchall()
                if rows:
                    links = chain_links(head, [_audit_event(r) for r in rows])
                    conn.executemany("UPDATE audit SET chain_seq = ?, chain_hash = ? WHERE id = ?",
                                     [(pos, h, i) for i, pos, h in links])
                    head = (links[-1][1], links[-1][2])
                    conn.execute(
                        "INSERT INTO audit_heads (tenant_id, chain_seq, chain_hash, updated_at) VALUES (?, ?, ?, ?)"
                        " ON CONFLICT (tenant_id) DO UPDATE SET chain_seq = excluded.chain_seq,"
                        " chain_hash = excluded.chain_hash, updated_at = excluded.updated_at",
                        (t, head[0], head[1], _now_us()))
                    more = more or len(rows) == 5000
                heads[t] = head
            return heads, more

        heads: dict[str, tuple[int, str]] = {}
        while True:
            found, more = await self._write(op)
            heads.update(found)
            if not more:
                return heads

    async def checkpoint(self) -> bool:
        """Copy the WAL into the database file and truncate it to zero bytes (SQLite's
        ``wal_checkpoint(TRUNCATE)``). Amber does it after every erasure (erased page images must
        not survive in the WAL); an operator or a benchmark may call it after a bulk load. A reader
        holding an old snapshot (any process) can delay it: retried briefly, then False (logged)."""
        self._check_open()

        def run() -> bool:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=self._busy_ms / 1000)
            try:
                for _ in range(50):
                    busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                    if not busy:
                        return True
                    time.sleep(0.02)
                return False
            finally:
                conn.close()

        import logging

        try:
            done = await asyncio.to_thread(run)
        except sqlite3.Error as exc:
            logging.getLogger("amber.audit").warning("WAL checkpoint of %s failed: %s", self.url, exc)
            return False
        if not done:
            logging.getLogger("amber.audit").warning(
                "WAL checkpoint was blocked by readers of %s; what the WAL holds (erased pages included) "
                "stays there until the next checkpoint", self.path)
        return done

    async def _checkpoint(self) -> None:
        """After an erasure: erased page images leave the WAL (see :meth:`checkpoint`)."""
        await self.checkpoint()

    async def _after_erasure(self) -> None:
        """After an erasure committed (with its durable fts_scrub_owed marker): scrub the lexical
        indexes now (``erasure_scrub_delay`` 0, the default) or within that many seconds."""
        if self._scrub_delay <= 0:
            await self.scrub_erasures()
            return
        await self._checkpoint()  # the erased rows' old page images leave the WAL now; index terms later
        self._scrub_owed_here = True
        if self._scrub_handle is None:
            loop = asyncio.get_running_loop()
            self._scrub_handle = loop.call_later(self._scrub_delay, self._start_timed_scrub)

    def _start_timed_scrub(self) -> None:
        self._scrub_handle = None
        if not self._closed:
            self._scrub_task = asyncio.ensure_future(self._timed_scrub())

    async def _timed_scrub(self) -> None:
        try:
            await self.scrub_erasures()
        except AmberError as exc:  # still owed (durably): close(), the next open or erasure retries it
            import logging

            logging.getLogger("amber.audit").warning(
                "scrubbing erased terms from the lexical index of %s failed (still owed): %s", self.path, exc)

    async def scrub_erasures(self) -> bool:
        """Merge the terms of erased records out of the lexical indexes now, if any erasure left
        that owed (``fts_scrub_owed``, by any process); then checkpoint the WAL. True if a scrub ran.
        Erasures call this themselves (at once, or after ``erasure_scrub_delay``); a bulk job that
        deferred it can call it when done. One scrub covers every erasure committed before it."""
        if self._scrub_handle is not None:
            self._scrub_handle.cancel()
            self._scrub_handle = None
        self._scrub_owed_here = False
        done = await self._write(_scrub_owed)
        await self._checkpoint()
        return bool(done)

    # -- transcripts ------------------------------------------------------------------------------
    _MSG_COLS = ("seq, id, role, content, payload, payload_format, author, idempotency_key, created_at, "
                 "metadata, tokens, content_hash")

    @staticmethod
    def _message(key: SessionKey, row: Sequence[Any]) -> Message:
        return Message(
            key=key, seq=row[0], id=row[1], role=row[2], content=row[3], payload=decode_json(row[4]),
            payload_format=row[5], author=row[6], idempotency_key=row[7], created_at=_dt(row[8]),
            metadata=decode_json(row[9]), tokens=row[10], content_hash=row[11],
        )

    async def append(self, key: SessionKey, messages: Sequence[NewMessage]) -> list[Message]:
        if not isinstance(key, SessionKey):
            raise InvalidInput(f"expected a SessionKey, got {type(key).__name__}")
        if len(messages) > self.limits.max_batch:
            raise InvalidInput(f"at most {self.limits.max_batch} messages per append")
        prepared = [prepare_message(m, self.limits) for m in messages]
        if not prepared:
            return []
        # A key the caller gave may be a retry; one prepare_message generated cannot be, so only the
        # caller's keys need the idempotency lookup.
        given = [m.idempotency_key is not None for m in messages]
        actor = current_actor()  # captured here: the writer thread has no access to the caller's context
        item = (key, prepared, given, actor)
        stored = await self._write(lambda conn: _append_many(conn, [item])[0], _append_many, item)
        # Build the records here, not in the writer thread: the writer is the serial part.
        out: list[Message] = []
        for p, got in zip(prepared, stored):
            if isinstance(got, int) and got < 0:
                out.append(out[-1 - got])
            elif isinstance(got, int):
                out.append(Message(
                    key=key, seq=got, id=p.id, role=p.role, content=p.content, payload=decode_json(p.payload_json),
                    payload_format=p.payload_format, author=p.author, idempotency_key=p.idempotency_key,
                    created_at=p.created_at, metadata=decode_json(p.metadata_json), tokens=p.tokens,
                    content_hash=p.content_hash,
                ))
            else:
                out.append(self._message(key, got))
        return out

    async def read_window(
        self, key: SessionKey, *, last: int | None = None, max_tokens: int | None = None
    ) -> list[Message]:
        validate_limit(last, "last")
        validate_limit(max_tokens, "max_tokens")
        if last == 0:
            return self._read_messages(key, [])
        k = (key.tenant, key.user, key.thread)

        def query(conn: sqlite3.Connection) -> list[Message]:
            # Newest first, stopping as soon as the count or the token budget is reached.
            cur = conn.execute(
                f"SELECT {self._MSG_COLS} FROM messages WHERE tenant_id = ? AND user_id = ? AND thread_id = ?"
                " ORDER BY seq DESC LIMIT ?",
                (*k, -1 if last is None else last),
            )
            rows = []
            total = 0
            for row in cur:
                if max_tokens is not None:
                    total += row[10]
                    if total > max_tokens:
                        break
                rows.append(row)
            cur.close()
            return [self._message(key, r) for r in reversed(rows)]

        return self._read_messages(key, await self._read(query))

    async def read_since(self, key: SessionKey, after_seq: int = 0, *, limit: int | None = None) -> list[Message]:
        validate_limit(after_seq, "after_seq", allow_none=False)
        validate_limit(limit)

        def query(conn: sqlite3.Connection) -> list[Message]:
            rows = conn.execute(
                f"SELECT {self._MSG_COLS} FROM messages WHERE tenant_id = ? AND user_id = ? AND thread_id = ?"
                " AND seq > ? ORDER BY seq LIMIT ?",
                (key.tenant, key.user, key.thread, after_seq, -1 if limit is None else limit),
            ).fetchall()
            return [self._message(key, r) for r in rows]

        return self._read_messages(key, await self._read(query))

    @staticmethod
    def _info(row: Sequence[Any]) -> SessionInfo:
        return SessionInfo(SessionKey(row[0], row[1], row[2]), row[3], row[4], _dt(row[5]), _dt(row[6]))

    _SESSION_COLS = "tenant_id, user_id, thread_id, message_count, last_seq, created_at, updated_at"

    async def get_session(self, key: SessionKey) -> SessionInfo | None:
        def query(conn: sqlite3.Connection) -> SessionInfo | None:
            row = conn.execute(
                f"SELECT {self._SESSION_COLS} FROM sessions WHERE tenant_id = ? AND user_id = ? AND thread_id = ?",
                (key.tenant, key.user, key.thread),
            ).fetchone()
            return None if row is None else self._info(row)

        return await self._read(query)

    async def list_sessions(
        self, tenant: str, user: str | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[SessionInfo]:
        validate_part("tenant", tenant)
        if user is not None:
            validate_part("user", user)
        validate_limit(limit, allow_none=False)
        validate_limit(offset, "offset", allow_none=False)
        where, params = ("tenant_id = ?", [tenant]) if user is None else ("tenant_id = ? AND user_id = ?", [tenant, user])

        def query(conn: sqlite3.Connection) -> list[SessionInfo]:
            rows = conn.execute(
                f"SELECT {self._SESSION_COLS} FROM sessions WHERE {where}"
                " ORDER BY updated_at DESC, tenant_id || '/' || user_id || '/' || thread_id DESC LIMIT ? OFFSET ?",
                (*params, limit, offset),
            ).fetchall()
            return [self._info(r) for r in rows]

        return await self._read(query)

    async def list_users(self, tenant: str, *, limit: int = 100, offset: int = 0) -> list[str]:
        validate_part("tenant", tenant)
        validate_limit(limit, allow_none=False)
        validate_limit(offset, "offset", allow_none=False)

        def query(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT user_id FROM sessions WHERE tenant_id = ? UNION SELECT user_id FROM facts WHERE tenant_id = ?"
                " ORDER BY 1 LIMIT ? OFFSET ?",
                (tenant, tenant, limit, offset),
            ).fetchall()
            return [r[0] for r in rows]

        return await self._read(query)

    # -- restore ----------------------------------------------------------------------------------
    async def restore_session(
        self, key: SessionKey, messages: Sequence[Message], states: Sequence[StateBlob] = (), *,
        created_at: datetime | None = None, updated_at: datetime | None = None, last_seq: int | None = None,
    ) -> SessionInfo | None:
        r = prepare_restore(key, messages, states, created_at=created_at, updated_at=updated_at,
                            last_seq=last_seq, limits=self.limits)
        actor = current_actor()
        k = (key.tenant, key.user, key.thread)
        where = "tenant_id = ? AND user_id = ? AND thread_id = ?"

        def op(conn: sqlite3.Connection) -> SessionInfo | None:
            # Checked inside the write transaction: no append or put_state can slip in between.
            if conn.execute(f"SELECT 1 FROM sessions WHERE {where}", k).fetchone():
                raise restore_conflict(f"session {key} already holds messages")
            if conn.execute(f"SELECT 1 FROM states WHERE {where} LIMIT 1", k).fetchone():
                raise restore_conflict(f"session {key} already holds state")
            for chunk in _chunks([p.id for _, p in r.messages], 500):
                # message ids are unique across the whole file in this backend
                row = conn.execute(f"SELECT id FROM messages WHERE id IN ({','.join('?' * len(chunk))}) LIMIT 1",
                                   chunk).fetchone()
                if row:
                    raise restore_conflict(f"message id {row[0]!r} is taken")
            now = _now_us()
            info = None
            if r.last_seq:
                conn.execute(
                    "INSERT INTO sessions (tenant_id, user_id, thread_id, created_at, updated_at, last_seq, message_count)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (*k, _us(r.created_at), _us(r.updated_at), r.last_seq, len(r.messages)))
                conn.executemany(_APPEND_MESSAGE, [
                    (*k, seq, p.id, p.role, p.content, p.payload_json, p.payload_format, p.author, p.idempotency_key,
                     _us(p.created_at), p.metadata_json, p.tokens, p.content_hash) for seq, p in r.messages])
                conn.executemany(_APPEND_JOB, [(new_id("job"), *k, p.id, seq, now) for seq, p in r.messages])
                info = SessionInfo(key, len(r.messages), r.last_seq, _dt(_us(r.created_at)), _dt(_us(r.updated_at)))
            conn.executemany(
                "INSERT INTO states (tenant_id, user_id, thread_id, name, version, data, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)", [(*k, n, v, text, _us(at)) for n, v, text, at in r.states])
            ids, digests = r.audit()
            with_actor(conn, key.tenant, "session.restore", actor, user=key.user, thread=key.thread,
                       record_ids=ids, digests=digests)
            return info

        return await self._write(op)

    async def restore_facts(self, tenant: str, user: str, facts: Sequence[Fact]) -> None:
        restored = prepare_restored_facts(tenant, user, facts, self.limits)
        rows = [(tenant, user, f.id, f.attribute, f.value, f.text, f.kind,
                 encode_json(list(f.source_message_ids), "source_message_ids"), f.thread, f.confidence,
                 _us(f.valid_from), None if f.valid_to is None else _us(f.valid_to), f.superseded_by,
                 _us(f.created_at), encode_json(dict(f.metadata), "metadata")) for f in restored]
        actor = current_actor()

        def op(conn: sqlite3.Connection) -> None:
            for chunk in _chunks([r[2] for r in rows], 500):
                # fact ids are unique across the whole file in this backend
                row = conn.execute(f"SELECT id FROM facts WHERE id IN ({','.join('?' * len(chunk))}) LIMIT 1",
                                   chunk).fetchone()
                if row:
                    raise restore_conflict(f"fact id {row[0]!r} is taken")
            conn.executemany(
                "INSERT INTO facts (tenant_id, user_id, id, attribute, value, text, kind, source_ids, thread_id,"
                " confidence, valid_from, valid_to, superseded_by, created_at, metadata)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            with_actor(conn, tenant, "fact.restore", actor, user=user, record_ids=[f.id for f in restored],
                       digests=[digest(f.text) for f in restored])

        await self._write(op)

    # -- state ------------------------------------------------------------------------------------
    async def get_state(self, key: SessionKey, name: str) -> StateBlob | None:
        validate_state_name(name)

        def query_raw(conn: sqlite3.Connection) -> Any:
            return conn.execute(
                "SELECT version, data, updated_at FROM states"
                " WHERE tenant_id = ? AND user_id = ? AND thread_id = ? AND name = ?",
                (key.tenant, key.user, key.thread, name),
            ).fetchone()

        row = await self._read(query_raw)
        self.audit_read(key.tenant, "state.read", user=key.user, thread=key.thread,
                        record_ids=[] if row is None else [f"{name}@{row[0]}"],
                        digests=[] if row is None else [digest(row[1])])
        return None if row is None else StateBlob(key, name, row[0], decode_json(row[1]), _dt(row[2]))

    async def list_states(self, key: SessionKey) -> list[str]:
        def query(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT name FROM states WHERE tenant_id = ? AND user_id = ? AND thread_id = ? ORDER BY name",
                (key.tenant, key.user, key.thread),
            ).fetchall()
            return [r[0] for r in rows]

        return await self._read(query)

    async def put_state(
        self, key: SessionKey, name: str, data: Mapping[str, Any], *, expected_version: int | None = None
    ) -> StateBlob:
        validate_state_name(name)
        validate_limit(expected_version, "expected_version")
        if not isinstance(data, Mapping):
            raise InvalidInput("state data must be a mapping")
        text = encode_json(dict(data), "state")
        if len(text.encode()) > self.limits.max_state_bytes:
            raise MessageTooLarge(f"state is larger than {self.limits.max_state_bytes} bytes")
        actor = current_actor()
        k = (key.tenant, key.user, key.thread, name)

        def op(conn: sqlite3.Connection) -> StateBlob:
            row = conn.execute(
                "SELECT version FROM states WHERE tenant_id = ? AND user_id = ? AND thread_id = ? AND name = ?", k
            ).fetchone()
            actual = row[0] if row else 0
            if expected_version is not None and expected_version != actual:
                raise VersionConflict(
                    f"state {name!r} of {key} is at version {actual}, not {expected_version}",
                    expected=expected_version, actual=actual,
                )
            now = _now_us()
            conn.execute(
                "INSERT INTO states (tenant_id, user_id, thread_id, name, version, data, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant_id, user_id, thread_id, name)"
                " DO UPDATE SET version = excluded.version, data = excluded.data, updated_at = excluded.updated_at",
                (*k, actual + 1, text, now),
            )
            with_actor(conn, key.tenant, "state.put", actor, user=key.user, thread=key.thread,
                       record_ids=[f"{name}@{actual + 1}"], digests=[digest(text)])
            return StateBlob(key, name, actual + 1, decode_json(text), _dt(now))

        return await self._write(op)

    # -- deletion ---------------------------------------------------------------------------------
    async def delete_session(self, key: SessionKey) -> DeletionReceipt:
        actor = current_actor()
        k = (key.tenant, key.user, key.thread)
        where = "tenant_id = ? AND user_id = ? AND thread_id = ?"

        def op(conn: sqlite3.Connection) -> DeletionReceipt:
            ids = sorted(r[0] for r in conn.execute(f"SELECT id FROM messages WHERE {where}", k))
            vec = conn.execute(
                "DELETE FROM vectors WHERE tenant_id = ? AND user_id = ? AND kind = 'message' AND item_id IN"
                f" (SELECT id FROM messages WHERE {where})",
                (key.tenant, key.user, *k),
            ).rowcount
            if vec:
                _bump_vectors(conn, key.tenant, key.user)
            msgs = conn.execute(f"DELETE FROM messages WHERE {where}", k).rowcount
            states = [f"state:{key.thread}/{n}@{v}" for n, v in conn.execute(
                f"DELETE FROM states WHERE {where} RETURNING name, version", k).fetchall()]
            states.sort()
            jobs = conn.execute(f"DELETE FROM learn_jobs WHERE {where}", k).rowcount
            conn.execute(f"DELETE FROM sessions WHERE {where}", k)
            if msgs:
                _owe_scrub(conn, messages=True, facts=False)
            _receipt(conn, key.tenant, "session.delete", actor, key.user, key.thread, ids + states)
            counts = {"messages": msgs, "states": len(states), "jobs": jobs, "vectors": vec}
            return DeletionReceipt("session.delete", key.tenant, key.user, key.thread, counts, utcnow())

        receipt = await self._write(op)
        await self._after_erasure()
        return receipt

    async def delete_message(self, key: SessionKey, message_id: str) -> bool:
        if not isinstance(key, SessionKey):
            raise InvalidInput(f"expected a SessionKey, got {type(key).__name__}")
        if not isinstance(message_id, str):
            return False
        actor = current_actor()
        k = (key.tenant, key.user, key.thread)
        where = "tenant_id = ? AND user_id = ? AND thread_id = ?"

        def op(conn: sqlite3.Connection) -> bool:
            row = conn.execute(f"SELECT rid, content_hash FROM messages WHERE id = ? AND {where}",
                               (message_id, *k)).fetchone()
            if row is None:
                return False
            conn.execute("DELETE FROM messages WHERE rid = ?", (row[0],))  # the trigger drops its FTS entry
            conn.execute(f"UPDATE sessions SET message_count = message_count - 1 WHERE {where}", k)
            conn.execute(f"DELETE FROM learn_jobs WHERE {where} AND message_id = ?", (*k, message_id))
            vec = conn.execute(
                "DELETE FROM vectors WHERE tenant_id = ? AND user_id = ? AND kind = 'message' AND item_id = ?",
                (key.tenant, key.user, message_id)).rowcount
            with_actor(conn, key.tenant, "message.delete", actor, user=key.user, thread=key.thread,
                       record_ids=[message_id], digests=[row[1]])
            facts, fact_vec = _drop_orphaned_facts(conn, key, message_id, actor)
            if vec or fact_vec:
                _bump_vectors(conn, key.tenant, key.user)
            _owe_scrub(conn, messages=True, facts=bool(facts))
            return True

        done = await self._write(op)
        if done:
            await self._after_erasure()
        return done

    async def correct_message(
        self, key: SessionKey, message_id: str, content: str, *, reason: str | None = None
    ) -> Message:
        if not isinstance(key, SessionKey):
            raise InvalidInput(f"expected a SessionKey, got {type(key).__name__}")
        c = prepare_correction(message_id, content, reason, self.limits)
        actor = current_actor()
        limits = self.limits
        k = (key.tenant, key.user, key.thread)
        where = "tenant_id = ? AND user_id = ? AND thread_id = ?"

        def op(conn: sqlite3.Connection) -> Message:
            row = conn.execute(f"SELECT rid, {self._MSG_COLS} FROM messages WHERE id = ? AND {where}",
                               (message_id, *k)).fetchone()
            if row is None:
                raise NotFound(f"session {key} holds no message {message_id!r}")
            rid, old = row[0], self._message(key, row[1:])
            meta = c.metadata(old.metadata, limits)
            new_hash = c.content_hash(old.role)
            # the update trigger replaces its FTS entry
            conn.execute("UPDATE messages SET content = ?, payload = NULL, payload_format = 'text/1', metadata = ?,"
                         " tokens = ?, content_hash = ? WHERE rid = ?", (c.content, meta, c.tokens, new_hash, rid))
            conn.execute(f"DELETE FROM learn_jobs WHERE {where} AND message_id = ?", (*k, message_id))
            conn.execute(_APPEND_JOB, (new_id("job"), *k, message_id, old.seq, _now_us()))  # learn the new text
            vec = conn.execute(
                "DELETE FROM vectors WHERE tenant_id = ? AND user_id = ? AND kind = 'message' AND item_id = ?",
                (key.tenant, key.user, message_id)).rowcount
            with_actor(conn, key.tenant, "message.correct", actor, user=key.user, thread=key.thread,
                       record_ids=[message_id], digests=[old.content_hash, new_hash])
            facts, fact_vec = _drop_orphaned_facts(conn, key, message_id, actor)
            if vec or fact_vec:
                _bump_vectors(conn, key.tenant, key.user)
            _owe_scrub(conn, messages=True, facts=bool(facts))  # the old text leaves the index
            return replace(old, content=c.content, payload=None, payload_format="text/1",
                           metadata=decode_json(meta), tokens=c.tokens, content_hash=new_hash)

        msg = await self._write(op)
        await self._after_erasure()
        return msg

    async def delete_user(self, tenant: str, user: str) -> DeletionReceipt:
        validate_part("tenant", tenant)
        validate_part("user", user)
        actor = current_actor()
        k = (tenant, user)
        where = "tenant_id = ? AND user_id = ?"

        def op(conn: sqlite3.Connection) -> DeletionReceipt:
            sessions = conn.execute(f"DELETE FROM sessions WHERE {where}", k).rowcount
            msg_ids = sorted(r[0] for r in conn.execute(f"DELETE FROM messages WHERE {where} RETURNING id", k))
            states = sorted(f"state:{t}/{n}@{v}" for t, n, v in conn.execute(
                f"DELETE FROM states WHERE {where} RETURNING thread_id, name, version", k).fetchall())
            fact_ids = sorted(r[0] for r in conn.execute(f"DELETE FROM facts WHERE {where} RETURNING id", k))
            jobs = conn.execute(f"DELETE FROM learn_jobs WHERE {where}", k).rowcount
            vec = conn.execute(f"DELETE FROM vectors WHERE {where}", k).rowcount
            _bump_vectors(conn, tenant, user)
            _owe_scrub(conn, messages=bool(msg_ids), facts=bool(fact_ids))
            _receipt(conn, tenant, "user.delete", actor, user, None, msg_ids + fact_ids + states)
            counts = {"sessions": sessions, "messages": len(msg_ids), "states": len(states),
                      "facts": len(fact_ids), "jobs": jobs, "vectors": vec}
            return DeletionReceipt("user.delete", tenant, user, None, counts, utcnow())

        receipt = await self._write(op)
        await self._after_erasure()
        return receipt

    async def prune(self, tenant: str, *, before: Mapping[str, datetime]) -> DeletionReceipt:
        from ..governance.retention import check_cutoffs

        validate_part("tenant", tenant)
        cut = {kind: _us(at) for kind, at in check_cutoffs(before).items()}
        actor = current_actor()

        def op(conn: sqlite3.Connection) -> DeletionReceipt:
            counts = {"messages": 0, "facts": 0, "states": 0, "jobs": 0, "vectors": 0}
            by_user: dict[str, list[str]] = {}
            touched: set[str] = set()
            if "messages" in cut:
                gone = conn.execute(
                    "DELETE FROM messages WHERE tenant_id = ? AND created_at < ? RETURNING user_id, id",
                    (tenant, cut["messages"])).fetchall()
                for u, i in sorted(gone):
                    by_user.setdefault(u, []).append(i)
                for chunk in _chunks([i for _, i in gone], 500):
                    marks = ",".join("?" * len(chunk))
                    counts["jobs"] += conn.execute(
                        f"DELETE FROM learn_jobs WHERE tenant_id = ? AND message_id IN ({marks})", (tenant, *chunk)
                    ).rowcount
                    n = conn.execute(f"DELETE FROM vectors WHERE tenant_id = ? AND kind = 'message' AND item_id IN"
                                     f" ({marks}) RETURNING user_id", (tenant, *chunk)).fetchall()
                    counts["vectors"] += len(n)
                    touched.update(u for (u,) in n)
                counts["messages"] = len(gone)
            if "facts" in cut:
                gone = conn.execute(
                    "DELETE FROM facts WHERE tenant_id = ? AND created_at < ? RETURNING user_id, id",
                    (tenant, cut["facts"])).fetchall()
                for u, i in sorted(gone):
                    by_user.setdefault(u, []).append(i)
                for chunk in _chunks([i for _, i in gone], 500):
                    marks = ",".join("?" * len(chunk))
                    n = conn.execute(f"DELETE FROM vectors WHERE tenant_id = ? AND kind = 'fact' AND item_id IN"
                                     f" ({marks}) RETURNING user_id", (tenant, *chunk)).fetchall()
                    counts["vectors"] += len(n)
                    touched.update(u for (u,) in n)
                counts["facts"] = len(gone)
            if "states" in cut:
                gone = conn.execute(
                    "DELETE FROM states WHERE tenant_id = ? AND updated_at < ?"
                    " RETURNING user_id, thread_id, name, version", (tenant, cut["states"])).fetchall()
                for u, t, n, v in sorted(gone):
                    by_user.setdefault(u, []).append(f"state:{t}/{n}@{v}")
                counts["states"] = len(gone)
            for u in sorted(touched):
                _bump_vectors(conn, tenant, u)
            # sessions keep their last_seq (sequence numbers never restart); message_count follows
            if counts["messages"]:
                conn.execute(
                    "UPDATE sessions SET message_count = (SELECT count(*) FROM messages m WHERE m.tenant_id ="
                    " sessions.tenant_id AND m.user_id = sessions.user_id AND m.thread_id = sessions.thread_id)"
                    " WHERE tenant_id = ?", (tenant,))
            _owe_scrub(conn, messages=bool(counts["messages"]), facts=bool(counts["facts"]))
            for u in sorted(by_user):
                _receipt(conn, tenant, "retention.prune", actor, u, None, by_user[u])
            return DeletionReceipt("retention.prune", tenant, "*", None, counts, utcnow())

        receipt = await self._write(op)
        if any(receipt.counts[k] for k in ("messages", "facts", "states")):
            await self._after_erasure()
        return receipt

    # -- facts ------------------------------------------------------------------------------------
    _FACT_COLS = ("id, tenant_id, user_id, attribute, value, text, kind, source_ids, thread_id, confidence, "
                  "valid_from, valid_to, superseded_by, created_at, metadata")

    @staticmethod
    def _fact(row: Sequence[Any]) -> Fact:
        return Fact(
            id=row[0], tenant=row[1], user=row[2], attribute=row[3], value=row[4], text=row[5], kind=row[6],
            source_message_ids=tuple(json.loads(row[7])), thread=row[8], confidence=row[9],
            valid_from=_dt(row[10]), valid_to=None if row[11] is None else _dt(row[11]), superseded_by=row[12],
            created_at=_dt(row[13]), metadata=decode_json(row[14]),
        )

    async def record_fact(
        self, tenant: str, user: str, fact: NewFact, *, supersedes: Sequence[str] = (),
        expect_current: Sequence[str] | None = None, superseded_by: str | None = None,
    ) -> Fact:
        validate_part("tenant", tenant)
        validate_part("user", user)
        prepare_fact(fact, self.limits)
        if isinstance(supersedes, str):
            raise InvalidInput("supersedes must be a sequence of fact ids, not a string")
        expected = validate_expect_current(expect_current)
        validate_history_write(fact, supersedes, superseded_by)
        metadata = encode_json(dict(fact.metadata), "metadata")
        sources = encode_json(list(fact.source_message_ids), "source_message_ids")
        actor = current_actor()
        fact_id = new_id("fact")

        def op(conn: sqlite3.Connection) -> Fact:
            now = _now_us()
            valid_from = now if fact.valid_from is None else _us(fact.valid_from)
            old: list[tuple[str, int]] = []
            inherited: set[str] = set()
            for fid in supersedes:
                row = conn.execute(
                    "SELECT valid_to, valid_from, source_ids FROM facts WHERE id = ? AND tenant_id = ? AND user_id = ?",
                    (fid, tenant, user),
                ).fetchone()
                if row is None:
                    raise InvalidInput(f"cannot supersede unknown fact {fid!r}")
                if row[0] is not None:
                    raise VersionConflict(f"fact {fid} is already superseded", expected=None, actual=None)
                old.append((fid, row[1]))
                inherited.update(json.loads(row[2]))
            if expected is not None:
                # Inside the write transaction (BEGIN IMMEDIATE: one writer across processes), so
                # no other write can add or close a fact of the attribute between check and insert.
                check_current_facts(expected, (r[0] for r in conn.execute(
                    "SELECT id FROM facts WHERE tenant_id = ? AND user_id = ? AND attribute = ? AND valid_to IS NULL",
                    (tenant, user, fact.attribute))))
            valid_to = None
            if superseded_by is not None:
                row = conn.execute("SELECT attribute, valid_from FROM facts WHERE id = ? AND tenant_id = ? AND user_id = ?",
                                   (superseded_by, tenant, user)).fetchone()
                valid_to = check_superseding_fact(superseded_by, None if row is None else (row[0], row[1]),
                                                  fact.attribute, valid_from)
            fresh = sorted({str(x) for x in fact.source_message_ids} - inherited)
            if fresh and not _any_live(conn, tenant, user, fresh) and _all_erased(conn, tenant, user, fresh):
                # A fact learned only from erased messages must not come back (a late learning job).
                raise NotFound(f"the source messages of this fact were erased ({', '.join(fresh[:3])})")
            for fid, old_from in old:
                conn.execute(
                    "UPDATE facts SET valid_to = ?, superseded_by = ? WHERE id = ?",
                    (max(valid_from, old_from), fact_id, fid),
                )
            conn.execute(
                "INSERT INTO facts (tenant_id, user_id, id, attribute, value, text, kind, source_ids, thread_id,"
                " confidence, valid_from, valid_to, superseded_by, created_at, metadata)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (tenant, user, fact_id, fact.attribute, fact.value, fact.text, fact.kind, sources, fact.thread,
                 float(fact.confidence), valid_from, valid_to, superseded_by, now, metadata),
            )
            with_actor(conn, tenant, "fact.record", actor, user=user, thread=fact.thread,
                       record_ids=[fact_id, *[f for f, _ in old]], digests=[digest(fact.text)])
            row = conn.execute(f"SELECT {self._FACT_COLS} FROM facts WHERE id = ?", (fact_id,)).fetchone()
            return self._fact(row)

        return await self._write(op)

    async def list_facts(
        self, tenant: str, user: str, *, attribute: str | None = None, include_superseded: bool = False,
        limit: int | None = None,
    ) -> list[Fact]:
        validate_part("tenant", tenant)
        validate_part("user", user)
        validate_limit(limit)
        where = "tenant_id = ? AND user_id = ?"
        params: list[Any] = [tenant, user]
        if attribute is not None:
            where += " AND attribute = ?"
            params.append(attribute)
        if not include_superseded:
            where += " AND valid_to IS NULL"

        def query(conn: sqlite3.Connection) -> list[Fact]:
            rows = conn.execute(
                f"SELECT {self._FACT_COLS} FROM facts WHERE {where} ORDER BY created_at DESC, id DESC LIMIT ?",
                (*params, -1 if limit is None else limit),
            ).fetchall()
            return [self._fact(r) for r in rows]

        return self._read_facts(tenant, user, await self._read(query))

    async def get_fact(self, tenant: str, user: str, fact_id: str) -> Fact | None:
        def query(conn: sqlite3.Connection) -> Fact | None:
            row = conn.execute(
                f"SELECT {self._FACT_COLS} FROM facts WHERE id = ? AND tenant_id = ? AND user_id = ?",
                (fact_id, tenant, user),
            ).fetchone()
            return None if row is None else self._fact(row)

        found = await self._read(query)
        self._read_facts(tenant, user, [found] if found else [])
        return found

    async def superseded_sources(
        self, tenant: str, user: str, fact_ids: Sequence[str], *, history: int = SUPERSEDED_HISTORY
    ) -> set[str]:
        ids = superseded_query_ids(tenant, user, fact_ids, history)
        if not ids:
            return set()

        def query(conn: sqlite3.Connection) -> set[str]:
            attributes: set[str] = set()
            for chunk in _chunks(ids, 500):
                attributes.update(a for (a,) in conn.execute(
                    f"SELECT attribute FROM facts WHERE id IN ({','.join('?' * len(chunk))})"
                    " AND +tenant_id = ? AND +user_id = ?", (*chunk, tenant, user)))
            rows: list[tuple[str, str, list[str], bool]] = []
            for attribute in sorted(attributes):
                # Only an attribute with a superseded fact can make a turn stale: one index probe
                # skips the history of every attribute that never changed (the common case).
                if conn.execute("SELECT 1 FROM facts WHERE tenant_id = ? AND user_id = ? AND attribute = ?"
                                " AND valid_to IS NOT NULL LIMIT 1", (tenant, user, attribute)).fetchone() is None:
                    continue
                rows.extend((attribute, value, json.loads(sources), valid_to is None) for value, sources, valid_to in
                            conn.execute("SELECT value, source_ids, valid_to FROM facts WHERE tenant_id = ?"
                                         " AND user_id = ? AND attribute = ? ORDER BY created_at DESC, id DESC LIMIT ?",
                                         (tenant, user, attribute, history)))
            return stale_sources(rows)

        return await self._read(query)

    async def delete_fact(self, tenant: str, user: str, fact_id: str) -> bool:
        actor = current_actor()

        def op(conn: sqlite3.Connection) -> bool:
            gone = conn.execute(
                "DELETE FROM facts WHERE id = ? AND tenant_id = ? AND user_id = ?", (fact_id, tenant, user)
            ).rowcount
            if not gone:
                return False
            if conn.execute(
                "DELETE FROM vectors WHERE tenant_id = ? AND user_id = ? AND kind = 'fact' AND item_id = ?",
                (tenant, user, fact_id),
            ).rowcount:
                _bump_vectors(conn, tenant, user)
            with_actor(conn, tenant, "fact.delete", actor, user=user, record_ids=[fact_id])
            return True

        return await self._write(op)

    # -- search -----------------------------------------------------------------------------------
    def _message_hits(self, conn: sqlite3.Connection, tenant: str, user: str, ids: Sequence[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for chunk in _chunks(list(ids), 500):
            marks = ",".join("?" * len(chunk))
            for row in conn.execute(
                f"SELECT id, content, thread_id, seq, created_at, role, author FROM messages"
                f" WHERE id IN ({marks}) AND +tenant_id = ? AND +user_id = ?",  # '+': look up by id, not by user
                (*chunk, tenant, user),
            ):
                out[row[0]] = row
        return out

    def _fact_hits(self, conn: sqlite3.Connection, tenant: str, user: str, ids: Sequence[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for chunk in _chunks(list(ids), 500):
            marks = ",".join("?" * len(chunk))
            for row in conn.execute(
                f"SELECT id, text, thread_id, created_at, source_ids, valid_from, valid_to FROM facts"
                f" WHERE id IN ({marks}) AND +tenant_id = ? AND +user_id = ? AND valid_to IS NULL",
                (*chunk, tenant, user),
            ):
                out[row[0]] = row
        return out

    @staticmethod
    def _rows_by_rid(
        conn: sqlite3.Connection, select: str, ranked: Mapping[int, float], tenant: str, user: str, extra: str = ""
    ) -> list[Any]:
        """The rows of FTS candidates, checked again for tenant and user (defence in depth)."""
        rids = list(ranked)
        out: list[Any] = []
        for chunk in _chunks(rids, 500):
            marks = ",".join("?" * len(chunk))
            out.extend(conn.execute(
                f"{select} WHERE rid IN ({marks}) AND +tenant_id = ? AND +user_id = ?{extra}", (*chunk, tenant, user)
            ).fetchall())
        return out

    @staticmethod
    def _hit(kind: str, row: Sequence[Any], score: float, path: str, tenant: str, user: str) -> Hit:
        # Message rows: id, content, thread_id, seq, created_at, role, author[, rid].
        if kind == "message":
            return Hit("message", row[0], score, row[1], tenant, user, row[2], row[3], _dt(row[4]),
                       (row[0],), None, None, {path: score}, row[5], row[6])
        return Hit("fact", row[0], score, row[1], tenant, user, row[2], None, _dt(row[3]),
                   tuple(json.loads(row[4])), _dt(row[5]), None if row[6] is None else _dt(row[6]), {path: score})

    async def search_text(
        self, tenant: str, user: str, query: str, *, limit: int = 20, kinds: Sequence[str] = ("message", "fact")
    ) -> list[Hit]:
        validate_part("tenant", tenant)
        validate_part("user", user)
        validate_limit(limit, allow_none=False)
        if not isinstance(query, str):
            raise InvalidInput("query must be a string")
        match = _fts_query(query)
        if match is None or limit == 0:
            return self._read_hits(tenant, user, "search.text", [])

        scope = f'scope : "{_scope_token(tenant, user)}"'
        terms = set(lexical_terms(query))

        def run(conn: sqlite3.Connection) -> list[Hit]:
            # rank is bm25() over the text column (see the schema): <= 0, more negative is better;
            # r / (1 + r) with r = -rank maps it into [0, 1) monotonically. Hits are built for the
            # best ``limit`` rows only (the candidate lists are 2-3 times longer).
            scored: list[tuple[float, int, int, Any]] = []
            mostly_mine = _user_holds_most_messages(conn, tenant, user)
            if "message" in kinds:
                select = "SELECT id, content, thread_id, seq, created_at, role, author, rid FROM messages"
                scoped = True
                if mostly_mine:
                    # Unscoped, then filtered: rank more than asked, as some may be other users'.
                    ranked = _fts_candidates(conn, "messages_fts", "content", None, match, limit * 2)
                    rows = self._rows_by_rid(conn, select, ranked, tenant, user)
                    # Scoped after all only if others' rows crowded ours out of a full candidate list.
                    scoped = len(rows) < limit and len(ranked) == limit * 2
                if scoped:
                    ranked = _fts_candidates(conn, "messages_fts", "content", scope, match, limit)
                    rows = self._rows_by_rid(conn, select, ranked, tenant, user)
                for row in rows:
                    scored.append((-_lexical_score(ranked[row[7]], terms, row[1]), 0, row[7], row))
            if "fact" in kinds:
                # Superseded facts stay in the index (they are history): rank more than asked for.
                # Unscoped first when the user holds most of the file (the scope filter would cost
                # more than it saves, as for messages above), scoped if others crowded ours out.
                select = "SELECT id, text, thread_id, created_at, source_ids, valid_from, valid_to, rid FROM facts"
                scoped = True
                if mostly_mine:
                    ranked = _fts_candidates(conn, "facts_fts", "text", None, match, limit * 3)
                    rows = self._rows_by_rid(conn, select, ranked, tenant, user, " AND valid_to IS NULL")
                    scoped = len(rows) < limit and len(ranked) == limit * 3
                if scoped:
                    ranked = _fts_candidates(conn, "facts_fts", "text", scope, match, limit * 3)
                    rows = self._rows_by_rid(conn, select, ranked, tenant, user, " AND valid_to IS NULL")
                for row in rows:
                    scored.append((-_lexical_score(ranked[row[7]], terms, row[1]), 1, row[7], row))
            scored.sort(key=lambda t: t[:3])
            return [self._hit("fact" if k else "message", row, -s, "lexical", tenant, user)
                    for s, k, _, row in scored[:limit]]

        return self._read_hits(tenant, user, "search.text", await self._read(run))

    async def put_vectors(self, tenant: str, user: str, model: str, items: Sequence[VectorItem]) -> None:
        validate_part("tenant", tenant)
        validate_part("user", user)
        if not isinstance(model, str) or not model or len(model) > 256:
            raise InvalidInput("model must be a non-empty string of at most 256 characters")
        np = _numpy()
        rows = []
        dim = None
        for it in items:
            if it.kind not in ("message", "fact"):
                raise InvalidInput(f"vector kind must be 'message' or 'fact', got {it.kind!r}")
            vec = np.asarray(it.vector, dtype=np.float32)
            if vec.ndim != 1 or vec.size == 0 or not np.isfinite(vec).all():
                raise InvalidInput(f"vector for {it.id!r} must be a non-empty list of finite numbers")
            if dim is not None and vec.size != dim:
                raise InvalidInput(f"vectors of one call must share a dimension ({dim} != {vec.size})")
            dim = vec.size
            rows.append((tenant, user, model, it.kind, it.id, dim, vec.astype("<f4").tobytes()))
        if not rows:
            return
        actor = current_actor()

        def op(conn: sqlite3.Connection) -> None:
            nonlocal rows
            # Only for records that exist: a late learner must not leave vectors of erased records.
            live: set[tuple[str, str]] = set()
            for kind, table in (("message", "messages"), ("fact", "facts")):
                wanted = [r[4] for r in rows if r[3] == kind]
                for chunk in _chunks(wanted, 500):
                    marks = ",".join("?" * len(chunk))
                    live.update((kind, i) for (i,) in conn.execute(
                        f"SELECT id FROM {table} WHERE id IN ({marks}) AND +tenant_id = ? AND +user_id = ?",
                        (*chunk, tenant, user)))
            rows = [r for r in rows if (r[3], r[4]) in live]
            if not rows:
                return
            row = conn.execute(
                "SELECT dim FROM vectors WHERE tenant_id = ? AND user_id = ? AND model = ? LIMIT 1",
                (tenant, user, model),
            ).fetchone()
            if row is not None and row[0] != dim:
                raise InvalidInput(f"model {model!r} stores {row[0]}-dimensional vectors, got {dim}")
            before = conn.total_changes
            conn.executemany(
                "INSERT INTO vectors (tenant_id, user_id, model, kind, item_id, dim, vec) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (tenant_id, user_id, model, kind, item_id) DO NOTHING",
                rows,
            )
            replaced = len(rows) - (conn.total_changes - before)
            if replaced:  # re-embedded items: a new rowid each, so caches see the change by rowid
                conn.executemany(
                    "UPDATE vectors SET rowid = (SELECT max(rowid) FROM vectors) + 1, dim = ?, vec = ?"
                    " WHERE tenant_id = ? AND user_id = ? AND model = ? AND kind = ? AND item_id = ? AND vec != ?",
                    [(r[5], r[6], *r[:5], r[6]) for r in rows],
                )
            _bump_vectors(conn, tenant, user, rewrite=bool(replaced))
            stored = sorted({(r[3], r[4]): r for r in rows}.items())
            with_actor(conn, tenant, "vector.put", actor, user=user, record_ids=[f"{k}:{i}" for (k, i), _ in stored],
                       digests=[vector_digest(model, r[6]) for _, r in stored])

        await self._write(op)

    def _vector_index(self, conn: sqlite3.Connection, tenant: str, user: str, model: str) -> VectorIndex | None:
        """The user's vectors for ``model`` as a cached :class:`VectorIndex` (None: no vectors).

        Kept in step without reloading: the stamp's ``version`` moves on every change, ``rewrites``
        only when vectors were replaced or deleted. If only ``version`` moved, the rows past the
        index's high-water rowid (appended since, by any process) are read and added. If
        ``rewrites`` moved, the user's (rowid, kind, item) triples (a covering index scan, no vector
        bytes) are compared with the index: vanished rows are removed from it (erasure reaches the
        index), new ones read and added. A re-embedded vector gets a new rowid (``put_vectors``).
        """
        row = conn.execute(
            "SELECT version, rewrites FROM vector_stamps WHERE tenant_id = ? AND user_id = ?", (tenant, user)
        ).fetchone()
        version, rewrites = (0, 0) if row is None else row
        ck = (tenant, user, model)
        # One lock: the refresh reads only what changed, and searches run outside it.
        with self._vector_cache_lock:
            index = self._vector_cache.get(ck)
            if index is not None and index.version >= version and index.rewrites >= rewrites:
                self._vector_cache.move_to_end(ck)  # current, or newer than this reader's snapshot
                return index
            before = index.nbytes if index is not None else 0
            if index is not None and index.rewrites == rewrites:
                _index_rows(index, conn.execute(_VECTORS_AFTER, (*ck, index.high_water)).fetchall())
            elif index is not None:
                current = {r: (k, i) for r, k, i in conn.execute(_VECTOR_KEYS, ck)}
                have = index.live_rows()
                index.remove([r for r, ki in have.items() if current.get(r) != ki])
                new = sorted(r for r, ki in current.items() if have.get(r) != ki)
                rows = [r for chunk in _chunks(new, 500) for r in conn.execute(
                    _VECTORS_BY_ROWID.format(marks=",".join("?" * len(chunk))), (*ck, *chunk)).fetchall()]
                if any(r[3] != index.dim for r in rows):  # the model's vectors changed dimension
                    index.close()
                    index = None
                else:
                    _index_rows(index, rows)
                    index.high_water = max(current, default=0)
            if index is None:
                rows = conn.execute(_VECTORS_AFTER, (*ck, 0)).fetchall()
                if not rows:
                    self._drop_vector_index(ck)
                    return None
                index = VectorIndex(rows[0][3], ann_threshold=self._vector_ann_threshold)
                _index_rows(index, rows)
            index.version, index.rewrites = version, rewrites
            if ck not in self._vector_cache:
                before = 0
            self._vector_cache[ck] = index
            self._vector_cache.move_to_end(ck)
            self._vector_cache_bytes += index.nbytes - before
            while self._vector_cache_bytes > self._vector_cache_limit and len(self._vector_cache) > 1:
                old_key = next(iter(self._vector_cache))  # the least recently searched user
                self._drop_vector_index(old_key)
            return index

    def _drop_vector_index(self, ck: tuple[str, str, str]) -> None:
        dropped = self._vector_cache.pop(ck, None)
        if dropped is not None:
            self._vector_cache_bytes -= dropped.nbytes
            dropped.close()

    async def wait_vector_indexes(self, timeout: float | None = None) -> bool:
        """Wait until cached vector indexes have finished background graph work (benchmarks and
        tests; searches never wait: they go exact meanwhile). True if nothing is still building."""
        with self._vector_cache_lock:
            indexes = list(self._vector_cache.values())
        done = [await asyncio.to_thread(i.wait_ready, timeout) for i in indexes]
        return all(done)

    def vector_index_stats(self) -> dict[str, Any]:
        """Cached vector indexes of this process: per (tenant, user, model), rows and route per kind."""
        with self._vector_cache_lock:
            return {"/".join(k): v.stats() for k, v in self._vector_cache.items()}

    async def prepare_vectors(self, tenant: str, user: str, model: str) -> None:
        """Load (or bring up to date) the user's in-process vector index for ``model`` now, so that
        the ``search_vectors`` which follows finds it ready. Recall calls this while the query is
        being embedded: a user's first search then reads and indexes the user's vectors beside the
        embedding instead of after it. Nothing is read out (no audit entry); the search that
        follows checks the index against the database as always."""
        validate_part("tenant", tenant)
        validate_part("user", user)
        await self._read(lambda conn: self._vector_index(conn, tenant, user, model) and None)

    async def search_vectors(
        self, tenant: str, user: str, model: str, vector: Sequence[float], *, limit: int = 20,
        kinds: Sequence[str] = ("message", "fact"),
    ) -> list[Hit]:
        validate_part("tenant", tenant)
        validate_part("user", user)
        validate_limit(limit, allow_none=False)
        np = _numpy()
        q = np.asarray(vector, dtype=np.float32)
        if q.ndim != 1 or not np.isfinite(q).all():
            raise InvalidInput("query vector must be a list of finite numbers")
        qn = float(np.linalg.norm(q)) or 1.0
        q = q / qn
        want_msg, want_fact = "message" in kinds, "fact" in kinds
        if limit == 0 or not (want_msg or want_fact):
            return self._read_hits(tenant, user, "search.vector", [])

        wanted = tuple(k for k in ("message", "fact") if k in kinds)

        def run(conn: sqlite3.Connection) -> list[Hit]:
            index = self._vector_index(conn, tenant, user, model)
            total = index.count(wanted) if index is not None else 0
            if index is None or total == 0:
                return []
            if index.dim != q.size:
                raise InvalidInput(f"query has {q.size} dimensions; model {model!r} stores {index.dim}")
            hits: list[tuple[float, int, Hit]] = []
            checked: set[int] = set()
            # A little over the limit: most candidates are live, and a short list keeps the graph
            # search cheap (measured at 90,000 clustered vectors: recall@50 0.9998 asking 66 vs 1.0
            # asking 200, at 1.4 vs 11.9 ms); the loop below widens when too many were dead.
            take = min(total, limit + max(16, limit // 4))
            while True:
                # Exact cosine scores, best first (ties: older first). A wider second round may
                # surface candidates the approximate first round missed, so track rows, not a prefix.
                order = [c for c in index.search(q, take, kinds=wanted) if c.rowid not in checked]
                seen = 0
                while seen < len(order):
                    # Look up only about as many rows as still needed: most candidates are live.
                    batch = order[seen: seen + (limit - len(hits)) + 8]
                    seen += len(batch)
                    checked.update(c.rowid for c in batch)
                    msg_ids = [c.item_id for c in batch if c.kind == "message"]
                    fact_ids = [c.item_id for c in batch if c.kind == "fact"]
                    msgs = self._message_hits(conn, tenant, user, msg_ids) if msg_ids else {}
                    facts = self._fact_hits(conn, tenant, user, fact_ids) if fact_ids else {}
                    for c in batch:
                        row = (facts if c.kind == "fact" else msgs).get(c.item_id)
                        if row is not None:  # deleted or superseded records are skipped
                            s = min(1.0, max(0.0, (1.0 + c.score) / 2.0))
                            hits.append((-s, c.rowid, self._hit(c.kind, row, s, "vector", tenant, user)))
                            if len(hits) == limit:
                                break
                    if len(hits) == limit:
                        break
                if len(hits) == limit or take >= total:
                    hits.sort(key=lambda t: t[:2])
                    return [h for _, _, h in hits]
                take = min(total, take * 4)

        return self._read_hits(tenant, user, "search.vector", await self._read(run))

    # -- learning queue -----------------------------------------------------------------------------
    async def claim_learn_jobs(
        self, *, limit: int = 64, lease_seconds: float = 60.0, tenant: str | None = None
    ) -> list[LearnJob]:
        validate_limit(limit, allow_none=False)
        if tenant is not None:
            validate_part("tenant", tenant)

        def op(conn: sqlite3.Connection) -> list[LearnJob]:
            now = _now_us()
            where = "dead = 0 AND available_at <= ?" + ("" if tenant is None else " AND tenant_id = ?")
            params: list[Any] = [now] if tenant is None else [now, tenant]
            rows = conn.execute(
                "SELECT rid, id, tenant_id, user_id, thread_id, message_id, seq, attempts, last_error FROM learn_jobs"
                f" WHERE {where} ORDER BY available_at, rid LIMIT ?",
                (*params, limit),
            ).fetchall()
            until = now + int(lease_seconds * 1_000_000)
            conn.executemany(
                "UPDATE learn_jobs SET attempts = attempts + 1, available_at = ?, leased = 1 WHERE rid = ?",
                [(until, r[0]) for r in rows],
            )
            return [LearnJob(r[1], SessionKey(r[2], r[3], r[4]), r[5], r[6], r[7] + 1, r[8]) for r in rows]

        return await self._write(op)

    async def complete_learn_jobs(self, job_ids: Sequence[str]) -> None:
        ids = list(job_ids)
        if not ids:
            return

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM learn_jobs WHERE id = ?", [(i,) for i in ids])

        await self._write(op)

    async def fail_learn_job(self, job_id: str, error: str, *, retry_in: float | None) -> None:
        actor = current_actor()

        def op(conn: sqlite3.Connection) -> None:
            job = conn.execute("SELECT tenant_id, user_id, thread_id, message_id FROM learn_jobs WHERE id = ?",
                               (job_id,)).fetchone()
            if job is None:
                return
            with_actor(conn, job[0], "learn.fail", actor, user=job[1], thread=job[2],
                       record_ids=[str(job_id), job[3]], count=1)
            if retry_in is None:  # a dead job is never due: available_at records when it died
                conn.execute(
                    "UPDATE learn_jobs SET last_error = ?, leased = 0, dead = 1, available_at = ?"
                    " WHERE id = ?",
                    (str(error)[:2000], _now_us(), job_id),
                )
            else:
                conn.execute(
                    "UPDATE learn_jobs SET last_error = ?, leased = 0, available_at = ? WHERE id = ?",
                    (str(error)[:2000], _now_us() + int(retry_in * 1_000_000), job_id),
                )

        await self._write(op)

    async def learn_queue_stats(self, tenant: str | None = None) -> Mapping[str, int]:
        def query(conn: sqlite3.Connection) -> Mapping[str, int]:
            where, params = ("", [_now_us()]) if tenant is None else (" WHERE tenant_id = ?", [_now_us(), tenant])
            row = conn.execute(
                "SELECT coalesce(sum(dead), 0), coalesce(sum(dead = 0 AND leased = 1 AND available_at > ?), 0),"
                f" count(*) FROM learn_jobs{where}",
                params,
            ).fetchone()
            return {"pending": row[2] - row[0] - row[1], "leased": row[1], "dead": row[0]}

        return await self._read(query)

    async def list_dead_learn_jobs(self, *, tenant: str | None = None, limit: int = 100) -> list[LearnJob]:
        validate_tenant_filter(tenant)
        validate_limit(limit, allow_none=False)

        def query(conn: sqlite3.Connection) -> list[LearnJob]:
            where, params = ("", []) if tenant is None else (" AND tenant_id = ?", [tenant])
            rows = conn.execute(
                "SELECT id, tenant_id, user_id, thread_id, message_id, seq, attempts, last_error,"
                f" available_at FROM learn_jobs WHERE dead = 1{where} ORDER BY available_at, id LIMIT ?",
                (*params, limit),
            ).fetchall()
            return [LearnJob(r[0], SessionKey(r[1], r[2], r[3]), r[4], r[5], r[6], r[7], _dt(r[8]))
                    for r in rows]

        return await self._read(query)

    async def requeue_dead_learn_jobs(
        self, job_ids: Sequence[str] | None = None, *, tenant: str | None = None
    ) -> int:
        ids = validate_job_ids(job_ids)
        validate_tenant_filter(tenant)
        if ids == []:
            return 0
        actor = current_actor()

        def op(conn: sqlite3.Connection) -> int:
            where, params = ("", []) if tenant is None else (" AND tenant_id = ?", [tenant])
            select = ("SELECT rid, id, tenant_id, user_id, thread_id, message_id FROM learn_jobs"
                      " WHERE dead = 1" + where)
            if ids is None:
                rows = conn.execute(select, params).fetchall()
            else:
                rows = []
                for chunk in _chunks(ids, 500):
                    rows += conn.execute(f"{select} AND id IN ({','.join('?' * len(chunk))})",
                                         (*params, *chunk)).fetchall()
            now = _now_us()
            conn.executemany(
                "UPDATE learn_jobs SET dead = 0, leased = 0, attempts = 0, available_at = ? WHERE rid = ?",
                [(now, r[0]) for r in rows])
            for _, job_id, t, user, thread, message_id in rows:
                with_actor(conn, t, "learn.requeue", actor, user=user, thread=thread,
                           record_ids=[job_id, message_id], count=1)
            return len(rows)

        return await self._write(op)

    # -- audit --------------------------------------------------------------------------------------
    async def list_audit(
        self, tenant: str, *, user: str | None = None, operation: str | None = None, limit: int = 100,
        after_id: int = 0,
    ) -> list[AuditEvent]:
        validate_part("tenant", tenant)
        validate_limit(limit, allow_none=False)
        validate_limit(after_id, "after_id", allow_none=False)
        where = "tenant_id = ? AND id > ?"
        params: list[Any] = [tenant, after_id]
        if user is not None:
            where += " AND user_id = ?"
            params.append(user)
        if operation is not None:
            where += " AND operation = ?"
            params.append(operation)

        def query(conn: sqlite3.Connection) -> list[AuditEvent]:
            rows = conn.execute(
                f"SELECT {_AUDIT_COLS} FROM audit WHERE {where} ORDER BY id LIMIT ?",
                (*params, limit),
            ).fetchall()
            return [_audit_event(r) for r in rows]

        return await self._read(query)


# -- helpers ------------------------------------------------------------------------------------------
_AUDIT_COLS = "id, tenant_id, at, actor, operation, user_id, thread_id, count, record_ids, digests, chain_seq, chain_hash"
_ERASURES = "('session.delete', 'user.delete', 'retention.prune', 'message.delete')"  # as the audit_erasures index


def _audit_event(r: Sequence[Any]) -> AuditEvent:
    return AuditEvent(r[0], r[1], _dt(r[2]), r[3], r[4], r[5], r[6], r[7], tuple(json.loads(r[8])),
                      tuple(json.loads(r[9])), r[10], r[11])


def _receipt(conn: sqlite3.Connection, tenant: str, operation: str, actor: str, user: str, thread: str | None,
             ids: Sequence[str]) -> None:
    """Erasure receipt: the erased ids (never content), at most 10,000 per entry."""
    from ..governance.audit import erasure_chunks

    for chunk in erasure_chunks(ids):
        with_actor(conn, tenant, operation, actor, user=user, thread=thread, record_ids=chunk)


def _all_erased(conn: sqlite3.Connection, tenant: str, user: str, ids: Sequence[str]) -> bool:
    """Whether every id is named in an erasure receipt of this user (the writer's transaction
    serialises this check with erasures)."""
    erased: set[str] = set()
    for (record_ids,) in conn.execute(
        f"SELECT record_ids FROM audit WHERE tenant_id = ? AND user_id = ? AND operation IN {_ERASURES}",
        (tenant, user),
    ):
        erased.update(json.loads(record_ids))
        if erased.issuperset(ids):
            return True
    return False


def _any_live(conn: sqlite3.Connection, tenant: str, user: str, ids: Sequence[str]) -> bool:
    """Whether a message of these ids exists now: one restored with its id is not erased any more."""
    for chunk in _chunks(list(ids), 500):
        if conn.execute(f"SELECT 1 FROM messages WHERE id IN ({','.join('?' * len(chunk))}) AND +tenant_id = ?"
                        " AND +user_id = ? LIMIT 1", (*chunk, tenant, user)).fetchone():
            return True
    return False


def _drop_orphaned_facts(conn: sqlite3.Connection, key: SessionKey, message_id: str, actor: str) -> tuple[list[str], int]:
    """Delete the facts ``message_id`` is a source of that have no other live source message (with
    their vectors); audited as ``fact.delete``. Returns the fact ids and the vectors removed."""
    gone = []
    for fid, sources in conn.execute(
        "SELECT id, source_ids FROM facts WHERE tenant_id = ? AND user_id = ?"
        " AND EXISTS (SELECT 1 FROM json_each(facts.source_ids) WHERE value = ?)",
        (key.tenant, key.user, message_id),
    ).fetchall():
        others = [s for s in json.loads(sources) if s != message_id]
        if not others or not _any_live(conn, key.tenant, key.user, others):
            gone.append(fid)
    gone.sort()
    vec = 0
    for chunk in _chunks(gone, 500):
        marks = ",".join("?" * len(chunk))
        conn.execute(f"DELETE FROM facts WHERE tenant_id = ? AND user_id = ? AND id IN ({marks})",
                     (key.tenant, key.user, *chunk))
        vec += conn.execute(f"DELETE FROM vectors WHERE tenant_id = ? AND user_id = ? AND kind = 'fact'"
                            f" AND item_id IN ({marks})", (key.tenant, key.user, *chunk)).rowcount
    if gone:
        with_actor(conn, key.tenant, "fact.delete", actor, user=key.user, thread=key.thread, record_ids=gone)
    return gone, vec


# FTS5 reads an index whose structure record lists more than 2000 levels (FTS5_MAX_SEGMENT) as
# corrupt: every query and write of that table then fails with "database disk image is malformed".
# In SQLite 3.40 (later releases cap the count at 64), each 'optimize' (and each full 'merge') of an
# index holding more than one segment writes its output two levels above the old top and never
# drops the empty levels below, so erasure number ~1000 of a store broke its lexical search for all. Above this many
# levels the scrub runs 'rebuild' instead: the index is rewritten from the content table into a
# fresh structure of a few levels (and, rewritten from the surviving rows, holds no erased term).
_FTS5_CORRUPT_LEVELS = 2000
_FTS5_REBUILD_LEVELS = 1000


def _varint(b: bytes, i: int) -> tuple[int, int]:
    """SQLite's big-endian varint at ``b[i:]``: (value, next offset)."""
    v = 0
    for k in range(9):
        c = b[i]
        i += 1
        if k == 8:
            return (v << 8) | c, i
        v = (v << 7) | (c & 0x7F)
        if not c & 0x80:
            return v, i
    raise AssertionError("unreachable")


def fts5_levels(conn: sqlite3.Connection, table: str) -> int:
    """How many levels the FTS5 index ``table`` lists in its structure record (row 10 of
    ``<table>_data``: a 4-byte cookie, in newer releases a 4-byte format marker, then varint nLevel).
    Read from the shadow table directly, so it works on an index FTS5 itself already refuses."""
    row = conn.execute(f"SELECT block FROM {table}_data WHERE id = 10").fetchone()
    if row is None or not row[0] or len(row[0]) < 5:
        return 0
    block = bytes(row[0])
    start = 8 if block[4:8] == b"\xff\x00\x00\x01" else 4
    try:
        return _varint(block, start)[0]
    except IndexError:
        return 0


def _scrub_index(conn: sqlite3.Connection, *, messages: bool, facts: bool) -> None:
    """SQLite 3.40's FTS5 keeps deleted terms in older index segments until they are merged (its
    'secure-delete' option arrived in 3.42): 'optimize' merges every segment into one, and with
    secure_delete the freed segment pages are zeroed. Cost: proportional to the whole index.
    An index whose level count has grown past _FTS5_REBUILD_LEVELS is rebuilt instead (see there)."""
    for wanted, table in ((messages, "messages_fts"), (facts, "facts_fts")):
        if wanted:
            command = "rebuild" if fts5_levels(conn, table) >= _FTS5_REBUILD_LEVELS else "optimize"
            conn.execute(f"INSERT INTO {table} ({table}) VALUES ('{command}')")


def _owe_scrub(conn: sqlite3.Connection, *, messages: bool, facts: bool) -> None:
    """Record, in the erasure's own transaction, that the index still holds erased terms (the
    'delete' entries hide them from every query at once; their bytes stay until merged out)."""
    for wanted, table in ((messages, "messages_fts"), (facts, "facts_fts")):
        if wanted:
            conn.execute("INSERT INTO fts_scrub_owed (fts_table, since, erasures) VALUES (?, ?, 1)"
                         " ON CONFLICT (fts_table) DO UPDATE SET erasures = erasures + 1", (table, _now_us()))


def _scrub_owed(conn: sqlite3.Connection) -> bool:
    """Scrub every index an erasure left owed, and clear the markers, in one transaction."""
    owed = {r[0] for r in conn.execute("SELECT fts_table FROM fts_scrub_owed")}
    if not owed:
        return False
    _scrub_index(conn, messages="messages_fts" in owed, facts="facts_fts" in owed)
    conn.execute("DELETE FROM fts_scrub_owed")
    return True


def _scrub_owed_at_open(conn: sqlite3.Connection) -> bool:
    """A scrub a process left owed (it died, or its event loop stopped, within the delay): done now."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'fts_scrub_owed'").fetchone() is None:
        return False  # a schema older than this Amber's (opened by an older one's code path)
    if conn.execute("SELECT 1 FROM fts_scrub_owed LIMIT 1").fetchone() is None:
        return False
    conn.execute("BEGIN IMMEDIATE")
    try:
        done = _scrub_owed(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if done:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # best effort: a reader may hold it back
    return done


# The structure record of an empty index (cookie 0, no level, no segment, write counter 0).
_FTS5_EMPTY_STRUCTURE = b"\x00\x00\x00\x00\x00\x00\x00"


def _repair_fts_levels(conn: sqlite3.Connection) -> list[str]:
    """Rebuild any FTS5 index an older Amber left with too many levels (see _FTS5_CORRUPT_LEVELS);
    returns the tables rebuilt. Runs at open, in its own write transaction. Past 2,000 levels FTS5
    cannot even open the table (nor 'rebuild' or drop it): its structure record is first replaced by
    an empty one, then 'rebuild' deletes every old segment row (zeroed: secure_delete) and indexes
    the content table afresh."""
    broken = [t for t in ("messages_fts", "facts_fts") if fts5_levels(conn, t) >= _FTS5_REBUILD_LEVELS]
    if not broken:
        return []
    conn.execute("BEGIN IMMEDIATE")
    try:
        broken = [t for t in broken if fts5_levels(conn, t) >= _FTS5_REBUILD_LEVELS]  # another process may have
        for table in broken:
            if fts5_levels(conn, table) > _FTS5_CORRUPT_LEVELS:
                conn.execute(f"UPDATE {table}_data SET block = ? WHERE id = 10", (_FTS5_EMPTY_STRUCTURE,))
            conn.execute(f"INSERT INTO {table} ({table}) VALUES ('rebuild')")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return broken


def with_actor(
    conn: sqlite3.Connection, tenant: str, operation: str, actor: str, *, user: str | None = None,
    thread: str | None = None, record_ids: Sequence[str] = (), digests: Sequence[str] = (), count: int | None = None,
) -> None:
    """Write one audit entry in the current transaction, for the actor captured by the caller."""
    conn.execute(
        "INSERT INTO audit (tenant_id, at, actor, operation, user_id, thread_id, count, record_ids, digests)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (tenant, _now_us(), actor, operation, user, thread, len(record_ids) if count is None else count,
         json.dumps(list(record_ids)), json.dumps(list(digests))),
    )


_APPEND_SESSION = (
    "INSERT INTO sessions (tenant_id, user_id, thread_id, created_at, updated_at, last_seq, message_count)"
    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant_id, user_id, thread_id) DO UPDATE SET"
    " last_seq = last_seq + excluded.last_seq, message_count = message_count + excluded.message_count,"
    " updated_at = excluded.updated_at RETURNING last_seq"
)
_APPEND_MESSAGE = (
    "INSERT INTO messages (tenant_id, user_id, thread_id, seq, id, role, content, payload, payload_format, author,"
    " idempotency_key, created_at, metadata, tokens, content_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_APPEND_JOB = (
    "INSERT INTO learn_jobs (id, tenant_id, user_id, thread_id, message_id, seq, available_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_APPEND_AUDIT = (
    "INSERT INTO audit (tenant_id, at, actor, operation, user_id, thread_id, count, record_ids, digests)"
    " VALUES (?, ?, ?, 'message.append', ?, ?, ?, ?, ?)"
)


def _append_many(
    conn: sqlite3.Connection, items: list[tuple[SessionKey, list[PreparedMessage], list[bool], str]]
) -> list[list[int | Sequence[Any]]]:
    """Run appends (``(key, prepared, given, actor)`` each) in the writer's transaction.

    For each message of each append: its new seq (an int > 0), the stored row of the message a
    retried idempotency key already names, or ``-1 - j`` when message ``j`` of the same append
    carries the same key. Per append, one upsert of the session row returns the advanced
    ``last_seq`` (so seqs stay gap-free and are allocated inside the transaction); the messages,
    learn jobs and audit entries of all the appends go in three ``executemany`` calls.
    """
    now = time.time_ns() // 1000
    msg_rows: list[tuple[Any, ...]] = []
    job_rows: list[tuple[Any, ...]] = []
    audit_rows: list[tuple[Any, ...]] = []
    results: list[list[int | Sequence[Any]]] = []
    for key, prepared, given, actor in items:
        k = (key.tenant, key.user, key.thread)
        result: list[Any] = [None] * len(prepared)
        fresh: list[int] = []
        if any(given):
            wanted = list(dict.fromkeys(p.idempotency_key for p, g in zip(prepared, given) if g))
            found: dict[str, Sequence[Any]] = {}
            for chunk in _chunks(wanted, 500):
                marks = ",".join("?" * len(chunk))
                for row in conn.execute(
                    f"SELECT {SQLiteStore._MSG_COLS} FROM messages WHERE tenant_id = ? AND user_id = ?"
                    f" AND thread_id = ? AND idempotency_key IN ({marks})",
                    (*k, *chunk),
                ):
                    found[row[7]] = row
            first: dict[str, int] = {}
            for i, p in enumerate(prepared):
                if p.idempotency_key in found:
                    result[i] = found[p.idempotency_key]
                elif p.idempotency_key in first:
                    result[i] = -1 - first[p.idempotency_key]  # the same key twice in one call: the first one
                else:
                    first[p.idempotency_key] = i
                    fresh.append(i)
        else:
            fresh = list(range(len(prepared)))
        if fresh:
            n = len(fresh)
            seq = conn.execute(_APPEND_SESSION, (*k, now, now, n, n)).fetchall()[0][0] - n
            for i in fresh:
                p = prepared[i]
                seq += 1
                result[i] = seq
                msg_rows.append((*k, seq, p.id, p.role, p.content, p.payload_json, p.payload_format, p.author,
                                 p.idempotency_key, _us(p.created_at), p.metadata_json, p.tokens, p.content_hash))
                job_rows.append((new_id("job"), *k, p.id, seq, now))
            audit_rows.append((
                key.tenant, now, actor, key.user, key.thread, n,
                json.dumps([prepared[i].id for i in fresh]), json.dumps([prepared[i].content_hash for i in fresh]),
            ))
        results.append(result)
    if msg_rows:
        conn.executemany(_APPEND_MESSAGE, msg_rows)
        conn.executemany(_APPEND_JOB, job_rows)
        conn.executemany(_APPEND_AUDIT, audit_rows)
    return results


_VECTORS_AFTER = ("SELECT rowid, kind, item_id, dim, vec FROM vectors WHERE tenant_id = ? AND user_id = ? AND model = ?"
                  " AND rowid > ? ORDER BY rowid")
_VECTOR_KEYS = "SELECT rowid, kind, item_id FROM vectors WHERE tenant_id = ? AND user_id = ? AND model = ?"
_VECTORS_BY_ROWID = ("SELECT rowid, kind, item_id, dim, vec FROM vectors WHERE tenant_id = ? AND user_id = ?"
                     " AND model = ? AND rowid IN ({marks}) ORDER BY rowid")


def _index_rows(index: VectorIndex, rows: list[Any]) -> None:
    """Add ``(rowid, kind, item_id, dim, vec)`` rows to ``index`` and move its high-water rowid."""
    if not rows:
        return
    np = _numpy()
    mat = np.frombuffer(b"".join(r[4] for r in rows), dtype="<f4").reshape(len(rows), rows[0][3])
    index.add([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], mat)
    index.high_water = max(index.high_water, rows[-1][0])


def _bump_vectors(conn: sqlite3.Connection, tenant: str, user: str, *, rewrite: bool = True) -> None:
    """Move the user's vector stamp: ``rewrite`` unless vectors were only added (see _vector_matrix)."""
    r = int(rewrite)
    conn.execute(
        "INSERT INTO vector_stamps (tenant_id, user_id, version, rewrites) VALUES (?, ?, 1, ?)"
        " ON CONFLICT (tenant_id, user_id) DO UPDATE SET version = version + 1, rewrites = rewrites + ?",
        (tenant, user, r, r),
    )


def _chunks(items: list[T], size: int) -> list[list[T]]:
    return [items[i: i + size] for i in range(0, len(items), size)]


def _unit(r: float) -> float:
    r = max(0.0, float(r))
    return r / (1.0 + r)


def _scope_token(tenant: str, user: str) -> str:
    """The FTS5 scope token of a tenant and user; the schema's SCOPE_SQL computes the same one."""
    return "s" + (tenant + "\x1f" + user).encode("utf-8").hex()


def _fts_query(text: str) -> list[str] | None:
    """The words of free text as quoted FTS5 strings, so user input is never FTS syntax."""
    terms = list(dict.fromkeys(lexical_terms(text)))[:64]
    if not terms:
        return None
    return ['"' + t.replace('"', '""') + '"' for t in terms]


# A term found in more of one user's rows than this is "common" for that user (see _fts_candidates).
_COMMON_TERM_ROWS = 2000


def _fts_candidates(
    conn: sqlite3.Connection, table: str, column: str, scope: str | None, terms: list[str], limit: int
) -> dict[int, float]:
    """The best ``limit`` rows for an any-term query, as {rowid: bm25 rank}, with bounded work.

    ``scope`` (a ``scope : "<token>"`` filter) makes FTS5 look at one user's rows only; the caller
    still checks tenant and user on every row it returns. FTS5's bm25 costs about a microsecond per
    matching row plus a scan of each query phrase's whole doclist, so a term found in most of a
    user's 100,000 rows would cost ~100 ms. Each term is probed (unranked, stopping at
    _COMMON_TERM_ROWS + 1): rows matching the rarer terms are all ranked by bm25 over those terms;
    rows matching only the common terms (whose bm25 weight is near zero anyway) are added as the
    most recent ``4 * limit`` of them, with rank 0 (score 0). Counting and most-recent-first are
    streamed by FTS5 and stop early.
    A user's few matches in a large shared file are ranked here instead (:func:`_bm25_in_scope`):
    bm25's IDF alone reads every query term's doclist over all tenants' rows.
    """
    def any_of(ts: list[str]) -> str:
        text = f"{column} : ({' OR '.join(ts)})"
        return text if scope is None else f"{scope} AND {text}"

    def count(query: str) -> int:
        return conn.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM {table} WHERE {table} MATCH ? LIMIT ?)",
            (query, _COMMON_TERM_ROWS + 1),
        ).fetchone()[0]

    def ranked(query: str, n: int) -> list[tuple[int, float]]:
        return conn.execute(
            f"SELECT rowid, rank FROM {table} WHERE {table} MATCH ? ORDER BY rank, rowid LIMIT ?", (query, n)
        ).fetchall()

    # Per-term counts decide alone: when every term is rare, all matching rows are ranked (what a
    # union count of at most _COMMON_TERM_ROWS leads to as well), without counting the union.
    counts = {t: count(any_of([t])) for t in terms}
    rare = [t for t in terms if counts[t] <= _COMMON_TERM_ROWS]
    common = [t for t in terms if t not in rare]
    if not common:
        if scope is not None and sum(counts.values()) <= _RANK_IN_PYTHON_ROWS:
            return _bm25_in_scope(conn, table, column, scope, counts, limit)
        return dict(ranked(any_of(terms), limit))
    found: dict[int, float] = dict(ranked(any_of(rare), limit)) if rare else {}
    if common:
        for (rowid,) in conn.execute(
            f"SELECT rowid FROM {table} WHERE {table} MATCH ? ORDER BY rowid DESC LIMIT ?",
            (any_of(common), max(4 * limit, 100)),
        ):
            found.setdefault(rowid, 0.0)
    best = sorted(found.items(), key=lambda item: (item[1], -item[0] if item[1] == 0.0 else item[0]))[:limit]
    return dict(best)


# Up to this many matches of one user's terms are ranked in Python (_bm25_in_scope), not by FTS5.
# FTS5's bm25 counts each term's rows over the whole table for its IDF, reading the term's whole
# doclist, every tenant's rows: at 1M memories over 1,000 users, "car insurance policy number" cost
# 23 ms to rank (8.4 ms mean over the benchmark's questions) against 1.3 ms to fetch the user's 282
# matching rows; scoring them here costs ~2-4 µs a row.
_RANK_IN_PYTHON_ROWS = 1000
_BM25_K1 = 1.2
_BM25_B = 0.75
_FTS_TOKEN = re.compile(r"[^\W_]+")


def _fts_tokens(text: str) -> list[str]:
    """``text`` split as FTS5's ``unicode61 remove_diacritics 2`` tokenizer splits it (letters and
    digits; lower case; accents removed), near enough to count a term's occurrences in a row."""
    text = text.lower()
    if not text.isascii():
        text = "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.combining(c))
    return _FTS_TOKEN.findall(text)


def _fts_average_tokens(conn: sqlite3.Connection, table: str) -> float:
    """Tokens per row over all columns, from the FTS5 table's averages record (what bm25 uses)."""
    row = conn.execute(f"SELECT block FROM {table}_data WHERE id = 1").fetchone()
    values: list[int] = []
    block = bytes(row[0]) if row and row[0] else b""
    i = 0
    while i < len(block):
        value, i = _varint(block, i)
        values.append(value)
    if len(values) < 2 or values[0] <= 0:
        return 1.0
    return max(1.0, sum(values[1:]) / values[0])


def _bm25_in_scope(
    conn: sqlite3.Connection, table: str, column: str, scope: str, counts: Mapping[str, int], limit: int
) -> dict[int, float]:
    """The best ``limit`` of one user's rows matching any of ``counts``' terms (quoted FTS5 strings,
    each with its number of matching rows in the scope), as {rowid: rank}, ranked by bm25 as FTS5
    computes it (k1 1.2, b 0.75, document length over all columns against the table's average, ties
    by rowid), except that each term's IDF is taken over the user's rows rather than the whole table:
    that IDF is what made FTS5 read every tenant's rows, and within one user's memory it is the apter
    measure of how telling a word is."""
    terms = list(counts)
    rows = conn.execute(f"SELECT rowid, {column} FROM {table} WHERE {table} MATCH ?",
                        (f"{scope} AND {column} : ({' OR '.join(terms)})",)).fetchall()
    if not rows:
        return {}
    n_rows = conn.execute(f"SELECT count(*) FROM {table} WHERE {table} MATCH ?", (scope,)).fetchone()[0]
    average = _fts_average_tokens(conn, table)
    phrases: list[tuple[tuple[str, ...], float]] = []
    for term in terms:
        tokens = tuple(_fts_tokens(term[1:-1].replace('""', '"')))
        if tokens:
            idf = math.log((n_rows - counts[term] + 0.5) / (counts[term] + 0.5))
            phrases.append((tokens, idf if idf > 0.0 else 1e-6))
    scored: list[tuple[float, int]] = []
    for rowid, text in rows:
        tokens = _fts_tokens(text or "")
        norm = _BM25_K1 * (1.0 - _BM25_B + _BM25_B * (len(tokens) + 1) / average)  # + 1: the scope token
        score = 0.0
        for phrase, idf in phrases:
            if len(phrase) == 1:
                tf = tokens.count(phrase[0])
            else:
                width = len(phrase)
                tf = sum(1 for i in range(len(tokens) - width + 1) if tuple(tokens[i:i + width]) == phrase)
            if tf:
                score += idf * tf * (_BM25_K1 + 1.0) / (tf + norm)
        scored.append((-score, rowid))
    scored.sort()
    return {rowid: rank for rank, rowid in scored[:limit]}


def _lexical_score(rank: float, terms: set[str], text: str) -> float:
    """A row's lexical score: bm25 mapped into [0, 1), with the coverage floor (always below 0.1,
    so only worked out when bm25 gives less)."""
    s = _unit(-rank)
    return s if s >= 0.1 else max(s, _coverage(terms, text))


def _coverage(terms: set[str], text: str) -> float:
    """A floor under a row's bm25 score, below 0.1, by the share of the query's words it holds: it
    orders rows found only through common terms (rank 0, see _fts_candidates) and rows whose terms
    are so frequent that bm25 gives them almost nothing."""
    if not terms:
        return 0.0
    return round(0.1 * len(terms & set(lexical_terms(text))) / (len(terms) + 1), 6)


def _user_holds_most_messages(conn: sqlite3.Connection, tenant: str, user: str) -> bool:
    """True when one user owns over half the file's messages: then a scope filter inside the FTS5
    query costs more (bm25 scans the scope phrase's doclist, i.e. all the user's rows) than the
    few other rows it keeps out, and filtering the ranked candidates afterwards is cheaper."""
    mine = conn.execute(
        "SELECT coalesce(sum(message_count), 0) FROM sessions WHERE tenant_id = ? AND user_id = ?", (tenant, user)
    ).fetchone()[0]
    total = conn.execute("SELECT coalesce(max(rid), 0) FROM messages").fetchone()[0]
    return mine * 2 > total


def _numpy() -> Any:
    try:
        import numpy
    except ImportError as exc:
        raise MissingDependency("numpy", "vectors") from exc
    return numpy


_URL_OPTIONS = {"synchronous", "lock_timeout", "readers", "vector_cache_mb", "vector_ann_threshold",
                "erasure_scrub_delay", "cache"}  # cache is handled by open_store


def _option(options: Mapping[str, Any], query: Mapping[str, str], name: str, default: Any) -> Any:
    return options[name] if name in options else query.get(name, default)


async def open_sqlite(url: str, **options: Any) -> SQLiteStore:
    """Open (creating if needed) the SQLite store named by ``url`` and apply pending migrations.

    Options (keyword or URL query): ``synchronous`` ("full", default; "normal" is faster but an OS
    crash or power loss may drop the last acknowledged writes), ``lock_timeout`` (seconds a write or
    read keeps retrying while another process holds the lock; default 60), ``readers`` (read threads;
    default 4), ``vector_cache_mb`` (memory for cached vector matrices, least recently searched users
    dropped first; default 512), ``vector_ann_threshold`` (live vectors of one kind of one user above
    which an HNSW graph is built in the background, needs ``usearch``; default 20000, "off": always
    exact), ``erasure_scrub_delay`` (seconds: 0, the default, merges erased terms out of the lexical
    index before an erasure returns; above 0 an erasure returns once its rows are gone, and one
    scrub within that delay covers every erasure since the last; see docs/governance-audit.md),
    ``limits`` (:class:`StoreLimits`, keyword only).
    """
    path, query = sqlite_path_from_url(url)
    unknown = (set(query) - _URL_OPTIONS) | (set(options) - _URL_OPTIONS - {"limits"})
    if unknown:
        raise InvalidStoreURL(f"unknown SQLite option(s) {sorted(unknown)}; known: {sorted(_URL_OPTIONS)}")
    synchronous = str(_option(options, query, "synchronous", "full")).lower()
    if synchronous not in _SYNCHRONOUS:
        raise InvalidStoreURL(f"synchronous must be 'full' or 'normal', got {synchronous!r}")
    try:
        lock_timeout = float(_option(options, query, "lock_timeout", 60.0))
        readers = int(_option(options, query, "readers", 4))
        vector_cache_mb = int(_option(options, query, "vector_cache_mb", 512))
        ann = _option(options, query, "vector_ann_threshold", ANN_THRESHOLD)
        vector_ann_threshold = None if ann is None or str(ann).lower() in ("none", "off") else int(ann)
        erasure_scrub_delay = float(_option(options, query, "erasure_scrub_delay", 0.0))
    except (TypeError, ValueError) as exc:
        raise InvalidStoreURL(f"invalid SQLite option in {url!r}: {exc}") from exc
    if lock_timeout <= 0 or not 1 <= readers <= 64 or vector_cache_mb < 0 or (vector_ann_threshold or 0) < 0:
        raise InvalidStoreURL("lock_timeout must be > 0, readers between 1 and 64, vector_cache_mb >= 0"
                              " and vector_ann_threshold >= 0 (or 'off')")
    if not 0 <= erasure_scrub_delay <= 3600:
        raise InvalidStoreURL("erasure_scrub_delay must be between 0 and 3600 seconds")
    limits = options.get("limits") or StoreLimits()
    store = SQLiteStore(path, url=url, synchronous=synchronous, lock_timeout=lock_timeout, readers=readers,
                        limits=limits, vector_cache_mb=vector_cache_mb, vector_ann_threshold=vector_ann_threshold,
                        erasure_scrub_delay=erasure_scrub_delay)
    await asyncio.to_thread(store._setup)
    return store
