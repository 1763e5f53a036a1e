"""An in-process vector index for stores without a native one (SQLite; PostgreSQL without pgvector).

One :class:`VectorIndex` holds one (tenant, user, model)'s vectors, split by kind (messages, facts)
so a facts-only search never wades through messages. Each kind is searched

* **exactly** (numpy, one matrix-vector product) while it holds fewer than ``ann_threshold`` live
  vectors, and while its approximate index is still being built;
* **approximately** above it, with an HNSW graph (``usearch``; extra ``[vectors]``): the graph
  proposes candidates (it stores int8-quantised vectors: 4x smaller, fastest to build), and every
  candidate is then **re-scored exactly** against the float32 matrix kept beside it, so returned
  scores are true cosines, whatever the graph's own precision.
  Rows added since the graph was built (the "tail") are searched exactly too, and folded into the
  graph in the background once there are enough of them.

Graphs are built in a background daemon thread (one at a time per process), never on the query
path: until a graph is ready, queries take the exact route (correct, slower). Deleting a vector
marks it dead, zeroes its row of the matrix and removes it from the graph at once; when more than a
quarter of a kind's rows are dead, the kind is compacted and its graph rebuilt (``rebuild()`` does
it on demand). Nothing is written to disk: the index lives in the process's memory only, so an
erasure in the database leaves no copy of the vectors behind once every process has refreshed.

Keys are the backend's stable row ids (SQLite ``rowid``): the backend finds what changed by
comparing its rows with :meth:`VectorIndex.live_rows`, then calls :meth:`add` and :meth:`remove`.
"""

from __future__ import annotations

import atexit
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from .._native import load_before_usearch
from ..errors import InvalidInput, MissingDependency

__all__ = ["ANN_THRESHOLD", "Candidate", "VectorIndex", "ann_available"]

ANN_THRESHOLD = 20_000  # live vectors of one kind before an HNSW graph is built (exact is ~5 ms below)
_FOLD_AT = 2_048  # tail rows (added since the graph was built) before they are folded into it
_MAX_ANN_K = 1_024  # larger candidate lists go exact: a graph search that wide costs as much
_BUILD_CHUNK = 2_048  # rows per graph insertion step (a cancelled build stops between steps)
_FOLD_CHUNK = 256  # rows per insertion into a live graph (queries wait for the graph meanwhile)
_DEAD_SHARE = 0.25  # compact a kind when this share of its rows is dead
_KINDS = ("message", "fact")


def _numpy() -> Any:
    try:
        import numpy
    except ImportError as exc:
        raise MissingDependency("numpy", "vectors") from exc
    return numpy


def _dot(matrix: Any, q: Any) -> Any:
    """``matrix @ q`` on this thread. A matrix-vector product goes to BLAS, which splits it over
    its own thread pool; on a busy machine waking those threads costs more than the product
    (measured on 2 loaded cores: 10,000 x 384 took 0.3 ms at p50 but 8-9 ms at p95 with BLAS
    threads, 0.4 / 0.7 ms with einsum's single-threaded loop)."""
    return _numpy().einsum("ij,j->i", matrix, q)


def _usearch() -> Any:
    load_before_usearch()  # ONNX Runtime crashes if it loads after usearch (see amber._native)
    try:
        from usearch.index import Index
    except ImportError as exc:
        raise MissingDependency("usearch", "vectors") from exc
    return Index


def ann_available() -> bool:
    """True when the approximate index library (usearch) is importable."""
    try:
        _usearch()
    except MissingDependency:
        return False
    return True


@dataclass(frozen=True)
class Candidate:
    """One search result: ``score`` is the exact cosine similarity in [-1, 1]."""

    kind: str
    item_id: str
    score: float
    rowid: int


# One graph build at a time per process: building is CPU-bound and the query path needs the rest.
_build_slot = threading.Semaphore(1)
# Indexes that started background graph work, for the exit hook below.
_with_threads: "weakref.WeakSet[VectorIndex]" = weakref.WeakSet()


@atexit.register
def _stop_builds_at_exit() -> None:
    """A graph insertion is native code running without the GIL: left running at interpreter exit it
    outlives the runtime and aborts the process ("terminate called without an active exception",
    exit status 134), e.g. a worker stopped while it indexes a large user. Cancel every build; each
    stops after its current chunk (well under a second)."""
    for index in list(_with_threads):
        index.close()
    for index in list(_with_threads):
        index.wait_ready(30.0)


class _Part:
    """The vectors of one kind: a unit-norm float32 matrix with spare rows, row ids, live flags and,
    above the threshold, an HNSW graph over rows ``[0, ann_n)`` keyed by row position.

    Rows ``[0, n)`` of ``buf`` never move once written (a reader holding an older ``(buf, n)`` stays
    valid); growing copies into a new buffer. Compaction makes a new ``_Part``.
    """

    def __init__(self, dim: int) -> None:
        np = _numpy()
        self.dim = dim
        self.buf = np.zeros((0, dim), dtype=np.float32)
        self.rowids = np.zeros(0, dtype=np.int64)
        self.live = np.zeros(0, dtype=bool)
        self.ids: list[str] = []
        self.n = 0
        self.dead = 0
        self.ann: Any = None
        self.ann_n = 0
        self.ann_lock = threading.Lock()  # usearch calls on one graph are serialised (cheap: ~1 ms)
        self.building = False
        self.cancelled = False

    @property
    def live_count(self) -> int:
        return self.n - self.dead

    @property
    def nbytes(self) -> int:
        graph = int(self.ann.memory_usage) if self.ann is not None else 0
        return int(self.buf.nbytes + self.rowids.nbytes + self.live.nbytes) + 64 * len(self.ids) + graph

    def append(self, rowids: Any, ids: Sequence[str], vectors: Any) -> None:
        np = _numpy()
        n, m = self.n, self.n + len(ids)
        if n == 0 and m > self.buf.shape[0]:  # first fill (a user's first search): exact size, no spare
            self.buf = np.empty((m, self.dim), dtype=np.float32)
            self.rowids = np.empty(m, dtype=np.int64)
            self.live = np.empty(m, dtype=bool)
        elif m > self.buf.shape[0]:
            capacity = max(m + m // 2, 1024)
            buf = np.zeros((capacity, self.dim), dtype=np.float32)
            rids = np.zeros(capacity, dtype=np.int64)
            live = np.zeros(capacity, dtype=bool)
            buf[:n], rids[:n], live[:n] = self.buf[:n], self.rowids[:n], self.live[:n]
            self.buf, self.rowids, self.live = buf, rids, live
        self.buf[n:m] = vectors
        self.rowids[n:m] = rowids
        self.live[n:m] = True
        self.ids.extend(ids)
        self.n = m

    def kill(self, positions: Any) -> None:
        """Mark rows dead, zero their bytes and take them out of the graph."""
        if not len(positions):
            return
        self.live[positions] = False
        self.buf[positions] = 0.0  # erasure: the process keeps no copy of a deleted vector's values
        self.dead += len(positions)
        if self.ann is not None:
            in_graph = positions[positions < self.ann_n]
            if len(in_graph):
                with self.ann_lock:
                    self.ann.remove(in_graph.astype("uint64"))


class VectorIndex:
    """One (tenant, user, model)'s vectors: exact below ``ann_threshold`` live vectors per kind, an
    HNSW graph (built in the background) above it, exact re-scoring of every candidate.

    ``version``, ``rewrites`` and ``high_water`` are the backend's bookkeeping (which database state
    the index reflects); the index itself never reads them.
    """

    def __init__(
        self,
        dim: int,
        *,
        ann_threshold: int | None = ANN_THRESHOLD,
        connectivity: int = 16,
        expansion_add: int = 64,
        expansion_search: int = 96,
        background: bool = True,
    ) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise InvalidInput("vector dimension must be a positive integer")
        self.dim = dim
        # None: exact only. Without usearch installed the index stays exact (correct, slower).
        self.ann_threshold = ann_threshold if ann_threshold is not None and ann_available() else None
        self.connectivity = connectivity
        self.expansion_add = expansion_add
        self.expansion_search = expansion_search
        self.background = background
        self.version = 0
        self.rewrites = 0
        self.high_water = 0
        self._parts = {kind: _Part(dim) for kind in _KINDS}
        self._lock = threading.RLock()  # guards every change of the parts' bookkeeping
        self._threads: list[threading.Thread] = []

    # -- state ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return sum(p.live_count for p in self._parts.values())

    def count(self, kinds: Sequence[str] = _KINDS) -> int:
        """Live vectors of ``kinds``."""
        return sum(p.live_count for k, p in self._parts.items() if k in kinds)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self._parts.values())

    def stats(self) -> dict[str, Any]:
        """Per kind: live and dead rows, and whether a graph is used (``ann``) or being built."""
        return {kind: {"live": p.live_count, "dead": p.dead, "ann": p.ann is not None,
                       "ann_rows": p.ann_n if p.ann is not None else 0, "building": p.building}
                for kind, p in self._parts.items()}

    def live_rows(self) -> dict[int, tuple[str, str]]:
        """``rowid -> (kind, item_id)`` of every live vector (for the backend's change detection)."""
        out: dict[int, tuple[str, str]] = {}
        with self._lock:
            for kind, p in self._parts.items():
                idx = _numpy().flatnonzero(p.live[: p.n])
                rids = p.rowids[idx].tolist()
                out.update((r, (kind, p.ids[i])) for r, i in zip(rids, idx.tolist()))
        return out

    # -- changes ----------------------------------------------------------------------------------
    def add(self, rowids: Sequence[int], kinds: Sequence[str], item_ids: Sequence[str], vectors: Any) -> None:
        """Append vectors (any norm; stored unit-norm). ``rowids`` must be new to the index."""
        np = _numpy()
        if not len(rowids):
            return
        mat = np.asarray(vectors, dtype=np.float32).reshape(len(rowids), -1)
        if mat.shape[1] != self.dim:
            raise InvalidInput(f"vectors have {mat.shape[1]} dimensions; this index holds {self.dim}")
        norms = np.linalg.norm(mat, axis=1)
        norms[norms == 0] = 1.0  # each kind's rows are normalised in their own fresh copy below
        rids = np.asarray(rowids, dtype=np.int64)
        kind_arr = np.asarray(kinds)
        bad = set(kinds) - set(_KINDS)
        if bad or len(kinds) != len(rids) or len(item_ids) != len(rids):
            raise InvalidInput(f"need one kind ('message' or 'fact') and one item id per vector, got {sorted(bad)}")
        with self._lock:
            for kind, p in self._parts.items():
                sel = np.flatnonzero(kind_arr == kind)
                if len(sel):
                    part = mat[sel] if len(sel) < len(rids) else mat.copy()
                    part /= norms[sel, None]
                    p.append(rids[sel], [item_ids[i] for i in sel.tolist()], part)
            for kind in _KINDS:
                self._maintain(kind)

    def remove(self, rowids: Iterable[int]) -> int:
        """Remove vectors by row id (unknown ids are ignored); returns how many were live."""
        np = _numpy()
        wanted = np.fromiter(rowids, dtype=np.int64)
        if not len(wanted):
            return 0
        removed = 0
        with self._lock:
            for kind, p in self._parts.items():
                hit = np.flatnonzero(np.isin(p.rowids[: p.n], wanted) & p.live[: p.n])
                p.kill(hit)
                removed += len(hit)
                self._maintain(kind)
        return removed

    def rebuild(self) -> None:
        """Compact every kind (drop dead rows) and rebuild its graph (in the background)."""
        with self._lock:
            for kind in _KINDS:
                self._compact(kind)
                self._maintain(kind)

    def close(self, *, wait: float | None = 0.0) -> bool:
        """Stop background builds (the index stays searchable, exactly). ``wait``: seconds to wait
        for them to stop (each stops after its current chunk; None: as long as it takes). True if
        none is running any more."""
        for p in self._parts.values():
            p.cancelled = True
        return self.wait_ready(wait) if wait != 0.0 else not any(t.is_alive() for t in self._threads)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until background graph work has finished (benchmarks and tests). True if it did."""
        for t in list(self._threads):
            t.join(timeout)
        return not any(t.is_alive() for t in self._threads)

    # -- search -----------------------------------------------------------------------------------
    def search(self, query: Any, k: int, *, kinds: Sequence[str] = _KINDS) -> list[Candidate]:
        """The ``k`` best live vectors of ``kinds`` by exact cosine, best first (ties: older first)."""
        np = _numpy()
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.size != self.dim:
            raise InvalidInput(f"query has {q.size} dimensions; this index holds {self.dim}")
        norm = float(np.linalg.norm(q))
        if norm:
            q = q / norm
        found: list[tuple[float, int, str, str]] = []
        for kind in _KINDS:
            if kind not in kinds:
                continue
            with self._lock:
                p = self._parts[kind]
                buf, rowids, live, ids, n = p.buf, p.rowids, p.live, p.ids, p.n
                ann, ann_n = p.ann, p.ann_n
            if n == 0 or k <= 0:
                continue
            if ann is not None and k <= _MAX_ANN_K:
                want = min(ann_n, max(2 * k, k + 32))
                with p.ann_lock:
                    ann.expansion_search = max(self.expansion_search, want)
                    keys = ann.search(q, want, threads=1).keys.astype(np.int64)
                keys = keys[keys < n]
                cand = np.concatenate([keys, np.arange(ann_n, n, dtype=np.int64)])
                cand = cand[live[cand]]
                scores = _dot(buf[cand], q)
            else:
                scores = _dot(buf[:n], q)
                scores[~live[:n]] = -np.inf
                cand = np.arange(n, dtype=np.int64)
            if len(cand) > k:
                top = np.argpartition(-scores, k - 1)[:k]
                cand, scores = cand[top], scores[top]
            keep = np.isfinite(scores)
            for pos, s in zip(cand[keep].tolist(), scores[keep].tolist()):
                found.append((-s, int(rowids[pos]), kind, ids[pos]))
        found.sort()
        return [Candidate(kind, item, -neg, rid) for neg, rid, kind, item in found[:k]]

    # -- background graph work --------------------------------------------------------------------
    def _maintain(self, kind: str) -> None:
        """Called with ``_lock`` held: compact, build or fold as the kind's size asks."""
        p = self._parts[kind]
        if p.n >= 1024 and p.dead > _DEAD_SHARE * p.n:
            self._compact(kind)
            p = self._parts[kind]
        if self.ann_threshold is None or p.building or p.cancelled:
            return
        if p.ann is None and p.live_count >= self.ann_threshold:
            self._start(p, self._build)
        elif p.ann is not None and p.n - p.ann_n >= _FOLD_AT:
            self._start(p, self._fold)

    def _compact(self, kind: str) -> None:
        np = _numpy()
        old = self._parts[kind]
        if not old.dead:
            return
        old.cancelled = True
        keep = np.flatnonzero(old.live[: old.n])
        new = _Part(self.dim)
        new.append(old.rowids[keep], [old.ids[i] for i in keep.tolist()], old.buf[keep])
        self._parts[kind] = new

    def _start(self, p: _Part, work: Any) -> None:
        p.building = True
        self._threads = [t for t in self._threads if t.is_alive()]
        if not self.background:
            self._run(p, work)
            return
        t = threading.Thread(target=self._run, args=(p, work), name="amber-vector-index", daemon=True)
        self._threads.append(t)
        _with_threads.add(self)
        t.start()

    def _run(self, p: _Part, work: Any) -> None:
        try:
            with _build_slot:
                work(p)
        finally:
            with self._lock:
                p.building = False
                if not p.cancelled and p is self._parts.get(self._kind_of(p)):
                    self._maintain(self._kind_of(p))  # rows may have arrived while it worked

    def _kind_of(self, p: _Part) -> str:
        return next((k for k, v in self._parts.items() if v is p), "")

    def _build(self, p: _Part) -> None:
        np = _numpy()
        Index = _usearch()
        with self._lock:
            buf, live, n = p.buf, p.live, p.n
        # int8 graph: 4x smaller and the fastest to build here; candidates are re-scored in float32.
        graph = Index(ndim=self.dim, metric="cos", dtype="i8", connectivity=self.connectivity,
                      expansion_add=self.expansion_add, expansion_search=self.expansion_search)
        for start in range(0, n, _BUILD_CHUNK):
            if p.cancelled:
                return
            pos = np.arange(start, min(n, start + _BUILD_CHUNK), dtype=np.int64)
            pos = pos[live[pos]]
            if len(pos):
                graph.add(pos.astype(np.uint64), buf[pos], threads=1)
        with self._lock:
            if p.cancelled:
                return
            dead = np.flatnonzero(~p.live[:n])  # deleted while the graph was being built
            with p.ann_lock:
                if len(dead):
                    graph.remove(dead.astype(np.uint64))
                p.ann, p.ann_n = graph, n

    def _fold(self, p: _Part) -> None:
        """Insert the tail rows into the graph, a chunk at a time (queries interleave)."""
        np = _numpy()
        with self._lock:
            buf, live, start, n = p.buf, p.live, p.ann_n, p.n
        for lo in range(start, n, _FOLD_CHUNK):
            if p.cancelled:
                return
            hi = min(n, lo + _FOLD_CHUNK)
            pos = np.arange(lo, hi, dtype=np.int64)
            pos = pos[live[pos]]
            with p.ann_lock:
                if len(pos):
                    p.ann.add(pos.astype(np.uint64), buf[pos], threads=1)
                p.ann_n = hi
            # A row killed while it was being inserted saw ann_n below it and left the graph alone.
            dead = pos[~p.live[pos]]
            if len(dead):
                with p.ann_lock:
                    p.ann.remove(dead.astype(np.uint64))
