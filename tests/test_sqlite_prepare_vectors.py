"""SQLite ``prepare_vectors``: recall loads a user's in-process vector index while the query is
being embedded. Real SQLite files, two handles (as two processes would use them)."""

from __future__ import annotations

import numpy as np

import amber
from amber import SessionKey
from amber.embed import HashingEmbedder
from amber.recall import Recall
from amber.records import NewMessage, VectorItem


async def _seed(store: amber.Store, user: str, thread: str, start: int, n: int, model: str, dim: int) -> list[str]:
    rng = np.random.default_rng([start, n])
    msgs = await store.append(SessionKey("t", user, thread),
                              [NewMessage("user", f"note {i} about the garden") for i in range(start, start + n)])
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    await store.put_vectors("t", user, model, [VectorItem("message", m.id, tuple(map(float, v)))
                                                for m, v in zip(msgs, vecs)])
    return [m.id for m in msgs]


async def test_prepare_loads_the_index_reads_nothing_out_and_searches_answer_as_without_it(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    q = tuple(map(float, np.random.default_rng(3).standard_normal(16)))
    async with await amber.open_store(url) as reader, await amber.open_store(url) as writer:
        await _seed(writer, "u", "a", 0, 300, "toy", 16)
        await reader.prepare_vectors("t", "u", "toy")
        assert reader.vector_index_stats()["t/u/toy"]["message"]["live"] == 300
        await reader.chain_audit("t")
        assert await reader.list_audit("t", operation="search.vector") == []  # nothing was read out
        # Changes by another handle after the index was prepared reach the search that follows.
        await _seed(writer, "u", "b", 300, 40, "toy", 16)
        await writer.delete_session(SessionKey("t", "u", "a"))
        await reader.prepare_vectors("t", "u", "toy")
        assert reader.vector_index_stats()["t/u/toy"]["message"]["live"] == 40
        prepared = await reader.search_vectors("t", "u", "toy", q, limit=10)
        async with await amber.open_store(url) as fresh:  # never prepared: loads at the search
            plain = await fresh.search_vectors("t", "u", "toy", q, limit=10)
        assert [(h.id, h.score) for h in prepared] == [(h.id, h.score) for h in plain] and len(plain) == 10
        await reader.prepare_vectors("t", "nobody", "toy")  # no vectors: nothing cached, no error
        assert "t/nobody/toy" not in reader.vector_index_stats()


async def test_recall_prepares_the_users_index_and_answers_the_same(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    emb = HashingEmbedder(16)
    async with await amber.open_store(url) as writer:
        await _seed(writer, "v", "a", 0, 200, emb.name, 16)
    async with await amber.open_store(url) as first, await amber.open_store(url) as second:
        calls: list[tuple[str, str, str]] = []
        prepare = first.prepare_vectors

        async def counted(tenant: str, user: str, model: str) -> None:
            calls.append((tenant, user, model))
            await prepare(tenant, user, model)

        first.prepare_vectors = counted  # type: ignore[method-assign]
        hits = await Recall(first, embedder=emb).search("t", "v", "the garden note", limit=5)
        assert calls == [("t", "v", emb.name)] and len(hits) == 5
        del first.prepare_vectors
        assert first.vector_index_stats()["t/v/" + emb.name]["message"]["live"] == 200
        again = await Recall(second, embedder=emb).search("t", "v", "the garden note", limit=5, now=None)
        assert [h.id for h in hits] == [h.id for h in again]
