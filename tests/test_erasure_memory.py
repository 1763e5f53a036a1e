"""Export-then-erase helpers on the reference backend: the export holds the user's data and is
complete before the deletion; other users are untouched; the receipt is in the audit trail."""

from __future__ import annotations

import json

import amber
from amber.governance.erasure import erase_session, erase_user
from amber.keys import SessionKey
from amber.records import NewFact, NewMessage


async def test_erase_user_exports_first_then_erases_only_that_user() -> None:
    store = await amber.open_store("memory://")
    gone, kept = SessionKey("bank", "gone", "t"), SessionKey("bank", "kept", "t")
    await store.append(gone, [NewMessage("user", "my IBAN is SENTINEL-9")])
    await store.record_fact("bank", "gone", NewFact("iban", "SENTINEL-9", "iban SENTINEL-9"))
    await store.append(kept, [NewMessage("user", "hello")])
    lines: list[str] = []

    async def sink(line: str) -> None:
        assert await store.read_since(gone)  # nothing is deleted before the export is complete
        lines.append(line)

    receipt = await erase_user(store, "bank", "gone", export=sink)
    records = [json.loads(line) for line in lines]
    assert sum("SENTINEL-9" in line for line in lines) == 2
    assert {r.get("user") for r in records if r["type"] in ("message", "fact")} == {"gone"}
    assert receipt.counts["messages"] == 1 and receipt.counts["facts"] == 1
    assert await store.read_since(gone) == [] and len(await store.read_since(kept)) == 1
    assert [e.operation for e in await store.list_audit("bank", operation="user.delete")] == ["user.delete"]

    other = SessionKey("bank", "kept", "t2")
    await store.append(other, [NewMessage("user", "bye")])
    out: list[str] = []
    r2 = await erase_session(store, other, export=out.append)
    assert r2.counts["messages"] == 1 and any("bye" in line for line in out)
    assert len(await store.read_since(kept)) == 1
    await store.close()
