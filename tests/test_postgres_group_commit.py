"""Group commit: concurrent appends of one process share transactions, and still each get their
own gap-free sequence numbers, idempotency and audit entry."""

from __future__ import annotations

import asyncio
import uuid

import pytest

import amber
from amber.errors import InvalidInput
from amber.records import NewMessage
from conftest import POSTGRES_URL

pytestmark = pytest.mark.postgres


async def test_concurrent_appends_share_transactions_and_keep_their_semantics() -> None:
    store = await amber.open_store(f"{POSTGRES_URL}?schema=amber_conformance", pool_max_size=2)
    tenant = f"t-{uuid.uuid4().hex[:12]}"
    keys = [amber.SessionKey(tenant, "u", f"s{i % 8}") for i in range(64)]
    try:
        before = dict(await store.describe())
        stored = await asyncio.gather(*(
            store.append_one(k, NewMessage("user", f"m{i}", idempotency_key=f"k{i}")) for i, k in enumerate(keys)))
        # retries of the same keys, concurrently, with new neighbours and one invalid request mixed in
        bad = store.append_one(keys[0], NewMessage("wizard", "x"))
        again = await asyncio.gather(
            *(store.append_one(k, NewMessage("user", f"m{i}", idempotency_key=f"k{i}")) for i, k in enumerate(keys)),
            bad, return_exceptions=True)
        after = dict(await store.describe())
        ops = after["write_operations"] - before["write_operations"]
        txs = after["write_transactions"] - before["write_transactions"]
        assert ops == 128 and txs < ops, (ops, txs)  # grouped: fewer transactions than appends
        assert isinstance(again[-1], InvalidInput)
        assert [m.id for m in again[:-1]] == [m.id for m in stored]  # retries return the stored messages
        for thread in range(8):
            msgs = await store.read_since(amber.SessionKey(tenant, "u", f"s{thread}"))
            assert [m.seq for m in msgs] == list(range(1, 9))
            assert [m.content for m in msgs] == [f"m{i}" for i in range(thread, 64, 8)]  # call order kept
        audit = await store.list_audit(tenant, operation="message.append", limit=1000)
        assert len(audit) == 64 and all(e.count == 1 for e in audit)  # one entry per append call
    finally:
        await store.close()
