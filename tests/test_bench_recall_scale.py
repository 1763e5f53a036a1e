"""The scale benchmark (``python -m amber.bench.scale``) at a tiny size: it loads what it says into
a real SQLite file, times queries that include the query's embedding, labels its vectors honestly,
and cleans up after itself. The hashing embedder stands in for the model (deterministic, no download)."""

from __future__ import annotations

import json

import pytest

from amber import SessionKey
from amber.bench import scale
from amber.bench.scale import _random_unit_vectors, run_scale_bench
from amber.embed import HashingEmbedder
from amber.errors import InvalidInput
from amber.store import open_store


async def test_scale_run_on_sqlite_loads_queries_and_labels_its_vectors(tmp_path):
    async with await open_store(f"sqlite:///{tmp_path / 's.db'}") as store:
        doc = await run_scale_bench(store, HashingEmbedder(32), memories=300, users=3, fact_share=0.1,
                                    queries=12, tenant="scale-t")
        assert doc["memories"] == 300 and doc["users"] == 3
        assert doc["per_user"] == {"messages": 90, "facts": 10}
        assert sorted(await store.list_users("scale-t")) == ["u00000", "u00001", "u00002"]
        facts = await store.list_facts("scale-t", "u00001")
        assert len(facts) == 10
        assert len(await store.read_window(SessionKey("scale-t", "u00002", "t0000"))) == 90
    assert doc["query_ms"]["n"] == 12 and doc["query_ms"]["p95"] >= doc["query_ms"]["p50"] > 0
    assert doc["embed_ms"]["n"] == 12
    assert doc["mean_hits"] > 0
    assert "NOT embeddings" in doc["vectors"]["source"]
    assert doc["audit_trail"] is True


async def test_scale_run_with_real_embeddings_caches_them(tmp_path):
    async with await open_store("memory://") as store:
        first = await run_scale_bench(store, HashingEmbedder(16), memories=40, queries=3, vectors="embed",
                                      cache_dir=tmp_path, cleanup=True)
        again = await run_scale_bench(store, HashingEmbedder(16), memories=40, queries=3, vectors="embed",
                                      cache_dir=tmp_path, cleanup=True)
        assert await store.list_users(first["tenant"]) == []  # cleanup deleted the users
    assert first["vectors"]["cache_reused"] is False and again["vectors"]["cache_reused"] is True
    assert first["vectors"]["cache"] == again["vectors"]["cache"]


def test_random_vectors_are_unit_length_and_reproducible_per_row_block():
    a = _random_unit_vectors(1, 1000, 4, 8)
    b = _random_unit_vectors(1, 1000, 4, 8)
    c = _random_unit_vectors(1, 2000, 4, 8)
    assert (a == b).all() and not (a == c).all()
    assert abs(float((a[0] ** 2).sum()) - 1.0) < 1e-5


async def test_bad_parameters_are_clear_errors():
    async with await open_store("memory://") as store:
        with pytest.raises(InvalidInput, match="needs an embedder"):
            await run_scale_bench(store, None, memories=10)
        with pytest.raises(InvalidInput, match="at least one memory per user"):
            await run_scale_bench(store, HashingEmbedder(8), memories=2, users=3)


def test_command_prints_json_last(tmp_path, capsys):
    assert scale.main(["--memories", "60", "--users", "2", "--queries", "4", "--embedder", "hash:16"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    doc = json.loads(out[-1])
    assert doc["benchmark"] == "scale" and doc["store"].startswith("sqlite:")
    assert "query p50" in out[0]
