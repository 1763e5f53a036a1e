"""The shared production store: PostgreSQL through psycopg 3 (async) and a connection pool.

Open with ``amber.open_store("postgresql://user@host:5432/db")`` (extra ``[postgres]``).

* Order comes from the database, never from process memory: an append upserts the session row
  (``INSERT .. ON CONFLICT .. DO UPDATE``), which takes its row lock, so appends to one session from
  any number of processes queue on that lock and get gap-free sequence numbers. A retried
  idempotency key is found under the same lock and returns the stored message; a UNIQUE index is
  the last line of defence.
* An append is acknowledged only after COMMIT returned.
* Migrations are versioned and applied under ``pg_advisory_xact_lock``, so workers starting together
  migrate exactly once (:mod:`amber.store.postgres_schema`).
* Vectors use pgvector (``Capability.VECTOR_INDEX_NATIVE``) when the extension exists or can be
  created, with a per-model HNSW cosine index; otherwise ``real[]`` searched exactly in SQL.
* ``synchronous_commit=off`` or ``fsync=off`` lose acknowledged writes: refused at open with
  :class:`~amber.errors.UnsafeConfiguration` unless ``allow_unsafe=True``.

Options (keyword arguments, or the same names in the URL query string):
``schema`` (default ``amber``), ``pool_min_size`` (1), ``pool_max_size`` (10), ``pool_timeout``
(seconds to wait for a connection, 10), ``vectors`` (``auto`` | ``pgvector`` | ``exact``),
``require_native_vectors`` (False), ``allow_unsafe`` (False), ``limits`` (:class:`StoreLimits`).
Any other query parameter (``sslmode``, ``connect_timeout``, ...) goes to libpq unchanged.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import json
import logging
import math
import re
import struct
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Mapping, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..audit import current_actor
from ..errors import (
    AmberError,
    CapabilityMissing,
    InvalidInput,
    InvalidStoreURL,
    MessageTooLarge,
    MigrationError,
    MissingDependency,
    NotFound,
    StoreUnavailable,
    UnsafeConfiguration,
    VersionConflict,
)
from ..keys import SessionKey, validate_part
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
)
from . import postgres_schema as schema_mod
from ..governance.audit import AuditedReads
from .vector_index import ANN_THRESHOLD, VectorIndex
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
    select_window,
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

__all__ = ["PostgresStore", "open_postgres", "PGVECTOR_INSTALL_HINT"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _UserVectors:
    """One user's vectors of one (model, dim) in an in-process :class:`VectorIndex` (exact below its
    threshold, an HNSW graph above), as of stamp ``index.version`` / ``index.rewrites``.

    The index's row ids are assigned here (PostgreSQL rows have no stable integer id): ``keys``
    maps ``(kind, item_id)`` to that row id and the row's ``xmin`` when it was read (any update of
    the row changes it), for the key comparison after deletes and updates."""

    index: VectorIndex
    keys: dict[tuple[str, str], tuple[int, int]]
    next_rowid: int = 1

    @property
    def nbytes(self) -> int:
        return int(self.index.nbytes) + 120 * len(self.keys)


@dataclass(slots=True)
class _AppendRequest:
    key: SessionKey
    prepared: list[PreparedMessage]
    supplied: list[bool]  # idempotency key chosen by the caller (may be a retry)
    actor: str
    future: "asyncio.Future[list[Message]]"

PGVECTOR_INSTALL_HINT = (
    "native vector search needs the pgvector extension: install it on the PostgreSQL server "
    "(e.g. 'apt install postgresql-<major>-pgvector', or use an image/service that ships pgvector), "
    "then run 'CREATE EXTENSION vector;' in the database as a superuser (or let Amber create it) "
    "and reopen the store"
)

def _tsquery_term(lexeme: str) -> str:
    """A lexeme as one quoted tsquery operand (quotes doubled, backslashes escaped)."""
    return "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"


_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_BOOL = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
_OPTION_TYPES: dict[str, type] = {
    "schema": str,
    "pool_min_size": int,
    "pool_max_size": int,
    "pool_timeout": float,
    "vectors": str,
    "require_native_vectors": bool,
    "allow_unsafe": bool,
    "cache": str,  # consumed by open_store (Redis layer); never sent to libpq
    "vector_cache_mb": int,
    "exact_vector_max": int,
    "vector_ann_threshold": str,  # an integer, or "off" (always exact)
}
# With pgvector, a user with at most this many vectors is searched on the client (in-process index,
# exact at this size: about 1 ms); larger users go to pgvector's HNSW index. Without pgvector every
# user is searched on the client: exact below ``vector_ann_threshold``, an in-process graph above.
_CLIENT_EXACT_MAX = 20_000
_HNSW_MAX_DIM = 2000
_RECENT_S = 1.0  # a pooled connection used this recently is not probed before reuse  # pgvector's limit for HNSW on the vector type; larger dims are searched exactly
_KINDS = ("message", "fact")
_COMMON_TERM_ROWS = 2000  # a lexeme in more of a user's rows is "common" (see _SEARCH_TEXT_SQL), as in SQLite
# Lexical index postings read in the time of one of the user's rows fetched and tested (see
# _SEARCH_TEXT_SQL: measured ~0.4 µs a posting against ~2 µs a row).
_INDEX_POSTINGS_PER_ROW = 5
_TERM_STATS_TTL = 300.0  # seconds the planner's lexeme statistics are reused by search_text

_MSG_COLS = (
    "seq, id, role, content, payload, payload_format, author, idempotency_key, created_at, metadata, "
    "tokens, content_hash"
)
_FACT_COLS = (
    "id, tenant_id, user_id, attribute, value, text, kind, source_message_ids, thread_id, confidence, "
    "valid_from, valid_to, superseded_by, created_at, metadata"
)
_AUDIT_COLS = "id, tenant_id, at, actor, operation, user_id, thread_id, count, record_ids, digests, chain_seq, chain_hash"
# A session's message count: retention and delete_message leave gaps, so last_seq is not it.
# Counted on the primary key (an index-only scan); sessions has no counter to keep in step.
_MESSAGE_COUNT = ("(SELECT count(*) FROM {s}.messages m WHERE m.tenant_id = s.tenant_id AND m.user_id = s.user_id "
                  "AND m.thread_id = s.thread_id)")
_ERASURES = "('session.delete', 'user.delete', 'retention.prune', 'message.delete')"  # as the audit_erasures index


def _utc(value: datetime) -> datetime:
    return value.astimezone(timezone.utc)


def _numpy() -> Any:
    try:
        import numpy
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise MissingDependency("numpy", "vectors") from exc
    return numpy


def _drivers() -> tuple[Any, Any]:
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise MissingDependency("psycopg", "postgres") from exc
    try:
        import psycopg_pool
    except ImportError as exc:  # pragma: no cover
        raise MissingDependency("psycopg_pool", "postgres") from exc
    return psycopg, psycopg_pool


def _parse_options(url: str, options: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Split Amber's options out of the URL query; return (libpq URL, merged options)."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise InvalidStoreURL(f"invalid PostgreSQL URL: {exc}") from exc
    scheme = parts.scheme.split("+", 1)[0].lower()
    if scheme not in ("postgresql", "postgres"):
        raise InvalidStoreURL(f"not a PostgreSQL URL (scheme {parts.scheme!r})")
    merged: dict[str, Any] = {}
    libpq: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        kind = _OPTION_TYPES.get(name)
        if kind is None:
            libpq.append((name, value))
            continue
        try:
            if kind is bool:
                merged[name] = _BOOL[value.lower()]
            else:
                merged[name] = kind(value)
        except (KeyError, ValueError) as exc:
            raise InvalidStoreURL(f"invalid value {value!r} for store URL option {name!r}") from exc
    for name, value in options.items():
        if name not in _OPTION_TYPES and name != "limits":
            known = ", ".join(sorted([*_OPTION_TYPES, "limits"]))
            raise InvalidInput(f"unknown PostgreSQL store option {name!r}; known: {known}")
        merged[name] = value
    clean = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(libpq), parts.fragment))
    return clean, merged


async def open_postgres(url: str, **options: Any) -> "PostgresStore":
    """Open (and migrate) a PostgreSQL store. See the module docstring for options."""
    conninfo, opts = _parse_options(url, options)
    store = PostgresStore(conninfo, redacted_url=_redact(url), **{k: v for k, v in opts.items() if k != "cache"})
    try:
        await store._open()
    except BaseException:
        await store.close()
        raise
    return store


def _redact(url: str) -> str:
    from . import redact_url

    return redact_url(url)


class PostgresStore(AuditedReads, Store):
    """A :class:`Store` on PostgreSQL. Safe for many tasks and many processes at once."""

    def __init__(
        self,
        conninfo: str,
        *,
        redacted_url: str | None = None,
        schema: str = "amber",
        pool_min_size: int = 1,
        pool_max_size: int = 10,
        pool_timeout: float = 10.0,
        vectors: str = "auto",
        require_native_vectors: bool = False,
        allow_unsafe: bool = False,
        limits: StoreLimits | None = None,
        vector_cache_mb: int = 512,
        exact_vector_max: int = _CLIENT_EXACT_MAX,
        vector_ann_threshold: int | str | None = ANN_THRESHOLD,
    ) -> None:
        if not isinstance(schema, str) or not _SCHEMA_NAME.match(schema):
            raise InvalidStoreURL(
                f"invalid schema name {schema!r}: use 1-63 lower-case letters, digits and _, not starting with a digit"
            )
        if vectors not in ("auto", "pgvector", "exact"):
            raise InvalidInput(f"vectors must be 'auto', 'pgvector' or 'exact', got {vectors!r}")
        if require_native_vectors and vectors == "exact":
            raise InvalidInput("require_native_vectors=True contradicts vectors='exact'")
        if not (isinstance(pool_min_size, int) and isinstance(pool_max_size, int) and 0 <= pool_min_size <= pool_max_size
                and pool_max_size >= 1):
            raise InvalidInput("pool sizes must satisfy 0 <= pool_min_size <= pool_max_size, pool_max_size >= 1")
        self._psycopg, self._psycopg_pool = _drivers()
        self._conninfo = conninfo
        self.url = redacted_url or _redact(conninfo)
        self.schema = schema
        self.limits = limits or StoreLimits()
        self._vectors_mode = vectors
        self._require_native = require_native_vectors or vectors == "pgvector"
        self._allow_unsafe = allow_unsafe
        self._pool_timeout = float(pool_timeout)
        self._returned_at: dict[int, float] = {}  # id(connection) -> when it was last given back
        self._pool = self._psycopg_pool.AsyncConnectionPool(
            conninfo,
            min_size=pool_min_size,
            max_size=pool_max_size,
            timeout=self._pool_timeout,
            open=False,
            # autocommit + explicit transaction blocks; the check (one empty query) drops connections
            # a server restart killed before they are handed out.
            kwargs={"autocommit": True},
            check=self._check_conn,
            reset=self._note_return,
            reconnect_timeout=max(60.0, self._pool_timeout),
            name=f"amber:{schema}",
        )
        self._s = f'"{schema}"'
        self._vs: str | None = None  # quoted schema of the vector extension, when native
        self._indexed: set[tuple[str, int]] = set()
        if not isinstance(vector_cache_mb, int) or vector_cache_mb < 0:
            raise InvalidInput("vector_cache_mb must be a non-negative integer")
        # (tenant, user, model, dim) -> _UserVectors, least recently used first; bounded in bytes
        # (the most recently searched user stays, whatever its size).
        self._vector_cache: collections.OrderedDict[tuple[str, str, str, int], _UserVectors] = (
            collections.OrderedDict())
        self._vector_locks: dict[tuple[str, str, str, int], asyncio.Lock] = {}  # one refresh at a time per user
        if vector_ann_threshold is None or str(vector_ann_threshold).lower() in ("none", "off"):
            self._vector_ann_threshold: int | None = None
        else:
            try:
                self._vector_ann_threshold = int(vector_ann_threshold)
            except (TypeError, ValueError):
                self._vector_ann_threshold = -1
            if isinstance(vector_ann_threshold, bool) or self._vector_ann_threshold < 0:
                raise InvalidInput("vector_ann_threshold must be a non-negative integer or 'off'")
        self._vector_cache_budget = vector_cache_mb * 1024 * 1024
        if not isinstance(exact_vector_max, int) or exact_vector_max < 0:
            raise InvalidInput("exact_vector_max must be a non-negative integer")
        self._exact_vector_max = exact_vector_max
        self._vector_cache_bytes = 0
        self.capabilities = frozenset(
            {Capability.DURABLE, Capability.MULTI_PROCESS, Capability.MULTI_HOST,
             Capability.LEXICAL_SEARCH, Capability.VECTOR_SEARCH}
        )
        # table -> (monotonic time fetched, (lexemes, their shares of rows, table rows) or None): see _term_stats
        self._term_stats_cache: dict[str, tuple[float, tuple[str, str, float] | None]] = {}
        self.applied_migrations: list[str] = []  # what THIS open applied (empty if already current)
        self._settings: dict[str, str] = {}
        self._closed = False
        # group commit (see _flush): at most one flusher per pooled connection
        self._pending: collections.deque[_AppendRequest] = collections.deque()
        self._flushers = 0
        self._max_flushers = pool_max_size
        self._tasks: set[asyncio.Future[Any]] = set()
        self._append_calls = 0  # appends acknowledged by this handle...
        self._append_transactions = 0  # ...and the transactions that committed them
        from ..governance.audit import ReadAuditBuffer  # lazily: governance imports the store package

        self._reads = ReadAuditBuffer(self._write_reads, chain=self.chain_audit)

    # -- plumbing ----------------------------------------------------------------------------------
    def _sql(self, text: str) -> str:
        text = text.replace("{s}", self._s)
        if self._vs is not None:
            text = text.replace("{vs}", self._vs)
        return text

    def _translate(self, exc: Exception) -> AmberError:
        psycopg = self._psycopg
        errors = psycopg.errors
        if isinstance(exc, self._psycopg_pool.PoolTimeout):
            return StoreUnavailable(f"no PostgreSQL connection within {self._pool_timeout:g}s ({self.url}): {exc}")
        if isinstance(exc, self._psycopg_pool.PoolClosed):
            return StoreUnavailable(f"the store {self.url} is closed")
        if isinstance(exc, (errors.SerializationFailure, errors.DeadlockDetected, errors.LockNotAvailable)):
            return StoreUnavailable(f"PostgreSQL aborted the transaction, retry it: {exc}")
        if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
            return StoreUnavailable(f"PostgreSQL is unavailable ({self.url}): {exc}")
        if isinstance(exc, errors.ProgramLimitExceeded):
            return MessageTooLarge(f"PostgreSQL refused the value as too large: {exc}")
        if isinstance(exc, (psycopg.DataError, psycopg.IntegrityError)):
            return InvalidInput(f"PostgreSQL refused the input: {exc}")
        if isinstance(exc, psycopg.errors.UndefinedTable):
            return MigrationError(f"schema {self.schema!r} is missing tables; run 'amber migrate': {exc}")
        return StoreUnavailable(f"PostgreSQL error ({type(exc).__name__}): {exc}")

    @contextlib.asynccontextmanager
    async def _tx(self, *, pipeline: bool = False) -> AsyncIterator[Any]:
        """A pooled connection inside one transaction; committed on normal exit. Driver errors
        (including a failed COMMIT) surface as Amber errors: nothing was acknowledged."""
        if self._closed:
            raise StoreUnavailable(f"the store {self.url} is closed")
        try:
            async with self._pool.connection() as conn:
                if pipeline:  # BEGIN, statements and COMMIT travel in as few round trips as possible
                    async with conn.pipeline(), conn.transaction():
                        yield conn
                else:
                    async with conn.transaction():
                        yield conn
        except AmberError:
            raise
        except (self._psycopg.Error, self._psycopg_pool.PoolTimeout, self._psycopg_pool.PoolClosed) as exc:
            raise self._translate(exc) from exc

    async def _fetchall(self, sql: str, params: Any = None, *, retry: bool = True) -> list[tuple[Any, ...]]:
        """One statement in autocommit (atomic on its own; no BEGIN/COMMIT round trips). A pooled
        connection is only checked when it sat idle (see _check_conn), so one that a server restart
        killed may fail here: a read is then tried once more on a fresh connection."""
        if self._closed:
            raise StoreUnavailable(f"the store {self.url} is closed")
        text = self._sql(sql)
        for attempt in range(2):
            try:
                async with self._pool.connection() as conn:
                    cur = await conn.execute(text, params)
                    return await cur.fetchall()
            except (self._psycopg.OperationalError, self._psycopg.InterfaceError) as exc:
                if attempt or not retry or self._closed:
                    raise self._translate(exc) from exc
            except (self._psycopg.Error, self._psycopg_pool.PoolTimeout, self._psycopg_pool.PoolClosed) as exc:
                raise self._translate(exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _check_conn(self, conn: Any) -> None:
        """The pool's check: a connection back from use within the last second is handed out as is
        (the check is a round trip of its own on every operation); an idle one is probed, which
        drops connections a server restart killed."""
        at = self._returned_at.get(id(conn))
        if at is not None and time.monotonic() - at < _RECENT_S:
            return
        await self._psycopg_pool.AsyncConnectionPool.check_connection(conn)

    async def _note_return(self, conn: Any) -> None:
        if len(self._returned_at) > 4 * self._max_flushers + 64:  # ids of closed connections
            self._returned_at.clear()
        self._returned_at[id(conn)] = time.monotonic()

    # -- lifecycle ---------------------------------------------------------------------------------
    async def _open(self) -> None:
        try:
            await self._pool.open(wait=True, timeout=self._pool_timeout)
        except (self._psycopg.Error, self._psycopg_pool.PoolTimeout) as exc:
            raise StoreUnavailable(f"cannot connect to PostgreSQL at {self.url}: {exc}") from exc
        async with self._tx() as conn:
            cur = await conn.execute(
                "SELECT current_setting('fsync'), current_setting('synchronous_commit'), "
                "current_setting('server_version'), current_setting('full_page_writes'), "
                "current_setting('autovacuum')"
            )
            fsync, sync_commit, version, fpw, autovacuum = await cur.fetchone()
        self._settings = {"fsync": fsync, "synchronous_commit": sync_commit, "server_version": version,
                          "full_page_writes": fpw, "autovacuum": autovacuum}
        if autovacuum == "off":
            # Not unsafe, but slow over time: deleted rows are never reclaimed and the planner keeps
            # the statistics of empty tables (appends and searches degrade as the tables grow).
            log.warning("PostgreSQL at %s runs with autovacuum=off: run VACUUM ANALYZE regularly "
                        "(or store.analyze() after bulk loads)", self.url)
        unsafe = []
        if fsync == "off":
            unsafe.append("fsync=off (a crash can lose or corrupt committed data)")
        if sync_commit == "off":
            unsafe.append("synchronous_commit=off (a crash loses recently acknowledged commits)")
        if unsafe and not self._allow_unsafe:
            raise UnsafeConfiguration(
                f"PostgreSQL at {self.url} is configured to lose acknowledged writes: {'; '.join(unsafe)}. "
                "Fix the server (or role/database) setting, or pass allow_unsafe=True if you accept the loss."
            )
        await self._migrate()

    async def close(self) -> None:
        if self._closed:
            return
        if self._tasks:  # let queued appends finish (or fail) before the pool goes away
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        try:  # buffered read entries, then chain what this handle audited
            await self._reads.close()
        except AmberError as exc:
            import logging

            logging.getLogger("amber.audit").error("audit: read entries lost at close of %s: %s", self.url, exc)
        self._closed = True
        indexes = [entry.index for entry in self._vector_cache.values()]
        await asyncio.to_thread(lambda: [index.close(wait=None) for index in indexes])  # stop graph builds
        await self._pool.close()

    async def analyze(self) -> None:
        """Refresh the planner's statistics of Amber's tables (``ANALYZE``) and merge the lexical
        indexes' pending entries into the index proper (``gin_clean_pending_list``). Autovacuum does
        both after bulk loads; on a server running without it, plans stay those of empty tables
        (after loading 100,000 memories: the vector hit lookup took ~85 ms instead of ~1 ms) and
        every lexical search scans the whole pending list (~2 MB per index: ~2 ms per search)."""
        async with self._tx() as conn:
            for table in ("sessions", "messages", "facts", "vectors", "vector_stamps", "learn_jobs", "audit"):
                await conn.execute(self._sql(f"ANALYZE {{s}}.{table}"))
            for index in ("messages_tsv", "facts_tsv"):
                await conn.execute(self._sql(f"SELECT gin_clean_pending_list('{{s}}.{index}'::regclass)"))
        self._term_stats_cache.clear()  # common lexemes of the lexical search are read from these

    async def describe(self) -> Mapping[str, Any]:
        rows = await self._fetchall("SELECT track, max(version) FROM {s}.schema_migrations GROUP BY track")
        return {
            "backend": "postgresql",
            "url": self.url,
            "schema": self.schema,
            "durable": True,
            "multi_process": True,
            "server_version": self._settings.get("server_version"),
            "fsync": self._settings.get("fsync"),
            "synchronous_commit": self._settings.get("synchronous_commit"),
            "autovacuum": self._settings.get("autovacuum"),
            "allow_unsafe": self._allow_unsafe,
            "schema_version": {track: version for track, version in rows},
            "vectors": "pgvector" if self._vs is not None else (
                "exact (real[]), in-process" if self._vector_ann_threshold is None else
                f"exact (real[]), in-process; HNSW graph above {self._vector_ann_threshold} vectors of a user"),
            "text_search_config": schema_mod.TEXT_SEARCH_CONFIG,
            "pool": self._pool.get_stats(),
            "write_operations": self._append_calls,
            "write_transactions": self._append_transactions,
        }

    # -- migrations --------------------------------------------------------------------------------
    async def _migrate(self) -> None:
        errors = self._psycopg.errors
        want_vector = self._vectors_mode != "exact"
        try:
            async with self._tx() as conn:
                applied = await self._applied(conn)
                ext_schema = await self._vector_schema(conn)
                current = (
                    applied.get("core", 0) >= len(schema_mod.CORE)
                    and (not want_vector or ext_schema is None or applied.get("pgvector", 0) >= len(schema_mod.PGVECTOR))
                )
                available = False
                if want_vector and ext_schema is None:
                    cur = await conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
                    available = await cur.fetchone() is not None
                if current and not available:
                    self._finish_vectors(ext_schema, applied)
                    return
                # Serialise migrators of this schema across every process and host.
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"amber:migrate:{self.schema}",)
                )
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self._s}")
                await conn.execute(self._sql(schema_mod.LEDGER_SQL))
                applied = await self._applied(conn)
                done: list[str] = []
                for m in schema_mod.CORE[applied.get("core", 0):]:
                    await conn.execute(self._sql(m.sql))
                    await self._record(conn, "core", m)
                    done.append(f"core/{m.version}")
                if want_vector:
                    ext_schema = await self._vector_schema(conn)
                    if ext_schema is None and available:
                        try:
                            async with conn.transaction():  # savepoint: lacking privilege is not fatal
                                await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                        except (errors.InsufficientPrivilege, errors.FeatureNotSupported,
                                errors.UndefinedFile, errors.ObjectNotInPrerequisiteState):
                            pass
                        ext_schema = await self._vector_schema(conn)
                    if ext_schema is not None:
                        self._vs = ext_schema
                        for m in schema_mod.PGVECTOR[applied.get("pgvector", 0):]:
                            await conn.execute(self._sql(m.sql))
                            await self._record(conn, "pgvector", m)
                            done.append(f"pgvector/{m.version}")
                applied = await self._applied(conn)
                self.applied_migrations = done
                self._finish_vectors(ext_schema, applied)
        except (errors.UndefinedTable, errors.DuplicateTable) as exc:  # pragma: no cover - defensive
            raise MigrationError(f"migrating schema {self.schema!r} failed: {exc}") from exc

    async def _applied(self, conn: Any) -> dict[str, int]:
        cur = await conn.execute("SELECT to_regclass(%s)", (f"{self._s}.schema_migrations",))
        if (await cur.fetchone())[0] is None:
            return {}
        cur = await conn.execute(self._sql("SELECT track, max(version) FROM {s}.schema_migrations GROUP BY track"))
        return {track: version for track, version in await cur.fetchall()}

    async def _record(self, conn: Any, track: str, m: schema_mod.Migration) -> None:
        await conn.execute(
            self._sql("INSERT INTO {s}.schema_migrations (track, version, name) VALUES (%s, %s, %s)"),
            (track, m.version, m.name),
        )

    @staticmethod
    async def _vector_schema(conn: Any) -> str | None:
        cur = await conn.execute(
            "SELECT quote_ident(n.nspname) FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
            "WHERE e.extname = 'vector'"
        )
        row = await cur.fetchone()
        return None if row is None else row[0]

    def _finish_vectors(self, ext_schema: str | None, applied: Mapping[str, int]) -> None:
        native = (
            self._vectors_mode != "exact" and ext_schema is not None
            and applied.get("pgvector", 0) >= len(schema_mod.PGVECTOR)
        )
        if native:
            self._vs = ext_schema
            self.capabilities = self.capabilities | {Capability.VECTOR_INDEX_NATIVE}
        else:
            self._vs = None
            if self._require_native:
                raise CapabilityMissing(f"PostgreSQL at {self.url} has no pgvector: {PGVECTOR_INSTALL_HINT}")

    # -- row mapping -------------------------------------------------------------------------------
    @staticmethod
    def _message(key: SessionKey, row: Sequence[Any]) -> Message:
        (seq, mid, role, content, payload, payload_format, author, idem, created_at, metadata, tokens,
         content_hash) = row[:12]
        return Message(
            key=key, seq=seq, id=mid, role=role, content=content, payload=decode_json(payload),
            payload_format=payload_format, author=author, idempotency_key=idem, created_at=_utc(created_at),
            metadata=decode_json(metadata), tokens=tokens, content_hash=content_hash,
        )

    @staticmethod
    def _fact(row: Sequence[Any]) -> Fact:
        (fid, tenant, user, attribute, value, text, kind, sources, thread, confidence, valid_from, valid_to,
         superseded_by, created_at, metadata) = row
        return Fact(
            id=fid, tenant=tenant, user=user, attribute=attribute, value=value, text=text, kind=kind,
            source_message_ids=tuple(sources), thread=thread, confidence=confidence,
            valid_from=_utc(valid_from), valid_to=None if valid_to is None else _utc(valid_to),
            superseded_by=superseded_by, created_at=_utc(created_at), metadata=decode_json(metadata),
        )

    @staticmethod
    def _check_key(key: SessionKey) -> SessionKey:
        if not isinstance(key, SessionKey):
            raise InvalidInput(f"expected a SessionKey, got {type(key).__name__}")
        return key

    async def _audit(
        self, conn: Any, tenant: str, operation: str, *, user: str | None = None, thread: str | None = None,
        record_ids: Sequence[str] = (), digests: Sequence[str] = (), count: int | None = None,
    ) -> None:
        self._reads.wrote()
        await conn.execute(
            self._sql(
                "INSERT INTO {s}.audit (tenant_id, actor, operation, user_id, thread_id, count, record_ids, digests) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s::text[], %s::text[])"
            ),
            (tenant, current_actor(), operation, user, thread, len(record_ids) if count is None else count,
             list(record_ids), list(digests)),
        )

    async def _user_lock(self, conn: Any, tenant: str, user: str, *, exclusive: bool) -> None:
        """Erasure takes a user's lock exclusively; recording a fact or a vector takes it shared. So a
        late learning job either commits before the erasure (which then deletes what it wrote) or
        runs after it and sees the erasure receipt: nothing erased comes back."""
        fn = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        await conn.execute(f"SELECT {fn}(hashtextextended(%s, 0))", (f"amber:user:{self.schema}:{tenant}/{user}",))

    async def _attribute_lock(self, conn: Any, tenant: str, user: str, attribute: str) -> None:
        """Serialise the compare-and-set writes of one user's attribute (``record_fact`` with
        ``expect_current``) until commit: check-then-insert is racy under READ COMMITTED, and
        there is no row to lock when the attribute has no current fact yet. Taken after the
        user's lock, always in that order."""
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                           (f"amber:fact-attribute:{self.schema}:{tenant}/{user}\x1f{attribute}",))

    async def _receipt(self, conn: Any, tenant: str, operation: str, user: str, thread: str | None,
                       ids: Sequence[str]) -> None:
        """Erasure receipt: the erased ids (never content), at most 10,000 per entry."""
        from ..governance.audit import erasure_chunks

        for chunk in erasure_chunks(ids):
            await self._audit(conn, tenant, operation, user=user, thread=thread, record_ids=chunk)

    # -- audit of reads (asynchronous) and the hash chain -----------------------------------------
    async def _write_reads(self, entries: Sequence[Any]) -> None:

        rows = [{"t": e.tenant, "at": e.at.isoformat(), "a": e.actor, "o": e.operation, "u": e.user, "th": e.thread,
                 "n": e.count, "ids": list(e.record_ids), "h": list(e.digests)} for e in entries]
        async with self._tx() as conn:
            await conn.execute(self._sql(
                "INSERT INTO {s}.audit (tenant_id, at, actor, operation, user_id, thread_id, count, record_ids, digests) "
                "SELECT e->>'t', (e->>'at')::timestamptz, e->>'a', e->>'o', e->>'u', e->>'th', (e->>'n')::int, "
                "ARRAY(SELECT jsonb_array_elements_text(e->'ids')), ARRAY(SELECT jsonb_array_elements_text(e->'h')) "
                "FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS x(e, ord) ORDER BY ord"), (json.dumps(rows),))

    async def chain_audit(self, tenant: str | None = None) -> dict[str, tuple[int, str]]:
        from ..governance.audit import GENESIS

        if tenant is not None:
            validate_part("tenant", tenant)
        await self._reads.flush()
        if tenant is not None:
            tenants = [tenant]
        else:
            rows = await self._fetchall("SELECT DISTINCT tenant_id FROM {s}.audit WHERE chain_seq IS NULL")
            tenants = sorted(r[0] for r in rows)
        heads: dict[str, tuple[int, str]] = {}
        for t in tenants:
            head = (0, GENESIS)
            while True:
                head, more = await self._chain_batch(t)
                if not more:
                    break
            heads[t] = head
        return heads

    async def _chain_batch(self, tenant: str, batch: int = 5000) -> tuple[tuple[int, str], bool]:
        """Chain up to ``batch`` of a tenant's unchained entries, in id order, under the tenant's chain
        lock. An entry whose transaction commits after a later id was chained simply gets a later
        position: positions follow what the chainer saw, so late commits never break the chain."""
        from ..governance.audit import GENESIS, chain_links

        async with self._tx() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                               (f"amber:audit-chain:{self.schema}:{tenant}",))
            cur = await conn.execute(self._sql("SELECT chain_seq, chain_hash FROM {s}.audit_heads WHERE tenant_id = %s"),
                                     (tenant,))
            row = await cur.fetchone()
            head = (0, GENESIS) if row is None else (row[0], row[1])
            cur = await conn.execute(self._sql(
                f"SELECT {_AUDIT_COLS} FROM {{s}}.audit WHERE tenant_id = %s AND chain_seq IS NULL ORDER BY id LIMIT %s"),
                (tenant, batch))
            events = [self._audit_event(r) for r in await cur.fetchall()]
            if not events:
                return head, False
            links = chain_links(head, events)
            await conn.execute(self._sql(
                "UPDATE {s}.audit a SET chain_seq = x.pos, chain_hash = x.h "
                "FROM unnest(%s::bigint[], %s::bigint[], %s::text[]) AS x(id, pos, h) "
                "WHERE a.tenant_id = %s AND a.id = x.id"),
                ([i for i, _, _ in links], [p for _, p, _ in links], [h for _, _, h in links], tenant))
            head = (links[-1][1], links[-1][2])
            await conn.execute(self._sql(
                "INSERT INTO {s}.audit_heads (tenant_id, chain_seq, chain_hash) VALUES (%s, %s, %s) "
                "ON CONFLICT (tenant_id) DO UPDATE SET chain_seq = excluded.chain_seq, "
                "chain_hash = excluded.chain_hash, updated_at = now()"), (tenant, head[0], head[1]))
        return head, len(events) == batch

    @staticmethod
    def _audit_event(r: Sequence[Any]) -> AuditEvent:
        return AuditEvent(id=r[0], tenant=r[1], at=_utc(r[2]), actor=r[3], operation=r[4], user=r[5], thread=r[6],
                          count=r[7], record_ids=tuple(r[8]), digests=tuple(r[9]), chain_seq=r[10], chain_hash=r[11])

    # -- transcripts -------------------------------------------------------------------------------
    async def append(self, key: SessionKey, messages: Sequence[NewMessage]) -> list[Message]:
        self._check_key(key)
        if len(messages) > self.limits.max_batch:
            raise InvalidInput(f"at most {self.limits.max_batch} messages per append")
        prepared = [prepare_message(m, self.limits) for m in messages]
        if not prepared:
            return []
        request = _AppendRequest(
            key, prepared, [m.idempotency_key is not None for m in messages], current_actor(),
            asyncio.get_running_loop().create_future(),
        )
        self._pending.append(request)
        if self._flushers < self._max_flushers:
            self._flushers += 1
            task = asyncio.ensure_future(self._flush())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await request.future

    async def _flush(self) -> None:
        """Group commit: while every connection is busy, appends queue up; the next free flusher
        commits all of them (up to a cap) in ONE transaction, then answers each. Nobody is answered
        before that COMMIT returned; a failed batch fails (does not acknowledge) all of it."""
        try:
            while self._pending:
                batch: list[_AppendRequest] = []
                size = 0
                while self._pending and (not batch or size + len(self._pending[0].prepared) <= self.limits.max_batch):
                    request = self._pending.popleft()
                    batch.append(request)
                    size += len(request.prepared)
                try:
                    results = await self._append_batch(batch)
                except (InvalidInput, MigrationError) as exc:
                    if len(batch) == 1:
                        self._answer(batch[0], exc)
                        continue
                    # One bad request must not fail its neighbours: retry each on its own.
                    for request in batch:
                        try:
                            self._answer(request, (await self._append_batch([request]))[0])
                        except Exception as each_exc:  # noqa: BLE001 - handed to the caller
                            self._answer(request, each_exc)
                    continue
                except BaseException as exc:  # noqa: BLE001 - handed to every caller of the batch
                    for request in batch:
                        self._answer(request, exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for request, result in zip(batch, results):
                    self._answer(request, result)
        finally:
            self._flushers -= 1

    @staticmethod
    def _answer(request: "_AppendRequest", result: Any) -> None:
        if request.future.done():  # the caller was cancelled
            return
        if isinstance(result, BaseException):
            request.future.set_exception(result)
        else:
            request.future.set_result(result)

    async def _append_batch(self, batch: Sequence["_AppendRequest"]) -> list[list[Message]]:
        """Commit a batch of append calls in ONE round trip: BEGIN, the session locks, one statement
        that numbers, stores and audits, and COMMIT travel in one pipeline sync. The sequence
        numbers and the idempotency lookups are computed by the database under the row locks."""
        # Lock every session of the batch in one sorted order, so two batches (in any processes)
        # touching the same sessions can never deadlock.
        sessions = sorted({r.key for r in batch}, key=lambda k: (k.tenant, k.user, k.thread))
        flat: list[tuple[int, _AppendRequest, PreparedMessage, bool]] = [
            (ri, r, p, s) for ri, r in enumerate(batch) for p, s in zip(r.prepared, r.supplied)]
        params = {
            "ts": [r.key.tenant for _, r, _, _ in flat], "us": [r.key.user for _, r, _, _ in flat],
            "ths": [r.key.thread for _, r, _, _ in flat], "reqs": [ri + 1 for ri, _, _, _ in flat],
            "ids": [p.id for _, _, p, _ in flat], "roles": [p.role for _, _, p, _ in flat],
            "contents": [p.content for _, _, p, _ in flat], "payloads": [p.payload_json for _, _, p, _ in flat],
            "formats": [p.payload_format for _, _, p, _ in flat], "authors": [p.author for _, _, p, _ in flat],
            "keys": [p.idempotency_key for _, _, p, _ in flat], "supplied": [s for _, _, _, s in flat],
            "created": [p.created_at for _, _, p, _ in flat], "metas": [p.metadata_json for _, _, p, _ in flat],
            "tokens": [p.tokens for _, _, p, _ in flat], "hashes": [p.content_hash for _, _, p, _ in flat],
            "jobs": [new_id("job") for _ in flat], "actors": [r.actor for r in batch],
        }
        if self._closed:
            raise StoreUnavailable(f"the store {self.url} is closed")
        try:
            async with self._pool.connection() as conn:
                async with conn.pipeline():
                    async with conn.transaction():
                        # The upsert takes each session's row lock: every other appender to these
                        # sessions, in any process, waits here until we commit. The next statement
                        # starts after that, with a fresh snapshot (READ COMMITTED): it sees their
                        # commits, so last_seq and the stored idempotency keys are current.
                        await conn.execute(self._sql(_LOCK_SESSIONS_SQL), (
                            [k.tenant for k in sessions], [k.user for k in sessions], [k.thread for k in sessions]))
                        cur = await conn.execute(self._sql(_APPEND_SQL), params)
                # Leaving the pipeline block sent COMMIT and waited for every reply: nothing below
                # runs (and nobody is answered) unless the COMMIT succeeded.
                rows = await cur.fetchall()
        except AmberError:
            raise
        except (self._psycopg.Error, self._psycopg_pool.PoolTimeout, self._psycopg_pool.PoolClosed) as exc:
            raise self._translate(exc) from exc
        # rows: (ord, seq) for a stored new message, or (ord, seq, <stored columns>) for a key that
        # was already stored (a retry); a key repeated within the batch has no row: it resolves to
        # its first occurrence below.
        outcome = {r[0]: r for r in rows}
        stored: dict[tuple[SessionKey, str], Message] = {}
        results: list[list[Message]] = [[] for _ in batch]
        for ord_, (ri, request, p, _) in enumerate(flat, start=1):
            key = request.key
            row = outcome.get(ord_)
            if row is None:
                msg = stored[(key, p.idempotency_key)]
            elif row[2] is not None:  # already stored before this batch
                msg = self._message(key, row[1:])
            else:
                msg = Message(
                    key=key, seq=row[1], id=p.id, role=p.role, content=p.content,
                    payload=decode_json(p.payload_json), payload_format=p.payload_format, author=p.author,
                    idempotency_key=p.idempotency_key, created_at=p.created_at,
                    metadata=decode_json(p.metadata_json), tokens=p.tokens, content_hash=p.content_hash,
                )
            stored.setdefault((key, p.idempotency_key), msg)
            results[ri].append(msg)
        self._append_transactions += 1
        self._append_calls += len(batch)
        if rows:
            self._reads.wrote()
        return results

    async def read_window(
        self, key: SessionKey, *, last: int | None = None, max_tokens: int | None = None
    ) -> list[Message]:
        self._check_key(key)
        validate_limit(last, "last")
        validate_limit(max_tokens, "max_tokens")
        if last == 0:
            return self._read_messages(key, [])
        # The running total lets the server drop everything older than the budget; select_window
        # then applies the contract's rule to what came back.
        rows = await self._fetchall(
            f"SELECT * FROM (SELECT {_MSG_COLS}, sum(tokens) OVER (ORDER BY seq DESC) AS running "
            "FROM {s}.messages WHERE tenant_id = %s AND user_id = %s AND thread_id = %s "
            "ORDER BY seq DESC LIMIT %s) w WHERE %s::bigint IS NULL OR running <= %s ORDER BY seq DESC",
            (key.tenant, key.user, key.thread, last, max_tokens, max_tokens),
        )
        keep = select_window([r[10] for r in rows], last, max_tokens)
        return self._read_messages(key, [self._message(key, r) for r in reversed(rows[:keep])])

    async def read_since(self, key: SessionKey, after_seq: int = 0, *, limit: int | None = None) -> list[Message]:
        self._check_key(key)
        validate_limit(after_seq, "after_seq", allow_none=False)
        validate_limit(limit)
        rows = await self._fetchall(
            f"SELECT {_MSG_COLS} FROM {{s}}.messages WHERE tenant_id = %s AND user_id = %s AND thread_id = %s "
            "AND seq > %s ORDER BY seq LIMIT %s",
            (key.tenant, key.user, key.thread, after_seq, limit),
        )
        return self._read_messages(key, [self._message(key, r) for r in rows])

    async def get_session(self, key: SessionKey) -> SessionInfo | None:
        self._check_key(key)
        rows = await self._fetchall(
            f"SELECT last_seq, created_at, updated_at, {_MESSAGE_COUNT} FROM {{s}}.sessions s "
            "WHERE tenant_id = %s AND user_id = %s AND thread_id = %s AND last_seq > 0",
            (key.tenant, key.user, key.thread),
        )
        if not rows:
            return None
        last_seq, created, updated, count = rows[0]
        return SessionInfo(key, count, last_seq, _utc(created), _utc(updated))

    async def list_sessions(
        self, tenant: str, user: str | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[SessionInfo]:
        validate_part("tenant", tenant)
        if user is not None:
            validate_part("user", user)
        validate_limit(limit, allow_none=False)
        validate_limit(offset, "offset", allow_none=False)
        rows = await self._fetchall(
            f"SELECT user_id, thread_id, last_seq, created_at, updated_at, {_MESSAGE_COUNT} FROM {{s}}.sessions s "
            "WHERE tenant_id = %s AND (%s::text IS NULL OR user_id = %s) AND last_seq > 0 "
            'ORDER BY updated_at DESC, user_id COLLATE "C" DESC, thread_id COLLATE "C" DESC LIMIT %s OFFSET %s',
            (tenant, user, user, limit, offset),
        )
        return [SessionInfo(SessionKey(tenant, u, t), count, n, _utc(c), _utc(up)) for u, t, n, c, up, count in rows]

    async def list_users(self, tenant: str, *, limit: int = 100, offset: int = 0) -> list[str]:
        validate_part("tenant", tenant)
        validate_limit(limit, allow_none=False)
        validate_limit(offset, "offset", allow_none=False)
        rows = await self._fetchall(
            "SELECT user_id FROM (SELECT user_id FROM {s}.sessions WHERE tenant_id = %s AND last_seq > 0 "
            "UNION SELECT user_id FROM {s}.facts WHERE tenant_id = %s) u "
            'ORDER BY user_id COLLATE "C" LIMIT %s OFFSET %s',
            (tenant, tenant, limit, offset),
        )
        return [r[0] for r in rows]

    # -- restore -----------------------------------------------------------------------------------
    async def restore_session(
        self, key: SessionKey, messages: Sequence[Message], states: Sequence[StateBlob] = (), *,
        created_at: datetime | None = None, updated_at: datetime | None = None, last_seq: int | None = None,
    ) -> SessionInfo | None:
        self._check_key(key)
        r = prepare_restore(key, messages, states, created_at=created_at, updated_at=updated_at,
                            last_seq=last_seq, limits=self.limits)
        pk = (key.tenant, key.user, key.thread)
        where = "tenant_id = %s AND user_id = %s AND thread_id = %s"
        msgs = [p for _, p in r.messages]
        async with self._tx() as conn:
            # The session row lock, as append takes it: a concurrent append waits for our commit
            # and then numbers after last_seq; one that got there first makes us refuse.
            if r.last_seq:
                cur = await conn.execute(self._sql(
                    "INSERT INTO {s}.sessions AS s (tenant_id, user_id, thread_id) VALUES (%s, %s, %s) "
                    "ON CONFLICT (tenant_id, user_id, thread_id) DO UPDATE SET last_seq = s.last_seq RETURNING last_seq"),
                    pk)
            else:
                cur = await conn.execute(self._sql(f"SELECT last_seq FROM {{s}}.sessions WHERE {where} FOR UPDATE"), pk)
            row = await cur.fetchone()
            if row is not None and row[0] > 0:
                raise restore_conflict(f"session {key} already holds messages")
            cur = await conn.execute(self._sql(f"SELECT 1 FROM {{s}}.states WHERE {where} LIMIT 1"), pk)
            if await cur.fetchone():
                raise restore_conflict(f"session {key} already holds state")
            if msgs:
                cur = await conn.execute(self._sql(
                    "SELECT id FROM {s}.messages WHERE tenant_id = %s AND id = ANY(%s::text[]) LIMIT 1"),
                    (key.tenant, [p.id for p in msgs]))
                taken = await cur.fetchone()
                if taken:
                    raise restore_conflict(f"message id {taken[0]!r} is taken")
                await conn.execute(self._sql(
                    "INSERT INTO {s}.messages (tenant_id, user_id, thread_id, seq, id, role, content, payload, "
                    "payload_format, author, idempotency_key, created_at, metadata, tokens, content_hash) "
                    "SELECT %s::text, %s::text, %s::text, x.* FROM unnest(%s::bigint[], %s::text[], %s::text[], "
                    "%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::text[], "
                    "%s::int[], %s::text[]) AS x"), (
                    *pk, [seq for seq, _ in r.messages], [p.id for p in msgs], [p.role for p in msgs],
                    [p.content for p in msgs], [p.payload_json for p in msgs], [p.payload_format for p in msgs],
                    [p.author for p in msgs], [p.idempotency_key for p in msgs], [p.created_at for p in msgs],
                    [p.metadata_json for p in msgs], [p.tokens for p in msgs], [p.content_hash for p in msgs]))
                await conn.execute(self._sql(
                    "INSERT INTO {s}.learn_jobs (tenant_id, id, user_id, thread_id, message_id, seq) "
                    "SELECT %s::text, j, %s::text, %s::text, m, q FROM unnest(%s::text[], %s::text[], %s::bigint[]) "
                    "AS x(j, m, q)"),
                    (*pk, [new_id("job") for _ in msgs], [p.id for p in msgs],
                     [seq for seq, _ in r.messages]))
            if r.last_seq:
                await conn.execute(self._sql(
                    f"UPDATE {{s}}.sessions SET last_seq = %s, created_at = %s, updated_at = %s WHERE {where}"),
                    (r.last_seq, r.created_at, r.updated_at, *pk))
            if r.states:
                cur = await conn.execute(self._sql(
                    "INSERT INTO {s}.states (tenant_id, user_id, thread_id, name, version, data, updated_at) "
                    "SELECT %s::text, %s::text, %s::text, x.* FROM unnest(%s::text[], %s::bigint[], %s::text[], "
                    "%s::timestamptz[]) AS x ON CONFLICT DO NOTHING"),
                    (*pk, [n for n, _, _, _ in r.states], [v for _, v, _, _ in r.states],
                     [t for _, _, t, _ in r.states], [at for _, _, _, at in r.states]))
                if cur.rowcount != len(r.states):  # a put_state raced us
                    raise restore_conflict(f"session {key} already holds state")
            ids, digests = r.audit()
            await self._audit(conn, key.tenant, "session.restore", user=key.user, thread=key.thread,
                              record_ids=ids, digests=digests)
        if not r.last_seq:
            return None
        return SessionInfo(key, len(r.messages), r.last_seq, r.created_at, r.updated_at)

    async def restore_facts(self, tenant: str, user: str, facts: Sequence[Fact]) -> None:
        restored = prepare_restored_facts(tenant, user, facts, self.limits)
        async with self._tx() as conn:
            await self._user_lock(conn, tenant, user, exclusive=False)
            if restored:
                cur = await conn.execute(self._sql(
                    "SELECT id FROM {s}.facts WHERE tenant_id = %s AND id = ANY(%s::text[]) LIMIT 1"),
                    (tenant, [f.id for f in restored]))
                taken = await cur.fetchone()
                if taken:
                    raise restore_conflict(f"fact id {taken[0]!r} is taken")
                async with conn.cursor() as cur:
                    await cur.executemany(self._sql(
                        "INSERT INTO {s}.facts (tenant_id, user_id, id, attribute, value, text, kind, "
                        "source_message_ids, thread_id, confidence, valid_from, valid_to, superseded_by, created_at, "
                        "metadata) VALUES (%s, %s, %s, %s, %s, %s, %s, %s::text[], %s, %s, %s, %s, %s, %s, %s)"),
                        [(tenant, user, f.id, f.attribute, f.value, f.text, f.kind, list(f.source_message_ids),
                          f.thread, f.confidence, f.valid_from, f.valid_to, f.superseded_by, f.created_at,
                          encode_json(dict(f.metadata), "metadata")) for f in restored])
            await self._audit(conn, tenant, "fact.restore", user=user, record_ids=[f.id for f in restored],
                              digests=[digest(f.text) for f in restored])

    # -- state -------------------------------------------------------------------------------------
    async def get_state(self, key: SessionKey, name: str) -> StateBlob | None:
        self._check_key(key)
        validate_state_name(name)
        rows = await self._fetchall(
            "SELECT version, data, updated_at FROM {s}.states "
            "WHERE tenant_id = %s AND user_id = %s AND thread_id = %s AND name = %s",
            (key.tenant, key.user, key.thread, name),
        )
        if not rows:
            self.audit_read(key.tenant, "state.read", user=key.user, thread=key.thread)
            return None
        version, data, updated = rows[0]
        self.audit_read(key.tenant, "state.read", user=key.user, thread=key.thread,
                        record_ids=[f"{name}@{version}"], digests=[digest(data)])
        return StateBlob(key, name, version, decode_json(data), _utc(updated))

    async def list_states(self, key: SessionKey) -> list[str]:
        self._check_key(key)
        rows = await self._fetchall(
            'SELECT name FROM {s}.states WHERE tenant_id = %s AND user_id = %s AND thread_id = %s ORDER BY name COLLATE "C"',
            (key.tenant, key.user, key.thread))
        return [r[0] for r in rows]

    async def put_state(
        self, key: SessionKey, name: str, data: Mapping[str, Any], *, expected_version: int | None = None
    ) -> StateBlob:
        self._check_key(key)
        validate_state_name(name)
        validate_limit(expected_version, "expected_version")
        if not isinstance(data, Mapping):
            raise InvalidInput("state data must be a mapping")
        text = encode_json(dict(data), "state")
        if len(text.encode()) > self.limits.max_state_bytes:
            raise MessageTooLarge(f"state is larger than {self.limits.max_state_bytes} bytes")
        pk = (key.tenant, key.user, key.thread, name)
        async with self._tx() as conn:
            if expected_version is None:
                sql = ("INSERT INTO {s}.states AS st (tenant_id, user_id, thread_id, name, version, data) "
                       "VALUES (%s, %s, %s, %s, 1, %s) ON CONFLICT (tenant_id, user_id, thread_id, name) "
                       "DO UPDATE SET version = st.version + 1, data = excluded.data, updated_at = now() "
                       "RETURNING version, updated_at")
                params: tuple[Any, ...] = (*pk, text)
            elif expected_version == 0:
                sql = ("INSERT INTO {s}.states (tenant_id, user_id, thread_id, name, version, data) "
                       "VALUES (%s, %s, %s, %s, 1, %s) ON CONFLICT DO NOTHING RETURNING version, updated_at")
                params = (*pk, text)
            else:
                sql = ("UPDATE {s}.states SET version = version + 1, data = %s, updated_at = now() "
                       "WHERE tenant_id = %s AND user_id = %s AND thread_id = %s AND name = %s AND version = %s "
                       "RETURNING version, updated_at")
                params = (text, *pk, expected_version)
            cur = await conn.execute(self._sql(sql), params)
            row = await cur.fetchone()
            if row is None:
                cur = await conn.execute(
                    self._sql("SELECT version FROM {s}.states WHERE tenant_id = %s AND user_id = %s "
                              "AND thread_id = %s AND name = %s"), pk)
                found = await cur.fetchone()
                actual = 0 if found is None else found[0]
                raise VersionConflict(
                    f"state {name!r} of {key} is at version {actual}, not {expected_version}",
                    expected=expected_version, actual=actual,
                )
            version, updated = row
            await self._audit(conn, key.tenant, "state.put", user=key.user, thread=key.thread,
                              record_ids=[f"{name}@{version}"], digests=[digest(text)])
        return StateBlob(key, name, version, decode_json(text), _utc(updated))

    # -- deletion ----------------------------------------------------------------------------------
    async def delete_session(self, key: SessionKey) -> DeletionReceipt:
        self._check_key(key)
        pk = (key.tenant, key.user, key.thread)
        where = "tenant_id = %s AND user_id = %s AND thread_id = %s"
        async with self._tx() as conn:
            await self._user_lock(conn, key.tenant, key.user, exclusive=True)
            # Lock the session row so no append interleaves with the deletion.
            await conn.execute(self._sql(f"SELECT 1 FROM {{s}}.sessions WHERE {where} FOR UPDATE"), pk)
            cur = await conn.execute(self._sql(f"DELETE FROM {{s}}.messages WHERE {where} RETURNING id"), pk)
            ids = sorted(r[0] for r in await cur.fetchall())
            cur = await conn.execute(self._sql(f"DELETE FROM {{s}}.states WHERE {where} RETURNING name, version"), pk)
            states = [f"state:{key.thread}/{n}@{v}" for n, v in sorted(await cur.fetchall())]
            cur = await conn.execute(self._sql(f"DELETE FROM {{s}}.learn_jobs WHERE {where}"), pk)
            jobs = cur.rowcount
            cur = await conn.execute(
                self._sql("DELETE FROM {s}.vectors WHERE tenant_id = %s AND user_id = %s AND kind = 'message' "
                          "AND item_id = ANY(%s::text[])"),
                (key.tenant, key.user, ids),
            )
            vectors = cur.rowcount
            await conn.execute(self._sql(f"DELETE FROM {{s}}.sessions WHERE {where}"), pk)
            await self._receipt(conn, key.tenant, "session.delete", key.user, key.thread, ids + states)
            cur = await conn.execute("SELECT now()")
            at = (await cur.fetchone())[0]
        counts = {"messages": len(ids), "states": len(states), "jobs": jobs, "vectors": vectors}
        return DeletionReceipt("session.delete", key.tenant, key.user, key.thread, counts, _utc(at))

    async def _drop_orphaned_facts(self, conn: Any, key: SessionKey, message_id: str) -> None:
        """Delete the facts ``message_id`` is a source of that have no other live source message
        (with their vectors); audited as ``fact.delete``."""
        cur = await conn.execute(self._sql(
            "DELETE FROM {s}.facts f WHERE f.tenant_id = %s AND f.user_id = %s AND %s = ANY(f.source_message_ids) "
            "AND NOT EXISTS (SELECT 1 FROM {s}.messages m WHERE m.tenant_id = f.tenant_id AND m.user_id = f.user_id "
            "AND m.id = ANY(f.source_message_ids) AND m.id <> %s) RETURNING f.id"),
            (key.tenant, key.user, message_id, message_id))
        gone = sorted(r[0] for r in await cur.fetchall())
        if gone:
            await conn.execute(
                self._sql("DELETE FROM {s}.vectors WHERE tenant_id = %s AND user_id = %s AND kind = 'fact' "
                          "AND item_id = ANY(%s::text[])"), (key.tenant, key.user, gone))
            await self._audit(conn, key.tenant, "fact.delete", user=key.user, thread=key.thread, record_ids=gone)

    async def delete_message(self, key: SessionKey, message_id: str) -> bool:
        self._check_key(key)
        if not isinstance(message_id, str):
            return False
        pk = (key.tenant, key.user, key.thread)
        where = "tenant_id = %s AND user_id = %s AND thread_id = %s"
        async with self._tx() as conn:
            # As an erasure: a late learning job commits its fact before (deleted here) or sees the receipt.
            await self._user_lock(conn, key.tenant, key.user, exclusive=True)
            cur = await conn.execute(
                self._sql(f"DELETE FROM {{s}}.messages WHERE {where} AND id = %s RETURNING content_hash"),
                (*pk, message_id))
            row = await cur.fetchone()
            if row is None:
                return False
            await conn.execute(self._sql(f"DELETE FROM {{s}}.learn_jobs WHERE {where} AND message_id = %s"),
                               (*pk, message_id))
            await conn.execute(
                self._sql("DELETE FROM {s}.vectors WHERE tenant_id = %s AND user_id = %s AND kind = 'message' "
                          "AND item_id = %s"), (key.tenant, key.user, message_id))
            await self._audit(conn, key.tenant, "message.delete", user=key.user, thread=key.thread,
                              record_ids=[message_id], digests=[row[0]])
            await self._drop_orphaned_facts(conn, key, message_id)
        return True

    async def correct_message(
        self, key: SessionKey, message_id: str, content: str, *, reason: str | None = None
    ) -> Message:
        self._check_key(key)
        c = prepare_correction(message_id, content, reason, self.limits)
        pk = (key.tenant, key.user, key.thread)
        where = "tenant_id = %s AND user_id = %s AND thread_id = %s"
        async with self._tx() as conn:
            await self._user_lock(conn, key.tenant, key.user, exclusive=True)
            cur = await conn.execute(
                self._sql(f"SELECT {_MSG_COLS} FROM {{s}}.messages WHERE {where} AND id = %s FOR UPDATE"),
                (*pk, message_id))
            row = await cur.fetchone()
            if row is None:
                raise NotFound(f"session {key} holds no message {message_id!r}")
            old = self._message(key, row)
            meta = c.metadata(old.metadata, self.limits)
            new_hash = c.content_hash(old.role)
            # tsv is a generated column: the lexical index follows the new content
            await conn.execute(
                self._sql(f"UPDATE {{s}}.messages SET content = %s, payload = NULL, payload_format = 'text/1', "
                          f"metadata = %s, tokens = %s, content_hash = %s WHERE {where} AND seq = %s"),
                (c.content, meta, c.tokens, new_hash, *pk, old.seq))
            await conn.execute(self._sql(f"DELETE FROM {{s}}.learn_jobs WHERE {where} AND message_id = %s"),
                               (*pk, message_id))
            await conn.execute(  # learn again, from the new text
                self._sql("INSERT INTO {s}.learn_jobs (id, tenant_id, user_id, thread_id, message_id, seq, available_at) "
                          "VALUES (%s, %s, %s, %s, %s, %s, now())"),
                (new_id("job"), *pk, message_id, old.seq))
            await conn.execute(
                self._sql("DELETE FROM {s}.vectors WHERE tenant_id = %s AND user_id = %s AND kind = 'message' "
                          "AND item_id = %s"), (key.tenant, key.user, message_id))
            await self._audit(conn, key.tenant, "message.correct", user=key.user, thread=key.thread,
                              record_ids=[message_id], digests=[old.content_hash, new_hash])
            await self._drop_orphaned_facts(conn, key, message_id)
        return replace(old, content=c.content, payload=None, payload_format="text/1",
                       metadata=decode_json(meta), tokens=c.tokens, content_hash=new_hash)

    async def delete_user(self, tenant: str, user: str) -> DeletionReceipt:
        validate_part("tenant", tenant)
        validate_part("user", user)
        pk = (tenant, user)
        where = "tenant_id = %s AND user_id = %s"
        counts: dict[str, int] = {}
        async with self._tx() as conn:
            await self._user_lock(conn, tenant, user, exclusive=True)
            cur = await conn.execute(
                self._sql(f"DELETE FROM {{s}}.sessions WHERE {where} RETURNING last_seq > 0"), pk)
            counts["sessions"] = sum(1 for (real,) in await cur.fetchall() if real)
            cur = await conn.execute(self._sql(f"DELETE FROM {{s}}.messages WHERE {where} RETURNING id"), pk)
            ids = sorted(r[0] for r in await cur.fetchall())
            counts["messages"] = len(ids)
            cur = await conn.execute(
                self._sql(f"DELETE FROM {{s}}.states WHERE {where} RETURNING thread_id, name, version"), pk)
            states = [f"state:{t}/{n}@{v}" for t, n, v in sorted(await cur.fetchall())]
            counts["states"] = len(states)
            cur = await conn.execute(self._sql(f"DELETE FROM {{s}}.facts WHERE {where} RETURNING id"), pk)
            facts = sorted(r[0] for r in await cur.fetchall())
            counts["facts"] = len(facts)
            for table, label in (("learn_jobs", "jobs"), ("vectors", "vectors")):
                cur = await conn.execute(self._sql(f"DELETE FROM {{s}}.{table} WHERE {where}"), pk)
                counts[label] = cur.rowcount
            await self._receipt(conn, tenant, "user.delete", user, None, ids + facts + states)
            cur = await conn.execute("SELECT now()")
            at = (await cur.fetchone())[0]
        return DeletionReceipt("user.delete", tenant, user, None, counts, _utc(at))

    async def prune(self, tenant: str, *, before: Mapping[str, datetime]) -> DeletionReceipt:
        from ..governance.retention import check_cutoffs

        validate_part("tenant", tenant)
        cut = check_cutoffs(before)
        counts = {"messages": 0, "facts": 0, "states": 0, "jobs": 0, "vectors": 0}
        by_user: dict[str, list[str]] = collections.defaultdict(list)
        async with self._tx() as conn:
            if "messages" in cut:
                cur = await conn.execute(self._sql(
                    "DELETE FROM {s}.messages WHERE tenant_id = %s AND created_at < %s RETURNING user_id, id"),
                    (tenant, cut["messages"]))
                gone = sorted(await cur.fetchall())
                ids = [i for _, i in gone]
                for u, i in gone:
                    by_user[u].append(i)
                counts["messages"] = len(ids)
                if ids:
                    cur = await conn.execute(self._sql(
                        "DELETE FROM {s}.learn_jobs WHERE tenant_id = %s AND message_id = ANY(%s::text[])"), (tenant, ids))
                    counts["jobs"] = cur.rowcount
                    cur = await conn.execute(self._sql(
                        "DELETE FROM {s}.vectors WHERE tenant_id = %s AND kind = 'message' AND item_id = ANY(%s::text[])"),
                        (tenant, ids))
                    counts["vectors"] += cur.rowcount
            if "facts" in cut:
                cur = await conn.execute(self._sql(
                    "DELETE FROM {s}.facts WHERE tenant_id = %s AND created_at < %s RETURNING user_id, id"),
                    (tenant, cut["facts"]))
                gone = sorted(await cur.fetchall())
                ids = [i for _, i in gone]
                for u, i in gone:
                    by_user[u].append(i)
                counts["facts"] = len(ids)
                if ids:
                    cur = await conn.execute(self._sql(
                        "DELETE FROM {s}.vectors WHERE tenant_id = %s AND kind = 'fact' AND item_id = ANY(%s::text[])"),
                        (tenant, ids))
                    counts["vectors"] += cur.rowcount
            if "states" in cut:
                cur = await conn.execute(self._sql(
                    "DELETE FROM {s}.states WHERE tenant_id = %s AND updated_at < %s "
                    "RETURNING user_id, thread_id, name, version"), (tenant, cut["states"]))
                gone = sorted(await cur.fetchall())
                for u, t, n, v in gone:
                    by_user[u].append(f"state:{t}/{n}@{v}")
                counts["states"] = len(gone)
            for user in sorted(by_user):
                await self._receipt(conn, tenant, "retention.prune", user, None, by_user[user])
            cur = await conn.execute("SELECT now()")
            at = (await cur.fetchone())[0]
        return DeletionReceipt("retention.prune", tenant, "*", None, counts, _utc(at))

    # -- facts -------------------------------------------------------------------------------------
    async def record_fact(
        self, tenant: str, user: str, fact: NewFact, *, supersedes: Sequence[str] = (),
        expect_current: Sequence[str] | None = None, superseded_by: str | None = None,
    ) -> Fact:
        validate_part("tenant", tenant)
        validate_part("user", user)
        prepare_fact(fact, self.limits)
        if isinstance(supersedes, str):
            raise InvalidInput("supersedes must be a sequence of fact ids, not a string")
        supersedes = list(dict.fromkeys(supersedes))
        expected = validate_expect_current(expect_current)
        validate_history_write(fact, supersedes, superseded_by)
        sources = [str(s) for s in fact.source_message_ids]
        metadata = encode_json(dict(fact.metadata), "metadata")
        fid = new_id("fact")
        async with self._tx() as conn:
            await self._user_lock(conn, tenant, user, exclusive=False)
            if expected is not None:
                await self._attribute_lock(conn, tenant, user, fact.attribute)
            old: list[tuple[str, datetime]] = []
            inherited: set[str] = set()
            if supersedes:
                cur = await conn.execute(
                    self._sql("SELECT id, valid_from, valid_to, source_message_ids FROM {s}.facts "
                              "WHERE tenant_id = %s AND user_id = %s AND id = ANY(%s::text[]) ORDER BY id FOR UPDATE"),
                    (tenant, user, supersedes),
                )
                rows = {r[0]: r for r in await cur.fetchall()}
                inherited = {src for r in rows.values() for src in (r[3] or ())}
                for sid in supersedes:
                    row = rows.get(sid)
                    if row is None:
                        raise InvalidInput(f"cannot supersede unknown fact {sid!r}")
                    if row[2] is not None:
                        raise VersionConflict(f"fact {sid} is already superseded", expected=None, actual=None)
                    old.append((sid, row[1]))
            if expected is not None:
                # Under the attribute's lock and READ COMMITTED, this statement's snapshot holds every
                # fact the lock's previous holders committed: no other compare-and-set slips in between.
                cur = await conn.execute(self._sql(
                    "SELECT id FROM {s}.facts WHERE tenant_id = %s AND user_id = %s AND attribute = %s "
                    "AND valid_to IS NULL"), (tenant, user, fact.attribute))
                check_current_facts(expected, (r[0] for r in await cur.fetchall()))
            valid_to = None
            if superseded_by is not None:
                cur = await conn.execute(self._sql(
                    "SELECT attribute, valid_from FROM {s}.facts WHERE tenant_id = %s AND user_id = %s AND id = %s"),
                    (tenant, user, superseded_by))
                row = await cur.fetchone()
                valid_to = check_superseding_fact(superseded_by, None if row is None else (row[0], row[1]),
                                                  fact.attribute, fact.valid_from)
            fresh = [src for src in sources if src not in inherited]
            if fresh:
                # A source message that exists now (restored with its id) is not erased any more.
                cur = await conn.execute(self._sql(
                    "SELECT 1 FROM {s}.messages WHERE tenant_id = %s AND user_id = %s AND id = ANY(%s::text[]) LIMIT 1"),
                    (tenant, user, fresh))
                if await cur.fetchone():
                    fresh = []
            if fresh:
                # A fact learned only from erased messages must not come back (a late learning job).
                cur = await conn.execute(self._sql(
                    "SELECT count(DISTINCT src) FROM unnest(%s::text[]) AS src WHERE EXISTS (SELECT 1 FROM {s}.audit a "
                    f"WHERE a.tenant_id = %s AND a.user_id = %s AND a.operation IN {_ERASURES} "
                    "AND src = ANY(a.record_ids))"), (fresh, tenant, user))
                if (await cur.fetchone())[0] == len(set(fresh)):
                    raise NotFound(f"the source messages of this fact were erased ({', '.join(fresh[:3])})")
            cur = await conn.execute(
                self._sql(
                    f"INSERT INTO {{s}}.facts (tenant_id, user_id, id, attribute, value, text, kind, "
                    "source_message_ids, thread_id, confidence, valid_from, valid_to, superseded_by, metadata) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s::text[], %s, %s, coalesce(%s, clock_timestamp()), %s, %s, %s) "
                    f"RETURNING {_FACT_COLS}"
                ),
                (tenant, user, fid, fact.attribute, fact.value, fact.text, fact.kind, sources, fact.thread,
                 float(fact.confidence), fact.valid_from, valid_to, superseded_by, metadata),
            )
            new = self._fact(await cur.fetchone())
            if old:
                await conn.execute(
                    self._sql("UPDATE {s}.facts SET valid_to = greatest(%s, valid_from), superseded_by = %s "
                              "WHERE tenant_id = %s AND user_id = %s AND id = ANY(%s::text[])"),
                    (new.valid_from, new.id, tenant, user, [sid for sid, _ in old]),
                )
            await self._audit(conn, tenant, "fact.record", user=user, thread=fact.thread,
                              record_ids=[new.id, *[sid for sid, _ in old]], digests=[digest(new.text)])
        return new

    async def list_facts(
        self, tenant: str, user: str, *, attribute: str | None = None, include_superseded: bool = False,
        limit: int | None = None,
    ) -> list[Fact]:
        validate_part("tenant", tenant)
        validate_part("user", user)
        validate_limit(limit)
        rows = await self._fetchall(
            f"SELECT {_FACT_COLS} FROM {{s}}.facts WHERE tenant_id = %s AND user_id = %s "
            "AND (%s::text IS NULL OR attribute = %s) AND (%s OR valid_to IS NULL) "
            "ORDER BY created_at DESC, id DESC LIMIT %s",
            (tenant, user, attribute, attribute, bool(include_superseded), limit),
        )
        return self._read_facts(tenant, user, [self._fact(r) for r in rows])

    async def get_fact(self, tenant: str, user: str, fact_id: str) -> Fact | None:
        validate_part("tenant", tenant)
        validate_part("user", user)
        if not isinstance(fact_id, str):
            raise InvalidInput("fact_id must be a string")
        rows = await self._fetchall(
            f"SELECT {_FACT_COLS} FROM {{s}}.facts WHERE tenant_id = %s AND user_id = %s AND id = %s",
            (tenant, user, fact_id),
        )
        found = self._fact(rows[0]) if rows else None
        self._read_facts(tenant, user, [found] if found else [])
        return found

    async def superseded_sources(
        self, tenant: str, user: str, fact_ids: Sequence[str], *, history: int = SUPERSEDED_HISTORY
    ) -> set[str]:
        ids = superseded_query_ids(tenant, user, fact_ids, history)
        if not ids:
            return set()
        # One round trip. Only attributes with a superseded fact can make a turn stale, so the
        # history of an attribute that never changed (the common case) is not read at all.
        rows = await self._fetchall(
            "WITH attrs AS (SELECT DISTINCT attribute FROM {s}.facts"
            " WHERE tenant_id = %s AND user_id = %s AND id = ANY(%s)),"
            " changed AS (SELECT a.attribute FROM attrs a WHERE EXISTS (SELECT 1 FROM {s}.facts f"
            " WHERE f.tenant_id = %s AND f.user_id = %s AND f.attribute = a.attribute AND f.valid_to IS NOT NULL))"
            " SELECT c.attribute, h.value, h.source_message_ids, h.valid_to IS NULL FROM changed c"
            " CROSS JOIN LATERAL (SELECT value, source_message_ids, valid_to FROM {s}.facts f"
            " WHERE f.tenant_id = %s AND f.user_id = %s AND f.attribute = c.attribute"
            " ORDER BY created_at DESC, id DESC LIMIT %s) h",
            (tenant, user, ids, tenant, user, tenant, user, history),
        )
        return stale_sources((a, v, tuple(src or ()), bool(cur)) for a, v, src, cur in rows)

    async def delete_fact(self, tenant: str, user: str, fact_id: str) -> bool:
        validate_part("tenant", tenant)
        validate_part("user", user)
        if not isinstance(fact_id, str):
            raise InvalidInput("fact_id must be a string")
        async with self._tx() as conn:
            cur = await conn.execute(
                self._sql("DELETE FROM {s}.facts WHERE tenant_id = %s AND user_id = %s AND id = %s"),
                (tenant, user, fact_id),
            )
            if cur.rowcount == 0:
                return False
            await conn.execute(
                self._sql("DELETE FROM {s}.vectors WHERE tenant_id = %s AND user_id = %s AND kind = 'fact' "
                          "AND item_id = %s"),
                (tenant, user, fact_id),
            )
            await self._audit(conn, tenant, "fact.delete", user=user, record_ids=[fact_id])
        return True

    # -- search ------------------------------------------------------------------------------------
    @staticmethod
    def _kinds(kinds: Sequence[str]) -> tuple[bool, bool]:
        if isinstance(kinds, str):
            kinds = (kinds,)
        unknown = set(kinds) - set(_KINDS)
        if unknown:
            raise InvalidInput(f"unknown search kinds {sorted(unknown)}; expected a subset of {list(_KINDS)}")
        return "message" in kinds, "fact" in kinds

    @staticmethod
    def _hit(row: Sequence[Any], tenant: str, user: str, path: str) -> Hit:
        # kind, id, text, thread, seq, created, sources, valid_from, valid_to, score, role, author
        kind, hid, text, thread, seq, created, sources, valid_from, valid_to, score, role, author = row[:12]
        score = max(0.0, min(1.0, float(score)))
        return Hit(
            kind, hid, score, text, tenant, user, thread, seq, _utc(created),
            (hid,) if kind == "message" else tuple(sources or ()),
            None if valid_from is None else _utc(valid_from), None if valid_to is None else _utc(valid_to),
            {path: score}, role, author,
        )

    async def search_text(
        self, tenant: str, user: str, query: str, *, limit: int = 20, kinds: Sequence[str] = ("message", "fact")
    ) -> list[Hit]:
        validate_part("tenant", tenant)
        validate_part("user", user)
        validate_limit(limit, allow_none=False)
        if not isinstance(query, str):
            raise InvalidInput("query must be a string")
        encode_json(query, "query")  # same Unicode/NUL checks as stored text
        want_msg, want_fact = self._kinds(kinds)
        if limit == 0 or not (want_msg or want_fact):
            return self._read_hits(tenant, user, "search.text", [])
        # One statement, one round trip: the query's lexemes, the user's row counts, the rare/common
        # split and the search itself are all worked out on the server (each round trip of a search
        # that runs next to the query's embedding waits for the event loop, i.e. for the GIL).
        stats_m = await self._term_stats("messages") if want_msg else None
        stats_f = await self._term_stats("facts") if want_fact else None
        params: dict[str, Any] = {
            "q": query, "t": tenant, "u": user,
            "m_elems": stats_m[0] if stats_m else None, "m_freqs": stats_m[1] if stats_m else None,
            "f_elems": stats_f[0] if stats_f else None, "f_freqs": stats_f[1] if stats_f else None,
            "f_rows": stats_f[2] if stats_f else None, "m_rows": stats_m[2] if stats_m else None,
        }
        # Term slots: one per word is usually one per lexeme (hyphenated words, URLs and e-mail
        # addresses give more: then a second try says how many).
        slots = _slots_for(len(_WORD.findall(query)))
        while True:
            rows = await self._fetchall(_search_text_sql(slots, limit, want_msg, want_fact), params)
            if not rows or rows[0][0] != "+lexemes":
                break
            slots = _slots_for(int(rows[0][9]))  # more lexemes than term slots: once more, with enough
        return self._read_hits(tenant, user, "search.text", [self._hit(r, tenant, user, "lexical") for r in rows])

    async def _term_stats(self, table: str) -> tuple[str, str, float] | None:
        """The most common lexemes of ``table``'s tsv column and their share of rows, from the
        planner's statistics (the last ANALYZE), as two array literals (text[], float8[]) for
        search_text's statement, and the table's estimated row count; cached for _TERM_STATS_TTL
        seconds (``analyze()`` drops the cache). None without statistics."""
        now = time.monotonic()
        cached = self._term_stats_cache.get(table)
        if cached is not None and now - cached[0] < _TERM_STATS_TTL:
            return cached[1]
        rows = await self._fetchall(_TERM_STATS_SQL, {"schema": self.schema, "table": table})
        stats: tuple[str, str, float] | None = None
        if rows and rows[0][0] is not None:
            table_rows = float(rows[0][2] or 0.0)
            freqs = {e: float(f) for e, f in zip(rows[0][0], rows[0][1] or ()) if e is not None and f is not None}
            if freqs and table_rows > 0:
                elems = "{" + ",".join('"' + e.replace("\\", "\\\\").replace('"', '\\"') + '"' for e in freqs) + "}"
                stats = (elems, "{" + ",".join(repr(f) for f in freqs.values()) + "}", table_rows)
        self._term_stats_cache[table] = (now, stats)
        return stats

    @staticmethod
    def _check_vector(vector: Sequence[float], what: str) -> list[float]:
        try:
            values = [float(x) for x in vector]
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"{what} must be a sequence of numbers") from exc
        if not values:
            raise InvalidInput(f"{what} must not be empty")
        if len(values) > 16_000:
            raise InvalidInput(f"{what} has {len(values)} dimensions; at most 16000 are supported")
        if not all(math.isfinite(x) for x in values):
            raise InvalidInput(f"{what} contains NaN or infinity")
        return values

    @staticmethod
    def _check_model(model: str) -> str:
        if not isinstance(model, str) or not model or len(model) > 256 or "\x00" in model:
            raise InvalidInput("model must be a non-empty string of at most 256 characters")
        return model

    async def put_vectors(self, tenant: str, user: str, model: str, items: Sequence[VectorItem]) -> None:
        validate_part("tenant", tenant)
        validate_part("user", user)
        self._check_model(model)
        rows: dict[tuple[str, str], list[float]] = {}
        for it in items:
            if not isinstance(it, VectorItem) or it.kind not in _KINDS or not isinstance(it.id, str) or not it.id:
                raise InvalidInput("items must be VectorItem(kind='message'|'fact', id, vector)")
            rows[(it.kind, it.id)] = self._check_vector(it.vector, f"vector of {it.kind} {it.id}")
        if not rows:
            return
        native = self._vs is not None
        column, cast = ("embedding_v", "{vs}.vector") if native else ("embedding", "real[]")
        texts = [("[%s]" if native else "{%s}") % ",".join(repr(x) for x in v) for v in rows.values()]
        # A big-endian float32 copy (float4send's layout) for client-side exact search.
        try:
            blobs = [struct.pack(f">{len(v)}f", *v) for v in rows.values()]
        except (struct.error, OverflowError) as exc:
            raise InvalidInput(f"a vector component is out of float32 range: {exc}") from exc
        async with self._tx() as conn:
            await self._user_lock(conn, tenant, user, exclusive=False)
            # The user's stamp row, locked until COMMIT: the version taken here marks the rows
            # stored below, so marks are handed out in commit order (readers load ``stamp > seen``).
            cur = await conn.execute(
                self._sql("INSERT INTO {s}.vector_stamps AS st (tenant_id, user_id, version, n) VALUES (%s, %s, 1, 0) "
                          "ON CONFLICT (tenant_id, user_id) DO UPDATE SET version = st.version + 1 RETURNING version"),
                (tenant, user))
            (stamp,) = await cur.fetchone()
            # Only for records that exist (under the user's shared lock): a late learner must not
            # leave vectors -- a lossy copy of the text -- of erased records behind.
            cur = await conn.execute(
                self._sql(
                    f"INSERT INTO {{s}}.vectors AS v (tenant_id, user_id, model, kind, item_id, dim, {column}, vec, "
                    "stamp) "
                    f"SELECT %(t)s, %(u)s, %(m)s, k, i, d, e::{cast}, b, %(stamp)s "
                    "FROM unnest(%(k)s::text[], %(i)s::text[], %(d)s::int[], %(e)s::text[], %(b)s::bytea[]) "
                    "AS t(k, i, d, e, b) "
                    "WHERE (k = 'message' AND EXISTS (SELECT 1 FROM {s}.messages m WHERE m.tenant_id = %(t)s "
                    "  AND m.user_id = %(u)s AND m.id = i)) "
                    "OR (k = 'fact' AND EXISTS (SELECT 1 FROM {s}.facts f WHERE f.tenant_id = %(t)s "
                    "  AND f.user_id = %(u)s AND f.id = i)) "
                    "ON CONFLICT (tenant_id, user_id, model, kind, item_id) "
                    f"DO UPDATE SET dim = excluded.dim, {column} = excluded.{column}, vec = excluded.vec, "
                    "stamp = excluded.stamp RETURNING v.kind, v.item_id"
                ),
                {"t": tenant, "u": user, "m": model, "stamp": stamp, "k": [k for k, _ in rows], "i": [i for _, i in rows],
                 "d": [len(v) for v in rows.values()], "e": texts, "b": blobs},
            )
            stored = sorted((k, i) for k, i in await cur.fetchall())
            if not stored:
                return
            await self._audit(conn, tenant, "vector.put", user=user, record_ids=[f"{k}:{i}" for k, i in stored],
                              digests=[vector_digest(model, rows[ki]) for ki in stored])
        if native:
            for dim in sorted({len(v) for v in rows.values()}):
                await self._ensure_vector_index(model, dim)

    def _index_name(self, model: str, dim: int) -> str:
        return "vectors_hnsw_" + hashlib.sha256(f"{model}\x00{dim}".encode()).hexdigest()[:16]

    async def _ensure_vector_index(self, model: str, dim: int) -> None:
        """One partial HNSW cosine index per (model, dim), built the first time that pair is seen."""
        if (model, dim) in self._indexed:
            return
        name = self._index_name(model, dim) if dim <= _HNSW_MAX_DIM else None
        rows = await self._fetchall(
            "SELECT index_name FROM {s}.vector_indexes WHERE model = %s AND dim = %s", (model, dim))
        if not rows:
            if name is not None:
                psycopg = self._psycopg
                literal = psycopg.sql.Literal(model).as_string(None)
                # CONCURRENTLY: other writers keep writing while the index builds (needs autocommit).
                try:
                    async with self._pool.connection() as conn:
                        await conn.execute(self._sql(
                            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {{s}}.vectors USING hnsw "
                            f"((embedding_v::{{vs}}.vector({dim})) {{vs}}.vector_cosine_ops) "
                            f"WHERE model = {literal} AND dim = {dim}"
                        ))
                except psycopg.Error as exc:
                    raise self._translate(exc) from exc
            async with self._tx() as conn:
                await conn.execute(
                    self._sql("INSERT INTO {s}.vector_indexes (model, dim, index_name) VALUES (%s, %s, %s) "
                              "ON CONFLICT DO NOTHING"), (model, dim, name))
        self._indexed.add((model, dim))

    async def prepare_vectors(self, tenant: str, user: str, model: str) -> None:
        """Load (or bring up to date) the user's in-process vector index for ``model`` now, so the
        ``search_vectors`` that follows finds it ready. Recall calls this while the query is being
        embedded: a user's first search then reads the user's vectors (1,000 of them: ~40 ms on a
        busy 2-core machine) beside the embedding instead of after it. Nothing is read out (no audit
        entry); the search that follows checks the index against the stamp as always. A user whose
        vectors pgvector's HNSW index serves, or who has none, is left alone."""
        validate_part("tenant", tenant)
        validate_part("user", user)
        self._check_model(model)
        if any(key[:3] == (tenant, user, model) for key in reversed(self._vector_cache)):
            # Held already: the search checks the stamp in its own round trip and catches up with
            # what changed (usually a few rows). Two more round trips here, beside the embedding,
            # cost more than they saved.
            return
        rows = await self._fetchall(
            "SELECT dim FROM {s}.vectors WHERE tenant_id = %(t)s AND user_id = %(u)s AND model = %(m)s LIMIT 1",
            {"t": tenant, "u": user, "m": model})
        if rows:  # cached: one stamp read, then only what changed since
            await self._refresh_vectors(tenant, user, model, int(rows[0][0]))

    async def search_vectors(
        self, tenant: str, user: str, model: str, vector: Sequence[float], *, limit: int = 20,
        kinds: Sequence[str] = ("message", "fact"),
    ) -> list[Hit]:
        validate_part("tenant", tenant)
        validate_part("user", user)
        validate_limit(limit, allow_none=False)
        self._check_model(model)
        q = self._check_vector(vector, "query vector")
        want_msg, want_fact = self._kinds(kinds)
        if limit == 0 or not (want_msg or want_fact):
            return self._read_hits(tenant, user, "search.vector", [])
        dim = len(q)
        kinds_list = [k for k, w in (("message", want_msg), ("fact", want_fact)) if w]
        hits = await self._search_vectors_client(tenant, user, model, q, limit, want_msg, want_fact)
        if hits is not None:
            return self._read_hits(tenant, user, "search.vector", hits)
        # A large user with pgvector: the partial HNSW index of (model, dim), with iterative scans
        # (pgvector >= 0.8) so the per-user filter still yields enough rows. Model and dim are
        # literals: a generic plan with parameters could not prove the partial index's predicate.
        psycopg = self._psycopg
        model_lit = psycopg.sql.Literal(model).as_string(None)
        distance = f"(v.embedding_v::{{vs}}.vector({dim}) OPERATOR({{vs}}.<=>) %(q)s::{{vs}}.vector({dim}))"
        score = "1 - coalesce(nullif(v.distance, 'NaN'), 1) / 2"
        candidates = max(limit * 4, 100)
        sql = (
            f"SELECT v.kind, v.item_id, coalesce(m.content, f.text), coalesce(m.thread_id, f.thread_id), m.seq, "
            f"coalesce(m.created_at, f.created_at), f.source_message_ids, f.valid_from, f.valid_to, {score} AS score, "
            "m.role, m.author "
            f"FROM (SELECT v.kind, v.item_id, v.tenant_id, v.user_id, {distance} AS distance FROM {{s}}.vectors v "
            f"  WHERE v.tenant_id = %(t)s AND v.user_id = %(u)s AND v.model = {model_lit} AND v.dim = {dim} "
            f"  AND v.kind = ANY(%(kinds)s::text[]) ORDER BY {distance} LIMIT {candidates}) v "
            "LEFT JOIN {s}.messages m ON v.kind = 'message' AND m.tenant_id = v.tenant_id AND m.id = v.item_id "
            "  AND m.user_id = v.user_id "
            "LEFT JOIN {s}.facts f ON v.kind = 'fact' AND f.tenant_id = v.tenant_id AND f.user_id = v.user_id "
            "  AND f.id = v.item_id AND f.valid_to IS NULL "
            "WHERE m.id IS NOT NULL OR f.id IS NOT NULL "
            "ORDER BY v.distance, v.kind, v.item_id LIMIT %(limit)s"
        )
        params = {"t": tenant, "u": user, "kinds": kinds_list, "q": "[%s]" % ",".join(repr(x) for x in q),
                  "limit": limit}
        async with self._tx(pipeline=True) as conn:
            await conn.execute("SELECT set_config('hnsw.iterative_scan', 'strict_order', true), "
                               "set_config('hnsw.ef_search', %s, true)", (str(min(1000, candidates)),))
            cur = await conn.execute(self._sql(sql), params)
            rows = await cur.fetchall()
        hits = [self._hit(r, tenant, user, "vector") for r in rows]
        # Ties keep a stable order: by score, then kind and id (the same on every call).
        hits.sort(key=lambda h: (-h.score, h.kind, h.id))
        return self._read_hits(tenant, user, "search.vector", hits)

    async def _refresh_vectors(
        self, tenant: str, user: str, model: str, dim: int,
    ) -> tuple[_UserVectors | None, bool]:
        """The user's vectors of (model, dim) brought up to the user's current stamp, reading only
        what changed; ``(None, True)``: search pgvector's HNSW index instead (a large user).

        In one snapshot: the stamp row, then -- when only ``version`` moved -- the rows stamped after
        the index's high-water mark (``put_vectors`` writes its own version into every row, under
        the stamp row's lock, so marks follow commit order); when ``rewrites`` moved (deletes,
        updates), the user's (kind, item_id, xmin) keys, compared with the index: vanished or changed
        rows leave it (erasure reaches the index), new or changed ones are read and added. Only the
        first load reads every vector; the HNSW graph (built in the background) survives refreshes."""
        np = _numpy()
        ck = (tenant, user, model, dim)
        lock = self._vector_locks.setdefault(ck, asyncio.Lock())
        async with lock:
            entry = self._vector_cache.get(ck)
            before = entry.nbytes if entry is not None else 0
            async with self._tx() as conn:
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                cur = await conn.execute(
                    self._sql("SELECT version, n, rewrites FROM {s}.vector_stamps WHERE tenant_id = %s AND user_id = %s"),
                    (tenant, user))
                row = await cur.fetchone()
                version, count, rewrites = (0, 0, 0) if row is None else (int(row[0]), int(row[1]), int(row[2]))
                if self._vs is not None and count > self._exact_vector_max and dim <= _HNSW_MAX_DIM:
                    self._drop_vectors(ck)
                    return None, True
                if entry is not None and entry.index.version >= version and entry.index.rewrites >= rewrites:
                    return entry, False  # refreshed by another query meanwhile
                where = ("FROM {s}.vectors WHERE tenant_id = %(t)s AND user_id = %(u)s AND model = %(m)s "
                         "AND dim = %(d)s AND vec IS NOT NULL")
                params: dict[str, Any] = {"t": tenant, "u": user, "m": model, "d": dim}
                cols = "SELECT kind, item_id, xmin::text::bigint, vec "
                if entry is not None and entry.index.rewrites == rewrites:
                    params["hw"] = entry.index.high_water
                    cur = await conn.execute(self._sql(cols + where + " AND stamp > %(hw)s ORDER BY stamp, kind, item_id"),
                                             params, binary=True)
                    rows = await cur.fetchall()
                elif entry is not None:
                    cur = await conn.execute(self._sql("SELECT kind, item_id, xmin::text::bigint " + where), params)
                    current = {(k, i): x for k, i, x in await cur.fetchall()}
                    changed = [key for key, (_, x) in entry.keys.items() if current.get(key) != x]
                    entry.index.remove([entry.keys.pop(key)[0] for key in changed])
                    new = [key for key in current if key not in entry.keys]
                    rows = []
                    for lo in range(0, len(new), 5000):
                        chunk = new[lo: lo + 5000]
                        params["k"], params["i"] = [k for k, _ in chunk], [i for _, i in chunk]
                        cur = await conn.execute(self._sql(
                            cols + where + " AND (kind, item_id) IN (SELECT * FROM unnest(%(k)s::text[], %(i)s::text[]))"
                            " ORDER BY kind, item_id"), params, binary=True)
                        rows.extend(await cur.fetchall())
                else:
                    cur = await conn.execute(self._sql(cols + where + " ORDER BY kind, item_id"), params, binary=True)
                    rows = await cur.fetchall()
            if ck not in self._vector_cache:
                before = 0
            if entry is None:
                entry = _UserVectors(VectorIndex(dim, ann_threshold=self._vector_ann_threshold), {})
            if rows:
                replaced = [entry.keys.pop((k, i))[0] for k, i, _, _ in rows if (k, i) in entry.keys]
                entry.index.remove(replaced)
                rowids = list(range(entry.next_rowid, entry.next_rowid + len(rows)))
                entry.next_rowid += len(rows)
                matrix = np.frombuffer(b"".join(r[3] for r in rows), dtype=">f4").astype(np.float32).reshape(len(rows), dim)
                entry.index.add(rowids, [r[0] for r in rows], [r[1] for r in rows], matrix)
                entry.keys.update(((k, i), (rid, int(x))) for (k, i, x, _), rid in zip(rows, rowids))
            entry.index.version, entry.index.rewrites, entry.index.high_water = version, rewrites, version
            self._vector_cache[ck] = entry
            self._vector_cache.move_to_end(ck)
            self._vector_cache_bytes += entry.nbytes - before
            while self._vector_cache_bytes > self._vector_cache_budget and len(self._vector_cache) > 1:
                self._drop_vectors(next(iter(self._vector_cache)))  # the least recently searched user
            return entry, False

    def _drop_vectors(self, ck: tuple[str, str, str, int]) -> None:
        dropped = self._vector_cache.pop(ck, None)
        if dropped is not None:
            self._vector_cache_bytes -= dropped.nbytes
            dropped.index.close()
        lock = self._vector_locks.get(ck)
        if lock is not None and not lock.locked():
            del self._vector_locks[ck]

    async def wait_vector_indexes(self, timeout: float | None = None) -> bool:
        """Wait until cached in-process vector indexes have finished background graph work
        (benchmarks and tests; searches never wait: they go exact meanwhile). True if none is building."""
        done = [await asyncio.to_thread(e.index.wait_ready, timeout) for e in list(self._vector_cache.values())]
        return all(done)

    def vector_index_stats(self) -> dict[str, Any]:
        """Cached in-process vector indexes: per ``tenant/user/model``, rows and route per kind."""
        return {"/".join(k[:3]): e.index.stats() for k, e in self._vector_cache.items()}

    async def _search_vectors_client(
        self, tenant: str, user: str, model: str, q: list[float], limit: int, want_msg: bool, want_fact: bool,
    ) -> list[Hit] | None:
        """Search the user's cached in-process index (exact cosine scores; an HNSW graph proposes the
        candidates of a large user); one round trip per query (the candidates' records and the
        user's current stamp). None: use pgvector's HNSW index instead.

        The index is as of a stamp a trigger bumps in the same transaction as every change to the
        user's vectors: a query that finds a newer stamp catches up (reading only what changed) and
        searches again before it answers, so no committed vector is missed."""
        np = _numpy()
        dim = len(q)
        ck = (tenant, user, model, dim)
        qv = np.asarray(q, dtype=np.float32)
        wanted = tuple(k for k, w in (("message", want_msg), ("fact", want_fact)) if w)
        entry = self._vector_cache.get(ck)
        if entry is not None:
            self._vector_cache.move_to_end(ck)
        refreshed = False
        while True:
            if entry is None:
                entry, _ = await self._refresh_vectors(tenant, user, model, dim)
                refreshed = True
                if entry is None:
                    return None
            hits, version = await self._rank_and_fetch(tenant, user, entry.index, qv, limit, wanted)
            if version <= entry.index.version or refreshed:
                # After a refresh the index is at least as new as this query: a write that landed
                # since is one the query may or may not see, as with any concurrent write.
                return hits
            entry = None

    async def _rank_and_fetch(
        self, tenant: str, user: str, index: VectorIndex, qv: Any, limit: int, wanted: tuple[str, ...],
    ) -> tuple[list[Hit], int]:
        total = index.count(wanted)
        # A little over the limit: most candidates are live, and a short list keeps a graph search
        # cheap; the loop below widens when too many candidates were deleted or superseded.
        take = min(total, limit + max(16, limit // 4))
        checked: set[int] = set()
        hits: list[Hit] = []
        version = index.version
        while True:
            # Exact cosine scores, best first (ties: older rows first). A wider round may surface
            # candidates a narrower graph search missed, so track rows, not a prefix.
            batch = [c for c in index.search(qv, take, kinds=wanted) if c.rowid not in checked] if take else []
            checked.update(c.rowid for c in batch)
            rows = await self._fetchall(_VECTOR_HITS_SQL, {"t": tenant, "u": user, "k": [c.kind for c in batch],
                                                           "i": [c.item_id for c in batch]})
            version = int(rows[0][0]) if rows and rows[0][0] is not None else 0
            found = {(r[1], r[2]): r[1:] for r in rows if r[1] is not None}
            for c in batch:
                row = found.get((c.kind, c.item_id))
                if row is not None:  # deleted or superseded records are skipped
                    score = min(1.0, max(0.0, (1.0 + c.score) / 2.0))  # between valid_to and role
                    hits.append(self._hit((*row[:9], score, *row[9:]), tenant, user, "vector"))
            if len(hits) >= limit or take >= total or version != index.version:
                break
            take = min(total, take * 4)
        hits.sort(key=lambda h: (-h.score, h.kind, h.id))
        return hits[:limit], version

    # -- learning queue ----------------------------------------------------------------------------
    async def claim_learn_jobs(
        self, *, limit: int = 64, lease_seconds: float = 60.0, tenant: str | None = None
    ) -> list[LearnJob]:
        validate_limit(limit, allow_none=False)
        if tenant is not None:
            validate_part("tenant", tenant)
        if limit == 0:
            return []
        rows = await self._fetchall(
            "WITH c AS (SELECT tenant_id, id, available_at FROM {s}.learn_jobs "
            "  WHERE NOT dead AND available_at <= now() AND (%(t)s::text IS NULL OR tenant_id = %(t)s) "
            "  ORDER BY available_at, seq, id LIMIT %(n)s FOR UPDATE SKIP LOCKED) "
            "UPDATE {s}.learn_jobs j SET attempts = j.attempts + 1, leased = true, "
            "  available_at = now() + make_interval(secs => %(lease)s) "
            "FROM c WHERE j.tenant_id = c.tenant_id AND j.id = c.id "
            "RETURNING j.id, j.tenant_id, j.user_id, j.thread_id, j.message_id, j.seq, j.attempts, j.last_error, "
            "  c.available_at",
            {"t": tenant, "n": limit, "lease": float(lease_seconds)}, retry=False,
        )
        rows.sort(key=lambda r: (r[8], r[5], r[0]))
        return [LearnJob(r[0], SessionKey(r[1], r[2], r[3]), r[4], r[5], r[6], r[7]) for r in rows]

    async def complete_learn_jobs(self, job_ids: Sequence[str]) -> None:
        ids = [str(j) for j in job_ids]
        if ids:
            async with self._tx() as conn:
                await conn.execute(self._sql("DELETE FROM {s}.learn_jobs WHERE id = ANY(%s::text[])"), (ids,))

    async def fail_learn_job(self, job_id: str, error: str, *, retry_in: float | None) -> None:
        async with self._tx() as conn:
            cur = await conn.execute(
                self._sql(  # a dead job is never due: available_at records when it died
                    "UPDATE {s}.learn_jobs SET last_error = left(%(e)s, 2000), leased = false, "
                    "dead = %(dead)s, available_at = CASE WHEN %(dead)s THEN now() "
                    "ELSE now() + make_interval(secs => %(retry)s) END WHERE id = %(id)s "
                    "RETURNING tenant_id, user_id, thread_id, message_id"
                ),
                {"e": str(error).replace("\x00", ""), "dead": retry_in is None,
                 "retry": float(retry_in or 0.0), "id": str(job_id)},
            )
            for tenant, user, thread, message_id in await cur.fetchall():
                await self._audit(conn, tenant, "learn.fail", user=user, thread=thread,
                                  record_ids=[str(job_id), message_id], count=1)

    async def learn_queue_stats(self, tenant: str | None = None) -> Mapping[str, int]:
        if tenant is not None:
            validate_part("tenant", tenant)
        rows = await self._fetchall(
            "SELECT count(*) FILTER (WHERE NOT dead AND NOT (leased AND available_at > now())), "
            "count(*) FILTER (WHERE NOT dead AND leased AND available_at > now()), count(*) FILTER (WHERE dead) "
            "FROM {s}.learn_jobs WHERE %s::text IS NULL OR tenant_id = %s",
            (tenant, tenant),
        )
        pending, leased, dead = rows[0]
        return {"pending": pending, "leased": leased, "dead": dead}

    async def list_dead_learn_jobs(self, *, tenant: str | None = None, limit: int = 100) -> list[LearnJob]:
        validate_tenant_filter(tenant)
        validate_limit(limit, allow_none=False)
        rows = await self._fetchall(
            "SELECT id, tenant_id, user_id, thread_id, message_id, seq, attempts, last_error, available_at "
            "FROM {s}.learn_jobs WHERE dead AND (%(t)s::text IS NULL OR tenant_id = %(t)s) "
            "ORDER BY available_at, id LIMIT %(n)s",
            {"t": tenant, "n": limit},
        )
        return [LearnJob(r[0], SessionKey(r[1], r[2], r[3]), r[4], r[5], r[6], r[7], _utc(r[8]))
                for r in rows]

    async def requeue_dead_learn_jobs(
        self, job_ids: Sequence[str] | None = None, *, tenant: str | None = None
    ) -> int:
        ids = validate_job_ids(job_ids)
        validate_tenant_filter(tenant)
        if ids == []:
            return 0
        async with self._tx() as conn:
            cur = await conn.execute(
                self._sql(
                    "UPDATE {s}.learn_jobs SET dead = false, leased = false, attempts = 0, "
                    "available_at = now() WHERE dead AND (%(t)s::text IS NULL OR tenant_id = %(t)s) "
                    "AND (%(ids)s::text[] IS NULL OR id = ANY(%(ids)s::text[])) "
                    "RETURNING tenant_id, id, user_id, thread_id, message_id"
                ),
                {"t": tenant, "ids": ids},
            )
            rows = await cur.fetchall()
            for t, job_id, user, thread, message_id in rows:
                await self._audit(conn, t, "learn.requeue", user=user, thread=thread,
                                  record_ids=[job_id, message_id], count=1)
        return len(rows)

    # -- audit -------------------------------------------------------------------------------------
    async def list_audit(
        self, tenant: str, *, user: str | None = None, operation: str | None = None, limit: int = 100,
        after_id: int = 0,
    ) -> list[AuditEvent]:
        validate_part("tenant", tenant)
        validate_limit(limit, allow_none=False)
        validate_limit(after_id, "after_id", allow_none=False)
        rows = await self._fetchall(
            f"SELECT {_AUDIT_COLS} FROM {{s}}.audit WHERE tenant_id = %s AND id > %s "
            "AND (%s::text IS NULL OR user_id = %s) AND (%s::text IS NULL OR operation = %s) ORDER BY id LIMIT %s",
            (tenant, after_id, user, user, operation, operation, limit),
        )
        return [self._audit_event(r) for r in rows]


# Upserting the sessions (sorted by the caller) takes their row locks, in that order.
_LOCK_SESSIONS_SQL = """
INSERT INTO {s}.sessions AS s (tenant_id, user_id, thread_id)
SELECT t, u, th FROM unnest(%s::text[], %s::text[], %s::text[]) WITH ORDINALITY AS x(t, u, th, ord) ORDER BY ord
ON CONFLICT (tenant_id, user_id, thread_id) DO UPDATE SET last_seq = s.last_seq
"""

# One statement, run under the session row locks taken earlier in the same transaction: it finds
# the caller-supplied idempotency keys that are already stored (retries), numbers the other
# messages after each session's last_seq in call order (a key repeated within the batch is stored
# once, at its first occurrence), stores them with their learn jobs and one audit entry per append
# call that added something, and advances last_seq. It returns (ord, seq) per new message and
# (ord, <stored columns>) per retried one.
_APPEND_SQL = """
WITH new AS (
    SELECT * FROM unnest(%(ts)s::text[], %(us)s::text[], %(ths)s::text[], %(reqs)s::int[],
                         %(ids)s::text[], %(roles)s::text[], %(contents)s::text[],
                         %(payloads)s::text[], %(formats)s::text[], %(authors)s::text[], %(keys)s::text[],
                         %(supplied)s::bool[], %(created)s::timestamptz[], %(metas)s::text[], %(tokens)s::int[],
                         %(hashes)s::text[], %(jobs)s::text[]) WITH ORDINALITY
        AS t(tenant_id, user_id, thread_id, req, id, role, content, payload, payload_format, author,
             idempotency_key, supplied, created_at, metadata, tokens, content_hash, job_id, ord)
), known AS (
    -- LATERAL .. LIMIT 1 (keys are unique): one index probe per row, whatever the (possibly stale)
    -- table statistics say
    SELECT n.ord, m.* FROM new n CROSS JOIN LATERAL (
        SELECT m.seq, m.id, m.role, m.content, m.payload, m.payload_format, m.author, m.idempotency_key,
               m.created_at, m.metadata, m.tokens, m.content_hash
        FROM {s}.messages m
        WHERE m.tenant_id = n.tenant_id AND m.user_id = n.user_id AND m.thread_id = n.thread_id
          AND m.idempotency_key = n.idempotency_key LIMIT 1) m
    WHERE n.supplied
), fresh AS (
    SELECT DISTINCT ON (n.tenant_id, n.user_id, n.thread_id, n.idempotency_key) n.*
    FROM new n WHERE NOT EXISTS (SELECT 1 FROM known k WHERE k.ord = n.ord)
    ORDER BY n.tenant_id, n.user_id, n.thread_id, n.idempotency_key, n.ord
), numbered AS (
    SELECT f.*, s.last_seq + row_number() OVER (PARTITION BY f.tenant_id, f.user_id, f.thread_id ORDER BY f.ord)
           AS seq
    FROM fresh f CROSS JOIN LATERAL (
        SELECT s.last_seq FROM {s}.sessions s
        WHERE s.tenant_id = f.tenant_id AND s.user_id = f.user_id AND s.thread_id = f.thread_id LIMIT 1) s
), m AS (
    INSERT INTO {s}.messages (tenant_id, user_id, thread_id, seq, id, role, content, payload, payload_format,
                              author, idempotency_key, created_at, metadata, tokens, content_hash)
    SELECT tenant_id, user_id, thread_id, seq, id, role, content, payload, payload_format, author,
           idempotency_key, created_at, metadata, tokens, content_hash FROM numbered ORDER BY ord
), j AS (
    INSERT INTO {s}.learn_jobs (tenant_id, id, user_id, thread_id, message_id, seq)
    SELECT tenant_id, job_id, user_id, thread_id, id, seq FROM numbered ORDER BY ord
), a AS (
    INSERT INTO {s}.audit (tenant_id, actor, operation, user_id, thread_id, count, record_ids, digests)
    SELECT tenant_id, (%(actors)s::text[])[req], 'message.append', user_id, thread_id, count(*),
           array_agg(id ORDER BY ord), array_agg(content_hash ORDER BY ord)
    FROM numbered GROUP BY req, tenant_id, user_id, thread_id ORDER BY req
), u AS (
    UPDATE {s}.sessions s SET last_seq = x.last, updated_at = now()
    FROM (SELECT tenant_id, user_id, thread_id, max(seq) AS last FROM numbered GROUP BY 1, 2, 3) x
    WHERE s.tenant_id = x.tenant_id AND s.user_id = x.user_id AND s.thread_id = x.thread_id
)
SELECT ord, seq, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM numbered
UNION ALL
SELECT * FROM known
"""

# The records behind vector candidates (in candidate order), and the user's vector stamp: one row
# even when no candidate is live, so a search whose candidates another handle deleted still learns
# the stamp moved and catches up. Superseded facts and deleted records find nothing and are skipped.
_VECTOR_HITS_SQL = """
SELECT (SELECT version FROM {s}.vector_stamps WHERE tenant_id = %(t)s AND user_id = %(u)s),
       h.kind, h.item_id, h.text, h.thread_id, h.seq, h.created_at, h.source_message_ids, h.valid_from, h.valid_to,
       h.role, h.author
FROM (SELECT 1) AS one
LEFT JOIN (SELECT x.kind, x.item_id, coalesce(m.content, f.text) AS text, coalesce(m.thread_id, f.thread_id) AS thread_id,
                  m.seq, coalesce(m.created_at, f.created_at) AS created_at, f.source_message_ids, f.valid_from,
                  f.valid_to, m.role, m.author, x.ord
           FROM unnest(%(k)s::text[], %(i)s::text[]) WITH ORDINALITY AS x(kind, item_id, ord)
           LEFT JOIN LATERAL (SELECT m.content, m.thread_id, m.seq, m.created_at, m.role, m.author FROM {s}.messages m
                              WHERE x.kind = 'message' AND m.tenant_id = %(t)s AND m.id = x.item_id AND m.user_id = %(u)s
                              LIMIT 1) m ON true
           LEFT JOIN LATERAL (SELECT f.text, f.thread_id, f.created_at, f.source_message_ids, f.valid_from, f.valid_to
                              FROM {s}.facts f
                              WHERE x.kind = 'fact' AND f.tenant_id = %(t)s AND f.user_id = %(u)s AND f.id = x.item_id
                                AND f.valid_to IS NULL) f ON true
           WHERE m.seq IS NOT NULL OR f.text IS NOT NULL) h ON true
ORDER BY h.ord
"""

# Lexical search. The query's lexemes (same parser and config as the stored tsvector) become one
# OR-query for the GIN index plus one single-lexeme query each, to measure coverage (the share of
# query terms a document holds). score = coverage * (1 + ts_rank normalised to [0, 1)) / 2, so a
# document holding every term outranks one repeating a single term, and ts_rank orders the rest.

# The most common lexemes of a tsv column with their share of rows (ANALYZE's sample; the element
# frequency array ends with three summary numbers, which pair with no element) and the table's rows.
_TERM_STATS_SQL = """
SELECT s.most_common_elems::text::text[], s.most_common_elem_freqs, c.reltuples
FROM pg_catalog.pg_stats s
JOIN pg_catalog.pg_class c ON c.relname = s.tablename
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace AND n.nspname = s.schemaname
WHERE s.schemaname = %(schema)s AND s.tablename = %(table)s AND s.attname = 'tsv'
"""

# Candidates, as SQLite's search picks them (sqlite._fts_candidates): every row holding one of the
# query's rare terms (m_rare / f_rare, through the GIN index), and of the rows holding only common
# terms (m_common / f_common: in more than 2,000 of the user's rows) the most recent %(recent)s --
# scoring every row that holds a common word cost ~1 microsecond per row (20,000-30,000 rows at
# 100,000 memories). Recent messages: the user's threads by last update, each newest first (the
# primary key); recent facts: by id (time-ordered), the primary key backwards. Then one score for
# all: the share of the query's terms a row holds, times (1 + ts_rank) / 2.
# A term is common when its share of the table's rows (the planner's statistics, passed in by
# search_text as %(m_elems)s / %(m_freqs)s, %(f_elems)s / %(f_freqs)s) times the user's rows is over
# 2,000; the user's rows: messages from sessions' last seq, facts counted up to 2,001 (past 2,000
# the table's rows, %(f_rows)s, stand in). The lexemes, the split and the search are one statement,
# so a search is one round trip (the split used to be a statement of its own). %(limit)s, %(recent)s,
# %(cap)s, %(msg)s and %(fact)s are written into the statement's text (_search_text_sql): with only
# the user, the query and the statistics as parameters, the server's plan for the prepared statement
# holds for every call (a generic plan) and is not planned again each time (0.5 ms a search).
_SEARCH_TEXT_SQL = """
WITH terms AS (  -- the query's distinct lexemes in code point order, quoted, and which are common where:
    -- messages: the user's message count (sessions' last seq: an upper bound) times the lexeme's share;
    -- facts: the table's rows times the share, if the user has over {common} facts (counted up to
    -- %(cap)s, only when the product is over {common}: an InitPlan runs when first needed)
    SELECT x.ord, x.quoted,
           coalesce(%(msg)s AND (SELECT coalesce(sum(last_seq), 0) FROM {s}.sessions
                                 WHERE tenant_id = %(t)s AND user_id = %(u)s) > {common}
                    AND (%(m_freqs)s::float8[])[array_position(%(m_elems)s::text[], x.lexeme)]
                        * (SELECT coalesce(sum(last_seq), 0) FROM {s}.sessions
                           WHERE tenant_id = %(t)s AND user_id = %(u)s) > {common}, false) AS m_common,
           coalesce(%(fact)s AND CASE
               WHEN (%(f_freqs)s::float8[])[array_position(%(f_elems)s::text[], x.lexeme)] * %(f_rows)s::float8 > {common}
               THEN (SELECT count(*) FROM (SELECT 1 FROM {s}.facts WHERE tenant_id = %(t)s AND user_id = %(u)s
                                           AND valid_to IS NULL LIMIT %(cap)s) c) > {common} END, false) AS f_common,
           coalesce((%(m_freqs)s::float8[])[array_position(%(m_elems)s::text[], x.lexeme)], 0) AS m_share,
           coalesce((%(f_freqs)s::float8[])[array_position(%(f_elems)s::text[], x.lexeme)], 0) AS f_share
    FROM (SELECT lexeme, row_number() OVER (ORDER BY lexeme COLLATE "C") AS ord,
                 '''' || replace(replace(lexeme, '\\', '\\\\'), '''', '''''') || '''' AS quoted
          FROM (SELECT DISTINCT lexeme FROM unnest(to_tsvector('{cfg}'::regconfig, left(%(q)s, {chars})))) l) x
), plan AS (
    SELECT count(*) AS n,
           string_agg(quoted, ' | ' ORDER BY ord)::tsquery AS any_term,
           string_agg(quoted, ' | ' ORDER BY ord) FILTER (WHERE NOT m_common)::tsquery AS m_rare,
           string_agg(quoted, ' | ' ORDER BY ord) FILTER (WHERE m_common)::tsquery AS m_common,
           string_agg(quoted, ' | ' ORDER BY ord) FILTER (WHERE NOT f_common)::tsquery AS f_rare,
           string_agg(quoted, ' | ' ORDER BY ord) FILTER (WHERE f_common)::tsquery AS f_common,
           -- The lexical index lists a term's rows of every user: for a small user in a large table
           -- ("number" in 290,000 of 900,000 messages, the user's in 900) reading the user's own rows
           -- and testing each is ~100 times cheaper. Index postings cost ~1/{gin} of a row test, so the
           -- index is used while the rare terms' postings (their shares of the table's rows, from the
           -- statistics) are under {gin} x the user's rows (messages: sessions' last seq; facts:
           -- counted, only up to the postings / {gin}, so never costing more than the scan it avoids).
           coalesce(sum(m_share) FILTER (WHERE NOT m_common), 0) * coalesce(%(m_rows)s::float8, 0)
               < {gin}::float8 * (SELECT coalesce(sum(last_seq), 0) FROM {s}.sessions
                          WHERE tenant_id = %(t)s AND user_id = %(u)s) AS m_gin,
           coalesce(sum(f_share) FILTER (WHERE NOT f_common), 0) * coalesce(%(f_rows)s::float8, 0)
               < {gin}::float8 * {common} OR
           (SELECT count(*) FROM (SELECT 1 FROM {s}.facts WHERE tenant_id = %(t)s AND user_id = %(u)s
                                  AND valid_to IS NULL
                                  LIMIT (SELECT ceil(coalesce(sum(f_share) FILTER (WHERE NOT f_common), 0)
                                                     * coalesce(%(f_rows)s::float8, 0) / {gin}::float8)::bigint + 1
                                         FROM terms)) c)
               * {gin}::float8 > coalesce(sum(f_share) FILTER (WHERE NOT f_common), 0) * coalesce(%(f_rows)s::float8, 0)
               AS f_gin,
           {slot_columns}
    FROM terms
), docs AS (
    SELECT 'message' AS kind, m.id, m.content AS text, m.thread_id, m.seq, m.created_at,
           NULL::text[] AS sources, NULL::timestamptz AS valid_from, NULL::timestamptz AS valid_to,
           m.tsv, 0 AS kind_order, m.role, m.author
    FROM {s}.messages m
    WHERE %(msg)s AND (SELECT m_rare FROM plan) IS NOT NULL AND (SELECT m_gin FROM plan)
      AND m.tenant_id = %(t)s AND m.user_id = %(u)s AND m.tsv @@ (SELECT m_rare FROM plan)
    UNION ALL  -- the same rows through the user's own (a CASE is no index condition: the key is used)
    SELECT 'message', m.id, m.content, m.thread_id, m.seq, m.created_at, NULL, NULL, NULL, m.tsv, 0, m.role, m.author
    FROM {s}.messages m
    WHERE %(msg)s AND (SELECT m_rare FROM plan) IS NOT NULL AND NOT (SELECT m_gin FROM plan)
      AND m.tenant_id = %(t)s AND m.user_id = %(u)s AND CASE WHEN m.tsv @@ (SELECT m_rare FROM plan) THEN true END
    UNION ALL
    (SELECT 'message', c.id, c.content, c.thread_id, c.seq, c.created_at, NULL, NULL, NULL, c.tsv, 0,
            c.role, c.author
     FROM (SELECT s.thread_id FROM {s}.sessions s
           WHERE %(msg)s AND (SELECT m_common FROM plan) IS NOT NULL AND s.tenant_id = %(t)s AND s.user_id = %(u)s
           ORDER BY s.updated_at DESC, s.thread_id DESC) th
     CROSS JOIN LATERAL (
         SELECT m.id, m.content, m.thread_id, m.seq, m.created_at, m.tsv, m.role, m.author FROM {s}.messages m
         WHERE m.tenant_id = %(t)s AND m.user_id = %(u)s AND m.thread_id = th.thread_id
           -- A CASE: not an index condition, so the newest rows are read through the primary key
           -- and the scan stops early (the lexical index would list every row with the term); and
           -- estimated to hold for half the rows (the terms are common), where a test of a query
           -- the planner cannot see (from "plan") is estimated at 0.5%%: a plan costed as reading
           -- every thread to the end, which crossed jit_above_cost (50 ms of JIT compilation)
           AND CASE WHEN m.tsv @@ (SELECT m_common FROM plan)
                    THEN NOT coalesce(m.tsv @@ (SELECT m_rare FROM plan), false) END
         ORDER BY m.seq DESC LIMIT %(recent)s) c
     LIMIT %(recent)s)
    UNION ALL
    SELECT 'fact', f.id, f.text, f.thread_id, NULL, f.created_at, f.source_message_ids, f.valid_from, f.valid_to,
           f.tsv, 1, NULL, NULL
    FROM {s}.facts f
    WHERE %(fact)s AND (SELECT f_rare FROM plan) IS NOT NULL AND (SELECT f_gin FROM plan)
      AND f.tenant_id = %(t)s AND f.user_id = %(u)s AND f.valid_to IS NULL AND f.tsv @@ (SELECT f_rare FROM plan)
    UNION ALL
    SELECT 'fact', f.id, f.text, f.thread_id, NULL, f.created_at, f.source_message_ids, f.valid_from, f.valid_to,
           f.tsv, 1, NULL, NULL
    FROM {s}.facts f
    WHERE %(fact)s AND (SELECT f_rare FROM plan) IS NOT NULL AND NOT (SELECT f_gin FROM plan)
      AND f.tenant_id = %(t)s AND f.user_id = %(u)s AND f.valid_to IS NULL
      AND CASE WHEN f.tsv @@ (SELECT f_rare FROM plan) THEN true END
    UNION ALL
    (SELECT 'fact', f.id, f.text, f.thread_id, NULL, f.created_at, f.source_message_ids, f.valid_from,
            f.valid_to, f.tsv, 1, NULL, NULL
     FROM {s}.facts f
     WHERE %(fact)s AND (SELECT f_common FROM plan) IS NOT NULL AND f.tenant_id = %(t)s AND f.user_id = %(u)s
       AND f.valid_to IS NULL AND CASE WHEN f.tsv @@ (SELECT f_common FROM plan)
                                          THEN NOT coalesce(f.tsv @@ (SELECT f_rare FROM plan), false) END
     ORDER BY f.id DESC LIMIT %(recent)s)
)
SELECT * FROM (
    SELECT d.kind, d.id, d.text, d.thread_id, d.seq, d.created_at, d.sources, d.valid_from, d.valid_to,
           greatest(0.0, least(1.0,
               ({matched})::float8 / (SELECT n FROM plan)
               * (1.0 + ts_rank(d.tsv, (SELECT any_term FROM plan), 32)) / 2.0)) AS score,
           d.role, d.author
    FROM docs d
    ORDER BY score DESC, d.kind_order, d.created_at, d.seq, d.id
    LIMIT %(limit)s
) best WHERE (SELECT n FROM plan) <= {slots}
UNION ALL  -- more lexemes than term slots: one row saying how many (search_text asks again)
SELECT '+lexemes', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, n, NULL, NULL FROM plan WHERE n > {slots}
"""

_WORD = re.compile(r"\w+")


def _slots_for(n: int) -> int:
    """Term slots for ``n`` lexemes: the next power of two, so few statement texts exist (each slot is
    one more test per candidate row: 8 slots for a 4-term query cost 5% more than 4)."""
    slots = 1
    while slots < n:
        slots *= 2
    return slots


@functools.lru_cache(maxsize=256)  # keyed by slots, limit and kinds: a few in practice
def _search_text_sql(slots: int, limit: int, msg: bool, fact: bool) -> str:
    """_SEARCH_TEXT_SQL with ``slots`` single-lexeme queries (the i-th lexeme, or NULL), one test per
    slot for how many of the query's terms a row holds: inline (a per-row subquery over the term
    list cost about a microsecond per candidate row); the limit and the kinds as literals."""
    return (_SEARCH_TEXT_SQL
            .replace("{slot_columns}", ",\n           ".join(
                f"max(quoted) FILTER (WHERE ord = {i + 1})::tsquery AS l{i}" for i in range(slots)))
            .replace("{matched}", " + ".join(
                f"coalesce((d.tsv @@ (SELECT l{i} FROM plan))::int, 0)" for i in range(slots)))
            .replace("{slots}", str(slots))
            .replace("%(msg)s", "true" if msg else "false").replace("%(fact)s", "true" if fact else "false")
            .replace("%(limit)s", str(int(limit))).replace("%(recent)s", str(max(4 * int(limit), 100)))
            .replace("%(cap)s", str(_COMMON_TERM_ROWS + 1))
            .replace("{common}", str(_COMMON_TERM_ROWS))
            .replace("{gin}", repr(float(_INDEX_POSTINGS_PER_ROW)))
            .replace("{cfg}", schema_mod.TEXT_SEARCH_CONFIG)
            .replace("{chars}", str(schema_mod.INDEXED_CHARS)))
