"""``amber bench scale``: query latency at scale (see :mod:`amber.bench.scale`).

A thin wrapper over ``python -m amber.bench.scale``: the same options, the same output (a summary
line, then ONE JSON object on the last line). Without ``--store`` (here or an explicit global
``amber --store`` / ``AMBER_STORE``) it runs on a temporary SQLite file that is removed afterwards;
``--store pgserver`` starts a private PostgreSQL with pgvector. Into a real store it writes under a
new ``scale-<random>`` tenant and deletes the benchmark's users at the end unless ``--keep``.
"""

from __future__ import annotations

import sys

import click

from .bench_recall import _explicit_parent_store

__all__ = ["scale"]


@click.command("scale")
@click.option("--store", "store_url", default=None,
              help="Store URL, or 'pgserver' for a private PostgreSQL+pgvector (default: a temporary SQLite file).")
@click.option("--memories", type=click.IntRange(1), default=100_000, show_default=True,
              help="Total memories (turns + facts).")
@click.option("--users", type=click.IntRange(1), default=1, show_default=True, help="Users the memories are spread over.")
@click.option("--fact-share", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.1, show_default=True,
              help="Share of the memories that are facts.")
@click.option("--queries", type=click.IntRange(1), default=200, show_default=True, help="Timed recall queries.")
@click.option("--embedder", default="minilm", show_default=True,
              help="Embedder spec for the queries (and for --vectors embed).")
@click.option("--vectors", type=click.Choice(["random", "clustered", "embed"]), default="random", show_default=True,
              help="Stored vectors: seeded random unit vectors, seeded clustered unit vectors (both latency only), "
                   "or real embeddings cached to a file.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Where --vectors embed caches its embeddings (default: the system temp dir).")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--keep", is_flag=True, help="Keep the loaded data in --store (default: delete the benchmark's users).")
@click.pass_context
def scale(click_ctx: click.Context, store_url: str | None, memories: int, users: int, fact_share: float,
          queries: int, embedder: str, vectors: str, cache_dir: str | None, seed: int, keep: bool) -> None:
    """Recall latency with many memories per user and many users; JSON on the last line."""
    from ..bench.scale import main as scale_main

    store_url = store_url or _explicit_parent_store(click_ctx)
    argv = ["--memories", str(memories), "--users", str(users), "--fact-share", str(fact_share),
            "--queries", str(queries), "--embedder", embedder, "--vectors", vectors, "--seed", str(seed)]
    if store_url is not None:
        argv += ["--store", store_url]
    if cache_dir is not None:
        argv += ["--cache-dir", cache_dir]
    if keep:
        argv.append("--keep")
    code = scale_main(argv)
    if code:
        sys.exit(code)
