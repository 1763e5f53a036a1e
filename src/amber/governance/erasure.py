"""Erasure on request (right to be forgotten), with the export that must come first (right of access).

    lines = await erase_user(store, "bank", "u-42", export=open("u-42.jsonl", "w").write)

:func:`erase_user` / :func:`erase_session` write the JSONL export (``amber.transfer.export_jsonl``)
through ``export`` before deleting, then call the store's ``delete_user`` / ``delete_session``, which
remove the transcript, facts (user erasure), state, vectors, lexical index entries, queued learning
jobs and Redis copies in one transaction and leave an erasure receipt (the erased ids) in the
audit trail. Afterwards:

* a learning job that read an erased message before the erasure cannot record a fact from it or
  store its vector (the store refuses sources named in an erasure receipt);
* ``amber restore`` of a backup taken before the erasure withholds the erased records;
* physical bytes: see docs/governance-audit.md (SQLite scrubs its file, WAL and FTS index;
  PostgreSQL keeps dead tuples until VACUUM FULL, and WAL/backups until they age out -- for those,
  encrypt the tenant and destroy its key: crypto-shredding, docs/governance.md).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from ..keys import SessionKey, validate_part
from ..records import DeletionReceipt
from ..transfer import export_jsonl

__all__ = ["erase_user", "erase_session"]

Sink = Callable[[str], Any]


async def _export(store: Any, tenant: str, export: Sink | None, **scope: Any) -> int:
    if export is None:
        return 0
    n = 0
    async for line in export_jsonl(store, tenant, **scope):
        result = export(line)
        if inspect.isawaitable(result):
            await result
        n += 1
    return n


async def erase_user(store: Any, tenant: str, user: str, *, export: Sink | None = None) -> DeletionReceipt:
    """Export (if ``export`` is given: called with each JSONL line) then erase everything ``user``
    owns in ``tenant``. The export completes before anything is deleted."""
    validate_part("tenant", tenant)
    validate_part("user", user)
    await _export(store, tenant, export, user=user)
    return await store.delete_user(tenant, user)


async def erase_session(store: Any, key: SessionKey, *, export: Sink | None = None) -> DeletionReceipt:
    """Export then erase one session (its facts stay with the user; erase them with the user or
    ``delete_fact``)."""
    await _export(store, key.tenant, export, user=key.user, thread=key.thread)
    return await store.delete_session(key)
