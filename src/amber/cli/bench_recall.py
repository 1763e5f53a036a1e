"""``amber bench recall DATASET.json``: the recall benchmark (see :mod:`amber.bench.recall`).

By default it runs against a fresh temporary SQLite file that is removed afterwards. With
``--store URL`` (or ``amber --store URL bench recall``) it writes into that store under a new
tenant ``bench-<random>`` and deletes the benchmark's users when done (audited) unless ``--keep``.
The last line printed is one JSON object with every number.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from ..errors import AmberError

__all__ = ["recall"]


def _explicit_parent_store(click_ctx: click.Context) -> str | None:
    """The ``amber --store`` value, but only if the user gave it (flag or AMBER_STORE), never the
    default user-data store: a benchmark must not write into someone's real memory by accident."""
    parent = click_ctx.parent
    if parent is None or parent.parent is None:
        return None
    root = parent.parent
    source = root.get_parameter_source("store_url")
    if source in (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT):
        return root.params.get("store_url")
    return None


@click.command("recall")
@click.argument("dataset", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--store", "store_url", default=None,
              help="Store URL to benchmark (default: a temporary SQLite file, removed afterwards).")
@click.option("--embedder", "embedder_spec", default="minilm", show_default=True,
              help="Embedder spec: minilm, none, hash[:dim], openai:<model>.")
@click.option("--extractor", type=click.Choice(["rules", "none"]), default="rules", show_default=True,
              help="Fact extractor the learner uses.")
@click.option("--modes", default="dense,lexical,vector,hybrid,hybrid+facts", show_default=True,
              help="Comma-separated retrieval modes to compare.")
@click.option("--k", "ks", default="1,5,10", show_default=True, help="Comma-separated cut-offs.")
@click.option("--limit-conversations", type=int, default=None, help="Use only the first N conversations.")
@click.option("--keep", is_flag=True, help="Keep the benchmark's data in --store (default: delete it).")
@click.option("--quiet", is_flag=True, help="Print only the JSON line.")
@click.pass_context
def recall(click_ctx: click.Context, dataset: Path, store_url: str | None, embedder_spec: str, extractor: str,
           modes: str, ks: str, limit_conversations: int | None, keep: bool, quiet: bool) -> None:
    """Score recall on a conversation-eval DATASET.json, mode by mode; JSON on the last line."""
    from ..bench.recall import load_dataset, parse_ks, parse_modes, render_table, run_recall_bench

    store_url = store_url or _explicit_parent_store(click_ctx)

    def progress(message: str) -> None:
        if not quiet:
            click.echo(message, err=True)

    async def run() -> dict[str, Any]:
        from ..store import open_store

        data = load_dataset(dataset)
        if limit_conversations is not None:
            data = dict(data, conversations=data["conversations"][:limit_conversations])
        mode_list, k_list = parse_modes(modes), parse_ks(ks)
        from .options import embedder_from_environ

        embedder = embedder_from_environ(embedder_spec, os.environ)
        tmp = None
        url = store_url
        if url is None:
            tmp = tempfile.mkdtemp(prefix="amber-bench-recall-")
            url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        try:
            store = await open_store(url)
            try:
                return await run_recall_bench(
                    data, store, embedder=embedder, embedder_label=f"{embedder_spec} ({embedder.name})" if embedder else "none",
                    extractor=extractor, modes=mode_list, ks=k_list,
                    cleanup=store_url is not None and not keep, progress=progress,
                )
            finally:
                await store.close()
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)

    try:
        doc = asyncio.run(run())
    except AmberError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(2)
    if not quiet:
        click.echo(render_table(doc))
    click.echo(json.dumps(doc, ensure_ascii=False, default=str, separators=(",", ":")))
