"""Open-time safety and error translation: settings that lose acknowledged writes are refused,
driver errors surface as Amber errors with the psycopg error as ``__cause__``."""

from __future__ import annotations

import uuid

import psycopg
import pytest

import amber
from amber.errors import InvalidInput, InvalidStoreURL, StoreUnavailable, UnsafeConfiguration
from amber.records import NewMessage
from conftest import POSTGRES_URL
from pgservers import PrivatePostgres, system_bin_dir, free_port, pgvector_bin_dir, pgvector_server  # noqa: F401

pytestmark = pytest.mark.postgres


@pytest.mark.pgvector
async def test_synchronous_commit_off_is_refused_unless_allowed(pgvector_server) -> None:  # noqa: F811
    db = f"unsafe_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pgvector_server.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {db}")
        conn.execute(f"ALTER DATABASE {db} SET synchronous_commit = off")
    url = pgvector_server.url.rsplit("/", 1)[0] + f"/{db}"
    with pytest.raises(UnsafeConfiguration) as info:
        await amber.open_store(url)
    assert "synchronous_commit=off" in str(info.value) and "allow_unsafe" in str(info.value)
    store = await amber.open_store(url, allow_unsafe=True)
    try:
        assert (await store.describe())["synchronous_commit"] == "off"
    finally:
        await store.close()


def test_fsync_off_is_refused() -> None:
    bin_dir = system_bin_dir() or pgvector_bin_dir()
    assert bin_dir is not None, "no PostgreSQL binaries found for a private server"
    server = PrivatePostgres(bin_dir, settings={"fsync": "off"})
    try:
        server.init().start()

        async def check() -> None:
            with pytest.raises(UnsafeConfiguration, match="fsync=off"):
                await amber.open_store(server.url)

        import asyncio

        asyncio.run(check())
    finally:
        server.destroy()


async def test_unreachable_server_is_store_unavailable_with_cause() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/test?connect_timeout=2"
    with pytest.raises(StoreUnavailable) as info:
        await amber.open_store(url, pool_timeout=2)
    assert info.value.__cause__ is not None


async def test_bad_options_are_amber_errors() -> None:
    with pytest.raises(InvalidStoreURL):
        await amber.open_store(f"{POSTGRES_URL}?schema=Bad-Name")
    with pytest.raises(InvalidStoreURL):
        await amber.open_store(f"{POSTGRES_URL}?allow_unsafe=maybe")
    with pytest.raises(InvalidInput):
        await amber.open_store(POSTGRES_URL, no_such_option=1)


async def test_closed_store_refuses_work_and_close_is_idempotent() -> None:
    store = await amber.open_store(f"{POSTGRES_URL}?schema=amber_conformance")
    await store.close()
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.append_one(amber.SessionKey("t", "u", "x"), NewMessage("user", "late"))


async def test_secrets_are_redacted_in_url() -> None:
    from amber.store.postgres import PostgresStore

    store = PostgresStore("postgresql://amber:hunter2@127.0.0.1:1/db",
                          redacted_url=amber.store.redact_url("postgresql://amber:hunter2@127.0.0.1:1/db"))
    assert "hunter2" not in store.url
    await store.close()
