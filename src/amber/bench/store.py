"""``amber bench store``: durable-append latency and throughput, window reads, and the raw fsync
latency of the same disk, so the distance to the physical limit shows.

It works for every store URL (``memory://``, ``sqlite:///…``, ``postgresql://…``, any of them with
``?cache=redis://…``). It writes under a fresh random tenant (``bench-<hex>``) and deletes that
tenant's users again at the end (an audited deletion), so it can be pointed at a real store.

Numbers are what this machine did in this run; nothing here is a pass/fail threshold.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import tempfile
import time
import uuid
from typing import Any, Callable

from ..governance.audit import reads_not_audited
from ..keys import SessionKey
from ..records import NewMessage, VectorItem
from ..store import open_store, redact_url

__all__ = ["run_store_bench", "bench_store"]

Progress = Callable[[str], None]


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _summary(seconds: list[float]) -> dict[str, Any]:
    ms = [s * 1000 for s in seconds]
    return {"n": len(ms), "p50_ms": round(_pct(ms, 0.50), 4), "p95_ms": round(_pct(ms, 0.95), 4),
            "p99_ms": round(_pct(ms, 0.99), 4)}


class _FsyncProbe:
    """fsync after a 4 KiB append, as a database commit does, in ``directory``."""

    def __init__(self, directory: str) -> None:
        self._fd, self._path = tempfile.mkstemp(prefix=".amber-bench-fsync-", dir=directory)
        self._block = os.urandom(4096)

    def sample(self) -> float:
        os.write(self._fd, self._block)
        t = time.perf_counter()
        os.fsync(self._fd)
        return time.perf_counter() - t

    def close(self) -> None:
        os.close(self._fd)
        os.unlink(self._path)


def _layer_with(store: Any, method: str) -> Any:
    """The store, or the first store it wraps, that has ``method`` (e.g. PostgreSQL's ``analyze``)."""
    layer = store
    while layer is not None and not hasattr(layer, method):
        layer = getattr(layer, "inner", None)
    return layer


def _fsync_latency(directory: str, n: int) -> list[float]:
    probe = _FsyncProbe(directory)
    try:
        return [probe.sample() for _ in range(n)]
    finally:
        probe.close()


def _msg(tag: str) -> NewMessage:
    return NewMessage("user", f"benchmark message {tag}: the customer gave policy number P-{len(tag):05d} for the claim",
                      idempotency_key=tag)


async def _throughput(store: Any, tenant: str, tasks: int, per_task: int, *, one_session: bool) -> float:
    run = uuid.uuid4().hex[:6]

    async def writer(t: int) -> None:
        key = SessionKey(tenant, "tp", f"{run}-s{0 if one_session else t}")
        for i in range(per_task):
            await store.append_one(key, _msg(f"{run}-{t}-{i}"))

    start = time.perf_counter()
    await asyncio.gather(*(writer(t) for t in range(tasks)))
    return tasks * per_task / (time.perf_counter() - start)


def _process_writer(url: str, options: dict[str, Any], tenant: str, worker: int, count: int,
                    ready: Any, go: Any, results: Any) -> None:
    async def main() -> None:
        store = await open_store(url, **options)
        try:
            key = SessionKey(tenant, "procs", f"p{worker}")
            await store.append_one(key, _msg(f"warm-{worker}"))
            ready.put(worker)
            go.wait()
            start = time.perf_counter()
            for i in range(count):
                await store.append_one(key, _msg(f"p{worker}-{i}"))
            results.put((worker, start, time.perf_counter()))
        finally:
            await store.close()

    asyncio.run(main())


def _multi_process(url: str, options: dict[str, Any], tenant: str, processes: int, count: int) -> float:
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter, like a separate worker
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_process_writer, args=(url, options, tenant, w, count, ready, go, results))
             for w in range(processes)]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            ready.get(timeout=120)
        go.set()
        spans = [results.get(timeout=300) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    start = min(s[1] for s in spans)
    end = max(s[2] for s in spans)
    return processes * count / (end - start)


_WORDS = ("claim", "policy", "water", "damage", "email", "phone", "renewal", "invoice", "refund", "broker")


async def _search_phase(store: Any, tenant: str, count: int, dim: int, queries: int, say: Progress) -> dict[str, Any]:
    try:
        import numpy as np
    except ImportError as exc:
        from ..errors import MissingDependency

        raise MissingDependency("numpy", "vectors") from exc
    rng = np.random.default_rng(7)
    user, model = "search", "synthetic-random"

    def unit(rows: int) -> Any:
        v = rng.standard_normal((rows, dim), dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    say(f"search: loading {count} messages with synthetic random unit vectors (dim {dim}) for one user")
    began = time.perf_counter()
    for start in range(0, count, 1000):
        size = min(1000, count - start)
        key = SessionKey(tenant, user, f"t{start // 1000:05d}")
        texts = [f"customer note {start + i}: {' '.join(_WORDS[(start + i + j) % 10] for j in range(4))} ref R{start + i}"
                 for i in range(size)]
        stored = await store.append(key, [NewMessage("user", t) for t in texts])
        vecs = unit(size)
        await store.put_vectors(tenant, user, model, [VectorItem("message", m.id, tuple(map(float, v)))
                                                      for m, v in zip(stored, vecs)])
    load_s = time.perf_counter() - began

    def query() -> tuple[float, ...]:
        return tuple(map(float, unit(1)[0]))

    say(f"search: {queries} vector searches (limit 10), then {min(queries, 30)} right after a one-vector write")
    t = time.perf_counter()
    await store.search_vectors(tenant, user, model, query(), limit=10)
    first = time.perf_counter() - t
    cached = []
    for _ in range(queries):
        q = query()
        t = time.perf_counter()
        await store.search_vectors(tenant, user, model, q, limit=10)
        cached.append(time.perf_counter() - t)
    after_write = []
    extra = SessionKey(tenant, user, "after-write")
    for i in range(min(queries, 30)):
        m = await store.append_one(extra, NewMessage("user", f"new note {i}"))
        await store.put_vectors(tenant, user, model, [VectorItem("message", m.id, query())])
        q = query()
        t = time.perf_counter()
        await store.search_vectors(tenant, user, model, q, limit=10)
        after_write.append(time.perf_counter() - t)
    say(f"search: {queries} lexical searches for a word in every message, and for a word in one")
    common, rare = [], []
    for i in range(queries):
        for text, out in (("customer claim", common), (f"R{(i * 7919) % count}", rare)):
            t = time.perf_counter()
            await store.search_text(tenant, user, text, limit=10)
            out.append(time.perf_counter() - t)
    return {
        "messages": count,
        "vectors": f"seeded random unit vectors, dim {dim}: synthetic, NOT embeddings (latency is representative, "
                   "ranking is not); query embedding time NOT included",
        "load_seconds": round(load_s, 1),
        "vector_first_search_ms": round(first * 1000, 1),
        "vector_search_cached": _summary(cached),
        "vector_search_after_one_vector_write": _summary(after_write),
        "text_search_common_word": _summary(common),
        "text_search_rare_word": _summary(rare),
    }


async def bench_store(
    url: str,
    *,
    scale: float = 1.0,
    window_messages: int = 10_000,
    processes: int = 4,
    vectors: int = 0,
    dim: int = 384,
    progress: Progress | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Run the store benchmark and return its numbers (see module doc). ``scale`` multiplies the
    number of operations of every step except the window session size and ``vectors``.

    ``vectors`` > 0 adds a search step on one user holding that many messages, each with a seeded
    random unit vector of ``dim`` dimensions (synthetic: the latency is representative, the
    ranking is not; the output says so). It times ``search_vectors`` (the first search, which
    loads the user's matrix; cached searches; searches right after a one-vector write) and
    ``search_text`` for a word in every message and for a word in one."""
    say = progress or (lambda _line: None)
    n = lambda base: max(1, int(base * scale))  # noqa: E731
    tenant = f"bench-{uuid.uuid4().hex[:10]}"
    began = time.perf_counter()
    result: dict[str, Any] = {"store": redact_url(url), "tenant": tenant}
    store = await open_store(url, **options)
    try:
        info = dict(await store.describe())
        result["backend"] = info.get("backend", type(store).__name__)
        for k in ("path", "journal_mode", "synchronous", "schema_version", "autovacuum"):
            if k in info:
                result[k] = info[k]
        result["cache"] = any(getattr(c, "value", c) == "cache" for c in getattr(store, "capabilities", ()))
        fsync_dir = os.path.dirname(info["path"]) if info.get("path") else tempfile.gettempdir()
        if not info.get("path"):
            result["fsync_note"] = "measured on this machine's temp dir; a remote server's disk may differ"

        say(f"fsync: {n(200)} x 4 KiB appends + fsync in {fsync_dir}")
        fsync = await asyncio.to_thread(_fsync_latency, fsync_dir, n(200))
        result["fsync"] = {"dir": fsync_dir, **_summary(fsync)}

        say(f"append latency, one writer: {n(300)} sequential durable appends, each after one raw fsync sample")
        key = SessionKey(tenant, "latency", "one-writer")
        await store.append_one(key, _msg("warm"))
        lat = []
        paired_fsync = []
        probe = _FsyncProbe(fsync_dir)
        try:
            for i in range(n(300)):
                # Alternating the two keeps them comparable when other work on the machine makes
                # the disk's latency drift during the run.
                paired_fsync.append(probe.sample())
                t = time.perf_counter()
                await store.append_one(key, _msg(f"lat-{i}"))
                lat.append(time.perf_counter() - t)
        finally:
            probe.close()
        result["append_1_writer"] = _summary(lat)
        result["fsync_alternating_with_appends"] = _summary(paired_fsync)
        # PostgreSQL: the planner statistics autovacuum gathers within seconds of the first writes.
        # A server running without autovacuum keeps plans made for empty tables, and the appends'
        # lookups then slow down as the tables grow; say so, and analyze as autovacuum would.
        analyzable = _layer_with(store, "analyze")
        if analyzable is not None:
            await analyzable.analyze()
            result["analyzed_after_warmup"] = True

        tp: dict[str, float | None] = {}
        for tasks, per_task in ((1, 300), (4, 150), (16, 100), (64, 40)):
            say(f"throughput: {tasks} concurrent writer task(s) on distinct sessions, {n(per_task)} appends each")
            tp[f"tasks_{tasks}"] = round(await _throughput(store, tenant, tasks, n(per_task), one_session=False), 1)
        say(f"throughput: 64 concurrent writer tasks on ONE session, {n(30)} appends each")
        tp["tasks_64_one_session"] = round(await _throughput(store, tenant, 64, n(30), one_session=True), 1)
        if url.startswith("memory:"):
            tp[f"processes_{processes}"] = None  # each process would have its own private memory store
            say("throughput with processes: skipped (memory:// is per-process)")
        else:
            say(f"throughput: {processes} writer processes, {n(150)} appends each")
            tp[f"processes_{processes}"] = round(
                await asyncio.to_thread(_multi_process, url, options, tenant, processes, n(150)), 1)
        result["throughput_appends_per_s"] = tp

        say(f"window reads: filling a {window_messages}-message session")
        wkey = SessionKey(tenant, "window", "big-session")
        for start in range(0, window_messages, 500):
            await store.append(wkey, [_msg(f"win-{i}") for i in range(start, min(window_messages, start + 500))])
        say(f"window reads: {n(500)} x read_window(last=50)")
        reads = []
        for _ in range(n(500)):
            t = time.perf_counter()
            window = await store.read_window(wkey, last=50)
            reads.append(time.perf_counter() - t)
        assert len(window) == min(50, window_messages)
        result["window_read_last50"] = {"session_messages": window_messages, **_summary(reads)}
        # The same reads with read auditing suspended, so the audit trail's cost shows. Writes have
        # no such figure: their audit entry is part of the write's own transaction, always.
        unaudited = []
        with reads_not_audited():
            for _ in range(n(500)):
                t = time.perf_counter()
                await store.read_window(wkey, last=50)
                unaudited.append(time.perf_counter() - t)
        result["window_read_last50_reads_not_audited"] = _summary(unaudited)

        if vectors:
            result["search_one_user"] = await _search_phase(store, tenant, vectors, dim, n(100), say)

        if result["fsync_alternating_with_appends"]["p50_ms"] > 0:
            result["append_p50_over_fsync_p50"] = round(
                result["append_1_writer"]["p50_ms"] / result["fsync_alternating_with_appends"]["p50_ms"], 2)
        after = dict(await store.describe())
        if after.get("write_transactions"):
            result["writes_per_transaction"] = round(after["write_operations"] / after["write_transactions"], 2)

        say("cleaning up the benchmark tenant")
        for user in await store.list_users(tenant, limit=1000):
            await store.delete_user(tenant, user)
    finally:
        await store.close()
    result["elapsed_s"] = round(time.perf_counter() - began, 2)
    return result


def run_store_bench(url: str, **options: Any) -> dict[str, Any]:
    """Blocking entry point (the CLI's): runs :func:`bench_store` on a private event loop."""
    return asyncio.run(bench_store(url, **options))
