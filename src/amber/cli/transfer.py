"""``amber export``, ``amber import`` and ``amber forget``: moving memory in and out, and erasing it.

Export writes JSON Lines (see :mod:`amber.transfer`) to a file or stdout; import validates the whole
file before writing anything, restores what the target does not hold yet exactly (same ids, seqs,
versions and times) and merges the rest, so it is safe to re-run (``--exact`` refuses to merge);
forget deletes a session or everything a user owns and prints the audited receipt.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from ..transfer import export_jsonl, import_jsonl, jsonable
from . import Context, emit, pass_ctx, run_async
from .inspect import session_key

__all__ = ["export", "import_", "forget"]

err_console = Console(stderr=True, highlight=False)


def _progress(ctx: Context) -> Progress:
    # Progress goes to stderr so stdout stays clean JSONL; silent in --json mode and when piped.
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err_console, transient=True,
                    disable=ctx.json or not err_console.is_terminal)


@click.command()
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default="-",
              show_default=True, help="File to write (- for stdout).")
@click.option("--user", default=None, help="Only this user (sessions, state and facts).")
@click.option("--thread", default=None, help="Only this thread of --user.")
@pass_ctx
def export(ctx: Context, output: str, user: str | None, thread: str | None) -> None:
    """Export the tenant's sessions, state and facts (with history) as JSONL."""

    async def run() -> dict[str, Any]:
        counts: dict[str, Any] = {}
        out: TextIO
        tmp: Path | None = None
        if output == "-":
            out = sys.stdout
        else:
            # Write beside the target and rename, so an interrupted export never leaves a half file
            # that looks complete.
            tmp = Path(output).with_name(Path(output).name + ".partial")
            out = tmp.open("w", encoding="utf-8")
        try:
            async with await ctx.open() as store:
                with _progress(ctx) as progress:
                    task = progress.add_task("exporting", total=None)
                    async for line in export_jsonl(store, ctx.tenant, user=user, thread=thread):
                        out.write(line)
                        progress.advance(task)
                        if line.startswith('{"type":"end"'):
                            import json

                            counts = json.loads(line)["counts"]
        finally:
            if tmp is not None:
                out.close()
        if tmp is not None:
            tmp.replace(output)
        return counts

    counts = run_async(run())
    if output != "-":
        emit(ctx, {"output": output, "counts": counts},
             lambda d: err_console.print(f"exported {_counts(d['counts'])} to {d['output']}"))


def _counts(counts: dict[str, Any]) -> str:
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "nothing"


@click.command(name="import")
@click.argument("source", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--exact", is_flag=True,
              help="Refuse (writing nothing) unless every session and user's facts can be restored exactly, "
                   "i.e. the target holds none of them yet. Without it, what the target holds is merged.")
@pass_ctx
def import_(ctx: Context, source: str, exact: bool) -> None:
    """Import a JSONL export into the tenant: exact into an empty target, merged otherwise (safe to re-run)."""

    async def run() -> dict[str, Any]:
        if source == "-":
            lines = sys.stdin.readlines()
        else:
            try:
                lines = Path(source).read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                from ..errors import InvalidInput

                raise InvalidInput(f"cannot read {source}: {exc.strerror}") from exc
        async with await ctx.open() as store:
            with _progress(ctx) as progress:
                progress.add_task(f"importing {len(lines)} lines", total=None)
                report = await import_jsonl(store, ctx.tenant, lines, exact=exact)
        return report.as_dict()

    data = run_async(run())

    def render(d: dict[str, Any]) -> None:
        click.echo(f"imported {_counts(d['counts'])} into tenant {ctx.tenant!r}")
        for w in d["warnings"]:
            click.echo(f"warning: {w}", err=True)

    emit(ctx, data, render)


@click.command()
@click.option("--session", "session", default=None, help="Delete one session: user/thread.")
@click.option("--user", default=None, help="Delete everything this user owns in the tenant.")
@click.option("--message", "message_id", default=None,
              help="With --session: delete only this message (the others keep their seqs).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_ctx
def forget(ctx: Context, session: str | None, user: str | None, message_id: str | None, yes: bool) -> None:
    """Delete a session, one message of it, or everything a user owns (audited); prints the receipt."""
    if (session is None) == (user is None):
        raise click.UsageError("give exactly one of --session user/thread or --user USER")
    if message_id is not None and session is None:
        raise click.UsageError("--message needs --session user/thread")
    what = f"session {session}" if session else f"user {user} (all sessions, state and facts)"
    if message_id is not None:
        what = f"message {message_id} of session {session}"
    if not yes and not ctx.json:
        click.confirm(f"Permanently delete {what} in tenant {ctx.tenant!r}?", abort=True)
    elif not yes:
        raise click.UsageError("--json needs --yes for forget (no prompt in scripts)")

    if message_id is not None:
        async def one() -> dict[str, Any]:
            async with await ctx.open() as store:
                key = session_key(ctx, session)  # type: ignore[arg-type]
                if not await store.delete_message(key, message_id):
                    raise click.ClickException(f"no message {message_id} in session {session}")
                return {"operation": "message.delete", "session": str(key), "message_id": message_id}

        emit(ctx, run_async(one()), lambda d: click.echo(f"{d['operation']} {d['session']}: {d['message_id']}"))
        return

    async def run() -> dict[str, Any]:
        async with await ctx.open() as store:
            if session:
                receipt = await store.delete_session(session_key(ctx, session))
            else:
                receipt = await store.delete_user(ctx.tenant, user)  # type: ignore[arg-type]
            return jsonable(receipt)

    data = run_async(run())
    emit(ctx, data, lambda d: click.echo(
        f"{d['operation']} {d['tenant']}/{d['user']}{'/' + d['thread'] if d['thread'] else ''} at {d['at']}: "
        f"deleted {_counts(d['counts'])}"))
