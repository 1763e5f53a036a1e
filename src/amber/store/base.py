"""The storage contract: one async protocol that every backend implements and the conformance
suite (``amber.testing``) checks clause by clause.

Semantics every backend honours:

* ``append`` returns only after the message is durable. A retried append with the same
  idempotency key is a no-op that returns the stored message. Sequence numbers within a session
  are gap-free, starting at 1, in one total order even with concurrent writers in many processes.
* A read sees every append acknowledged before the read began, from any process.
* Every query is scoped by tenant in the store layer; there is no unscoped read path.
* Search scores are similarities in [0, 1], higher is better; ties keep a stable order.
* ``close()`` releases resources and never deletes data. Deletion is explicit and audited.
* Facts are never overwritten: recording a fact that supersedes others sets their ``valid_to``.
  ``record_fact(expect_current=...)`` is a compare-and-set on the current facts of an attribute,
  checked inside the write's own transaction, so concurrent learners cannot both add a value;
  ``record_fact(superseded_by=...)`` inserts a statement learned late directly into history.
* Every write records an audit entry (ids and hashes, never content) in the same transaction;
  every read is audited asynchronously in batches; entries are hash-chained per tenant.
* ``restore_session`` / ``restore_facts`` write records with their given identity (ids, seq,
  timestamps, versions) into an empty target, atomically, or refuse with ``Conflict`` and write
  nothing: the primitive behind an exact export -> forget -> import round trip.
* ``delete_message`` / ``correct_message`` act on one message and never renumber the others.

Validation and encoding that every backend needs lives here (``prepare_message``,
``select_window``...), so a backend is only the part that talks to its database.
"""

from __future__ import annotations

import enum
import hashlib
import json
import secrets
import struct
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, Iterable, Mapping, Sequence

from ..errors import Conflict, InvalidInput, MessageTooLarge, VersionConflict
from ..keys import SessionKey, validate_part
from ..records import (
    ROLES,
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
from ..tokens import estimate_tokens

__all__ = [
    "Store",
    "Capability",
    "StoreLimits",
    "PreparedMessage",
    "PreparedRestore",
    "prepare_message",
    "prepare_restore",
    "prepare_restored_facts",
    "prepare_fact",
    "select_window",
    "digest",
    "new_id",
    "encode_json",
    "decode_json",
    "validate_state_name",
    "validate_limit",
    "MessageKind",
    "restore_conflict",
    "PreparedCorrection",
    "prepare_correction",
    "corrected_metadata",
    "CORRECTION_KEYS",
    "stale_sources",
    "validate_fact_ids",
    "validate_job_ids",
    "validate_tenant_filter",
    "validate_expect_current",
    "check_current_facts",
    "validate_history_write",
    "check_superseding_fact",
    "SUPERSEDED_HISTORY",
]

MessageKind = str  # "message" | "fact"


class Capability(str, enum.Enum):
    """What a backend can do beyond the core contract. Check with ``cap in store.capabilities``."""

    DURABLE = "durable"  # survives process exit
    MULTI_PROCESS = "multi_process"  # several processes may share it
    MULTI_HOST = "multi_host"  # several machines may share it
    LEXICAL_SEARCH = "lexical_search"
    VECTOR_SEARCH = "vector_search"  # native or in-process vector index
    VECTOR_INDEX_NATIVE = "vector_index_native"  # e.g. pgvector
    CACHE = "cache"  # a hot layer (Redis) is in front


@dataclass(frozen=True, slots=True)
class StoreLimits:
    """Input limits, enforced before anything is written."""

    max_message_bytes: int = 1_048_576  # content + payload + metadata, UTF-8 JSON
    max_state_bytes: int = 16 * 1_048_576
    max_fact_bytes: int = 65_536
    max_batch: int = 1000
    max_idempotency_key: int = 256


@dataclass(frozen=True, slots=True)
class PreparedMessage:
    """A validated message, encoded once, ready for any backend to insert."""

    id: str
    role: str
    content: str
    payload_json: str | None
    payload_format: str
    author: str | None
    idempotency_key: str
    created_at: datetime
    metadata_json: str
    tokens: int
    content_hash: str


def new_id(prefix: str) -> str:
    """``prefix_`` and 32 hex digits, time-ordered like a UUIDv7: 48 bits of milliseconds, then 80
    random bits. Ids made close in time sort close together, so each store's unique indexes on ids
    take new entries on their right-most pages instead of a random page per write (with random ids,
    a commit dirtied one index page per message); 80 random bits keep them unguessable."""
    return f"{prefix}_{time.time_ns() // 1_000_000 & 0xFFFF_FFFF_FFFF:012x}{secrets.token_hex(10)}"


def digest(*parts: str | None) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(b"\x00" if part is None else part.encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()


def vector_digest(model: str, vector: Sequence[float] | bytes) -> str:
    """The audit hash of a stored vector: its model and its float32 little-endian bytes (``vector``
    as floats, or as those bytes). The same on every backend for the same stored vector, and cheap:
    hashing the vector's decimal text took 0.19 ms per 384-dimensional vector, most of what a
    learner's batch spent writing its vectors."""
    data = bytes(vector) if isinstance(vector, (bytes, bytearray, memoryview)) else struct.pack(
        f"<{len(vector)}f", *vector)
    h = hashlib.sha256()
    h.update(model.encode("utf-8"))
    h.update(b"\x1f")
    h.update(data)
    h.update(b"\x1f")
    return h.hexdigest()


def encode_json(value: Any, what: str) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} is not JSON-serialisable: {exc}") from exc
    _check_text(text, what)
    return text


def decode_json(text: str | bytes | None) -> Any:
    if text is None:
        return None
    return json.loads(text)


def _check_text(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        # Lone surrogates (e.g. from a bad decode upstream) cannot be stored as UTF-8.
        raise InvalidInput(f"{what} contains invalid Unicode (lone surrogate at {exc.start})") from exc
    if "\x00" in text:
        raise InvalidInput(f"{what} contains a NUL character")


def _utc(value: datetime | None, what: str) -> datetime:
    if value is None:
        return utcnow()
    if not isinstance(value, datetime):
        raise InvalidInput(f"{what} must be a datetime")
    if value.tzinfo is None:
        raise InvalidInput(f"{what} must be timezone-aware (UTC)")
    try:
        return value.astimezone(timezone.utc)
    except OverflowError as exc:  # e.g. 0001-01-01T00:00+01:00 is before year 1 in UTC
        raise InvalidInput(f"{what} is out of range in UTC") from exc


def prepare_message(message: NewMessage, limits: StoreLimits) -> PreparedMessage:
    if not isinstance(message, NewMessage):
        raise InvalidInput(f"expected NewMessage, got {type(message).__name__}")
    if message.role not in ROLES:
        raise InvalidInput(f"invalid role {message.role!r}: expected one of {sorted(ROLES)}")
    if not isinstance(message.content, str):
        raise InvalidInput("content must be a string")
    _check_text(message.content, "content")
    if not isinstance(message.payload_format, str) or not message.payload_format:
        raise InvalidInput("payload_format must be a non-empty string")
    if message.author is not None:
        if not isinstance(message.author, str) or len(message.author) > 256:
            raise InvalidInput("author must be a string of at most 256 characters")
        _check_text(message.author, "author")
    payload_json = None if message.payload is None else encode_json(dict(message.payload), "payload")
    metadata_json = encode_json(dict(message.metadata or {}), "metadata")
    size = len(message.content.encode("utf-8")) + len(metadata_json.encode("utf-8"))
    if payload_json is not None:
        size += len(payload_json.encode("utf-8"))
    if size > limits.max_message_bytes:
        raise MessageTooLarge(
            f"message is {size} bytes; the limit is {limits.max_message_bytes} bytes "
            "(StoreLimits.max_message_bytes)"
        )
    key = message.idempotency_key
    if key is None:
        key = new_id("auto")
    elif not isinstance(key, str) or not key or len(key) > limits.max_idempotency_key:
        raise InvalidInput(f"idempotency_key must be 1-{limits.max_idempotency_key} characters")
    else:
        _check_text(key, "idempotency_key")
    return PreparedMessage(
        id=new_id("msg"),
        role=message.role,
        content=message.content,
        payload_json=payload_json,
        payload_format=message.payload_format,
        author=message.author,
        idempotency_key=key,
        created_at=_utc(message.created_at, "created_at"),
        metadata_json=metadata_json,
        tokens=estimate_tokens(message.content),
        content_hash=digest(message.role, message.content, payload_json),
    )


def prepare_fact(fact: NewFact, limits: StoreLimits) -> NewFact:
    if not isinstance(fact, NewFact):
        raise InvalidInput(f"expected NewFact, got {type(fact).__name__}")
    for name in ("attribute", "value", "text", "kind"):
        value = getattr(fact, name)
        if not isinstance(value, str) or not value.strip():
            raise InvalidInput(f"fact {name} must be a non-empty string")
        _check_text(value, f"fact {name}")
    if fact.thread is not None:
        validate_part("thread", fact.thread)
    if not 0.0 <= float(fact.confidence) <= 1.0:
        raise InvalidInput("fact confidence must be in [0, 1]")
    size = len(fact.text.encode()) + len(fact.value.encode()) + len(encode_json(dict(fact.metadata), "metadata"))
    if size > limits.max_fact_bytes:
        raise MessageTooLarge(f"fact is {size} bytes; the limit is {limits.max_fact_bytes}")
    _utc(fact.valid_from, "valid_from")
    return fact


@dataclass(frozen=True, slots=True)
class PreparedRestore:
    """A validated ``restore_session`` call, encoded once, ready for any backend to insert.

    ``messages`` pairs each seq with the message as ``append`` would store it, but keeping the
    given id, created_at and content hash. ``states`` holds ``(name, version, data_json,
    updated_at)``. ``last_seq`` 0 means no session row (state only: as ``put_state`` leaves it)."""

    key: SessionKey
    messages: list[tuple[int, PreparedMessage]]
    states: list[tuple[str, int, str, datetime]]
    created_at: datetime
    updated_at: datetime
    last_seq: int

    def audit(self) -> tuple[list[str], list[str]]:
        """The ``session.restore`` entry: message ids and ``name@version``; content and data hashes."""
        ids = [p.id for _, p in self.messages] + [f"{n}@{v}" for n, v, _, _ in self.states]
        digests = [p.content_hash for _, p in self.messages] + [digest(d) for _, _, d, _ in self.states]
        return ids, digests


def _record_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 256:
        raise InvalidInput(f"{what} must be a string of 1-256 characters")
    _check_text(value, what)
    return value


def _sha256_hex(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise InvalidInput(f"{what} must be a lowercase hex SHA-256 digest")
    return value


def prepare_restore(
    key: SessionKey, messages: Sequence[Message], states: Sequence[StateBlob], *,
    created_at: datetime | None, updated_at: datetime | None, last_seq: int | None, limits: StoreLimits,
) -> PreparedRestore:
    """Validate a ``restore_session`` call before anything is written. Sequence numbers must be
    increasing (retention or ``delete_message`` may have left gaps, and the first may be above 1)
    and end at or below ``last_seq``; ids and idempotency keys unique; every record of ``key``."""
    if not isinstance(key, SessionKey):
        raise InvalidInput(f"expected a SessionKey, got {type(key).__name__}")
    if isinstance(messages, (str, bytes)) or isinstance(states, (str, bytes)):
        raise InvalidInput("messages and states must be sequences of records")
    prepared: list[tuple[int, PreparedMessage]] = []
    ids: set[str] = set()
    idems: set[str] = set()
    for m in messages:
        if not isinstance(m, Message):
            raise InvalidInput(f"expected Message, got {type(m).__name__}")
        if m.key != key:
            raise InvalidInput(f"message {m.id!r} belongs to {m.key}, not {key}")
        if isinstance(m.seq, bool) or not isinstance(m.seq, int) or not 1 <= m.seq <= 2**63 - 1:
            raise InvalidInput(f"message seq must be a positive 64-bit integer, got {m.seq!r}")
        if prepared and m.seq <= prepared[-1][0]:
            raise InvalidInput(f"message seqs must be increasing: {m.seq} follows {prepared[-1][0]}")
        if m.idempotency_key is None:
            raise InvalidInput("a restored message needs its idempotency_key")
        if not isinstance(m.metadata, Mapping) or not (m.payload is None or isinstance(m.payload, Mapping)):
            raise InvalidInput("message metadata must be a mapping and payload a mapping or None")
        p = prepare_message(NewMessage(
            role=m.role, content=m.content, payload=m.payload, payload_format=m.payload_format, author=m.author,
            idempotency_key=m.idempotency_key, created_at=m.created_at, metadata=m.metadata,
        ), limits)
        mid = _record_id(m.id, "message id")
        if mid in ids:
            raise InvalidInput(f"message id {mid!r} appears twice")
        if p.idempotency_key in idems:
            raise InvalidInput(f"idempotency key {p.idempotency_key!r} appears twice")
        ids.add(mid)
        idems.add(p.idempotency_key)
        # Kept as given (the hash of what was first stored, e.g. ciphertext), not recomputed.
        chash = _sha256_hex(m.content_hash, "content_hash")
        prepared.append((m.seq, PreparedMessage(
            id=mid, role=p.role, content=p.content, payload_json=p.payload_json, payload_format=p.payload_format,
            author=p.author, idempotency_key=p.idempotency_key, created_at=p.created_at,
            metadata_json=p.metadata_json, tokens=p.tokens, content_hash=chash,
        )))
    top = prepared[-1][0] if prepared else 0
    if last_seq is None:
        last_seq = top
    validate_limit(last_seq, "last_seq", allow_none=False)
    if last_seq < top:
        raise InvalidInput(f"last_seq {last_seq} is below the last message's seq {top}")
    blobs: list[tuple[str, int, str, datetime]] = []
    names: set[str] = set()
    for b in states:
        if not isinstance(b, StateBlob):
            raise InvalidInput(f"expected StateBlob, got {type(b).__name__}")
        if b.key != key:
            raise InvalidInput(f"state {b.name!r} belongs to {b.key}, not {key}")
        name = validate_state_name(b.name)
        if name in names:
            raise InvalidInput(f"state {name!r} appears twice")
        names.add(name)
        if isinstance(b.version, bool) or not isinstance(b.version, int) or not 1 <= b.version <= 2**63 - 1:
            raise InvalidInput(f"state version must be a positive 64-bit integer, got {b.version!r}")
        if not isinstance(b.data, Mapping):
            raise InvalidInput("state data must be a mapping")
        text = encode_json(dict(b.data), "state")
        if len(text.encode()) > limits.max_state_bytes:
            raise MessageTooLarge(f"state is larger than {limits.max_state_bytes} bytes")
        blobs.append((name, b.version, text, _utc(b.updated_at, "state updated_at")))
    now = utcnow()
    return PreparedRestore(
        key=key, messages=prepared, states=blobs,
        created_at=now if created_at is None else _utc(created_at, "created_at"),
        updated_at=now if updated_at is None else _utc(updated_at, "updated_at"),
        last_seq=last_seq,
    )


def prepare_restored_facts(tenant: str, user: str, facts: Sequence[Fact], limits: StoreLimits) -> list[Fact]:
    """Validate a ``restore_facts`` call: every fact of ``tenant``/``user``, ids unique, times UTC,
    ``valid_to`` (if any) not before ``valid_from``; returned normalised (UTC, plain metadata)."""
    validate_part("tenant", tenant)
    validate_part("user", user)
    if isinstance(facts, (str, bytes)):
        raise InvalidInput("facts must be a sequence of Fact records")
    out: list[Fact] = []
    ids: set[str] = set()
    for f in facts:
        if not isinstance(f, Fact):
            raise InvalidInput(f"expected Fact, got {type(f).__name__}")
        if f.tenant != tenant or f.user != user:
            raise InvalidInput(f"fact {f.id!r} belongs to {f.tenant}/{f.user}, not {tenant}/{user}")
        fid = _record_id(f.id, "fact id")
        if fid in ids:
            raise InvalidInput(f"fact id {fid!r} appears twice")
        ids.add(fid)
        if isinstance(f.source_message_ids, (str, bytes)):
            raise InvalidInput("source_message_ids must be a sequence of ids")
        sources = tuple(_record_id(s, "source message id") for s in f.source_message_ids)
        if f.valid_from is None:
            raise InvalidInput("a restored fact needs its valid_from")
        if not isinstance(f.metadata, Mapping):
            raise InvalidInput("fact metadata must be a mapping")
        if isinstance(f.confidence, bool) or not isinstance(f.confidence, (int, float)):
            raise InvalidInput("fact confidence must be a number")
        prepare_fact(NewFact(
            attribute=f.attribute, value=f.value, text=f.text, kind=f.kind, source_message_ids=sources,
            thread=f.thread, confidence=f.confidence, valid_from=f.valid_from, metadata=f.metadata,
        ), limits)
        valid_from = _utc(f.valid_from, "valid_from")
        valid_to = None if f.valid_to is None else _utc(f.valid_to, "valid_to")
        if valid_to is not None and valid_to < valid_from:
            raise InvalidInput(f"fact {fid!r} ends (valid_to) before it starts (valid_from)")
        superseded_by = None if f.superseded_by is None else _record_id(f.superseded_by, "superseded_by")
        if superseded_by is not None and valid_to is None:
            raise InvalidInput(f"fact {fid!r} is superseded_by {superseded_by!r} but has no valid_to")
        if f.created_at is None:
            raise InvalidInput("a restored fact needs its created_at")
        out.append(Fact(
            id=fid, tenant=tenant, user=user, attribute=f.attribute, value=f.value, text=f.text, kind=f.kind,
            source_message_ids=sources, thread=f.thread, confidence=float(f.confidence), valid_from=valid_from,
            valid_to=valid_to, superseded_by=superseded_by, created_at=_utc(f.created_at, "created_at"),
            metadata=decode_json(encode_json(dict(f.metadata), "metadata")),
        ))
    return out


# The metadata keys a correction sets on the message (see Store.correct_message).
CORRECTION_KEYS = ("corrected_at", "correction_reason")


@dataclass(frozen=True, slots=True)
class PreparedCorrection:
    """A validated ``correct_message`` call: the new content and its derived fields. ``apply`` gives
    the stored message's new metadata and content hash, which depend on the message itself."""

    content: str
    reason: str | None
    tokens: int
    at: datetime

    def content_hash(self, role: str) -> str:
        # The payload is dropped (it embeds the old content), so it is not part of the hash.
        return digest(role, self.content, None)

    def metadata(self, old: Mapping[str, Any], limits: StoreLimits) -> str:
        text = encode_json(corrected_metadata(old, self.at, self.reason), "metadata")
        size = len(self.content.encode("utf-8")) + len(text.encode("utf-8"))
        if size > limits.max_message_bytes:
            raise MessageTooLarge(
                f"corrected message is {size} bytes; the limit is {limits.max_message_bytes} bytes "
                "(StoreLimits.max_message_bytes)"
            )
        return text


def corrected_metadata(old: Mapping[str, Any], at: datetime, reason: str | None) -> dict[str, Any]:
    """The metadata of a corrected message: the old one plus ``corrected_at`` (ISO 8601 UTC) and,
    if given, ``correction_reason`` (a reason of an earlier correction is not carried over)."""
    meta = {k: v for k, v in dict(old).items() if k != "correction_reason"}
    meta["corrected_at"] = at.astimezone(timezone.utc).isoformat()
    if reason is not None:
        meta["correction_reason"] = reason
    return meta


def prepare_correction(message_id: str, content: str, reason: str | None, limits: StoreLimits) -> PreparedCorrection:
    """Validate a ``correct_message`` call before anything is read or written."""
    _record_id(message_id, "message id")
    if not isinstance(content, str):
        raise InvalidInput("content must be a string")
    _check_text(content, "content")
    if reason is not None:
        if not isinstance(reason, str):
            raise InvalidInput("reason must be a string")
        _check_text(reason, "reason")
    if len(content.encode("utf-8")) > limits.max_message_bytes:
        raise MessageTooLarge(
            f"content is larger than {limits.max_message_bytes} bytes (StoreLimits.max_message_bytes)")
    return PreparedCorrection(content=content, reason=reason, tokens=estimate_tokens(content), at=utcnow())


def restore_conflict(what: str) -> Conflict:
    """The refusal every backend raises when a restore target is not empty (nothing was written)."""
    return Conflict(f"restore refused, nothing was written: {what}")


def validate_state_name(name: str) -> str:
    return validate_part("state name", name)


def validate_limit(value: int | None, what: str = "limit", *, allow_none: bool = True) -> int | None:
    if value is None:
        if allow_none:
            return None
        raise InvalidInput(f"{what} is required")
    # Backends store signed 64-bit integers: a larger one would surface as a driver OverflowError.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 2**63 - 1:
        raise InvalidInput(f"{what} must be a non-negative 64-bit integer, got {value!r}")
    return value


def select_window(tokens_newest_first: Sequence[int], last: int | None, max_tokens: int | None) -> int:
    """How many of the newest messages a window keeps: at most ``last``, and the longest suffix
    whose token total fits ``max_tokens`` (possibly none)."""
    count = len(tokens_newest_first) if last is None else min(last, len(tokens_newest_first))
    if max_tokens is None:
        return count
    total = 0
    for i in range(count):
        total += tokens_newest_first[i]
        if total > max_tokens:
            return i
    return count


# Facts of one attribute that recall's staleness check looks at (the newest ones).
SUPERSEDED_HISTORY = 200


def validate_fact_ids(fact_ids: Sequence[str]) -> list[str]:
    """The ids, each once, in order; InvalidInput unless every one is a string."""
    if isinstance(fact_ids, str) or any(not isinstance(i, str) for i in fact_ids):
        raise InvalidInput("fact_ids must be a sequence of strings")
    return list(dict.fromkeys(fact_ids))


def validate_job_ids(job_ids: Sequence[str] | None) -> list[str] | None:
    """The learn job ids, each once, in order (None: every job); InvalidInput unless a sequence of
    strings -- a lone string would otherwise be read as its characters."""
    if job_ids is None:
        return None
    if isinstance(job_ids, (str, bytes)) or any(not isinstance(i, str) for i in job_ids):
        raise InvalidInput("job_ids must be a sequence of job id strings, or None for every job")
    return list(dict.fromkeys(job_ids))


def validate_tenant_filter(tenant: str | None) -> str | None:
    """An optional tenant filter of a queue operation (None: every tenant)."""
    return None if tenant is None else validate_part("tenant", tenant)


def validate_expect_current(expect_current: Sequence[str] | None) -> frozenset[str] | None:
    """The fact ids ``record_fact(expect_current=...)`` expects to be current, as a set (None: no
    expectation); InvalidInput unless a sequence of strings."""
    if expect_current is None:
        return None
    if isinstance(expect_current, (str, bytes)):
        raise InvalidInput("expect_current must be a sequence of fact ids, not a string")
    ids = tuple(expect_current)
    if any(not isinstance(i, str) for i in ids):
        raise InvalidInput("expect_current must be a sequence of fact ids")
    return frozenset(ids)


def check_current_facts(expected: frozenset[str] | None, current: Iterable[str]) -> None:
    """The compare of ``record_fact``'s compare-and-set: VersionConflict unless the ids of the
    attribute's current facts, read inside the write's transaction, are exactly ``expected``."""
    if expected is None:
        return
    found = set(current)
    if found != expected:
        # Counts and ids only: an attribute may be a blinded or personal name, never put in errors.
        raise VersionConflict(
            f"the current facts of this attribute changed since they were read ({len(expected)} expected, "
            f"{len(found)} found, {len(found ^ expected)} differ): read them again and retry",
            expected=None, actual=None)


def validate_history_write(fact: NewFact, supersedes: Sequence[str], superseded_by: str | None) -> None:
    """The arguments of ``record_fact(superseded_by=...)``, checked before anything is read: a fact
    recorded as history needs its own ``valid_from`` and closes no other fact."""
    if superseded_by is None:
        return
    _record_id(superseded_by, "superseded_by")
    if fact.valid_from is None:
        raise InvalidInput("a fact recorded as history (superseded_by) needs its valid_from")
    if isinstance(supersedes, str) or list(supersedes):
        raise InvalidInput("a fact recorded as history (superseded_by) supersedes no other fact")


def check_superseding_fact(superseded_by: str, found: tuple[str, Any] | None, attribute: str, valid_from: Any) -> Any:
    """The check of ``record_fact(superseded_by=...)`` against the superseding fact as the store
    read it in the write's transaction (``(attribute, valid_from)``, None if the user has no fact of
    that id); returns the new fact's ``valid_to``: the superseding fact's ``valid_from``. Times are
    compared as the backend holds them (datetimes, or integers that order the same)."""
    if found is None:
        raise InvalidInput(f"cannot be superseded by unknown fact {superseded_by!r}")
    if found[0] != attribute:
        raise InvalidInput(f"fact {superseded_by!r} is of another attribute: it cannot supersede this one")
    if found[1] < valid_from:
        raise InvalidInput(f"fact {superseded_by!r} starts before this one: it cannot supersede it")
    return found[1]


def superseded_query_ids(tenant: str, user: str, fact_ids: Sequence[str], history: int) -> list[str]:
    """Validate the arguments of :meth:`Store.superseded_sources`; the fact ids to look at, each
    once (none when ``history`` is 0: no history, nothing stale)."""
    validate_part("tenant", tenant)
    validate_part("user", user)
    validate_limit(history, "history", allow_none=False)
    ids = validate_fact_ids(fact_ids)
    return ids if history else []


def stale_sources(rows: Iterable[tuple[str, str, Sequence[str], bool]]) -> set[str]:
    """The staleness rule of :meth:`Store.superseded_sources` over ``(attribute, value,
    source_message_ids, current)`` rows of the attributes' histories."""
    by_attribute: dict[str, list[tuple[str, Sequence[str], bool]]] = {}
    for attribute, value, sources, current in rows:
        by_attribute.setdefault(attribute, []).append((value, sources, current))
    stale: set[str] = set()
    for history in by_attribute.values():
        current_sources = {m for _, sources, current in history if current for m in sources}
        current_values = {value.casefold() for value, _, current in history if current}
        for value, sources, current in history:
            if not current and value.casefold() not in current_values:
                stale.update(m for m in sources if m not in current_sources)
    return stale


class Store(ABC):
    """The async storage contract. Open one with :func:`amber.open_store`; use it as an async
    context manager or call :meth:`close`. Methods are safe to call from many tasks at once."""

    url: str  # the URL it was opened with, secrets redacted
    capabilities: frozenset[Capability]
    limits: StoreLimits

    # -- lifecycle ---------------------------------------------------------------------------
    async def __aenter__(self) -> "Store":
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @abstractmethod
    async def close(self) -> None:
        """Release connections and threads. Never deletes data. Idempotent."""

    @abstractmethod
    async def describe(self) -> Mapping[str, Any]:
        """Backend facts for diagnostics: location, durability settings, schema version."""

    # -- transcripts -------------------------------------------------------------------------
    @abstractmethod
    async def append(self, key: SessionKey, messages: Sequence[NewMessage]) -> list[Message]:
        """Append messages to a session, durably, in the given order. Returns the stored messages
        (for a retried idempotency key, the message stored the first time)."""

    async def append_one(self, key: SessionKey, message: NewMessage) -> Message:
        return (await self.append(key, [message]))[0]

    @abstractmethod
    async def read_window(
        self, key: SessionKey, *, last: int | None = None, max_tokens: int | None = None
    ) -> list[Message]:
        """The most recent messages, oldest first: at most ``last``, and at most ``max_tokens``."""

    @abstractmethod
    async def read_since(self, key: SessionKey, after_seq: int = 0, *, limit: int | None = None) -> list[Message]:
        """Messages with ``seq > after_seq``, oldest first, at most ``limit``."""

    @abstractmethod
    async def get_session(self, key: SessionKey) -> SessionInfo | None: ...

    @abstractmethod
    async def list_sessions(
        self, tenant: str, user: str | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[SessionInfo]:
        """Sessions of a tenant (of one user if given), most recently active first."""

    @abstractmethod
    async def list_users(self, tenant: str, *, limit: int = 100, offset: int = 0) -> list[str]: ...

    # -- restore (exact import) ------------------------------------------------------------------
    @abstractmethod
    async def restore_session(
        self, key: SessionKey, messages: Sequence[Message], states: Sequence[StateBlob] = (), *,
        created_at: datetime | None = None, updated_at: datetime | None = None, last_seq: int | None = None,
    ) -> SessionInfo | None:
        """Write a session's messages and state blobs exactly as given -- ids, seqs, created_at,
        content hashes, idempotency keys, state versions and updated_at -- with the session's
        ``created_at``/``updated_at``/``last_seq`` (defaults: now, now, the last message's seq).

        One transaction: refuses with :class:`~amber.errors.Conflict` and writes nothing if the
        session already holds messages (or a ``last_seq``) or any state blob, or if a message id is
        taken; :class:`~amber.errors.InvalidInput` for bad records (seqs not increasing, duplicate
        ids or keys...). Like ``append``, it queues a learn job per message (the learner re-embeds
        them; facts restored with the same source ids are not learned twice) and indexes the text
        for ``search_text``; vectors are not part of a restore. Audited as ``session.restore``.
        Returns the session, or None when only state blobs were given (as ``put_state`` leaves it)."""

    @abstractmethod
    async def restore_facts(self, tenant: str, user: str, facts: Sequence[Fact]) -> None:
        """Write a user's facts exactly as given (ids, validity, ``superseded_by``, sources,
        ``created_at``), in one transaction; refuses with :class:`~amber.errors.Conflict` and
        writes nothing if a fact id is taken. An explicit restore: it does not consult erasure
        receipts (``amber.transfer.restore_jsonl`` withholds what was erased after a backup).
        Audited as ``fact.restore``."""

    # -- state blobs ---------------------------------------------------------------------------
    @abstractmethod
    async def get_state(self, key: SessionKey, name: str) -> StateBlob | None: ...

    @abstractmethod
    async def put_state(
        self, key: SessionKey, name: str, data: Mapping[str, Any], *, expected_version: int | None = None
    ) -> StateBlob:
        """Write state. With ``expected_version`` this is compare-and-set: 0 means "must not exist",
        n means "current version is n"; on mismatch raises VersionConflict and writes nothing."""

    @abstractmethod
    async def list_states(self, key: SessionKey) -> list[str]:
        """Names of the state blobs a session holds, sorted (export and inspection need them)."""

    # -- deletion ------------------------------------------------------------------------------
    @abstractmethod
    async def delete_session(self, key: SessionKey) -> DeletionReceipt:
        """Delete a session's messages, state, jobs and index entries (facts are the user's and
        stay); audited with an erasure receipt naming the erased ids. A fact whose every source
        message was erased is refused afterwards (no resurrection by a late learning job)."""

    @abstractmethod
    async def delete_message(self, key: SessionKey, message_id: str) -> bool:
        """Delete one message of a session. False (and nothing changed) if the session holds no
        message of that id -- also when the id belongs to another session, user or tenant.

        The other messages keep their seqs: the deleted one leaves a gap that ``read_window`` and
        ``read_since`` simply skip, and ``last_seq`` is not reused. Removed with it, in the same
        transaction: its lexical index entry, its vectors, its learn jobs, and every fact of the
        user that it is a source of and that has no other source message left (with the fact's
        vectors; facts without sources, recorded by hand, are never touched). Audited as
        ``message.delete`` (the id and content hash, never content) -- an erasure receipt: a late
        learning job cannot bring back a fact learned from it -- plus ``fact.delete`` naming the
        facts removed with it. On SQLite the freed pages are zeroed (``secure_delete``) and the WAL
        is checkpointed, as for ``delete_session``."""

    @abstractmethod
    async def correct_message(
        self, key: SessionKey, message_id: str, content: str, *, reason: str | None = None
    ) -> Message:
        """Replace one message's content, keeping its id, seq, role, author, idempotency key and
        ``created_at``; returns the corrected message. Raises :class:`~amber.errors.NotFound`
        (nothing changed) if the session holds no message of that id.

        Tokens and ``content_hash`` are recomputed. The structured ``payload`` is dropped (it embeds
        the old content; readers such as the AutoGen adapters decode the message from role and
        content) and ``payload_format`` becomes ``"text/1"``. Metadata gains ``corrected_at`` (ISO
        8601 UTC) and ``correction_reason`` when a reason is given. The lexical index follows the
        new content; the old vectors are removed; facts whose only source messages are this one are
        deleted (they were learned from the text being corrected) and the message is queued for
        learning again. Audited as ``message.correct`` with the old and the new content hash."""

    @abstractmethod
    async def delete_user(self, tenant: str, user: str) -> DeletionReceipt:
        """Delete everything a user owns in a tenant (all sessions, facts, vectors); audited."""

    @abstractmethod
    async def prune(self, tenant: str, *, before: Mapping[str, datetime]) -> DeletionReceipt:
        """Retention: delete the tenant's records older than a cutoff per kind -- ``"messages"``
        (by ``created_at``), ``"facts"`` (by ``created_at``), ``"states"`` (by ``updated_at``) --
        with their vectors, jobs and index entries, audited with an erasure-like receipt
        (``retention.prune``)."""

    # -- facts -----------------------------------------------------------------------------------
    @abstractmethod
    async def record_fact(
        self, tenant: str, user: str, fact: NewFact, *, supersedes: Sequence[str] = (),
        expect_current: Sequence[str] | None = None, superseded_by: str | None = None,
    ) -> Fact:
        """Insert a fact; in the same transaction close (valid_to = new valid_from) the facts it
        supersedes, which must belong to the same tenant and user and still be current (else
        VersionConflict; InvalidInput for an unknown id).

        ``expect_current`` makes the write a compare-and-set, like ``put_state(expected_version=)``:
        it happens only if, inside its own transaction, the ids of the user's current facts with
        ``fact.attribute`` are exactly that set (``()``: none); otherwise VersionConflict and nothing
        is written. A learner passes the ids it read, so two learners that both saw no current value
        cannot both record one. Checked after ``supersedes``, before the erased-sources refusal.

        ``superseded_by`` records the fact as history (a statement learned late, after a newer one):
        it is inserted already closed, ``valid_to`` = that fact's ``valid_from``, ``superseded_by`` =
        its id, and nothing else changes. That fact must be the user's, of the same attribute, and
        start no earlier than ``fact.valid_from``, which must be given; ``supersedes`` must be empty
        (InvalidInput otherwise, nothing written)."""

    @abstractmethod
    async def list_facts(
        self,
        tenant: str,
        user: str,
        *,
        attribute: str | None = None,
        include_superseded: bool = False,
        limit: int | None = None,
    ) -> list[Fact]:
        """Facts of a user, newest first."""

    @abstractmethod
    async def get_fact(self, tenant: str, user: str, fact_id: str) -> Fact | None: ...

    async def superseded_sources(
        self, tenant: str, user: str, fact_ids: Sequence[str], *, history: int = SUPERSEDED_HISTORY
    ) -> set[str]:
        """Ids of turns that back only outdated values of the given facts' attributes: within the
        newest ``history`` facts of each such attribute, the sources of superseded facts whose value
        (case-folded) no current fact of it holds, minus the sources of its current facts. Recall
        demotes these turns. Unknown ids are ignored.

        Not an audited read: it returns ids of turns only, no content. This default reads through
        ``get_fact`` and ``list_facts`` (so layers that transform values, such as encryption, see
        plain values) with read auditing suspended; SQL backends answer in one query.
        """
        from ..governance.audit import reads_not_audited  # governance imports this module

        ids = superseded_query_ids(tenant, user, fact_ids, history)
        if not ids:
            return set()
        rows: list[tuple[str, str, Sequence[str], bool]] = []
        with reads_not_audited():
            attributes: set[str] = set()
            for fact_id in ids:
                fact = await self.get_fact(tenant, user, fact_id)
                if fact is not None:
                    attributes.add(fact.attribute)
            for attribute in sorted(attributes):
                history_facts = await self.list_facts(tenant, user, attribute=attribute, include_superseded=True,
                                                      limit=history)
                rows.extend((f.attribute, f.value, f.source_message_ids, f.current) for f in history_facts)
        return stale_sources(rows)

    @abstractmethod
    async def delete_fact(self, tenant: str, user: str, fact_id: str) -> bool: ...

    # -- search primitives (fusion lives in amber.recall) ----------------------------------------
    @abstractmethod
    async def search_text(
        self, tenant: str, user: str, query: str, *, limit: int = 20, kinds: Sequence[str] = ("message", "fact")
    ) -> list[Hit]:
        """Lexical search over a user's messages and current facts. Scores in [0, 1]."""

    @abstractmethod
    async def put_vectors(self, tenant: str, user: str, model: str, items: Sequence[VectorItem]) -> None:
        """Store embeddings of messages/facts (replacing earlier ones for the same id and model)."""

    @abstractmethod
    async def search_vectors(
        self,
        tenant: str,
        user: str,
        model: str,
        vector: Sequence[float],
        *,
        limit: int = 20,
        kinds: Sequence[str] = ("message", "fact"),
    ) -> list[Hit]:
        """Cosine-similarity search, score = (1 + cos) / 2 in [0, 1]."""

    # -- learning queue ------------------------------------------------------------------------
    @abstractmethod
    async def claim_learn_jobs(
        self, *, limit: int = 64, lease_seconds: float = 60.0, tenant: str | None = None
    ) -> list[LearnJob]:
        """Lease up to ``limit`` pending jobs (one per appended message), oldest first, of one tenant
        or all. A job whose lease expires without completion is handed out again."""

    @abstractmethod
    async def complete_learn_jobs(self, job_ids: Sequence[str]) -> None: ...

    @abstractmethod
    async def fail_learn_job(self, job_id: str, error: str, *, retry_in: float | None) -> None:
        """Record a failure; retry after ``retry_in`` seconds, or park it as dead if None."""

    @abstractmethod
    async def learn_queue_stats(self, tenant: str | None = None) -> Mapping[str, int]:
        """Counts of pending, leased and dead jobs."""

    @abstractmethod
    async def list_dead_learn_jobs(self, *, tenant: str | None = None, limit: int = 100) -> list[LearnJob]:
        """Jobs parked as dead (of one tenant or all), the longest dead first (ties by job id), at
        most ``limit``: each with its ``attempts``, ``last_error`` and ``died_at``. Not audited, like
        the other queue bookkeeping: it returns ids and error text, no content."""

    @abstractmethod
    async def requeue_dead_learn_jobs(
        self, job_ids: Sequence[str] | None = None, *, tenant: str | None = None
    ) -> int:
        """Make dead jobs pending again, due now, with ``attempts`` reset to 0; ``last_error`` is kept
        (the next failure replaces it), so a claimed job still says why it died before. ``job_ids``
        None means every dead job (of ``tenant`` if given); ids that are unknown, not dead or of
        another tenant are skipped. Returns how many were requeued. Audited as ``learn.requeue``,
        one entry per job (job id, message id), like ``learn.fail``."""

    # -- audit ---------------------------------------------------------------------------------
    @abstractmethod
    def audit_read(
        self, tenant: str, operation: str, *, user: str | None = None, thread: str | None = None,
        record_ids: Sequence[str] = (), digests: Sequence[str] = (),
    ) -> None:
        """Note a read for the audit trail. Reads are recorded asynchronously in batches (see
        :mod:`amber.governance.audit`); a layer that answers reads itself (a cache) calls this on
        the store below. Backends buffer it."""

    @abstractmethod
    async def chain_audit(self, tenant: str | None = None) -> dict[str, tuple[int, str]]:
        """Write this handle's buffered read entries, then hash-chain every audit entry not yet
        chained (of ``tenant``, or of all tenants) in one order per tenant. Returns each examined
        tenant's chain head ``(position, hash)`` -- for ``tenant`` always, even if nothing was new."""

    @abstractmethod
    async def list_audit(
        self, tenant: str, *, user: str | None = None, operation: str | None = None, limit: int = 100,
        after_id: int = 0,
    ) -> list[AuditEvent]: ...
