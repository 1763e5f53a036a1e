"""Recall@10 and latency of the in-process vector index (:mod:`amber.store.vector_index`) against
exact search, on synthetic vectors (labelled in the output).

    python -m amber.bench.ann --n 100000 --vectors clustered
    python -m amber.bench.ann --n 20000 --vectors random      # the worst case for a graph index

``clustered``: seeded unit vectors around 1,000 random centres (neighbourhoods, as embeddings have);
``random``: uniform on the sphere (every point nearly equidistant from every other; no embedding
model produces this). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Sequence

from ..store.vector_index import VectorIndex
from .recall import _ms
from .scale import _clustered_unit_vectors, _numpy, _random_unit_vectors

__all__ = ["run_ann_bench", "main"]


def run_ann_bench(n: int, *, dim: int = 384, vectors: str = "clustered", queries: int = 200, k: int = 10,
                  seed: int = 1, threshold: int = 20_000) -> dict[str, Any]:
    np = _numpy()
    make = _clustered_unit_vectors if vectors == "clustered" else _random_unit_vectors
    x = np.concatenate([make(seed, s, min(10_000, n - s), dim) for s in range(0, n, 10_000)])
    qs = make(seed, n + 1_000_000, queries, dim)  # same distribution (same centres), rows not stored
    index = VectorIndex(dim, ann_threshold=threshold, background=False)
    a = time.perf_counter()
    index.add(list(range(n)), ["message"] * n, [str(i) for i in range(n)], x)
    build_s = time.perf_counter() - a
    found, ann_t, exact_t = 0, [], []
    for q in qs:
        a = time.perf_counter()
        got = index.search(q, k)
        ann_t.append(time.perf_counter() - a)
        a = time.perf_counter()
        s = x @ q
        top = np.argpartition(-s, k)[:k]
        exact_t.append(time.perf_counter() - a)
        found += len({c.rowid for c in got} & set(top.tolist()))
    return {"benchmark": "ann", "vectors": f"{vectors} synthetic unit vectors (seeded), not embeddings", "n": n,
            "dim": dim, "route": "ann" if index.stats()["message"]["ann"] else "exact", "build_s": round(build_s, 1),
            "recall_at_10": round(found / (k * queries), 4), "index_search_ms": _ms(ann_t),
            "exact_numpy_ms": _ms(exact_t), "queries": queries}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m amber.bench.ann", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--vectors", choices=["clustered", "random"], default="clustered")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--threshold", type=int, default=20_000, help="exact below this many vectors")
    args = parser.parse_args(argv)
    doc = run_ann_bench(args.n, dim=args.dim, vectors=args.vectors, queries=args.queries, threshold=args.threshold)
    print(f"{doc['n']} {args.vectors} vectors: recall@10 {doc['recall_at_10']} ({doc['route']}), index p50 "
          f"{doc['index_search_ms']['p50']} ms vs exact numpy p50 {doc['exact_numpy_ms']['p50']} ms; "
          f"build {doc['build_s']} s", file=sys.stderr)
    print(json.dumps(doc, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
