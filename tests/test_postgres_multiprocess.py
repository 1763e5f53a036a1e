"""Many processes against one PostgreSQL (the shared server, private schemas / random tenants):
eight workers starting together migrate a fresh schema exactly once, and appends to one session
from several processes get one gap-free order with nothing lost."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import uuid

import psycopg
import pytest

import amber
from amber.store import postgres_schema
from conftest import POSTGRES_URL, unreachable

pytestmark = pytest.mark.postgres


@pytest.fixture
def fresh_schema():
    """A schema name nobody has used; dropped afterwards (it is ours alone)."""
    name = f"amber_mig_{uuid.uuid4().hex[:10]}"
    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        unreachable(f"PostgreSQL at {POSTGRES_URL}", exc)
    yield name
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def _run_workers(script: str, args: list[list[str]], timeout: float = 120) -> list[str]:
    procs = [
        subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *a], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for a in args
    ]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err
        outs.append(out.strip())
    return outs


MIGRATE_WORKER = """
    import asyncio, json, sys, time
    import amber

    async def main(url, start_at):
        time.sleep(max(0.0, start_at - time.time()))  # all eight open at the same moment
        store = await amber.open_store(url)
        try:
            print(json.dumps(store.applied_migrations))
        finally:
            await store.close()

    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
"""


def test_eight_workers_starting_together_migrate_exactly_once(fresh_schema: str) -> None:
    url = f"{POSTGRES_URL}?schema={fresh_schema}"
    start_at = str(time.time() + 4.0)
    outs = [json.loads(o) for o in _run_workers(MIGRATE_WORKER, [[url, start_at]] * 8)]
    expected = [f"core/{m.version}" for m in postgres_schema.CORE]
    assert sorted(outs, key=len) == [[]] * 7 + [expected], outs  # one migrator, seven found it done
    with psycopg.connect(POSTGRES_URL) as conn:
        rows = conn.execute(
            f'SELECT track, version FROM "{fresh_schema}".schema_migrations ORDER BY track, version').fetchall()
    assert rows == [("core", m.version) for m in postgres_schema.CORE]


async def test_reopening_a_current_schema_applies_nothing(fresh_schema: str) -> None:
    url = f"{POSTGRES_URL}?schema={fresh_schema}"
    first = await amber.open_store(url)
    await first.close()
    again = await amber.open_store(url)
    try:
        assert first.applied_migrations and again.applied_migrations == []
        assert (await again.describe())["schema_version"] == {"core": len(postgres_schema.CORE)}
    finally:
        await again.close()


def test_migrations_are_numbered_contiguously_from_one() -> None:
    for track in (postgres_schema.CORE, postgres_schema.PGVECTOR):
        assert [m.version for m in track] == list(range(1, len(track) + 1))


APPEND_WORKER = """
    import asyncio, sys, time
    import amber
    from amber.records import NewMessage

    async def main(url, tenant, tag, n, start_at):
        store = await amber.open_store(url)
        key = amber.SessionKey(tenant, "u", "shared")
        time.sleep(max(0.0, start_at - time.time()))
        try:
            for i in range(int(n)):
                await store.append_one(key, NewMessage("user", f"{tag}-{i}", idempotency_key=f"{tag}-{i}"))
        finally:
            await store.close()

    asyncio.run(main(*sys.argv[1:5], float(sys.argv[5])))
"""


async def test_appends_to_one_session_from_four_processes_are_totally_ordered(fresh_schema: str) -> None:
    url = f"{POSTGRES_URL}?schema={fresh_schema}"
    await (await amber.open_store(url)).close()  # migrate first, so the workers only append
    tenant, n = f"t-{uuid.uuid4().hex[:12]}", 40
    start_at = str(time.time() + 4.0)
    _run_workers(APPEND_WORKER, [[url, tenant, f"p{w}", str(n), start_at] for w in range(4)])
    store = await amber.open_store(url)
    try:
        msgs = await store.read_since(amber.SessionKey(tenant, "u", "shared"))
    finally:
        await store.close()
    assert [m.seq for m in msgs] == list(range(1, 4 * n + 1))
    contents = [m.content for m in msgs]
    assert len(set(contents)) == 4 * n
    for w in range(4):  # each process's own order survives the interleaving
        assert [c for c in contents if c.startswith(f"p{w}-")] == [f"p{w}-{i}" for i in range(n)]
    interleaved = sum(1 for a, b in zip(contents, contents[1:]) if a.split("-")[0] != b.split("-")[0])
    assert interleaved > 3, "the writers never overlapped, so the test proved nothing"
