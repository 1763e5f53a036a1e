"""The tamper-evident audit trail: what is recorded, how reads are batched, how entries are chained
and how ``amber audit verify`` checks the chain (docs/governance-audit.md).

* Writes and deletions are audited by the backend in the same transaction as the change.
* Reads (:data:`READ_OPERATIONS`) are noted in an in-process :class:`ReadAuditBuffer` and written in
  batches, off the hot path: every ``flush_interval`` seconds or ``max_entries`` entries, and on
  ``close()``. A read is durable in the trail within ``flush_interval`` plus one write, unless the
  process dies first (then at most one interval of reads is lost).
* Every entry is hash-chained per tenant, also off the hot path:
  ``chain_hash = sha256(prev_chain_hash || canonical(entry, position))``. The chainer takes a
  tenant's unchained entries in id order under a per-tenant lock and gives them the next positions,
  so an entry whose transaction committed late (PostgreSQL identity ids are handed out before
  commit) simply gets a later position: the chain order is the order the chainer saw, never a
  guess. :func:`verify_audit` walks the positions and names the first changed, missing or
  duplicated entry, and a chain head that does not match the last entry (a removed tail).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Iterable, Iterator, Sequence

from ..errors import InvalidInput
from ..keys import validate_part
from ..audit import current_actor
from ..keys import SessionKey
from ..records import AuditEvent, Fact, Hit, Message

__all__ = [
    "GENESIS",
    "READ_OPERATIONS",
    "WRITE_OPERATIONS",
    "ERASURE_OPERATIONS",
    "ReadAuditBuffer",
    "PendingRead",
    "canonical",
    "link",
    "chain_links",
    "erasure_chunks",
    "AuditProblem",
    "AuditVerification",
    "verify_audit",
    "parse_head",
    "reads_not_audited",
    "reads_audited",
]

log = logging.getLogger("amber.audit")

GENESIS = "0" * 64  # the "previous hash" of a tenant's first entry

# Which public operations leave which entry (one entry per call, also when nothing was found).
READ_OPERATIONS = frozenset({
    "message.read",   # read_window, read_since: ids + content hashes of the messages returned
    "state.read",     # get_state: name@version + hash of the data returned
    "fact.read",      # list_facts, get_fact: ids + hashes of the fact texts returned
    "search.text",    # search_text: ids + hashes of the hit texts returned
    "search.vector",  # search_vectors: the same
})
WRITE_OPERATIONS = frozenset({
    "message.append",  # ids + content hashes of the new messages (a retried key writes nothing)
    "state.put",       # name@version + hash of the data
    "fact.record",     # new id (+ ids it superseded) + hash of the text
    "session.restore", # restore_session: message ids + name@version; content hashes + data hashes
    "fact.restore",    # restore_facts: fact ids + hashes of the texts
    "fact.delete",     # delete_fact, and facts removed with the message they were learned from
    "message.correct", # correct_message: the id; old and new content hash
    "vector.put",      # kind:id + hash of each stored vector
    "learn.fail",      # job id + message id of a failed learning job
    "learn.requeue",   # job id + message id of a dead job made pending again
})
# message.delete names one message (id + content hash): a late fact learned from it is refused too.
ERASURE_OPERATIONS = frozenset({"session.delete", "user.delete", "retention.prune", "message.delete"})

# An erasure receipt lists the erased ids; a huge erasure is split into several entries.
ERASURE_CHUNK = 10_000


def _ts(at: datetime) -> str:
    return at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical(event: AuditEvent, position: int) -> bytes:
    """The bytes an entry's link covers: every field (never content, which the trail never holds)
    and its chain position, so changing, moving or renumbering an entry breaks the chain."""
    return json.dumps(
        [event.tenant, position, event.id, _ts(event.at), event.actor, event.operation, event.user,
         event.thread, event.count, list(event.record_ids), list(event.digests)],
        ensure_ascii=False, separators=(",", ":"),
    ).encode("utf-8")


def link(prev_hash: str, event: AuditEvent, position: int) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + b"\n" + canonical(event, position)).hexdigest()


def chain_links(head: tuple[int, str], events: Iterable[AuditEvent]) -> list[tuple[int, int, str]]:
    """``(id, position, chain_hash)`` for ``events`` (already in the order to chain them),
    continuing from ``head``. Used by every backend's chainer."""
    position, prev = head
    out = []
    for e in events:
        position += 1
        prev = link(prev, e, position)
        out.append((e.id, position, prev))
    return out


def erasure_chunks(ids: Sequence[str]) -> list[list[str]]:
    """The record ids of an erasure receipt, split into entries of at most ERASURE_CHUNK ids
    (at least one entry, possibly empty)."""
    ids = list(ids)
    return [ids[i:i + ERASURE_CHUNK] for i in range(0, len(ids), ERASURE_CHUNK)] or [[]]


# -- asynchronous read auditing --------------------------------------------------------------------
_quiet: contextvars.ContextVar[bool] = contextvars.ContextVar("amber_reads_not_audited", default=False)


@contextlib.contextmanager
def reads_not_audited() -> Iterator[None]:
    """For a layer that reads from the store below on its own behalf (a cache filling itself) and
    audits what it hands to its caller instead: reads inside this block are not noted."""
    token = _quiet.set(True)
    try:
        yield
    finally:
        _quiet.reset(token)


def reads_audited() -> bool:
    return not _quiet.get()


@dataclass(frozen=True, slots=True)
class PendingRead:
    """A read noted but not yet written: an audit entry without its id."""

    tenant: str
    at: datetime
    actor: str
    operation: str
    user: str | None
    thread: str | None
    count: int
    record_ids: tuple[str, ...]
    digests: tuple[str, ...]


class AuditedReads:
    """Read auditing shared by the backends: a read is noted in the handle's :class:`ReadAuditBuffer`
    (``self._reads``), which writes batches through the backend's own sink. Backends mix this in and
    route what they return through ``_read_messages`` / ``_read_facts`` / ``_read_hits``."""

    _reads: "ReadAuditBuffer"

    def audit_read(
        self, tenant: str, operation: str, *, user: str | None = None, thread: str | None = None,
        record_ids: Sequence[str] = (), digests: Sequence[str] = (),
    ) -> None:
        if not reads_audited():
            return
        self._reads.note(PendingRead(tenant, datetime.now(timezone.utc), current_actor(), operation, user, thread,
                                     len(record_ids), tuple(record_ids), tuple(digests)))

    def _read_messages(self, key: SessionKey, msgs: list[Message]) -> list[Message]:
        self.audit_read(key.tenant, "message.read", user=key.user, thread=key.thread,
                        record_ids=[m.id for m in msgs], digests=[m.content_hash for m in msgs])
        return msgs

    def _read_facts(self, tenant: str, user: str, facts: list[Fact]) -> list[Fact]:
        self.audit_read(tenant, "fact.read", user=user, record_ids=[f.id for f in facts],
                        digests=[_digest(f.text) for f in facts])
        return facts

    def _read_hits(self, tenant: str, user: str, operation: str, hits: list[Hit]) -> list[Hit]:
        self.audit_read(tenant, operation, user=user, record_ids=[h.id for h in hits],
                        digests=[_digest(h.text) for h in hits])
        return hits


def _digest(text: str) -> str:
    from ..store.base import digest  # the store layer's record hash; imported late (store imports us)

    return digest(text)


class ReadAuditBuffer:
    """Collects read entries in memory and writes them in batches through ``sink``.

    ``sink(entries)`` appends the entries to the store's audit trail (one transaction);
    ``chain()`` (optional) runs the store's chainer. A background task, started on first use in
    the running loop, writes every ``flush_interval`` seconds (sooner when ``max_entries`` are
    waiting) and chains every ``chain_interval`` seconds while this handle has audited anything.
    A failed write keeps the entries and retries; beyond ``max_pending`` the oldest are dropped
    with an error log (bounded memory when the database is down for long).
    """

    def __init__(
        self,
        sink: Callable[[list[PendingRead]], Awaitable[None]],
        *,
        chain: Callable[[], Awaitable[Any]] | None = None,
        flush_interval: float = 0.2,
        max_entries: int = 256,
        chain_interval: float = 2.0,
        max_pending: int = 100_000,
    ) -> None:
        if flush_interval <= 0 or max_entries < 1 or chain_interval <= 0:
            raise InvalidInput("flush_interval and chain_interval must be > 0 and max_entries >= 1")
        self._sink = sink
        self._chain = chain
        self.flush_interval = flush_interval
        self.max_entries = max_entries
        self.chain_interval = chain_interval
        self.max_pending = max_pending
        self._pending: list[PendingRead] = []
        self._dirty = False  # something was audited since the last chain run
        self._last_chain = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.dropped = 0
        self.written = 0

    def note(self, entry: PendingRead) -> None:
        if self._closed:
            return
        self._pending.append(entry)
        if len(self._pending) > self.max_pending:
            over = len(self._pending) - self.max_pending
            del self._pending[:over]
            self.dropped += over
            log.error("audit: %d read entries dropped (the store did not accept them in time)", over)
        self._dirty = True
        self._ensure_task()
        if len(self._pending) >= self.max_entries and self._wake is not None:
            self._wake.set()

    def wrote(self) -> None:
        """A write was audited through this handle: chain it soon."""
        if self._closed:
            return
        self._dirty = True
        self._ensure_task()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _ensure_task(self) -> None:
        if self._task is not None and not self._task.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a sync caller): written at the next flush or close
            return
        self._loop = loop
        self._wake = asyncio.Event()
        self._task = loop.create_task(self._run(), name="amber-audit-flusher")

    async def _run(self) -> None:
        assert self._wake is not None
        while not self._closed:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.flush_interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.flush()
                if self._chain is not None and self._dirty and time.monotonic() - self._last_chain >= self.chain_interval:
                    self._dirty = False
                    self._last_chain = time.monotonic()
                    await self._chain()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried next round; the entries are kept
                log.warning("audit: writing read entries failed, will retry: %s", exc)
            if not self._pending and not self._dirty:
                return  # idle: the next note() starts a new task

    async def flush(self) -> int:
        """Write every buffered entry now. Returns how many were written."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            written = 0
            while self._pending:
                batch = self._pending[: max(self.max_entries, 1000)]
                await self._sink(batch)
                del self._pending[: len(batch)]
                written += len(batch)
            self.written += written
            return written

    async def close(self) -> None:
        """Stop the background task and write what is left (then chain once, if anything was audited)."""
        if self._closed:
            return
        task, self._task = self._task, None
        if task is not None and not task.done():
            if task.get_loop() is asyncio.get_running_loop():
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):  # noqa: BLE001 - flushed again below
                    pass
            else:  # the task lives in another (maybe closed) loop: leave it, flush from here
                task.cancel()
        self._lock = None  # a lock bound to another loop must not be reused here
        try:
            await self.flush()
            if self._chain is not None and self._dirty:
                self._dirty = False
                await self._chain()
        finally:
            self._closed = True


# -- verification ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AuditProblem:
    """Where the chain breaks. ``kind``: "changed" (an entry's fields, or its position, differ from
    what was chained: edited, or moved), "missing" (a position has no entry: removed), "duplicate"
    (two entries claim a position), "head" (the chain head does not match the last entry: the tail
    was removed or rewritten), "expected-head" (does not extend the head recorded earlier)."""

    kind: str
    position: int | None
    id: int | None
    detail: str


@dataclass(frozen=True, slots=True)
class AuditVerification:
    tenant: str
    ok: bool
    entries: int
    chained: int
    unchained: int
    head: tuple[int, str]
    problems: tuple[AuditProblem, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant, "ok": self.ok, "entries": self.entries, "chained": self.chained,
            "unchained": self.unchained, "head": {"position": self.head[0], "hash": self.head[1]},
            "problems": [{"kind": p.kind, "position": p.position, "id": p.id, "detail": p.detail}
                         for p in self.problems],
        }


def parse_head(text: str) -> tuple[int, str]:
    """``POSITION:HASH`` (as printed by ``amber audit verify``) -> (position, hash)."""
    try:
        pos, _, digest = text.partition(":")
        position = int(pos)
        if position < 0 or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError
    except ValueError as exc:
        raise InvalidInput(f"expected POSITION:SHA256HEX for a chain head, got {text[:80]!r}") from exc
    return position, digest


async def verify_audit(
    store: Any, tenant: str, *, chain: bool = True, expect_head: tuple[int, str] | None = None,
    page: int = 5000,
) -> AuditVerification:
    """Check a tenant's audit chain. With ``chain`` (default) pending entries are chained first, so
    everything written before the call is covered. ``expect_head``: a head recorded earlier (e.g. by a
    previous run, kept outside the database); the chain must still pass through it."""
    validate_part("tenant", tenant)
    heads = await store.chain_audit(tenant if chain else tenant)
    head = tuple(heads.get(tenant, (0, GENESIS)))  # type: ignore[arg-type]
    chained: list[AuditEvent] = []
    unchained = 0
    total = 0
    after = 0
    while True:
        events = await store.list_audit(tenant, limit=page, after_id=after)
        for e in events:
            total += 1
            if e.chain_seq is None:
                unchained += 1
            else:
                chained.append(e)
        if len(events) < page:
            break
        after = events[-1].id
    chained.sort(key=lambda e: (e.chain_seq, e.id))
    problems: list[AuditProblem] = []
    prev, expected = GENESIS, 1
    hash_at: dict[int, str] = {0: GENESIS}
    for e in chained:
        assert e.chain_seq is not None
        if e.chain_seq < expected:
            problems.append(AuditProblem("duplicate", e.chain_seq, e.id,
                                         f"entry id {e.id} claims position {e.chain_seq}, which is taken"))
            continue
        if e.chain_seq > expected:
            missing = e.chain_seq - expected
            problems.append(AuditProblem(
                "missing", expected, None,
                f"{missing} entr{'y is' if missing == 1 else 'ies are'} missing at position {expected}"
                + (f"-{e.chain_seq - 1}" if missing > 1 else "") + f" (before entry id {e.id})"))
            prev = e.chain_hash or ""  # resynchronise: we cannot know the missing link
        elif link(prev, e, e.chain_seq) != e.chain_hash:
            problems.append(AuditProblem(
                "changed", e.chain_seq, e.id,
                f"entry id {e.id} at position {e.chain_seq} does not match its chain link "
                "(changed, or moved from another position)"))
            prev = e.chain_hash or ""
        else:
            prev = e.chain_hash  # type: ignore[assignment]
        hash_at[e.chain_seq] = e.chain_hash or ""
        expected = e.chain_seq + 1
    last = expected - 1
    if head[0] > last:
        problems.append(AuditProblem(
            "missing", last + 1, None,
            f"the chain head is at position {head[0]} but the last entry is at {last}: "
            f"{head[0] - last} entr{'y' if head[0] - last == 1 else 'ies'} removed from the end"))
    elif head[0] < last or hash_at.get(head[0]) != head[1]:
        problems.append(AuditProblem(
            "head", head[0], None, f"the chain head ({head[0]}:{head[1][:12]}...) does not match the entry at "
            f"position {head[0]}"))
    if expect_head is not None:
        pos, digest = expect_head
        if hash_at.get(pos) != digest:
            problems.append(AuditProblem(
                "expected-head", pos, None,
                f"the chain no longer passes through the recorded head {pos}:{digest[:12]}... "
                "(rewritten or truncated since it was recorded)"))
    return AuditVerification(tenant, not problems, total, len(chained), unchained,
                             (head[0], str(head[1])), tuple(problems))
