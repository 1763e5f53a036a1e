"""Read-only inspection: ``amber sessions``, ``history`` (``--follow`` to watch writes live from any
process), ``facts`` and ``search``. Each prints a rich table, or one JSON document with ``--json``
(``history --follow --json`` prints one JSON object per line as messages arrive)."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any, Sequence

import click
from rich.console import Console
from rich.table import Table

from ..errors import AmberError
from ..keys import SessionKey
from ..transfer import jsonable
from . import Context, emit, pass_ctx, run_async

__all__ = ["sessions", "history", "facts", "search", "session_key", "console"]

console = Console(highlight=False, soft_wrap=False)


def session_key(ctx: Context, text: str) -> SessionKey:
    """``user/thread`` inside the chosen tenant, or an explicit ``tenant/user/thread``."""
    try:
        if text.count("/") == 1:
            user, thread = text.split("/")
            return SessionKey(ctx.tenant, user, thread)
        return SessionKey.parse(text)
    except AmberError as exc:
        raise click.BadParameter(exc.message, param_hint="session") from exc


def _clip(text: str, width: int = 80) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def _when(iso: str | None) -> str:
    """ISO timestamp shortened for a table cell (UTC, to the second)."""
    return "" if not iso else iso[:19].replace("T", " ")


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table = Table(title=title, title_justify="left")
    for i, c in enumerate(columns):  # only the last column wraps; ids and times stay whole
        table.add_column(c, overflow="fold", no_wrap=i < len(columns) - 1)
    for r in rows:
        table.add_row(*("" if v is None else str(v) for v in r))
    console.print(table)


@click.command()
@click.option("--user", default=None, help="Only this user's sessions.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--offset", default=0, show_default=True, type=click.IntRange(0))
@pass_ctx
def sessions(ctx: Context, user: str | None, limit: int, offset: int) -> None:
    """List sessions of the tenant (or of one user), most recently active first."""

    async def run() -> list[dict[str, Any]]:
        async with await ctx.open() as store:
            return jsonable(await store.list_sessions(ctx.tenant, user, limit=limit, offset=offset))

    data = run_async(run())
    emit(ctx, data, lambda rows: _table(
        f"sessions in tenant {ctx.tenant!r}", ["session", "messages", "last seq", "created", "updated"],
        [(r["key"], r["message_count"], r["last_seq"], _when(r["created_at"]), _when(r["updated_at"])) for r in rows]))


def _print_messages(ctx: Context, msgs: list[dict[str, Any]], *, stream: bool = False) -> None:
    if ctx.json and stream:
        for m in msgs:
            click.echo(json.dumps(m, ensure_ascii=False))
        return
    if ctx.json:
        emit(ctx, msgs)
        return
    for m in msgs:
        who = m["role"] + (f" ({m['author']})" if m.get("author") else "")
        console.print(f"[dim]#{m['seq']} {_when(m['created_at'])}[/dim] [bold]{who}[/bold]: ", end="")
        console.print(m["content"], markup=False)


@click.command()
@click.argument("session")
@click.option("--last", type=click.IntRange(0), default=None, help="Only the newest N messages.")
@click.option("--since", "after_seq", type=click.IntRange(0), default=None, help="Only messages after this seq.")
@click.option("--follow", "-f", is_flag=True, help="Keep polling and print new messages as any process writes them.")
@click.option("--interval", type=click.FloatRange(0.05), default=1.0, show_default=True,
              help="Seconds between polls with --follow.")
@click.option("--max-polls", type=click.IntRange(1), default=None, hidden=True,
              help="Stop --follow after this many polls (scripts and tests).")
@pass_ctx
def history(ctx: Context, session: str, last: int | None, after_seq: int | None, follow: bool,
            interval: float, max_polls: int | None) -> None:
    """Show a session's transcript. SESSION is user/thread (in --tenant) or tenant/user/thread."""
    key = session_key(ctx, session)

    async def run() -> None:
        async with await ctx.open() as store:
            if after_seq is not None:
                msgs = await store.read_since(key, after_seq)
                if last is not None:
                    msgs = msgs[-last:] if last else []
            else:
                msgs = await store.read_window(key, last=last)
            _print_messages(ctx, jsonable(msgs), stream=follow)
            if not follow:
                return
            seen = msgs[-1].seq if msgs else (after_seq or 0)
            if not msgs and after_seq is None:  # e.g. --last 0: start at the current end
                info = await store.get_session(key)
                seen = info.last_seq if info else 0
            polls = 0
            while max_polls is None or polls < max_polls:
                await asyncio.sleep(interval)
                polls += 1
                new = await store.read_since(key, seen)
                if new:
                    _print_messages(ctx, jsonable(new), stream=True)
                    seen = new[-1].seq

    try:
        run_async(run())
    except KeyboardInterrupt:  # Ctrl-C ends --follow quietly
        pass


@click.command()
@click.argument("user")
@click.option("--attribute", default=None, help="Only facts of this attribute (e.g. policy_number).")
@click.option("--history", "include_superseded", is_flag=True, help="Include superseded facts.")
@click.option("--limit", type=click.IntRange(1), default=None)
@pass_ctx
def facts(ctx: Context, user: str, attribute: str | None, include_superseded: bool, limit: int | None) -> None:
    """Show facts learned about USER, newest first."""

    async def run() -> list[dict[str, Any]]:
        async with await ctx.open() as store:
            return jsonable(await store.list_facts(ctx.tenant, user, attribute=attribute,
                                                   include_superseded=include_superseded, limit=limit))

    data = run_async(run())
    emit(ctx, data, lambda rows: _table(
        f"facts of {ctx.tenant}/{user}", ["attribute", "value", "valid from", "valid to", "confidence", "sources"],
        [(r["attribute"], r["value"], _when(r["valid_from"]), _when(r["valid_to"]) or "current", r["confidence"],
          ", ".join(r["source_message_ids"])) for r in rows]))


@click.command()
@click.argument("user")
@click.argument("query")
@click.option("--limit", type=click.IntRange(1, 200), default=10, show_default=True)
@click.option("--kind", "kinds", type=click.Choice(["message", "fact"]), multiple=True,
              help="Restrict to messages or facts (repeatable; default both).")
@click.option("--embedder", default=None, help="Embedder spec for vector recall (e.g. minilm); default lexical only.")
@pass_ctx
def search(ctx: Context, user: str, query: str, limit: int, kinds: tuple[str, ...], embedder: str | None) -> None:
    """Recall: search USER's memory for QUERY (hybrid when amber.recall is installed)."""
    kinds = kinds or ("message", "fact")

    async def run() -> list[dict[str, Any]]:
        async with await ctx.open() as store:
            return jsonable(await recall_search(store, ctx.tenant, user, query, limit=limit, kinds=kinds,
                                                embedder_spec=embedder))

    data = run_async(run())
    emit(ctx, data, lambda rows: _table(
        f"recall for {query!r}", ["score", "kind", "thread", "seq", "text"],
        [(f"{r['score']:.3f}", r["kind"], r["thread"], r["seq"], _clip(r["text"])) for r in rows]))


async def recall_search(store: Any, tenant: str, user: str, query: str, *, limit: int,
                        kinds: Sequence[str], embedder_spec: str | None = None) -> list[Any]:
    """Fused recall through ``amber.recall.Recall`` when it is installed, else the store's lexical search."""
    try:
        from ..recall import Recall  # type: ignore[attr-defined]
    except ImportError:
        return await store.search_text(tenant, user, query, limit=limit, kinds=tuple(kinds))
    embedder = None
    modes: tuple[str, ...] = ("lexical",)
    if embedder_spec and embedder_spec != "none":
        from .options import embedder_from_environ

        embedder = embedder_from_environ(embedder_spec, os.environ)
        modes = ("lexical", "vector")
    return await Recall(store, embedder=embedder).search(tenant, user, query, limit=limit, modes=modes,
                                                        kinds=tuple(kinds))
