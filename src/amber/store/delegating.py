"""A Store that forwards every contract method to another store: the base of composable wrappers.

Encryption, redaction and caching are layers over any backend, not features of each backend. A
layer subclasses :class:`DelegatingStore` and overrides only the methods it changes; everything else
reaches ``inner`` untouched, so a method added to the contract later needs one forwarder here, not
one in every layer. Order of layers built by :func:`amber.open_store`::

    redaction -> encryption -> [Redis cache] -> backend

so the cache and the backend only ever see redacted ciphertext.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping, Sequence

from ..keys import SessionKey
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
from .base import Store

__all__ = ["DelegatingStore"]


class DelegatingStore(Store):
    """Forwards the whole contract to ``inner``. ``close_inner``: closing this store closes ``inner``
    (the default, as a wrapper usually owns what it wraps)."""

    def __init__(self, inner: Store, *, close_inner: bool = True) -> None:
        self._inner = inner
        self._close_inner = close_inner
        self._closed = False
        self.url = inner.url
        self.capabilities = inner.capabilities
        self.limits = inner.limits

    @property
    def inner(self) -> Store:
        """The store below this layer."""
        return self._inner

    def unwrap(self, kind: type[Store]) -> Store | None:
        """The first layer (this one or below) that is an instance of ``kind``, else None."""
        layer: Any = self
        while layer is not None:
            if isinstance(layer, kind):
                return layer
            layer = getattr(layer, "inner", None)
        return None

    # -- lifecycle -------------------------------------------------------------------------------
    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._close_inner:
            await self._inner.close()

    async def describe(self) -> Mapping[str, Any]:
        return await self._inner.describe()

    # -- transcripts -----------------------------------------------------------------------------
    async def append(self, key: SessionKey, messages: Sequence[NewMessage]) -> list[Message]:
        return await self._inner.append(key, messages)

    async def read_window(
        self, key: SessionKey, *, last: int | None = None, max_tokens: int | None = None
    ) -> list[Message]:
        return await self._inner.read_window(key, last=last, max_tokens=max_tokens)

    async def read_since(self, key: SessionKey, after_seq: int = 0, *, limit: int | None = None) -> list[Message]:
        return await self._inner.read_since(key, after_seq, limit=limit)

    async def get_session(self, key: SessionKey) -> SessionInfo | None:
        return await self._inner.get_session(key)

    async def list_sessions(
        self, tenant: str, user: str | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[SessionInfo]:
        return await self._inner.list_sessions(tenant, user, limit=limit, offset=offset)

    async def list_users(self, tenant: str, *, limit: int = 100, offset: int = 0) -> list[str]:
        return await self._inner.list_users(tenant, limit=limit, offset=offset)

    # -- restore ---------------------------------------------------------------------------------
    async def restore_session(
        self, key: SessionKey, messages: Sequence[Message], states: Sequence[StateBlob] = (), *,
        created_at: datetime | None = None, updated_at: datetime | None = None, last_seq: int | None = None,
    ) -> SessionInfo | None:
        return await self._inner.restore_session(key, messages, states, created_at=created_at,
                                                 updated_at=updated_at, last_seq=last_seq)

    async def restore_facts(self, tenant: str, user: str, facts: Sequence[Fact]) -> None:
        await self._inner.restore_facts(tenant, user, facts)

    # -- state -----------------------------------------------------------------------------------
    async def get_state(self, key: SessionKey, name: str) -> StateBlob | None:
        return await self._inner.get_state(key, name)

    async def put_state(
        self, key: SessionKey, name: str, data: Mapping[str, Any], *, expected_version: int | None = None
    ) -> StateBlob:
        return await self._inner.put_state(key, name, data, expected_version=expected_version)

    async def list_states(self, key: SessionKey) -> list[str]:
        return await self._inner.list_states(key)

    # -- deletion --------------------------------------------------------------------------------
    async def delete_session(self, key: SessionKey) -> DeletionReceipt:
        return await self._inner.delete_session(key)

    async def delete_message(self, key: SessionKey, message_id: str) -> bool:
        return await self._inner.delete_message(key, message_id)

    async def correct_message(
        self, key: SessionKey, message_id: str, content: str, *, reason: str | None = None
    ) -> Message:
        return await self._inner.correct_message(key, message_id, content, reason=reason)

    async def delete_user(self, tenant: str, user: str) -> DeletionReceipt:
        return await self._inner.delete_user(tenant, user)

    async def prune(self, tenant: str, *, before: Mapping[str, datetime]) -> DeletionReceipt:
        return await self._inner.prune(tenant, before=before)

    # -- facts -----------------------------------------------------------------------------------
    async def record_fact(self, tenant: str, user: str, fact: NewFact, *, supersedes: Sequence[str] = (),
                          expect_current: Sequence[str] | None = None, superseded_by: str | None = None) -> Fact:
        return await self._inner.record_fact(tenant, user, fact, supersedes=supersedes, expect_current=expect_current,
                                             superseded_by=superseded_by)

    async def list_facts(self, tenant: str, user: str, *, attribute: str | None = None,
                         include_superseded: bool = False, limit: int | None = None) -> list[Fact]:
        return await self._inner.list_facts(tenant, user, attribute=attribute,
                                            include_superseded=include_superseded, limit=limit)

    async def get_fact(self, tenant: str, user: str, fact_id: str) -> Fact | None:
        return await self._inner.get_fact(tenant, user, fact_id)

    async def delete_fact(self, tenant: str, user: str, fact_id: str) -> bool:
        return await self._inner.delete_fact(tenant, user, fact_id)

    # -- search ----------------------------------------------------------------------------------
    async def search_text(self, tenant: str, user: str, query: str, *, limit: int = 20,
                          kinds: Sequence[str] = ("message", "fact")) -> list[Hit]:
        return await self._inner.search_text(tenant, user, query, limit=limit, kinds=kinds)

    async def put_vectors(self, tenant: str, user: str, model: str, items: Sequence[VectorItem]) -> None:
        await self._inner.put_vectors(tenant, user, model, items)

    async def search_vectors(self, tenant: str, user: str, model: str, vector: Sequence[float], *,
                             limit: int = 20, kinds: Sequence[str] = ("message", "fact")) -> list[Hit]:
        return await self._inner.search_vectors(tenant, user, model, vector, limit=limit, kinds=kinds)

    # -- learning queue --------------------------------------------------------------------------
    async def claim_learn_jobs(self, *, limit: int = 64, lease_seconds: float = 60.0,
                               tenant: str | None = None) -> list[LearnJob]:
        return await self._inner.claim_learn_jobs(limit=limit, lease_seconds=lease_seconds, tenant=tenant)

    async def complete_learn_jobs(self, job_ids: Sequence[str]) -> None:
        await self._inner.complete_learn_jobs(job_ids)

    async def fail_learn_job(self, job_id: str, error: str, *, retry_in: float | None) -> None:
        await self._inner.fail_learn_job(job_id, error, retry_in=retry_in)

    async def learn_queue_stats(self, tenant: str | None = None) -> Mapping[str, int]:
        return await self._inner.learn_queue_stats(tenant)

    async def list_dead_learn_jobs(self, *, tenant: str | None = None, limit: int = 100) -> list[LearnJob]:
        return await self._inner.list_dead_learn_jobs(tenant=tenant, limit=limit)

    async def requeue_dead_learn_jobs(self, job_ids: Sequence[str] | None = None, *,
                                      tenant: str | None = None) -> int:
        return await self._inner.requeue_dead_learn_jobs(job_ids, tenant=tenant)

    # -- audit -----------------------------------------------------------------------------------
    # -- audit ---------------------------------------------------------------------------------------
    def audit_read(
        self, tenant: str, operation: str, *, user: str | None = None, thread: str | None = None,
        record_ids: Sequence[str] = (), digests: Sequence[str] = (),
    ) -> None:
        self._inner.audit_read(tenant, operation, user=user, thread=thread, record_ids=record_ids, digests=digests)

    async def chain_audit(self, tenant: str | None = None) -> dict[str, tuple[int, str]]:
        return await self._inner.chain_audit(tenant)

    async def list_audit(self, tenant: str, *, user: str | None = None, operation: str | None = None,
                         limit: int = 100, after_id: int = 0) -> list[AuditEvent]:
        return await self._inner.list_audit(tenant, user=user, operation=operation, limit=limit, after_id=after_id)
