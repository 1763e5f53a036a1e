"""``amber bench``: benchmarks that print progress lines, then ONE JSON object on the last line."""

from __future__ import annotations

import importlib
import json

import click

from ..errors import AmberError
from . import Context, pass_ctx

# Subcommands owned by other modules, attached only if they import (e.g. optional dependencies).
_LAZY: dict[str, str] = {"recall": "amber.cli.bench_recall:recall", "scale": "amber.cli.bench_scale:scale"}


class _BenchGroup(click.Group):
    def _lazy(self, name: str) -> click.Command | None:
        module, _, attr = _LAZY[name].partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            return None

    def list_commands(self, ctx: click.Context) -> list[str]:
        lazy = [n for n in _LAZY if n not in self.commands and self._lazy(n) is not None]
        return sorted([*self.commands, *lazy])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.commands:
            return self.commands[name]
        return self._lazy(name) if name in _LAZY else None


@click.group(cls=_BenchGroup)
def bench() -> None:
    """Benchmarks that print numbers (the last line is one JSON object)."""


@bench.command("store")
@click.option("--store", "store_url", default=None,
              help="Store URL to measure (default: the global --store / AMBER_STORE).")
@click.option("--scale", type=float, default=1.0, show_default=True,
              help="Multiply the number of operations of every step (e.g. 0.2 for a quick run).")
@click.option("--window-messages", type=int, default=10_000, show_default=True,
              help="Size of the session the window reads run on.")
@click.option("--processes", type=int, default=4, show_default=True, help="Writer processes for the multi-process step.")
@click.option("--vectors", type=int, default=0, show_default=True,
              help="Also time vector and lexical search on one user with this many messages, each with a "
                   "synthetic random unit vector (e.g. 100000). 0 skips the step.")
@click.option("--dim", type=int, default=384, show_default=True, help="Dimensions of the synthetic vectors.")
@pass_ctx
def store(ctx: Context, store_url: str | None, scale: float, window_messages: int, processes: int,
          vectors: int, dim: int) -> None:
    """Durable append latency and throughput, window reads, and the disk's raw fsync latency.

    Writes under a fresh random tenant and deletes it again at the end."""
    from ..bench.store import run_store_bench

    url = store_url or ctx.store_url
    if scale <= 0 or window_messages < 50 or processes < 1 or vectors < 0 or dim < 1:
        raise click.BadParameter("--scale must be > 0, --window-messages >= 50, --processes >= 1, --vectors >= 0, "
                                 "--dim >= 1")
    try:
        result = run_store_bench(url, scale=scale, window_messages=window_messages, processes=processes,
                                 vectors=vectors, dim=dim, progress=lambda line: click.echo(f"# {line}"))
    except AmberError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(json.dumps(result, ensure_ascii=False))
