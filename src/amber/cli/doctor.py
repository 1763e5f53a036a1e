"""``amber doctor``: print where memory is stored and every finding that explains why an agent forgets,
each with its fix. Exits 1 when a problem is found (``--strict``: warnings too), so it can gate a deploy."""

from __future__ import annotations

import os
import sys

import click
from rich.console import Console

from ..doctor import diagnose
from . import Context, emit, pass_ctx, run_async

__all__ = ["doctor"]

_STYLE = {"problem": "bold red", "warning": "yellow", "info": "cyan"}


@click.command()
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Worker processes the deployment runs (default: from WEB_CONCURRENCY / GUNICORN_CMD_ARGS).")
@click.option("--strict", is_flag=True, help="Exit non-zero on warnings too.")
@click.option("--no-process-scan", is_flag=True, help="Do not look at other processes' open files.")
@pass_ctx
def doctor(ctx: Context, workers: int | None, strict: bool, no_process_scan: bool) -> None:
    """Diagnose why an agent forgets: store location, durability, workers, migrations, session keys."""
    report = run_async(diagnose(ctx.store_url, tenant=ctx.tenant, env=dict(os.environ), workers=workers,
                                scan_processes=not no_process_scan))
    data = report.as_dict()

    def render(d: dict) -> None:
        console = Console(highlight=False)
        console.print(f"[bold]store[/bold] {d['store']}  [bold]tenant[/bold] {ctx.tenant}  "
                      f"[bold]pid[/bold] {os.getpid()}")
        for f in d["findings"]:
            console.print(f"[{_STYLE[f['severity']]}]{f['severity'].upper():8}[/] [bold]{f['code']}[/bold]: "
                          f"{f['title']}", markup=True)
            console.print(f"          {f['detail']}", markup=False)
            if f["fix"]:
                console.print(f"          fix: {f['fix']}", markup=False)
        console.print("[green]no problems found[/green]" if d["ok"] else "[bold red]problems found[/bold red]")

    emit(ctx, data, render)
    failed = not report.ok or (strict and any(f.severity == "warning" for f in report.findings))
    if failed:
        sys.exit(1)
