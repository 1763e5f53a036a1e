"""Tamper evidence of the audit chain: one entry changed, removed or reordered, in 100 random places,
directly in the real database (as an attacker with database access would), each undone afterwards.
``verify_audit`` must flag every one, at the right position. Figures printed per backend.

Also: chain positions follow the chainer, not ids, so an entry that committed late (a lower id
appearing after higher ids were chained) extends the chain instead of breaking it; and the
``amber audit verify`` command exits 1 and names the position.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import replace
from typing import Any, Awaitable, Callable

import pytest

import amber
from amber.governance.audit import verify_audit
from amber.keys import SessionKey
from amber.records import NewFact, NewMessage
from amber.store.memory import MemoryStore
from conftest import POSTGRES_URL, unreachable

TRIALS = 100
SCHEMA = "amber_audit_tamper"


async def _populate(store: amber.Store, tenant: str) -> None:
    for u in range(3):
        key = SessionKey(tenant, f"u{u}", "t")
        for i in range(10):
            await store.append(key, [NewMessage("user", f"m{i}")])
            await store.read_window(key, last=3)
        await store.put_state(key, "agent", {"u": u})
        await store.record_fact(tenant, f"u{u}", NewFact("a", str(u), f"a {u}"))
    await store.chain_audit(tenant)


async def _trials(store: amber.Store, tenant: str, tamper: Callable[[str, int, int], Awaitable[Callable[[], Awaitable[None]]]],
                  n: int) -> dict[str, Any]:
    rng = random.Random(7)
    detected = located = 0
    kinds = {"change": 0, "remove": 0, "reorder": 0}
    for _ in range(TRIALS):
        kind = rng.choice(list(kinds))
        kinds[kind] += 1
        pos = rng.randint(1, n - 1 if kind == "reorder" else n)
        undo = await tamper(kind, pos, rng.randint(0, 2))
        try:
            result = await verify_audit(store, tenant, chain=False)
        finally:
            await undo()
        if not result.ok:
            detected += 1
            if result.problems[0].position == pos:
                located += 1
    assert (await verify_audit(store, tenant, chain=False)).ok  # every tampering was undone
    return {"detected": detected, "located": located, **kinds}


async def test_memory_chain_detects_100_of_100_tamperings(capsys) -> None:
    store = MemoryStore()
    tenant = "t-mem"
    await _populate(store, tenant)
    d = store._d
    n = len(d.audit)
    assert (await verify_audit(store, tenant)).ok

    async def tamper(kind: str, pos: int, field: int) -> Callable[[], Awaitable[None]]:
        saved = list(d.audit)
        i = next(i for i, e in enumerate(d.audit) if e.chain_seq == pos)
        e = d.audit[i]
        if kind == "change":
            d.audit[i] = [replace(e, actor="someone-else"), replace(e, record_ids=e.record_ids + ("msg_forged",)),
                          replace(e, operation="message.read" if e.operation != "message.read" else "state.read")][field]
        elif kind == "remove":
            del d.audit[i]
        else:
            j = next(j for j, x in enumerate(d.audit) if x.chain_seq == pos + 1)
            d.audit[i], d.audit[j] = replace(d.audit[i], chain_seq=pos + 1), replace(d.audit[j], chain_seq=pos)

        async def undo() -> None:
            d.audit[:] = saved

        return undo

    figures = await _trials(store, tenant, tamper, n)
    with capsys.disabled():
        print(f"\naudit tamper figures (memory, {n} entries): {figures}")
    assert figures["detected"] == TRIALS and figures["located"] == TRIALS


@pytest.mark.postgres
async def test_postgres_chain_detects_100_of_100_tamperings(capsys) -> None:
    import psycopg

    url = f"{POSTGRES_URL}{'&' if '?' in POSTGRES_URL else '?'}schema={SCHEMA}"
    try:
        store = await amber.open_store(url)
    except amber.errors.StoreUnavailable as exc:
        unreachable(f"PostgreSQL at {POSTGRES_URL}", exc)
    tenant = f"t-{uuid.uuid4().hex[:10]}"
    try:
        await _populate(store, tenant)
        n = len(await store.list_audit(tenant, limit=10_000))
        assert (await verify_audit(store, tenant)).ok
        async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
            table = f'"{SCHEMA}".audit'

            async def tamper(kind: str, pos: int, field: int) -> Callable[[], Awaitable[None]]:
                cur = await conn.execute(f"SELECT * FROM {table} WHERE tenant_id = %s AND chain_seq = %s", (tenant, pos))
                row = await cur.fetchone()
                cols = [c.name for c in cur.description]
                rid = row[cols.index("id")]
                if kind == "change":
                    sql = [f"UPDATE {table} SET actor = 'someone-else'",
                           f"UPDATE {table} SET record_ids = record_ids || ARRAY['msg_forged']",
                           f"UPDATE {table} SET at = at + interval '1 second'"][field]
                    await conn.execute(sql + " WHERE tenant_id = %s AND id = %s", (tenant, rid))
                elif kind == "remove":
                    await conn.execute(f"DELETE FROM {table} WHERE tenant_id = %s AND id = %s", (tenant, rid))
                else:  # swap the positions of two neighbours
                    await conn.execute(
                        f"UPDATE {table} SET chain_seq = CASE chain_seq WHEN %s THEN %s ELSE %s END "
                        "WHERE tenant_id = %s AND chain_seq IN (%s, %s)", (pos, pos + 1, pos, tenant, pos, pos + 1))

                async def undo() -> None:
                    async with conn.transaction():
                        await conn.execute(f"DELETE FROM {table} WHERE tenant_id = %s AND id = %s", (tenant, rid))
                        if kind == "reorder":
                            await conn.execute(
                                f"UPDATE {table} SET chain_seq = %s WHERE tenant_id = %s AND chain_seq = %s",
                                (pos + 1, tenant, pos))  # the neighbour goes back
                        placeholders = ", ".join(["%s"] * len(cols))
                        await conn.execute(f"INSERT INTO {table} ({', '.join(cols)}) OVERRIDING SYSTEM VALUE "
                                           f"VALUES ({placeholders})", row)

                return undo

            figures = await _trials(store, tenant, tamper, n)
    finally:
        await store.close()
    with capsys.disabled():
        print(f"\naudit tamper figures (PostgreSQL, {n} entries): {figures}")
    assert figures["detected"] == TRIALS and figures["located"] == TRIALS


async def test_a_late_commit_extends_the_chain_instead_of_breaking_it() -> None:
    """An entry with a lower id that appears after higher ids were chained (PostgreSQL hands out
    identity ids before commit) gets the next position; the chain stays valid."""
    store = MemoryStore()
    tenant = "t-late"
    await _populate(store, tenant)
    d = store._d
    key = SessionKey(tenant, "u0", "t")
    await store.append(key, [NewMessage("user", "committed late")])
    late = d.audit.pop()  # its transaction has not committed yet: invisible to the chainer
    await store.append(key, [NewMessage("user", "committed first")])
    head = await store.chain_audit(tenant)
    d.audit.append(late)  # now it commits, with a lower id than an entry already chained
    after = await store.chain_audit(tenant)
    assert after[tenant][0] == head[tenant][0] + 1
    chained = {e.id: e.chain_seq for e in await store.list_audit(tenant, limit=1000)}
    assert chained[late.id] == after[tenant][0] and chained[late.id] > chained[late.id + 1]
    assert (await verify_audit(store, tenant)).ok


def test_cli_audit_verify_exits_1_and_names_the_position(tmp_path) -> None:  # noqa: ANN001
    """Against PostgreSQL (a store shared by separate CLI processes)."""
    import asyncio

    import psycopg
    from click.testing import CliRunner

    from amber.cli import main

    url = f"{POSTGRES_URL}{'&' if '?' in POSTGRES_URL else '?'}schema={SCHEMA}"
    tenant = f"t-{uuid.uuid4().hex[:10]}"

    async def seed() -> None:
        try:
            store = await amber.open_store(url)
        except amber.errors.StoreUnavailable as exc:
            unreachable(f"PostgreSQL at {POSTGRES_URL}", exc)
        async with store:
            await _populate(store, tenant)

    asyncio.run(seed())
    runner = CliRunner()
    ok = runner.invoke(main, ["--store", url, "--tenant", tenant, "audit", "verify"])
    assert ok.exit_code == 0, ok.output
    assert ": OK;" in ok.output and "head: " in ok.output
    head = ok.output.split("head: ")[1].split()[0]
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'UPDATE "{SCHEMA}".audit SET actor = %s WHERE tenant_id = %s AND chain_seq = 5', ("x", tenant))
    bad = runner.invoke(main, ["--store", url, "--tenant", tenant, "audit", "verify", "--expect-head", head])
    assert bad.exit_code == 1
    assert "changed at position 5" in bad.output
    listed = runner.invoke(main, ["--store", url, "--tenant", tenant, "--json", "audit", "--operation", "message.read"])
    assert listed.exit_code == 0 and '"chain_seq"' in listed.output


async def test_sqlite_chain_detects_100_of_100_tamperings(tmp_path, capsys) -> None:  # noqa: ANN001
    import sqlite3

    db = tmp_path / "amber.db"
    store = await amber.open_store(f"sqlite:///{db}")
    tenant = "t-sqlite"
    try:
        await _populate(store, tenant)
        n = len(await store.list_audit(tenant, limit=10_000))
        assert (await verify_audit(store, tenant)).ok
        conn = sqlite3.connect(db, isolation_level=None, timeout=30)

        async def tamper(kind: str, pos: int, field: int) -> Callable[[], Awaitable[None]]:
            cur = conn.execute("SELECT * FROM audit WHERE tenant_id = ? AND chain_seq = ?", (tenant, pos))
            row = cur.fetchone()
            cols = [c[0] for c in cur.description]
            rid = row[cols.index("id")]
            if kind == "change":
                sql = ["UPDATE audit SET actor = 'someone-else'",
                       "UPDATE audit SET record_ids = json_insert(record_ids, '$[#]', 'msg_forged')",
                       "UPDATE audit SET at = at + 1000000"][field]
                conn.execute(sql + " WHERE id = ?", (rid,))
            elif kind == "remove":
                conn.execute("DELETE FROM audit WHERE id = ?", (rid,))
            else:
                conn.execute("UPDATE audit SET chain_seq = CASE chain_seq WHEN ? THEN ? ELSE ? END "
                             "WHERE tenant_id = ? AND chain_seq IN (?, ?)", (pos, pos + 1, pos, tenant, pos, pos + 1))

            async def undo() -> None:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("DELETE FROM audit WHERE id = ?", (rid,))
                if kind == "reorder":
                    conn.execute("UPDATE audit SET chain_seq = ? WHERE tenant_id = ? AND chain_seq = ?",
                                 (pos + 1, tenant, pos))
                conn.execute(f"INSERT INTO audit ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", row)
                conn.execute("COMMIT")

            return undo

        figures = await _trials(store, tenant, tamper, n)
        conn.close()
    finally:
        await store.close()
    with capsys.disabled():
        print(f"\naudit tamper figures (SQLite, {n} entries): {figures}")
    assert figures["detected"] == TRIALS and figures["located"] == TRIALS
