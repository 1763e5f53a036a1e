"""The in-memory reference backend: the oracle the conformance suite and the model-based tests
compare every other backend against. Process-local and lost at exit, by design.

``memory://`` opens a fresh store; ``memory://NAME`` opens a store shared by every open of the same
name in this process (handy for tests of "rebuilt per request" patterns).
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Mapping, Sequence

from ..audit import current_actor
from ..errors import InvalidInput, VersionConflict
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
    utcnow,
)
from ..governance.audit import AuditedReads
from .base import (
    Capability,
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
    validate_expect_current,
    validate_history_write,
    validate_job_ids,
    validate_limit,
    validate_state_name,
    validate_tenant_filter,
    vector_digest,
)

__all__ = ["MemoryStore", "lexical_terms", "lexical_score"]

_WORD = re.compile(r"\w+", re.UNICODE)


def lexical_terms(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def lexical_score(query_terms: Sequence[str], doc_terms: Sequence[str]) -> float:
    """A bounded term-overlap score in [0, 1]: the share of distinct query terms the document holds,
    damped by document length so a short exact statement beats a long ramble."""
    q = set(query_terms)
    if not q or not doc_terms:
        return 0.0
    counts = Counter(doc_terms)
    matched = sum(1 for t in q if t in counts)
    if not matched:
        return 0.0
    coverage = matched / len(q)
    length_damp = 1.0 / (1.0 + math.log1p(len(doc_terms)) / 10.0)
    return max(0.0, min(1.0, coverage * length_damp))


@dataclass
class _Session:
    key: SessionKey
    messages: list[Message] = field(default_factory=list)
    by_idem: dict[str, Message] = field(default_factory=dict)
    last_seq: int = 0  # retention may remove old messages: sequence numbers never restart
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)


@dataclass
class _Job:
    id: str
    key: SessionKey
    message_id: str
    seq: int
    attempts: int = 0
    available_at: datetime = field(default_factory=utcnow)
    last_error: str | None = None
    dead: bool = False
    leased: bool = False


class _Data:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.sessions: dict[SessionKey, _Session] = {}
        self.states: dict[tuple[SessionKey, str], StateBlob] = {}
        self.facts: dict[str, Fact] = {}
        self.vectors: dict[tuple[str, str, str], dict[tuple[str, str], tuple[float, ...]]] = defaultdict(dict)
        self.jobs: dict[str, _Job] = {}
        self.audit: list[AuditEvent] = []
        self.next_audit_id = 1
        self.chain_heads: dict[str, tuple[int, str]] = {}  # tenant -> (position, hash)
        self.erased: dict[tuple[str, str], set[str]] = defaultdict(set)  # (tenant, user) -> erased record ids


_NAMED: dict[str, _Data] = {}
_NAMED_LOCK = threading.Lock()


class MemoryStore(AuditedReads, Store):
    def __init__(self, name: str | None = None, *, limits: StoreLimits | None = None) -> None:
        if name:
            with _NAMED_LOCK:
                self._d = _NAMED.setdefault(name, _Data())
        else:
            self._d = _Data()
        self.url = f"memory://{name or ''}"
        self.limits = limits or StoreLimits()
        self.capabilities = frozenset({Capability.LEXICAL_SEARCH, Capability.VECTOR_SEARCH})
        self._closed = False
        from ..governance.audit import ReadAuditBuffer  # lazily: governance imports this module

        self._reads = ReadAuditBuffer(self._write_reads, chain=self.chain_audit)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._reads.close()

    async def describe(self) -> Mapping[str, Any]:
        return {"backend": "memory", "url": self.url, "durable": False, "multi_process": False}

    # -- audit -----------------------------------------------------------------------------------
    def _audit(
        self,
        tenant: str,
        operation: str,
        *,
        user: str | None = None,
        thread: str | None = None,
        record_ids: Sequence[str] = (),
        digests: Sequence[str] = (),
        count: int | None = None,
    ) -> None:
        d = self._d
        d.next_audit_id += 1
        self._reads.wrote()
        d.audit.append(
            AuditEvent(
                id=d.next_audit_id - 1,
                tenant=tenant,
                at=utcnow(),
                actor=current_actor(),
                operation=operation,
                user=user,
                thread=thread,
                count=len(record_ids) if count is None else count,
                record_ids=tuple(record_ids),
                digests=tuple(digests),
            )
        )

    async def _write_reads(self, entries: Sequence[Any]) -> None:
        d = self._d
        with d.lock:
            for e in entries:
                d.audit.append(AuditEvent(d.next_audit_id, e.tenant, e.at, e.actor, e.operation, e.user, e.thread,
                                          e.count, e.record_ids, e.digests))
                d.next_audit_id += 1

    async def chain_audit(self, tenant: str | None = None) -> dict[str, tuple[int, str]]:
        from ..governance.audit import GENESIS, chain_links

        if tenant is not None:
            validate_part("tenant", tenant)
        await self._reads.flush()
        d = self._d
        with d.lock:
            todo: dict[str, list[int]] = defaultdict(list)
            for i, e in enumerate(d.audit):
                if e.chain_seq is None and (tenant is None or e.tenant == tenant):
                    todo[e.tenant].append(i)
            heads: dict[str, tuple[int, str]] = {}
            for t, idx in todo.items():
                idx.sort(key=lambda i: d.audit[i].id)
                links = chain_links(d.chain_heads.get(t, (0, GENESIS)), [d.audit[i] for i in idx])
                for i, (_id, pos, h) in zip(idx, links):
                    d.audit[i] = replace(d.audit[i], chain_seq=pos, chain_hash=h)
                d.chain_heads[t] = (links[-1][1], links[-1][2])
                heads[t] = d.chain_heads[t]
            if tenant is not None:
                heads[tenant] = d.chain_heads.get(tenant, (0, GENESIS))
        return heads

    # -- transcripts -----------------------------------------------------------------------------
    async def append(self, key: SessionKey, messages: Sequence[NewMessage]) -> list[Message]:
        if len(messages) > self.limits.max_batch:
            raise InvalidInput(f"at most {self.limits.max_batch} messages per append")
        prepared = [prepare_message(m, self.limits) for m in messages]
        if not prepared:
            return []  # an empty append creates no session (as in every durable backend)
        d = self._d
        out: list[Message] = []
        with d.lock:
            session = d.sessions.get(key)
            if session is None:
                session = d.sessions[key] = _Session(key)
            added: list[Message] = []
            for p in prepared:
                existing = session.by_idem.get(p.idempotency_key)
                if existing is not None:
                    out.append(existing)
                    continue
                msg = Message(
                    key=key,
                    seq=session.last_seq + 1,
                    id=p.id,
                    role=p.role,
                    content=p.content,
                    payload=decode_json(p.payload_json),
                    payload_format=p.payload_format,
                    author=p.author,
                    idempotency_key=p.idempotency_key,
                    created_at=p.created_at,
                    metadata=decode_json(p.metadata_json),
                    tokens=p.tokens,
                    content_hash=p.content_hash,
                )
                session.messages.append(msg)
                session.last_seq = msg.seq
                session.by_idem[p.idempotency_key] = msg
                job = _Job(new_id("job"), key, msg.id, msg.seq)
                d.jobs[job.id] = job
                added.append(msg)
                out.append(msg)
            if added:
                session.updated_at = utcnow()
                self._audit(
                    key.tenant, "message.append", user=key.user, thread=key.thread,
                    record_ids=[m.id for m in added], digests=[m.content_hash for m in added],
                )
        return out

    async def read_window(
        self, key: SessionKey, *, last: int | None = None, max_tokens: int | None = None
    ) -> list[Message]:
        validate_limit(last, "last")
        validate_limit(max_tokens, "max_tokens")
        with self._d.lock:
            session = self._d.sessions.get(key)
            msgs = list(session.messages) if session is not None else []
        keep = select_window([m.tokens for m in reversed(msgs)], last, max_tokens)
        return self._read_messages(key, msgs[len(msgs) - keep:] if keep else [])

    async def read_since(self, key: SessionKey, after_seq: int = 0, *, limit: int | None = None) -> list[Message]:
        validate_limit(after_seq, "after_seq", allow_none=False)
        validate_limit(limit)
        with self._d.lock:
            session = self._d.sessions.get(key)
            msgs = [m for m in session.messages if m.seq > after_seq] if session is not None else []
        return self._read_messages(key, list(msgs if limit is None else msgs[:limit]))

    def _info(self, s: _Session) -> SessionInfo:
        return SessionInfo(s.key, len(s.messages), s.last_seq, s.created_at, s.updated_at)

    async def get_session(self, key: SessionKey) -> SessionInfo | None:
        with self._d.lock:
            s = self._d.sessions.get(key)
            return None if s is None else self._info(s)

    async def list_sessions(
        self, tenant: str, user: str | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[SessionInfo]:
        validate_part("tenant", tenant)
        if user is not None:
            validate_part("user", user)
        validate_limit(limit, allow_none=False)
        validate_limit(offset, "offset", allow_none=False)
        with self._d.lock:
            infos = [
                self._info(s) for k, s in self._d.sessions.items()
                if k.tenant == tenant and (user is None or k.user == user)
            ]
        infos.sort(key=lambda i: (i.updated_at, str(i.key)), reverse=True)
        return infos[offset: offset + limit]

    async def list_users(self, tenant: str, *, limit: int = 100, offset: int = 0) -> list[str]:
        validate_part("tenant", tenant)
        with self._d.lock:
            users = {k.user for k in self._d.sessions if k.tenant == tenant}
            users |= {f.user for f in self._d.facts.values() if f.tenant == tenant}
        return sorted(users)[offset: offset + limit]

    # -- restore -----------------------------------------------------------------------------------
    async def restore_session(
        self, key: SessionKey, messages: Sequence[Message], states: Sequence[StateBlob] = (), *,
        created_at: datetime | None = None, updated_at: datetime | None = None, last_seq: int | None = None,
    ) -> SessionInfo | None:
        r = prepare_restore(key, messages, states, created_at=created_at, updated_at=updated_at,
                            last_seq=last_seq, limits=self.limits)
        d = self._d
        with d.lock:
            current = d.sessions.get(key)
            if current is not None and (current.messages or current.last_seq):
                raise restore_conflict(f"session {key} already holds messages")
            if any(k == key for k, _ in d.states):
                raise restore_conflict(f"session {key} already holds state")
            wanted = {p.id for _, p in r.messages}
            taken = sorted(wanted & {m.id for k, s in d.sessions.items() if k.tenant == key.tenant for m in s.messages})
            if taken:
                raise restore_conflict(f"message id {taken[0]!r} is taken")
            for name, version, text, at in r.states:
                d.states[(key, name)] = StateBlob(key, name, version, decode_json(text), at)
            info = None
            if r.last_seq:
                session = d.sessions[key] = _Session(key, last_seq=r.last_seq, created_at=r.created_at,
                                                     updated_at=r.updated_at)
                for seq, p in r.messages:
                    msg = Message(key=key, seq=seq, id=p.id, role=p.role, content=p.content,
                                  payload=decode_json(p.payload_json), payload_format=p.payload_format,
                                  author=p.author, idempotency_key=p.idempotency_key, created_at=p.created_at,
                                  metadata=decode_json(p.metadata_json), tokens=p.tokens, content_hash=p.content_hash)
                    session.messages.append(msg)
                    session.by_idem[p.idempotency_key] = msg
                    job = _Job(new_id("job"), key, msg.id, msg.seq)
                    d.jobs[job.id] = job
                info = self._info(session)
            ids, digests = r.audit()
            self._audit(key.tenant, "session.restore", user=key.user, thread=key.thread,
                        record_ids=ids, digests=digests)
            return info

    async def restore_facts(self, tenant: str, user: str, facts: Sequence[Fact]) -> None:
        restored = prepare_restored_facts(tenant, user, facts, self.limits)
        d = self._d
        with d.lock:
            taken = sorted(f.id for f in restored if f.id in d.facts)
            if taken:
                raise restore_conflict(f"fact id {taken[0]!r} is taken")
            for f in restored:
                d.facts[f.id] = f
            self._audit(tenant, "fact.restore", user=user, record_ids=[f.id for f in restored],
                        digests=[digest(f.text) for f in restored])

    # -- state -------------------------------------------------------------------------------------
    async def get_state(self, key: SessionKey, name: str) -> StateBlob | None:
        validate_state_name(name)
        with self._d.lock:
            blob = self._d.states.get((key, name))
        self.audit_read(key.tenant, "state.read", user=key.user, thread=key.thread,
                        record_ids=[] if blob is None else [f"{name}@{blob.version}"],
                        digests=[] if blob is None else [digest(encode_json(dict(blob.data), "state"))])
        return blob

    async def list_states(self, key: SessionKey) -> list[str]:
        with self._d.lock:
            return sorted(n for (k, n) in self._d.states if k == key)

    async def put_state(
        self, key: SessionKey, name: str, data: Mapping[str, Any], *, expected_version: int | None = None
    ) -> StateBlob:
        validate_state_name(name)
        validate_limit(expected_version, "expected_version")
        text = encode_json(dict(data), "state")
        if len(text.encode()) > self.limits.max_state_bytes:
            from ..errors import MessageTooLarge

            raise MessageTooLarge(f"state is larger than {self.limits.max_state_bytes} bytes")
        with self._d.lock:
            current = self._d.states.get((key, name))
            actual = current.version if current else 0
            if expected_version is not None and expected_version != actual:
                raise VersionConflict(
                    f"state {name!r} of {key} is at version {actual}, not {expected_version}",
                    expected=expected_version, actual=actual,
                )
            blob = StateBlob(key, name, actual + 1, decode_json(text), utcnow())
            self._d.states[(key, name)] = blob
            self._audit(key.tenant, "state.put", user=key.user, thread=key.thread,
                        record_ids=[f"{name}@{blob.version}"], digests=[digest(text)])
            return blob

    # -- deletion ----------------------------------------------------------------------------------
    def _receipt(self, tenant: str, operation: str, user: str, thread: str | None, ids: Sequence[str]) -> None:
        """The erasure receipt: the erased ids (never content), in entries of at most 10,000 ids.
        The ids are also what a late fact or vector is checked against (no resurrection)."""
        from ..governance.audit import erasure_chunks

        self._d.erased[(tenant, user)].update(ids)
        for chunk in erasure_chunks(ids):
            self._audit(tenant, operation, user=user, thread=thread, record_ids=chunk)

    def _drop_vectors(self, tenant: str, user: str, items: set[tuple[str, str]]) -> int:
        n = 0
        for (t, u, _m), bucket in self._d.vectors.items():
            if t == tenant and u == user:
                for k in [k for k in bucket if k in items]:
                    del bucket[k]
                    n += 1
        return n

    async def delete_session(self, key: SessionKey) -> DeletionReceipt:
        d = self._d
        with d.lock:
            s = d.sessions.pop(key, None)
            msgs = list(s.messages) if s else []
            states = [k for k in d.states if k[0] == key]
            state_refs = [f"state:{key.thread}/{k[1]}@{d.states[k].version}" for k in states]
            for k in states:
                del d.states[k]
            jobs = [j for j, job in d.jobs.items() if job.key == key]
            for j in jobs:
                del d.jobs[j]
            vec = self._drop_vectors(key.tenant, key.user, {("message", m.id) for m in msgs})
            counts = {"messages": len(msgs), "states": len(states), "jobs": len(jobs), "vectors": vec}
            self._receipt(key.tenant, "session.delete", key.user, key.thread, [m.id for m in msgs] + state_refs)
        return DeletionReceipt("session.delete", key.tenant, key.user, key.thread, counts, utcnow())

    def _find(self, key: SessionKey, message_id: str) -> tuple[_Session, int] | None:
        s = self._d.sessions.get(key)
        if s is None or not isinstance(message_id, str):
            return None
        for i, m in enumerate(s.messages):
            if m.id == message_id:
                return s, i
        return None

    def _drop_orphaned_facts(self, key: SessionKey, message_id: str) -> None:
        """Delete the facts ``message_id`` is a source of that have no other live source message."""
        d = self._d
        live = {m.id for k, s in d.sessions.items() if k.tenant == key.tenant and k.user == key.user
                for m in s.messages if m.id != message_id}
        gone = sorted(f.id for f in d.facts.values()
                      if f.tenant == key.tenant and f.user == key.user and message_id in f.source_message_ids
                      and not any(src in live for src in f.source_message_ids))
        for fid in gone:
            del d.facts[fid]
        if gone:
            self._drop_vectors(key.tenant, key.user, {("fact", fid) for fid in gone})
            self._audit(key.tenant, "fact.delete", user=key.user, thread=key.thread, record_ids=gone)

    async def delete_message(self, key: SessionKey, message_id: str) -> bool:
        d = self._d
        with d.lock:
            found = self._find(key, message_id)
            if found is None:
                return False
            s, i = found
            msg = s.messages.pop(i)
            s.by_idem.pop(msg.idempotency_key or "", None)
            for j in [j for j, job in d.jobs.items() if job.key == key and job.message_id == msg.id]:
                del d.jobs[j]
            self._drop_vectors(key.tenant, key.user, {("message", msg.id)})
            d.erased[(key.tenant, key.user)].add(msg.id)  # no resurrection by a late learning job
            self._audit(key.tenant, "message.delete", user=key.user, thread=key.thread,
                        record_ids=[msg.id], digests=[msg.content_hash])
            self._drop_orphaned_facts(key, msg.id)
            return True

    async def correct_message(
        self, key: SessionKey, message_id: str, content: str, *, reason: str | None = None
    ) -> Message:
        from ..errors import NotFound

        c = prepare_correction(message_id, content, reason, self.limits)
        d = self._d
        with d.lock:
            found = self._find(key, message_id)
            if found is None:
                raise NotFound(f"session {key} holds no message {message_id!r}")
            s, i = found
            old = s.messages[i]
            new = replace(old, content=c.content, payload=None, payload_format="text/1",
                          metadata=decode_json(c.metadata(old.metadata, self.limits)), tokens=c.tokens,
                          content_hash=c.content_hash(old.role))
            s.messages[i] = new
            if old.idempotency_key is not None:
                s.by_idem[old.idempotency_key] = new
            for j in [j for j, job in d.jobs.items() if job.key == key and job.message_id == old.id]:
                del d.jobs[j]
            job = _Job(new_id("job"), key, new.id, new.seq)  # learn again, from the new text
            d.jobs[job.id] = job
            self._drop_vectors(key.tenant, key.user, {("message", old.id)})
            self._audit(key.tenant, "message.correct", user=key.user, thread=key.thread,
                        record_ids=[old.id], digests=[old.content_hash, new.content_hash])
            self._drop_orphaned_facts(key, old.id)
            return new

    async def delete_user(self, tenant: str, user: str) -> DeletionReceipt:
        validate_part("tenant", tenant)
        validate_part("user", user)
        d = self._d
        with d.lock:
            keys = [k for k in d.sessions if k.tenant == tenant and k.user == user]
            msg_ids = [m.id for k in keys for m in d.sessions[k].messages]
            for k in keys:
                del d.sessions[k]
            states = [k for k in d.states if k[0].tenant == tenant and k[0].user == user]
            state_refs = [f"state:{k[0].thread}/{k[1]}@{d.states[k].version}" for k in states]
            for k in states:
                del d.states[k]
            facts = [f for f, v in d.facts.items() if v.tenant == tenant and v.user == user]
            for f in facts:
                del d.facts[f]
            jobs = [j for j, job in d.jobs.items() if job.key.tenant == tenant and job.key.user == user]
            for j in jobs:
                del d.jobs[j]
            vec = 0
            for vk in [vk for vk in d.vectors if vk[0] == tenant and vk[1] == user]:
                vec += len(d.vectors.pop(vk))
            counts = {"sessions": len(keys), "messages": len(msg_ids), "states": len(states),
                      "facts": len(facts), "jobs": len(jobs), "vectors": vec}
            self._receipt(tenant, "user.delete", user, None, msg_ids + facts + state_refs)
        return DeletionReceipt("user.delete", tenant, user, None, counts, utcnow())

    async def prune(self, tenant: str, *, before: Mapping[str, datetime]) -> DeletionReceipt:
        from ..governance.retention import check_cutoffs

        validate_part("tenant", tenant)
        cut = check_cutoffs(before)
        d = self._d
        counts = {"messages": 0, "facts": 0, "states": 0, "jobs": 0, "vectors": 0}
        by_user: dict[str, list[str]] = defaultdict(list)
        with d.lock:
            if "messages" in cut:
                for key, sess in d.sessions.items():
                    if key.tenant != tenant:
                        continue
                    old = [m for m in sess.messages if m.created_at < cut["messages"]]
                    if not old:
                        continue
                    gone = {m.id for m in old}
                    sess.messages = [m for m in sess.messages if m.id not in gone]
                    for m in old:
                        sess.by_idem.pop(m.idempotency_key, None)
                    jobs = [j for j, job in d.jobs.items() if job.key == key and job.message_id in gone]
                    for j in jobs:
                        del d.jobs[j]
                    counts["jobs"] += len(jobs)
                    counts["vectors"] += self._drop_vectors(tenant, key.user, {("message", i) for i in gone})
                    counts["messages"] += len(old)
                    by_user[key.user].extend(m.id for m in old)
            if "facts" in cut:
                old_facts = [f for f in d.facts.values() if f.tenant == tenant and f.created_at < cut["facts"]]
                for f in old_facts:
                    del d.facts[f.id]
                    counts["vectors"] += self._drop_vectors(tenant, f.user, {("fact", f.id)})
                    by_user[f.user].append(f.id)
                counts["facts"] = len(old_facts)
            if "states" in cut:
                old_states = [k for k, b in d.states.items() if k[0].tenant == tenant and b.updated_at < cut["states"]]
                for k in old_states:
                    by_user[k[0].user].append(f"state:{k[0].thread}/{k[1]}@{d.states[k].version}")
                    del d.states[k]
                counts["states"] = len(old_states)
            for user in sorted(by_user):
                self._receipt(tenant, "retention.prune", user, None, by_user[user])
        return DeletionReceipt("retention.prune", tenant, "*", None, counts, utcnow())

    # -- facts -------------------------------------------------------------------------------------
    async def record_fact(
        self, tenant: str, user: str, fact: NewFact, *, supersedes: Sequence[str] = (),
        expect_current: Sequence[str] | None = None, superseded_by: str | None = None,
    ) -> Fact:
        validate_part("tenant", tenant)
        validate_part("user", user)
        prepare_fact(fact, self.limits)
        expected = validate_expect_current(expect_current)
        validate_history_write(fact, supersedes, superseded_by)
        now = utcnow()
        valid_from = fact.valid_from or now
        new = Fact(
            id=new_id("fact"), tenant=tenant, user=user, attribute=fact.attribute, value=fact.value,
            text=fact.text, kind=fact.kind, source_message_ids=tuple(fact.source_message_ids),
            thread=fact.thread, confidence=float(fact.confidence), valid_from=valid_from, valid_to=None,
            superseded_by=None, created_at=now, metadata=decode_json(encode_json(dict(fact.metadata), "metadata")),
        )
        d = self._d
        with d.lock:
            old = []
            for fid in supersedes:
                f = d.facts.get(fid)
                if f is None or f.tenant != tenant or f.user != user:
                    raise InvalidInput(f"cannot supersede unknown fact {fid!r}")
                if f.valid_to is not None:
                    raise VersionConflict(f"fact {fid} is already superseded", expected=None, actual=None)
                old.append(f)
            check_current_facts(expected, (
                f.id for f in d.facts.values()
                if f.tenant == tenant and f.user == user and f.attribute == fact.attribute and f.valid_to is None))
            if superseded_by is not None:
                c = d.facts.get(superseded_by)
                found = (c.attribute, c.valid_from) if c is not None and c.tenant == tenant and c.user == user else None
                valid_to = check_superseding_fact(superseded_by, found, fact.attribute, new.valid_from)
                new = replace(new, valid_to=valid_to, superseded_by=superseded_by)
            # After the supersedes checks, as in SQLite and PostgreSQL: the same call, the same error.
            self._refuse_erased_sources(tenant, user, fact, supersedes)
            for f in old:
                d.facts[f.id] = replace(f, valid_to=max(valid_from, f.valid_from), superseded_by=new.id)
            d.facts[new.id] = new
            self._audit(tenant, "fact.record", user=user, thread=fact.thread,
                        record_ids=[new.id, *[f.id for f in old]], digests=[digest(new.text)])
        return new

    def _refuse_erased_sources(self, tenant: str, user: str, fact: NewFact, supersedes: Sequence[str]) -> None:
        """A fact learned from erased messages only must not come back (e.g. from a learning job
        that read the message before the erasure). Sources carried over from the facts it
        supersedes do not count: they were checked when those facts were recorded."""
        erased = self._d.erased.get((tenant, user))
        if not erased:
            return
        inherited = {s for fid in supersedes if (f := self._d.facts.get(fid)) for s in f.source_message_ids}
        # A message that exists now (restored with its id) is not erased any more.
        live = {m.id for k, s in self._d.sessions.items() if k.tenant == tenant and k.user == user for m in s.messages}
        new = [s for s in fact.source_message_ids if s not in inherited and s not in live]
        if new and all(s in erased for s in new):
            from ..errors import NotFound

            raise NotFound(f"the source messages of this fact were erased ({', '.join(new[:3])})")

    async def list_facts(
        self, tenant: str, user: str, *, attribute: str | None = None, include_superseded: bool = False,
        limit: int | None = None,
    ) -> list[Fact]:
        validate_part("tenant", tenant)
        validate_part("user", user)
        validate_limit(limit)
        with self._d.lock:
            facts = [
                f for f in self._d.facts.values()
                if f.tenant == tenant and f.user == user
                and (attribute is None or f.attribute == attribute)
                and (include_superseded or f.valid_to is None)
            ]
        facts.sort(key=lambda f: (f.created_at, f.id), reverse=True)
        return self._read_facts(tenant, user, facts if limit is None else facts[:limit])

    async def get_fact(self, tenant: str, user: str, fact_id: str) -> Fact | None:
        validate_part("tenant", tenant)
        validate_part("user", user)
        with self._d.lock:
            f = self._d.facts.get(fact_id)
        found = f if f is not None and f.tenant == tenant and f.user == user else None
        self._read_facts(tenant, user, [found] if found else [])
        return found

    async def delete_fact(self, tenant: str, user: str, fact_id: str) -> bool:
        d = self._d
        with d.lock:
            f = d.facts.get(fact_id)
            if f is None or f.tenant != tenant or f.user != user:
                return False
            del d.facts[fact_id]
            for items in [v for k, v in d.vectors.items() if k[0] == tenant and k[1] == user]:
                items.pop(("fact", fact_id), None)
            self._audit(tenant, "fact.delete", user=user, record_ids=[fact_id])
            return True

    # -- search ------------------------------------------------------------------------------------
    def _docs(self, tenant: str, user: str, kinds: Sequence[str], *, current_only: bool = True) -> list[tuple[str, Any]]:
        docs: list[tuple[str, Any]] = []
        if "message" in kinds:
            for k, s in self._d.sessions.items():
                if k.tenant == tenant and k.user == user:
                    docs.extend(("message", m) for m in s.messages)
        if "fact" in kinds:
            docs.extend(("fact", f) for f in self._d.facts.values()
                        if f.tenant == tenant and f.user == user and (f.valid_to is None or not current_only))
        return docs

    @staticmethod
    def _hit(kind: str, rec: Any, score: float, path: str) -> Hit:
        if kind == "message":
            return Hit("message", rec.id, score, rec.content, rec.key.tenant, rec.key.user, rec.key.thread,
                       rec.seq, rec.created_at, (rec.id,), None, None, {path: score}, rec.role, rec.author)
        return Hit("fact", rec.id, score, rec.text, rec.tenant, rec.user, rec.thread, None, rec.created_at,
                   rec.source_message_ids, rec.valid_from, rec.valid_to, {path: score})

    async def search_text(
        self, tenant: str, user: str, query: str, *, limit: int = 20, kinds: Sequence[str] = ("message", "fact")
    ) -> list[Hit]:
        validate_part("tenant", tenant)
        validate_part("user", user)
        validate_limit(limit, allow_none=False)
        terms = lexical_terms(query)
        with self._d.lock:
            docs = self._docs(tenant, user, kinds)
        scored = []
        for order, (kind, rec) in enumerate(docs):
            text = rec.content if kind == "message" else rec.text
            s = lexical_score(terms, lexical_terms(text))
            if s > 0:
                scored.append((-s, order, kind, rec, s))
        scored.sort(key=lambda t: (t[0], t[1]))
        return self._read_hits(tenant, user, "search.text",
                               [self._hit(kind, rec, s, "lexical") for _, _, kind, rec, s in scored[:limit]])

    async def put_vectors(self, tenant: str, user: str, model: str, items: Sequence[VectorItem]) -> None:
        validate_part("tenant", tenant)
        validate_part("user", user)
        d = self._d
        with d.lock:
            # Only for records that exist: a late learner must not leave vectors of erased records.
            live = {(k, r.id) for k, r in self._docs(tenant, user, ("message", "fact"), current_only=False)}
            kept = [it for it in items if (it.kind, it.id) in live]
            if not kept:
                return
            bucket = d.vectors[(tenant, user, model)]
            vecs = {}
            for it in kept:
                vecs[(it.kind, it.id)] = bucket[(it.kind, it.id)] = tuple(float(x) for x in it.vector)
            self._audit(tenant, "vector.put", user=user, record_ids=[f"{k}:{i}" for k, i in vecs],
                        digests=[vector_digest(model, v) for v in vecs.values()])

    async def search_vectors(
        self, tenant: str, user: str, model: str, vector: Sequence[float], *, limit: int = 20,
        kinds: Sequence[str] = ("message", "fact"),
    ) -> list[Hit]:
        validate_part("tenant", tenant)
        validate_part("user", user)
        validate_limit(limit, allow_none=False)
        q = [float(x) for x in vector]
        qn = math.sqrt(sum(x * x for x in q)) or 1.0
        with self._d.lock:
            bucket = dict(self._d.vectors.get((tenant, user, model), {}))
            by_id = {(k, r.id): (k, r) for k, r in self._docs(tenant, user, kinds)}
        scored = []
        for order, ((kind, rid), vec) in enumerate(bucket.items()):
            if (kind, rid) not in by_id:
                continue
            vn = math.sqrt(sum(x * x for x in vec)) or 1.0
            cos = sum(a * b for a, b in zip(q, vec)) / (qn * vn)
            s = max(0.0, min(1.0, (1.0 + cos) / 2.0))
            scored.append((-s, order, kind, by_id[(kind, rid)][1], s))
        scored.sort(key=lambda t: (t[0], t[1]))
        return self._read_hits(tenant, user, "search.vector",
                               [self._hit(kind, rec, s, "vector") for _, _, kind, rec, s in scored[:limit]])

    # -- learning queue ----------------------------------------------------------------------------
    async def claim_learn_jobs(
        self, *, limit: int = 64, lease_seconds: float = 60.0, tenant: str | None = None
    ) -> list[LearnJob]:
        now = utcnow()
        out = []
        with self._d.lock:
            pending = sorted(
                (j for j in self._d.jobs.values()
                 if not j.dead and j.available_at <= now and (tenant is None or j.key.tenant == tenant)),
                key=lambda j: (j.available_at, j.id),
            )
            for j in pending[:limit]:
                j.attempts += 1
                j.available_at = now + timedelta(seconds=lease_seconds)
                j.leased = True
                out.append(LearnJob(j.id, j.key, j.message_id, j.seq, j.attempts, j.last_error))
        return out

    async def complete_learn_jobs(self, job_ids: Sequence[str]) -> None:
        with self._d.lock:
            for jid in job_ids:
                self._d.jobs.pop(jid, None)

    async def fail_learn_job(self, job_id: str, error: str, *, retry_in: float | None) -> None:
        with self._d.lock:
            j = self._d.jobs.get(job_id)
            if j is None:
                return
            j.last_error = error[:2000]
            j.leased = False
            self._audit(j.key.tenant, "learn.fail", user=j.key.user, thread=j.key.thread,
                        record_ids=[j.id, j.message_id], count=1)
            if retry_in is None:
                j.dead = True
                j.available_at = utcnow()  # a dead job is never due: this records when it died
            else:
                j.available_at = utcnow() + timedelta(seconds=retry_in)

    async def learn_queue_stats(self, tenant: str | None = None) -> Mapping[str, int]:
        now = utcnow()
        stats = {"pending": 0, "leased": 0, "dead": 0}
        with self._d.lock:
            for j in self._d.jobs.values():
                if tenant is not None and j.key.tenant != tenant:
                    continue
                if j.dead:
                    stats["dead"] += 1
                elif j.leased and j.available_at > now:
                    stats["leased"] += 1
                else:
                    stats["pending"] += 1
        return stats

    async def list_dead_learn_jobs(self, *, tenant: str | None = None, limit: int = 100) -> list[LearnJob]:
        validate_tenant_filter(tenant)
        validate_limit(limit, allow_none=False)
        with self._d.lock:
            dead = sorted((j for j in self._d.jobs.values()
                           if j.dead and (tenant is None or j.key.tenant == tenant)),
                          key=lambda j: (j.available_at, j.id))
            return [LearnJob(j.id, j.key, j.message_id, j.seq, j.attempts, j.last_error, j.available_at)
                    for j in dead[:limit]]

    async def requeue_dead_learn_jobs(
        self, job_ids: Sequence[str] | None = None, *, tenant: str | None = None
    ) -> int:
        ids = validate_job_ids(job_ids)
        validate_tenant_filter(tenant)
        with self._d.lock:
            jobs = list(self._d.jobs.values()) if ids is None else [
                self._d.jobs[i] for i in ids if i in self._d.jobs]
            todo = [j for j in jobs if j.dead and (tenant is None or j.key.tenant == tenant)]
            now = utcnow()
            for j in todo:
                j.dead, j.leased, j.attempts, j.available_at = False, False, 0, now
                self._audit(j.key.tenant, "learn.requeue", user=j.key.user, thread=j.key.thread,
                            record_ids=[j.id, j.message_id], count=1)
        return len(todo)

    # -- audit -------------------------------------------------------------------------------------
    async def list_audit(
        self, tenant: str, *, user: str | None = None, operation: str | None = None, limit: int = 100,
        after_id: int = 0,
    ) -> list[AuditEvent]:
        validate_part("tenant", tenant)
        with self._d.lock:
            events = [
                e for e in self._d.audit
                if e.tenant == tenant and e.id > after_id
                and (user is None or e.user == user) and (operation is None or e.operation == operation)
            ]
        return events[:limit]
