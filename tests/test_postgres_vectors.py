"""Vector storage on PostgreSQL: pgvector's HNSW path on a private PostgreSQL 18 + pgvector server,
and the exact real[] fallback (with a clear error when native vectors are required)."""

from __future__ import annotations

import uuid

import psycopg
import pytest

import amber
from amber.errors import CapabilityMissing, InvalidInput
from amber.records import NewMessage, VectorItem
from amber.store.base import Capability
from conftest import POSTGRES_URL
from pgservers import pgvector_server  # noqa: F401 - session fixture

pytestmark = pytest.mark.postgres


def _url(base: str, schema: str) -> str:
    return f"{base}?schema={schema}"


@pytest.mark.pgvector
async def test_pgvector_path_is_used(pgvector_server) -> None:  # noqa: F811
    schema = "amber_vec_native"
    store = await amber.open_store(_url(pgvector_server.url, schema), require_native_vectors=True)
    try:
        assert Capability.VECTOR_INDEX_NATIVE in store.capabilities
        assert (await store.describe())["vectors"] == "pgvector"
        key = amber.SessionKey(f"t-{uuid.uuid4().hex[:12]}", "u", "t")
        msgs = await store.append(key, [NewMessage("user", f"m{i}") for i in range(3)])
        model = f"toy-{uuid.uuid4().hex[:6]}"
        await store.put_vectors(key.tenant, key.user, model, [
            VectorItem("message", m.id, v) for m, v in zip(msgs, [(1, 0, 0), (0, 1, 0), (0.9, 0.1, 0)])])
        hits = await store.search_vectors(key.tenant, key.user, model, (1, 0, 0), limit=2)
        assert [h.id for h in hits] == [msgs[0].id, msgs[2].id]
    finally:
        await store.close()

    with psycopg.connect(pgvector_server.url) as conn:
        stored = conn.execute(
            f"SELECT pg_typeof(embedding_v)::text, embedding IS NULL FROM {schema}.vectors WHERE model = %s",
            (model,)).fetchall()
        assert stored and all(row == ("vector", True) for row in stored)  # pgvector column, no real[] copy
        (index,) = conn.execute(f"SELECT index_name FROM {schema}.vector_indexes WHERE model = %s AND dim = 3",
                                (model,)).fetchone()
        (indexdef,) = conn.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND indexname = %s",
                                   (schema, index)).fetchone()
        assert "USING hnsw" in indexdef and "vector_cosine_ops" in indexdef
        # The planner can answer a nearest-neighbour query for this model from the HNSW index.
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in conn.execute(
            f"EXPLAIN SELECT item_id FROM {schema}.vectors WHERE model = %s AND dim = 3 "
            "ORDER BY embedding_v::vector(3) <=> '[1,0,0]'::vector(3) LIMIT 5", (model,)).fetchall())
        assert index in plan, plan


async def test_without_pgvector_vectors_are_exact_and_native_can_be_required() -> None:
    url = _url(POSTGRES_URL, "amber_conformance")
    with pytest.raises(CapabilityMissing) as info:
        await amber.open_store(url, require_native_vectors=True)
    assert "pgvector" in str(info.value) and "CREATE EXTENSION vector" in str(info.value)
    store = await amber.open_store(url)
    try:
        assert Capability.VECTOR_SEARCH in store.capabilities
        assert Capability.VECTOR_INDEX_NATIVE not in store.capabilities
        assert (await store.describe())["vectors"].startswith("exact")
    finally:
        await store.close()


@pytest.mark.pgvector
async def test_exact_mode_can_be_chosen_where_pgvector_exists(pgvector_server) -> None:  # noqa: F811
    store = await amber.open_store(_url(pgvector_server.url, "amber_vec_exact"), vectors="exact")
    try:
        assert Capability.VECTOR_INDEX_NATIVE not in store.capabilities
        key = amber.SessionKey(f"t-{uuid.uuid4().hex[:12]}", "u", "t")
        (m,) = await store.append(key, [NewMessage("user", "x")])
        await store.put_vectors(key.tenant, key.user, "toy", [VectorItem("message", m.id, (0.0, 2.0))])
        (hit,) = await store.search_vectors(key.tenant, key.user, "toy", (0.0, 1.0))
        assert hit.id == m.id and abs(hit.score - 1.0) < 1e-6
    finally:
        await store.close()


async def test_bad_vectors_are_refused_and_store_nothing() -> None:
    store = await amber.open_store(_url(POSTGRES_URL, "amber_conformance"))
    try:
        key = amber.SessionKey(f"t-{uuid.uuid4().hex[:12]}", "u", "t")
        (m,) = await store.append(key, [NewMessage("user", "x")])
        for bad in [(), (float("nan"), 1.0), ("a", "b")]:
            with pytest.raises(InvalidInput):
                await store.put_vectors(key.tenant, key.user, "toy", [
                    VectorItem("message", m.id, (1.0, 0.0)), VectorItem("message", "other", bad)])
        with pytest.raises(InvalidInput):
            await store.search_vectors(key.tenant, key.user, "toy", (1.0, 0.0), kinds=("nonsense",))
        assert await store.search_vectors(key.tenant, key.user, "toy", (1.0, 0.0)) == []
    finally:
        await store.close()


async def _search_ids(store: amber.Store, key: amber.SessionKey, model: str, q, **kw) -> list[str]:
    return [h.id for h in await store.search_vectors(key.tenant, key.user, model, q, **kw)]


async def test_client_side_exact_search_sees_other_handles_writes_and_deletions() -> None:
    """Two handles stand for two worker processes: the second one's vector writes and deletions
    are seen by the first one's next search although it holds a cached matrix (stamp check)."""
    url = _url(POSTGRES_URL, "amber_conformance")
    a, b = await amber.open_store(url), await amber.open_store(url)
    try:
        key = amber.SessionKey(f"t-{uuid.uuid4().hex[:12]}", "u", "t")
        msgs = await a.append(key, [NewMessage("user", f"m{i}") for i in range(3)])
        await a.put_vectors(key.tenant, key.user, "toy", [
            VectorItem("message", msgs[0].id, (1.0, 0.0, 0.0)), VectorItem("message", msgs[1].id, (0.0, 1.0, 0.0))])
        assert await _search_ids(a, key, "toy", (0.0, 0.0, 1.0)) == sorted([msgs[0].id, msgs[1].id])  # ties: by id
        await b.put_vectors(key.tenant, key.user, "toy", [VectorItem("message", msgs[2].id, (0.0, 0.1, 1.0))])
        assert (await _search_ids(a, key, "toy", (0.0, 0.0, 1.0)))[0] == msgs[2].id
        await b.put_vectors(key.tenant, key.user, "toy", [VectorItem("message", msgs[2].id, (0.0, 0.0, -1.0))])
        assert (await _search_ids(a, key, "toy", (0.0, 0.0, 1.0)))[-1] == msgs[2].id  # updated in place
        await b.delete_session(key)
        assert await _search_ids(a, key, "toy", (0.0, 0.0, 1.0)) == []
        with pytest.raises(InvalidInput):
            await a.put_vectors(key.tenant, key.user, "toy", [VectorItem("message", "x", (1e39, 0.0, 0.0))])
    finally:
        await a.close()
        await b.close()


@pytest.mark.pgvector
async def test_large_users_use_the_hnsw_index_with_the_user_filter(pgvector_server) -> None:  # noqa: F811
    """exact_vector_max=0 sends every user to the HNSW path; iterative scans keep the per-user
    filter from starving the result (the other user's closer vectors are never returned)."""
    store = await amber.open_store(_url(pgvector_server.url, "amber_vec_native"), require_native_vectors=True,
                                   exact_vector_max=0)
    try:
        tenant = f"t-{uuid.uuid4().hex[:12]}"
        mine, other = amber.SessionKey(tenant, "me", "t"), amber.SessionKey(tenant, "other", "t")
        model = f"toy-{uuid.uuid4().hex[:6]}"
        theirs = await store.append(other, [NewMessage("user", f"o{i}") for i in range(300)])
        await store.put_vectors(tenant, "other", model, [
            VectorItem("message", m.id, (1.0, i / 1000, 0.0)) for i, m in enumerate(theirs)])
        ours = await store.append(mine, [NewMessage("user", f"m{i}", author="Nora") for i in range(5)])
        await store.put_vectors(tenant, "me", model, [
            VectorItem("message", m.id, (1.0, 0.0, 0.2 * (i + 1))) for i, m in enumerate(ours)])
        hits = await store.search_vectors(mine.tenant, mine.user, model, (1.0, 0.0, 0.0), limit=3)
        assert [h.id for h in hits] == [m.id for m in ours[:3]]
        assert {(h.role, h.author) for h in hits} == {("user", "Nora")}  # this path reads them too
    finally:
        await store.close()


async def test_a_search_whose_candidates_another_handle_deleted_catches_up() -> None:
    """The in-process index learns of other handles' changes from the stamp that comes back with the
    candidates' records. When every candidate had been deleted, no row came back, so neither did the
    stamp: the search answered nothing from the stale index (and went on doing so) while the user
    had live vectors."""
    import numpy as np

    schema = f"amber_stale_{uuid.uuid4().hex[:8]}"
    url = _url(POSTGRES_URL, schema)
    rng = np.random.default_rng(8)
    reader, writer = await amber.open_store(url), await amber.open_store(url)
    try:
        for thread, n in (("old", 200), ("new", 30)):
            msgs = await writer.append(amber.SessionKey("t", "u", thread), [NewMessage("user", f"{thread} {i}") for i in range(n)])
            await writer.put_vectors("t", "u", "toy", [
                VectorItem("message", m.id, tuple(map(float, rng.standard_normal(16)))) for m in msgs])
            if thread == "old":
                await reader.search_vectors("t", "u", "toy", tuple(map(float, rng.standard_normal(16))), limit=5)
        await writer.delete_session(amber.SessionKey("t", "u", "old"))
        # A query next to the deleted vectors: its candidates in the reader's index are all deleted.
        q = tuple(float(x) for x in rng.standard_normal(16))
        hits = await reader.search_vectors("t", "u", "toy", q, limit=5)
        assert len(hits) == 5 and all(h.thread == "new" for h in hits)
    finally:
        await reader.close()
        await writer.close()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


async def test_prepare_loads_the_index_reads_nothing_out_and_searches_answer_as_without_it() -> None:
    """PostgreSQL ``prepare_vectors`` (recall calls it while the query is embedded) loads the user's
    in-process index without reading anything out; an index it holds already is left to the search,
    which catches up with another handle's changes itself; and the search answers exactly as a
    handle that never prepared."""
    import numpy as np

    schema = f"amber_prep_{uuid.uuid4().hex[:8]}"
    url = _url(POSTGRES_URL, schema)
    rng = np.random.default_rng(5)

    async def seed(store: amber.Store, thread: str, n: int) -> None:
        msgs = await store.append(amber.SessionKey("t", "u", thread), [NewMessage("user", f"{thread} {i}") for i in range(n)])
        await store.put_vectors("t", "u", "toy", [VectorItem("message", m.id, tuple(map(float, rng.standard_normal(16))))
                                                  for m in msgs])

    reader, writer = await amber.open_store(url), await amber.open_store(url)
    try:
        await seed(writer, "a", 300)
        await reader.prepare_vectors("t", "u", "toy")
        assert reader.vector_index_stats()["t/u/toy"]["message"]["live"] == 300
        await reader.chain_audit("t")
        assert await reader.list_audit("t", operation="search.vector") == []  # nothing was read out
        await seed(writer, "b", 40)
        await writer.delete_session(amber.SessionKey("t", "u", "a"))
        await reader.prepare_vectors("t", "u", "toy")
        assert reader.vector_index_stats()["t/u/toy"]["message"]["live"] == 300  # held: no round trip
        q = tuple(map(float, rng.standard_normal(16)))
        prepared = await reader.search_vectors("t", "u", "toy", q, limit=10)
        assert reader.vector_index_stats()["t/u/toy"]["message"]["live"] == 40  # the search caught up
        fresh = await amber.open_store(url)
        try:
            plain = await fresh.search_vectors("t", "u", "toy", q, limit=10)
        finally:
            await fresh.close()
        assert [(h.id, h.score) for h in prepared] == [(h.id, h.score) for h in plain] and len(plain) == 10
        await reader.prepare_vectors("t", "nobody", "toy")  # no vectors: nothing cached, no error
        assert "t/nobody/toy" not in reader.vector_index_stats()
    finally:
        await reader.close()
        await writer.close()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
