"""Encryption at rest on real stores: no plaintext in SQLite files (db + WAL), PostgreSQL rows or
Redis values of an encrypted tenant; tampering and moved ciphertexts detected; rotation (data key
and master key) keeps everything readable; crypto-shredding makes everything unreadable, a copy of
the database taken before the shred included; no silent plaintext fallback anywhere."""

from __future__ import annotations

import os
import shutil
import sqlite3
import uuid

import pytest

import amber
from amber import NewFact, NewMessage, SessionKey
from amber.governance import (
    EncryptedStore,
    EncryptionConfig,
    FileKeyRing,
    IntegrityError,
    KeyDestroyed,
    KeyUnavailable,
    LocalKeyProvider,
)
from amber.records import VectorItem
from amber.store.base import Capability
from conftest import POSTGRES_URL, REDIS_URL, unreachable

SENTINEL = "Zq9SentinelXw7"  # in every field of the encrypted tenant's records


def _config(tmp_path, master: bytes | None = None, **kw) -> EncryptionConfig:
    return EncryptionConfig(provider=LocalKeyProvider([master or os.urandom(32)]),
                            keyring=FileKeyRing(tmp_path / "keyring.json"), **kw)


async def _write_everything(store: amber.Store, tenant: str, n: int = 20) -> SessionKey:
    key = SessionKey(tenant, "cust-1", "claim-7788")
    await store.append(key, [
        NewMessage("user", f"my secret is {SENTINEL} number {i}", payload={"text": SENTINEL, "i": i},
                   metadata={"note": SENTINEL}, idempotency_key=f"{SENTINEL}-{i}")
        for i in range(n)
    ])
    await store.record_fact(tenant, "cust-1", NewFact(f"{SENTINEL}_attr", SENTINEL, f"the secret is {SENTINEL}",
                                                      thread=key.thread, metadata={"m": SENTINEL}))
    await store.put_state(key, "agent", {"memory": [SENTINEL] * 3})
    return key


async def _read_everything(store: amber.Store, key: SessionKey) -> None:
    msgs = await store.read_since(key)
    assert msgs and all(SENTINEL in m.content and m.payload["text"] == SENTINEL for m in msgs)
    assert all(m.metadata == {"note": SENTINEL} and m.idempotency_key.startswith(SENTINEL) for m in msgs)
    (fact,) = await store.list_facts(key.tenant, key.user)
    assert fact.value == SENTINEL and fact.attribute == f"{SENTINEL}_attr" and fact.metadata == {"m": SENTINEL}
    state = await store.get_state(key, "agent")
    assert state is not None and state.data == {"memory": [SENTINEL] * 3}


def _file_hits(paths) -> int:
    needles = [SENTINEL.encode(), SENTINEL.lower().encode()]
    total = 0
    for p in paths:
        if os.path.exists(p):
            data = open(p, "rb").read()
            total += sum(data.count(n) for n in needles)
    return total


def _db_files(db: str) -> list[str]:
    return [db, db + "-wal", db + "-shm", db + "-journal"]


# -- SQLite --------------------------------------------------------------------------------------
async def test_sqlite_files_hold_no_plaintext_of_an_encrypted_tenant(tmp_path) -> None:
    db = str(tmp_path / "amber.db")
    store = await amber.open_store(f"sqlite:///{db}", encryption=_config(tmp_path, tenants={"bank"}))
    try:
        key = await _write_everything(store, "bank")
        await _read_everything(store, key)
        hits = await store.search_text("bank", "cust-1", f"secret {SENTINEL}", limit=50)
        assert {h.kind for h in hits} == {"message", "fact"} and all(SENTINEL in h.text for h in hits)
        assert os.path.getsize(db + "-wal") > 0  # the WAL is checked while it still holds the writes
        assert _file_hits(_db_files(db)) == 0
        # A plaintext tenant in the same file is stored as it is: the scan above would see it.
        await store.append_one(SessionKey("public", "u", "t"), NewMessage("user", f"open {SENTINEL}"))
        assert _file_hits(_db_files(db)) > 0
    finally:
        await store.close()


async def test_one_byte_change_to_a_ciphertext_is_detected(tmp_path) -> None:
    db = str(tmp_path / "amber.db")
    config = _config(tmp_path)
    store = await amber.open_store(f"sqlite:///{db}", encryption=config)
    try:
        key = await _write_everything(store, "bank", n=3)
    finally:
        await store.close()
    conn = sqlite3.connect(db)
    (content,) = conn.execute("SELECT content FROM messages WHERE seq = 2").fetchone()
    flipped = content[:-5] + ("a" if content[-5] != "a" else "b") + content[-4:]  # one base32 digit
    conn.execute("UPDATE messages SET content = ? WHERE seq = 2", (flipped,))
    (data,) = conn.execute("SELECT data FROM states").fetchone()
    conn.execute("UPDATE states SET data = ?", (data[:-6] + "AAAA" + data[-2:],))  # last base64 quad
    conn.commit()
    conn.close()
    store = await amber.open_store(f"sqlite:///{db}", encryption=config)
    try:
        with pytest.raises(IntegrityError):
            await store.read_since(key)
        assert [m.seq for m in await store.read_since(key, 2)] == [3]  # the untouched ones still read
        with pytest.raises(IntegrityError):
            await store.get_state(key, "agent")
    finally:
        await store.close()


async def test_ciphertext_moved_to_another_user_or_tenant_fails(tmp_path) -> None:
    db = str(tmp_path / "amber.db")
    config = _config(tmp_path)
    store = await amber.open_store(f"sqlite:///{db}", encryption=config)
    a, b = SessionKey("bank", "alice", "t"), SessionKey("bank", "bob", "t")
    try:
        await store.append_one(a, NewMessage("user", "alice's secret"))
        await store.append_one(b, NewMessage("user", "bob's words"))
    finally:
        await store.close()
    conn = sqlite3.connect(db)
    (alice,) = conn.execute("SELECT content FROM messages WHERE user_id = 'alice'").fetchone()
    conn.execute("UPDATE messages SET content = ? WHERE user_id = 'bob'", (alice,))
    conn.commit()
    conn.close()
    store = await amber.open_store(f"sqlite:///{db}", encryption=config)
    try:
        assert [m.content for m in await store.read_since(a)] == ["alice's secret"]
        with pytest.raises(IntegrityError):
            await store.read_since(b)
    finally:
        await store.close()


async def test_plaintext_record_in_an_encrypted_tenant_is_refused_not_served(tmp_path) -> None:
    db = str(tmp_path / "amber.db")
    plain = await amber.open_store(f"sqlite:///{db}")
    key = SessionKey("bank", "u", "t")
    await plain.append_one(key, NewMessage("user", "written before encryption was on"))
    await plain.close()
    master = os.urandom(32)
    store = await amber.open_store(f"sqlite:///{db}", encryption=_config(tmp_path, master))
    try:
        await store.append_one(SessionKey("bank", "u", "new"), NewMessage("user", "encrypted"))  # keys exist now
        with pytest.raises(IntegrityError):
            await store.read_since(key)
    finally:
        await store.close()
    lenient = await amber.open_store(f"sqlite:///{db}",
                                     encryption=_config(tmp_path, master, allow_plaintext_reads=True))
    try:
        assert [m.content for m in await lenient.read_since(key)] == ["written before encryption was on"]
    finally:
        await lenient.close()


async def test_rotation_keeps_every_record_readable(tmp_path) -> None:
    db = str(tmp_path / "amber.db")
    old_master, new_master = os.urandom(32), os.urandom(32)
    config = _config(tmp_path, old_master)
    store = await amber.open_store(f"sqlite:///{db}", encryption=config)
    assert isinstance(store, EncryptedStore)
    key = SessionKey("bank", "u", "t")
    try:
        await store.append(key, [NewMessage("user", f"v1 message {i}") for i in range(5)])
        await store.put_state(key, "agent", {"v": 1})
        await store.record_fact("bank", "u", NewFact("policy", "P-1", "policy P-1"))
        assert await store.keys.rotate("bank") == 2
        await store.append(key, [NewMessage("user", f"v2 message {i}") for i in range(5)])
        await store.record_fact("bank", "u", NewFact("email", "e@x.io", "email e@x.io"))
        assert await store.key_versions("bank") == {1: 7, 2: 6}  # 5+1 msgs, 1 fact / 5 msgs, 1 fact
        assert [m.content for m in await store.read_since(key)] == (
            [f"v1 message {i}" for i in range(5)] + [f"v2 message {i}" for i in range(5)])
        assert len(await store.search_text("bank", "u", "message")) == 10  # blind index survives rotation
        assert await store.reencrypt_states("bank") == {"states": 1, "skipped": 0}
        assert (await store.get_state(key, "agent")).data == {"v": 1}
    finally:
        await store.close()
    # Master-key rotation: new master first, old second; re-wrap; then the old master is dropped.
    both = EncryptionConfig(provider=LocalKeyProvider([new_master, old_master]), keyring=config.keyring)
    store = await amber.open_store(f"sqlite:///{db}", encryption=both)
    try:
        assert await store.keys.rewrap_all() == 1
    finally:
        await store.close()
    only_new = EncryptionConfig(provider=LocalKeyProvider([new_master]), keyring=FileKeyRing(tmp_path / "keyring.json"))
    store = await amber.open_store(f"sqlite:///{db}", encryption=only_new)
    try:
        assert len(await store.read_since(key)) == 10
        assert {f.attribute for f in await store.list_facts("bank", "u")} == {"policy", "email"}
        assert (await store.get_state(key, "agent")).data == {"v": 1}
        # Retiring version 1 (the re-encrypt pass cannot rewrite immutable messages): they go dark.
        await store.keys.retire("bank", 1)
        with pytest.raises(KeyUnavailable):
            await store.read_since(key)
        assert len(await store.read_since(key, 5)) == 5
        assert (await store.get_state(key, "agent")).data == {"v": 1}  # re-encrypted under v2
    finally:
        await store.close()
    # The old master alone can no longer unwrap anything.
    old_only = EncryptionConfig(provider=LocalKeyProvider([old_master]), keyring=FileKeyRing(tmp_path / "keyring.json"))
    store = await amber.open_store(f"sqlite:///{db}", encryption=old_only)
    try:
        with pytest.raises(KeyUnavailable):
            await store.read_since(key, 5)
    finally:
        await store.close()


async def test_crypto_shredding_makes_every_copy_unreadable(tmp_path) -> None:
    db = str(tmp_path / "amber.db")
    config = _config(tmp_path)
    store = await amber.open_store(f"sqlite:///{db}", encryption=config)
    try:
        key = await _write_everything(store, "bank")
        other = await _write_everything(store, "insurer")
        backup = tmp_path / "backup"
        backup.mkdir()
        for p in _db_files(db):  # a file-level copy taken while open: db + WAL
            if os.path.exists(p):
                shutil.copy(p, backup / os.path.basename(p))
        await store.keys.destroy("bank")
        for read in (lambda: store.read_since(key), lambda: store.list_facts("bank", key.user),
                     lambda: store.get_state(key, "agent"), lambda: store.search_text("bank", key.user, "secret"),
                     lambda: store.read_window(key, max_tokens=100)):
            with pytest.raises(KeyDestroyed):
                await read()
        with pytest.raises(KeyDestroyed):  # no silent re-keying of a shredded tenant
            await store.append_one(key, NewMessage("user", "new"))
        await _read_everything(store, other)  # the other tenant is untouched
    finally:
        await store.close()
    restored = await amber.open_store(f"sqlite:///{backup / 'amber.db'}", encryption=config)
    try:
        assert len(await restored.list_sessions("bank")) == 1  # the rows are there...
        with pytest.raises(KeyDestroyed):  # ...and unreadable
            await restored.read_since(key)
        await _read_everything(restored, other)
    finally:
        await restored.close()
    assert _file_hits(_db_files(str(backup / "amber.db"))) == 0


def _lost_keyring(tmp_path) -> EncryptionConfig:
    """A configuration whose keyring (an empty file elsewhere) and master key are not the ones the
    data was written with, and which may not create keys: every tenant's key is unavailable."""
    return EncryptionConfig(provider=LocalKeyProvider([os.urandom(32)]), keyring=FileKeyRing(tmp_path / "other.json"),
                            auto_create=False)


async def test_missing_key_or_master_never_falls_back_to_plaintext(tmp_path) -> None:
    db = str(tmp_path / "amber.db")
    store = await amber.open_store(f"sqlite:///{db}", encryption=_config(tmp_path))
    key = await _write_everything(store, "bank", n=2)
    await store.close()
    # The keyring is lost and auto-creation is off: reads and writes both refuse.
    lost = _lost_keyring(tmp_path)
    store = await amber.open_store(f"sqlite:///{db}", encryption=lost)
    try:
        with pytest.raises(KeyUnavailable):
            await store.read_since(key)
        with pytest.raises(KeyUnavailable):
            await store.append_one(key, NewMessage("user", "x"))
        with pytest.raises(KeyUnavailable):
            await store.record_fact("bank", "u", NewFact("a", "b", "c"))
    finally:
        await store.close()
    # Right keyring, wrong master key.
    wrong = _config(tmp_path)
    store = await amber.open_store(f"sqlite:///{db}", encryption=wrong)
    try:
        with pytest.raises(KeyUnavailable):
            await store.read_since(key)
    finally:
        await store.close()


async def test_facts_by_attribute_of_a_tenant_without_a_key_yet_are_empty_not_an_error(tmp_path) -> None:
    # Found by the model-based conformance clause: before a tenant's first write there is no key to
    # blind the attribute with, and listing raised KeyUnavailable where every store returns [].
    db = str(tmp_path / "amber.db")
    store = await amber.open_store(f"sqlite:///{db}", encryption=_config(tmp_path))
    try:
        assert await store.list_facts("fresh", "u", attribute="email") == []
        await store.record_fact("fresh", "u", NewFact("email", "alpha", "email alpha"))
        assert [f.value for f in await store.list_facts("fresh", "u", attribute="email")] == ["alpha"]
        assert await store.list_facts("fresh", "u", attribute="phone") == []
    finally:
        await store.close()
    # The keyring is lost: facts exist, so the listing must refuse rather than answer "none".
    lost = _lost_keyring(tmp_path)
    store = await amber.open_store(f"sqlite:///{db}", encryption=lost)
    try:
        with pytest.raises(KeyUnavailable):
            await store.list_facts("fresh", "u", attribute="email")
        assert await store.list_facts("fresh", "nobody", attribute="email") == []
    finally:
        await store.close()


async def test_vectors_are_off_for_encrypted_tenants_unless_opted_in(tmp_path) -> None:
    master = os.urandom(32)
    store = await amber.open_store(f"sqlite:///{tmp_path / 'a.db'}",
                                   encryption=_config(tmp_path, master, tenants={"bank"}))
    try:
        assert Capability.VECTOR_SEARCH not in store.capabilities
        assert Capability.LEXICAL_SEARCH in store.capabilities
        assert Capability.VECTOR_SEARCH in store.tenant_capabilities("public")
        for tenant in ("bank", "public"):
            (m,) = await store.append(SessionKey(tenant, "u", "t"), [NewMessage("user", "hello")])
            await store.put_vectors(tenant, "u", "toy", [VectorItem("message", m.id, (1.0, 0.0))])
        assert await store.search_vectors("bank", "u", "toy", (1.0, 0.0)) == []
        assert len(await store.search_vectors("public", "u", "toy", (1.0, 0.0))) == 1
        conn = sqlite3.connect(str(tmp_path / "a.db"))
        assert conn.execute("SELECT tenant_id FROM vectors").fetchall() == [("public",)]
        conn.close()
    finally:
        await store.close()
    off = await amber.open_store(f"sqlite:///{tmp_path / 'a.db'}", encryption=_config(tmp_path, master, lexical="off"))
    try:
        assert Capability.LEXICAL_SEARCH not in off.capabilities
        await off.append_one(SessionKey("bank", "u", "t2"), NewMessage("user", "findable words"))
        assert await off.search_text("bank", "u", "findable") == []
    finally:
        await off.close()


async def test_concurrent_first_writes_from_two_processes_share_one_key(tmp_path) -> None:
    """Two stores (separate key managers, like two processes) race to create a tenant's key: both
    end up with the same one, so neither writes data the other cannot read."""
    import asyncio

    db = f"sqlite:///{tmp_path / 'a.db'}"
    master = os.urandom(32)
    a = await amber.open_store(db, encryption=_config(tmp_path, master))
    b = await amber.open_store(db, encryption=_config(tmp_path, master))
    key = SessionKey("fresh", "u", "t")
    try:
        await asyncio.gather(*(s.append_one(key, NewMessage("user", f"from {n}", idempotency_key=n))
                               for s, n in ((a, "a"), (b, "b"))))
        for s in (a, b):
            assert sorted(m.content for m in await s.read_since(key)) == ["from a", "from b"]
    finally:
        await a.close()
        await b.close()


# -- PostgreSQL ----------------------------------------------------------------------------------
@pytest.mark.postgres
async def test_postgres_rows_hold_no_plaintext_of_an_encrypted_tenant(tmp_path) -> None:
    import psycopg

    schema = "amber_encryption_test"
    url = f"{POSTGRES_URL}?schema={schema}"
    tenant = f"bank-{uuid.uuid4().hex[:8]}"
    try:
        store = await amber.open_store(url, encryption=_config(tmp_path))
    except amber.StoreUnavailable as exc:
        unreachable(f"PostgreSQL at {POSTGRES_URL}", exc)
    try:
        key = await _write_everything(store, tenant)
        await _read_everything(store, key)
        assert len(await store.search_text(tenant, key.user, SENTINEL, limit=50)) == 21
    finally:
        await store.close()
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL) as conn:
        seen = 0
        for table in ("messages", "facts", "states", "sessions", "audit", "learn_jobs"):
            cur = await conn.execute(f'SELECT t::text FROM "{schema}".{table} t WHERE tenant_id = %s', (tenant,))
            rows = [r[0] for r in await cur.fetchall()]
            seen += len(rows)
            assert not [r for r in rows if SENTINEL.lower() in r.lower()], table
        assert seen > 20


# -- Redis ---------------------------------------------------------------------------------------
@pytest.mark.redis
async def test_redis_cache_holds_only_ciphertext(tmp_path) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        await client.ping()
    except Exception as exc:  # noqa: BLE001
        await client.aclose()
        unreachable(f"Redis at {REDIS_URL}", exc)
    prefix = f"amber-test-enc:{uuid.uuid4().hex[:10]}:"
    from amber.store.redis import RedisCachedStore

    inner = await amber.open_store(f"sqlite:///{tmp_path / 'a.db'}")
    cached = await RedisCachedStore.wrap(inner, REDIS_URL, prefix=prefix)
    store = EncryptedStore(cached, _config(tmp_path))
    try:
        key = await _write_everything(store, "bank")
        for _ in range(2):  # fill, then serve from the cache
            await _read_everything(store, key)
            assert len(await store.read_window(key, last=5)) == 5
        assert cached.stats["hits"] > 0
        keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
        assert keys
        dumped = b"".join([await client.dump(k) or b"" for k in keys])
        assert len(dumped) > 1000
        assert SENTINEL.encode() not in dumped and SENTINEL.lower().encode() not in dumped
    finally:
        await store.close()
        async for k in client.scan_iter(match=f"{prefix}*", count=1000):
            await client.unlink(k)
        await client.aclose()


# -- exact export -> forget -> import --------------------------------------------------------------
async def test_export_forget_import_of_an_encrypted_tenant_is_exact_and_stays_encrypted(tmp_path) -> None:
    from amber.transfer import export_jsonl, import_jsonl

    db = str(tmp_path / "amber.db")
    store = await amber.open_store(f"sqlite:///{db}", encryption=_config(tmp_path, tenants={"bank"}))
    try:
        key = await _write_everything(store, "bank", n=5)
        first = [line async for line in export_jsonl(store, "bank")]
        await store.delete_user("bank", "cust-1")
        report = await import_jsonl(store, "bank", first, exact=True)
        assert report.warnings == [] and report.id_map == {}
        again = [line async for line in export_jsonl(store, "bank")]
        assert again[1:] == first[1:]  # the export is plaintext: the same bytes, but its header's time
        await _read_everything(store, key)
        hits = await store.search_text("bank", "cust-1", f"secret {SENTINEL}", limit=50)
        assert {h.kind for h in hits} == {"message", "fact"}  # the blind index was rebuilt
        assert _file_hits(_db_files(db)) == 0  # restored records were sealed on the way in
    finally:
        await store.close()
