"""Faults on a PRIVATE PostgreSQL server (never the shared one): the server is stopped with
``pg_ctl -m immediate`` (a crash: no shutdown checkpoint, WAL recovery on restart) in the middle of
a stream of appends and started again. Each writer retries a failed append with the SAME idempotency
key until it succeeds. Afterwards every acknowledged message is present exactly once, in a gap-free
order, and the store kept working without being reopened (the pool reconnected)."""

from __future__ import annotations

import asyncio

import pytest

import amber
from amber.errors import StoreUnavailable
from amber.records import NewMessage
from pgservers import PrivatePostgres, system_bin_dir, pgvector_bin_dir

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

WRITERS = 4
PER_WRITER = 60


@pytest.fixture
def private_server():
    bin_dir = system_bin_dir() or pgvector_bin_dir()
    assert bin_dir is not None, "no PostgreSQL binaries found for a private server"
    server = PrivatePostgres(bin_dir).init().start()
    yield server
    server.destroy()


async def test_crash_restart_mid_stream_loses_and_duplicates_nothing(private_server: PrivatePostgres) -> None:
    store = await amber.open_store(private_server.url, pool_timeout=1.0, pool_max_size=4)
    key = amber.SessionKey("acme", "u-1", "fault")
    acked: dict[str, int] = {}
    failures = 0
    crashed = asyncio.Event()

    async def writer(w: int) -> None:
        nonlocal failures
        for i in range(PER_WRITER):
            idem = f"w{w}-{i}"
            while True:
                try:
                    msg = await store.append_one(key, NewMessage("user", f"message {idem}", idempotency_key=idem))
                except StoreUnavailable:
                    failures += 1  # not acknowledged: retry the same key
                    await asyncio.sleep(0.05)
                    continue
                assert msg.idempotency_key == idem
                acked[idem] = msg.seq
                break

    async def crash_and_restart() -> None:
        while len(acked) < WRITERS * PER_WRITER // 3:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(private_server.stop, "immediate")
        crashed.set()
        await asyncio.sleep(1.5)  # writers keep failing meanwhile
        await asyncio.to_thread(private_server.start)

    try:
        await asyncio.wait_for(asyncio.gather(crash_and_restart(), *(writer(w) for w in range(WRITERS))), 180)
        assert crashed.is_set() and failures > 0, "the crash never hit an append"
        stored = await store.read_since(key)
    finally:
        await store.close()

    assert len(acked) == WRITERS * PER_WRITER
    assert [m.seq for m in stored] == list(range(1, WRITERS * PER_WRITER + 1))  # gap-free, no duplicates
    by_key = {m.idempotency_key: m for m in stored}
    assert len(by_key) == len(stored)
    for idem, seq in acked.items():  # every acknowledged message, exactly where it was acknowledged
        assert by_key[idem].seq == seq and by_key[idem].content == f"message {idem}"

    # A fresh handle after the crash sees the same (durable, recovered) transcript.
    again = await amber.open_store(private_server.url)
    try:
        assert [m.id for m in await again.read_since(key)] == [m.id for m in stored]
    finally:
        await again.close()
