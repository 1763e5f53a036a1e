"""The in-process vector index (amber.store.vector_index) on its own and inside the SQLite store.

Vectors are small seeded random or clustered numpy vectors; the SQLite tests use real files and a
low ``vector_ann_threshold`` so the HNSW graph (usearch) is really built and searched.
"""

from __future__ import annotations

import numpy as np
import pytest

import amber
from amber.errors import InvalidInput, InvalidStoreURL
from amber.keys import SessionKey
from amber.records import NewMessage, VectorItem
from amber.store.vector_index import VectorIndex, ann_available

pytestmark = pytest.mark.skipif(not ann_available(), reason="usearch not installed (extra [vectors])")


def _clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(4, n // 50), dim)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _exact_top(x: np.ndarray, q: np.ndarray, k: int) -> list[int]:
    s = x @ (q / np.linalg.norm(q))
    return sorted(range(len(x)), key=lambda i: (-s[i], i))[:k]


def test_exact_below_threshold_matches_numpy_with_stable_ties() -> None:
    x = _clustered(500, 16)
    x[10] = x[3]  # a tie: the older row (lower rowid) comes first
    idx = VectorIndex(16, ann_threshold=10_000, background=False)
    idx.add(list(range(500)), ["message"] * 500, [f"m{i}" for i in range(500)], x)
    got = idx.search(x[3], 10)
    assert [c.rowid for c in got] == _exact_top(x, x[3], 10)
    assert got[0].rowid == 3 and got[1].rowid == 10 and got[0].score == pytest.approx(1.0, abs=1e-5)
    assert not idx.stats()["message"]["ann"]


def test_ann_recall_and_exact_scores_above_threshold() -> None:
    x = _clustered(4000, 32, seed=1)
    idx = VectorIndex(32, ann_threshold=1000, background=False)
    idx.add(list(range(4000)), ["message"] * 4000, [f"m{i}" for i in range(4000)], x)
    assert idx.stats()["message"]["ann"]
    queries = _clustered(50, 32, seed=2)
    found = 0
    for q in queries:
        got = idx.search(q, 10)
        found += len({c.rowid for c in got} & set(_exact_top(x, q, 10)))
        for c in got:  # scores are exact cosines, not the int8 graph's distances
            assert c.score == pytest.approx(float(x[c.rowid] @ (q / np.linalg.norm(q))), abs=1e-5)
    assert found / (10 * len(queries)) >= 0.95


def test_kinds_are_searched_separately() -> None:
    x = _clustered(3000, 16, seed=3)
    kinds = ["fact" if i % 10 == 0 else "message" for i in range(3000)]
    idx = VectorIndex(16, ann_threshold=1000, background=False)
    idx.add(list(range(3000)), kinds, [str(i) for i in range(3000)], x)
    facts = idx.search(x[5], 20, kinds=("fact",))
    assert len(facts) == 20 and all(c.kind == "fact" and c.rowid % 10 == 0 for c in facts)
    assert idx.count(("fact",)) == 300 and idx.count() == 3000


def test_removed_vectors_leave_results_graph_and_matrix() -> None:
    x = _clustered(3000, 16, seed=4)
    idx = VectorIndex(16, ann_threshold=1000, background=False)
    idx.add(list(range(3000)), ["message"] * 3000, [str(i) for i in range(3000)], x)
    target = idx.search(x[42], 1)[0]
    assert target.rowid == 42
    assert idx.remove([42, 99_999]) == 1
    assert all(c.rowid != 42 for c in idx.search(x[42], 50))
    part = idx._parts["message"]
    assert not part.ann.contains(42) and not part.buf[42].any()  # graph entry and bytes gone
    assert 42 not in idx.live_rows() and len(idx) == 2999


def test_heavy_deletion_compacts_and_rebuilds() -> None:
    x = _clustered(3000, 16, seed=5)
    idx = VectorIndex(16, ann_threshold=1000, background=False)
    idx.add(list(range(3000)), ["message"] * 3000, [str(i) for i in range(3000)], x)
    idx.remove(range(0, 3000, 2))  # half dead: compaction, then a fresh graph over the live half
    st = idx.stats()["message"]
    assert st == {"live": 1500, "dead": 0, "ann": True, "ann_rows": 1500, "building": False}
    got = idx.search(x[7], 10)
    assert got[0].rowid == 7 and all(c.rowid % 2 == 1 for c in got)


def test_rows_added_after_the_graph_are_found_then_folded_in() -> None:
    x = _clustered(6000, 16, seed=6)
    idx = VectorIndex(16, ann_threshold=1000, background=False)
    idx.add(list(range(2000)), ["message"] * 2000, [str(i) for i in range(2000)], x[:2000])
    idx.add([2000], ["message"], ["2000"], x[2000:2001])  # the tail: searched exactly
    assert idx.search(x[2000], 1)[0].rowid == 2000
    idx.add(list(range(2001, 6000)), ["message"] * 3999, [str(i) for i in range(2001, 6000)], x[2001:])
    assert idx.stats()["message"]["ann_rows"] == 6000  # folded into the graph
    assert idx.search(x[5999], 1)[0].rowid == 5999


def test_background_build_serves_exact_meanwhile_and_finishes() -> None:
    x = _clustered(3000, 16, seed=7)
    idx = VectorIndex(16, ann_threshold=1000)
    idx.add(list(range(3000)), ["message"] * 3000, [str(i) for i in range(3000)], x)
    assert idx.search(x[11], 1)[0].rowid == 11  # whether or not the graph is ready yet
    assert idx.wait_ready(timeout=300)
    assert idx.stats()["message"]["ann"] and idx.search(x[11], 1)[0].rowid == 11


def test_bad_input_is_refused() -> None:
    idx = VectorIndex(4, background=False)
    with pytest.raises(InvalidInput):
        idx.add([1], ["summary"], ["x"], np.ones((1, 4)))
    with pytest.raises(InvalidInput):
        idx.add([1], ["message"], ["x"], np.ones((1, 3)))
    with pytest.raises(InvalidInput):
        idx.search(np.ones(3), 5)
    with pytest.raises(InvalidInput):
        VectorIndex(0)
    assert len(idx) == 0


# -- inside the SQLite store ----------------------------------------------------------------------

async def _seed(store: amber.Store, n: int, vecs: np.ndarray, thread: str = "t") -> list[str]:
    ids: list[str] = []
    for start in range(0, n, 500):
        msgs = await store.append(SessionKey("t", "u", thread),
                                  [NewMessage("user", f"m{i}") for i in range(start, min(n, start + 500))])
        await store.put_vectors("t", "u", "toy", [
            VectorItem("message", m.id, tuple(map(float, vecs[start + j]))) for j, m in enumerate(msgs)])
        ids.extend(m.id for m in msgs)
    return ids


async def test_sqlite_uses_the_graph_and_erasure_reaches_it(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'v.db'}?vector_ann_threshold=1000"
    x = _clustered(2500, 16, seed=8)
    async with await amber.open_store(url) as reader, await amber.open_store(url) as writer:
        ids = await _seed(writer, 2500, x)
        hits = await reader.search_vectors("t", "u", "toy", tuple(map(float, x[7])), limit=5)
        assert hits[0].id == ids[7] and 0.0 <= min(h.score for h in hits) <= max(h.score for h in hits) <= 1.0
        assert await reader.wait_vector_indexes(timeout=300)
        assert reader.vector_index_stats()["t/u/toy"]["message"]["ann"]
        hits = await reader.search_vectors("t", "u", "toy", tuple(map(float, x[7])), limit=5)
        assert hits[0].id == ids[7] and hits[0].score == pytest.approx(1.0, abs=1e-5)
        # Another handle (as another process would) deletes the session: the vectors leave the index.
        await writer.delete_session(SessionKey("t", "u", "t"))
        assert await reader.search_vectors("t", "u", "toy", tuple(map(float, x[7])), limit=5) == []
        index = reader._vector_cache[("t", "u", "toy")] if ("t", "u", "toy") in reader._vector_cache else None
        assert index is None or len(index) == 0


async def test_sqlite_other_handles_adds_and_reembeds_reach_the_graph(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'v.db'}?vector_ann_threshold=1000"
    x = _clustered(2600, 16, seed=9)
    async with await amber.open_store(url) as reader, await amber.open_store(url) as writer:
        ids = await _seed(writer, 2000, x)
        await reader.search_vectors("t", "u", "toy", tuple(map(float, x[0])))
        assert await reader.wait_vector_indexes(timeout=300)
        index = reader._vector_cache[("t", "u", "toy")]
        more = await _seed(writer, 600, x[2000:], thread="t2")  # appended: incremental, same index
        assert (await reader.search_vectors("t", "u", "toy", tuple(map(float, x[2300])), limit=1))[0].id == more[300]
        # Re-embedding replaces a vector: the old one is never ranked again.
        await writer.put_vectors("t", "u", "toy", [VectorItem("message", ids[5], tuple(map(float, x[2599])))])
        hits = await reader.search_vectors("t", "u", "toy", tuple(map(float, x[5])), limit=3)
        assert hits[0].id != ids[5] and not any(h.id == ids[5] and h.score > 0.999 for h in hits)
        top = await reader.search_vectors("t", "u", "toy", tuple(map(float, x[2599])), limit=2)
        assert {h.id for h in top} == {ids[5], more[599]}
        assert reader._vector_cache[("t", "u", "toy")] is index and len(index) == 2600  # never reloaded


async def test_sqlite_ann_threshold_option(tmp_path) -> None:
    async with await amber.open_store(f"sqlite:///{tmp_path / 'a.db'}?vector_ann_threshold=off") as store:
        assert store._vector_ann_threshold is None
    with pytest.raises(InvalidStoreURL):
        await amber.open_store(f"sqlite:///{tmp_path / 'b.db'}?vector_ann_threshold=-1")


# -- the benchmarks and the query embedding --------------------------------------------------------

def test_ann_bench_reports_recall_against_exact() -> None:
    from amber.bench.ann import run_ann_bench

    doc = run_ann_bench(3000, dim=32, queries=20, threshold=1000)
    assert doc["route"] == "ann" and doc["recall_at_10"] >= 0.95 and "not embeddings" in doc["vectors"]


def test_clustered_scale_vectors_are_unit_length_reproducible_and_clustered() -> None:
    from amber.bench.scale import _clustered_unit_vectors

    a, b = _clustered_unit_vectors(1, 0, 2000, 16), _clustered_unit_vectors(1, 0, 2000, 16)
    assert np.array_equal(a, b) and np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    nearest = np.sort(a @ a.T, axis=1)[:, -2]  # each row's closest other row shares its centre
    assert float(np.median(nearest)) > 0.5


_EXIT_MID_BUILD = """
import sys, numpy as np
from amber.store.vector_index import VectorIndex
x = np.random.default_rng(0).standard_normal((30000, 384), dtype=np.float32)
idx = VectorIndex(384, ann_threshold=1000)
idx.add(list(range(len(x))), ["message"] * len(x), [str(i) for i in range(len(x))], x)
assert idx.stats()["message"]["building"]
# Objects for the interpreter to tear down at exit, so the build is still inserting when it does
# (as with a real worker's heap).
heap = [{{"row": i}} for i in range(2_000_000)]
{ending}
"""


@pytest.mark.parametrize("ending", ["pass", "assert idx.close(wait=None) and not idx.stats()['message']['building']"])
def test_a_process_ending_mid_build_exits_cleanly(ending: str) -> None:
    """A graph build is native code running without the GIL. A process that ended while one ran (a
    worker stopped while indexing a large user) aborted: "terminate called without an active
    exception", exit status 134. Exiting, or closing the index, now stops the build first."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _EXIT_MID_BUILD.format(ending=ending)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "terminate called" not in done.stderr


async def test_minilm_small_calls_use_one_thread_and_give_the_same_vectors() -> None:
    torch = pytest.importorskip("torch")
    from amber.embed import SentenceTransformerEmbedder

    # torch's route (ONNX Runtime never touches torch's thread setting; tests/test_embed.py covers it)
    fast = SentenceTransformerEmbedder(runtime="torch")
    plain = SentenceTransformerEmbedder(runtime="torch", small_call_threads=None)
    before = torch.get_num_threads()
    a = (await fast.embed(["where is my claim C-7788?"]))[0]
    assert torch.get_num_threads() == before  # restored after the call
    b = (await plain.embed(["where is my claim C-7788?"]))[0]
    assert np.allclose(a, b, atol=1e-5)


# -- PostgreSQL without pgvector: the same index, kept in step through the user's vector stamp ------

async def _seed_pg(store: amber.Store, tenant: str, n: int, vecs: np.ndarray, thread: str = "t") -> list[str]:
    ids: list[str] = []
    for start in range(0, n, 500):
        msgs = await store.append(SessionKey(tenant, "u", thread),
                                  [NewMessage("user", f"m{i}") for i in range(start, min(n, start + 500))])
        await store.put_vectors(tenant, "u", "toy", [
            VectorItem("message", m.id, tuple(map(float, vecs[start + j]))) for j, m in enumerate(msgs)])
        ids.extend(m.id for m in msgs)
    return ids


@pytest.mark.postgres
async def test_postgres_uses_the_graph_and_other_handles_changes_reach_it() -> None:
    """Two handles stand for two processes: the reader's graph-backed index takes the writer's
    appends incrementally (same index object, stamp high-water mark), and its re-embeddings and
    erasures through the key comparison."""
    import uuid

    from conftest import POSTGRES_URL

    url = f"{POSTGRES_URL}?schema=amber_conformance&vector_ann_threshold=1000"
    tenant = f"t-{uuid.uuid4().hex[:12]}"
    x = _clustered(2600, 16, seed=10)
    async with await amber.open_store(url) as reader, await amber.open_store(url) as writer:
        try:
            ids = await _seed_pg(writer, tenant, 2000, x)
            hits = await reader.search_vectors(tenant, "u", "toy", tuple(map(float, x[7])), limit=5)
            assert hits[0].id == ids[7] and 0.0 <= min(h.score for h in hits) <= max(h.score for h in hits) <= 1.0
            assert await reader.wait_vector_indexes(timeout=300)
            assert reader.vector_index_stats()[f"{tenant}/u/toy"]["message"]["ann"]
            entry = reader._vector_cache[(tenant, "u", "toy", 16)]
            more = await _seed_pg(writer, tenant, 600, x[2000:], thread="t2")  # appended: read past the mark
            assert (await reader.search_vectors(tenant, "u", "toy", tuple(map(float, x[2300])), limit=1))[0].id == more[300]
            assert reader._vector_cache[(tenant, "u", "toy", 16)] is entry and len(entry.index) == 2600
            # Re-embedding replaces a vector: the old one is never ranked again.
            await writer.put_vectors(tenant, "u", "toy", [VectorItem("message", ids[5], tuple(map(float, x[2599])))])
            hits = await reader.search_vectors(tenant, "u", "toy", tuple(map(float, x[5])), limit=3)
            assert not any(h.id == ids[5] and h.score > 0.999 for h in hits)
            top = await reader.search_vectors(tenant, "u", "toy", tuple(map(float, x[2599])), limit=2)
            assert {h.id for h in top} == {ids[5], more[599]}
            assert reader._vector_cache[(tenant, "u", "toy", 16)] is entry and len(entry.index) == 2600  # never reloaded
            assert reader.vector_index_stats()[f"{tenant}/u/toy"]["message"]["ann"]
            # Another handle deletes the first session: its vectors leave the index.
            await writer.delete_session(SessionKey(tenant, "u", "t"))
            hits = await reader.search_vectors(tenant, "u", "toy", tuple(map(float, x[7])), limit=50)
            assert hits and not set(ids) & {h.id for h in hits}
            assert len(entry.index) == 600
        finally:
            await writer.delete_user(tenant, "u")


@pytest.mark.postgres
async def test_postgres_ann_threshold_option() -> None:
    from conftest import POSTGRES_URL

    store = await amber.open_store(f"{POSTGRES_URL}?schema=amber_conformance&vector_ann_threshold=off")
    try:
        assert store._vector_ann_threshold is None
    finally:
        await store.close()
    with pytest.raises(InvalidInput):
        await amber.open_store(f"{POSTGRES_URL}?schema=amber_conformance&vector_ann_threshold=-1")
