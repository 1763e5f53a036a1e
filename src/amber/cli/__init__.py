"""The ``amber`` command: a thin shell over the Python API.

Every command picks its store and tenant the same way, decided once here:

* store: ``--store URL``, else the ``AMBER_STORE`` environment variable, else the embedded default
  ``sqlite:///<user data dir>/amber.db`` (``$XDG_DATA_HOME/amber/amber.db``, normally
  ``~/.local/share/amber/amber.db``) -- never a path relative to wherever the command was started;
* tenant: ``--tenant NAME``, else ``AMBER_TENANT``, else ``default``;
* ``--json`` prints machine-readable output (one JSON document) instead of tables;
* encryption at rest and PII redaction: ``--keyring`` / ``AMBER_KEYRING`` with ``AMBER_MASTER_KEY`` or
  ``--master-key-file`` / ``AMBER_MASTER_KEY_FILE``, and ``--redact`` / ``AMBER_REDACT`` -- see
  :mod:`amber.cli.options`. Every store a command opens gets those layers, ``amber serve`` included.

Subcommands live in their own modules and are imported only when invoked, so ``amber --help`` stays
fast and an optional driver that is missing breaks only the command that needs it.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

import click

from ..errors import AmberError
from ..keys import DEFAULT_TENANT, validate_part

__all__ = ["main", "Context", "pass_ctx", "run_async", "default_store_url", "emit"]

T = TypeVar("T")

# name -> "module:attribute" of a click command; modules are imported lazily.
COMMANDS: dict[str, tuple[str, str]] = {
    "doctor": ("amber.cli.doctor:doctor", "Diagnose why an agent forgets: store location, durability, keys."),
    "sessions": ("amber.cli.inspect:sessions", "List sessions of a tenant or user."),
    "history": ("amber.cli.inspect:history", "Show (or --follow) a session's transcript."),
    "facts": ("amber.cli.inspect:facts", "Show facts learned for a user."),
    "search": ("amber.cli.inspect:search", "Recall: hybrid search over a user's memory."),
    "export": ("amber.cli.transfer:export", "Export sessions, state and facts as JSONL."),
    "import": ("amber.cli.transfer:import_", "Import JSONL written by export."),
    "forget": ("amber.cli.transfer:forget", "Delete a session or everything a user owns (audited)."),
    "migrate": ("amber.cli.admin:migrate", "Apply pending schema migrations."),
    "serve": ("amber.cli.admin:serve", "Run the REST server."),
    "worker": ("amber.cli.admin:worker", "Run the learning worker."),
    "jobs": ("amber.cli.admin:jobs", "List the learn jobs that died and requeue them."),
    "reindex": ("amber.cli.admin:reindex", "Re-embed memories after changing the embedder."),
    "backup": ("amber.cli.admin:backup", "Back up the store."),
    "restore": ("amber.cli.admin:restore", "Restore a backup (never resurrects erased data)."),
    "audit": ("amber.cli.admin:audit", "List or verify the audit trail."),
    "prune": ("amber.cli.admin:prune", "Retention: delete what is past its time-to-live (audited)."),
    "bench": ("amber.cli.bench:bench", "Benchmarks that print numbers (store, recall)."),
}


def default_store_url() -> str:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return f"sqlite:///{Path(base) / 'amber' / 'amber.db'}"


@dataclass
class Context:
    store_url: str
    tenant: str
    json: bool

    async def open(self, **options: Any):  # type: ignore[no-untyped-def]
        from ..store import open_store
        from .options import governance_from_environ

        # Encryption and redaction layers as configured (options exported to the environment by main).
        return await open_store(self.store_url, **{**governance_from_environ(os.environ), **options})


pass_ctx = click.make_pass_decorator(Context)


def run_async(coro: Awaitable[T]) -> T:
    """Run a coroutine for a CLI command, turning Amber errors into a clean message and exit 2."""
    try:
        return asyncio.run(coro)  # type: ignore[arg-type]
    except AmberError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(2)


def emit(ctx: Context, data: Any, render: Callable[[Any], None] | None = None) -> None:
    """Print ``data`` as JSON (``--json``) or through ``render``."""
    if ctx.json or render is None:
        click.echo(json.dumps(data, default=str, ensure_ascii=False, indent=None if ctx.json else 2))
    else:
        render(data)


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        spec = COMMANDS.get(name)
        if spec is None:
            return None
        module, _, attr = spec[0].partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            message = f"'amber {name}' is not available: {exc}"

            @click.command(name=name, help=spec[1])
            def unavailable() -> None:
                raise click.ClickException(message)

            return unavailable

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(n, COMMANDS[n][1]) for n in sorted(COMMANDS)])


@click.group(cls=_LazyGroup)
@click.option("--store", "store_url", envvar="AMBER_STORE", default=None,
              help="Store URL (env AMBER_STORE; default: the embedded SQLite file in the user data dir).")
@click.option("--tenant", envvar="AMBER_TENANT", default=DEFAULT_TENANT, show_default=True,
              help="Tenant (env AMBER_TENANT).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
@click.option("--keyring", type=click.Path(dir_okay=False), default=None,
              help="Encryption keyring file (env AMBER_KEYRING); the master key comes from env AMBER_MASTER_KEY "
                   "or --master-key-file.")
@click.option("--master-key-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="File holding the base64 master key(s) (env AMBER_MASTER_KEY_FILE).")
@click.option("--redact", "redact", default=None, metavar="POLICY",
              help="PII redaction (env AMBER_REDACT): off, on, ENTITY=action,... (e.g. EMAIL=mask,CARD=redact) "
                   "or @policy.json.")
@click.version_option(package_name="amber-memory")
@click.pass_context
def main(click_ctx: click.Context, store_url: str | None, tenant: str, as_json: bool, keyring: str | None,
         master_key_file: str | None, redact: str | None) -> None:
    """Amber: durable, shared memory for AutoGen agents."""
    try:
        validate_part("tenant", tenant)
    except AmberError as exc:
        raise click.BadParameter(exc.message, param_hint="--tenant") from exc
    # Options win over the environment and are exported to it, so `amber serve`'s worker processes
    # (which build their app from the environment) get the same layers.
    for name, value in (("AMBER_KEYRING", keyring), ("AMBER_MASTER_KEY_FILE", master_key_file),
                        ("AMBER_REDACT", redact)):
        if value is not None:
            os.environ[name] = str(Path(value).resolve()) if name != "AMBER_REDACT" else value
    if master_key_file is not None:
        os.environ.pop("AMBER_MASTER_KEY", None)  # the file given on the command line is the key
    click_ctx.obj = Context(store_url or default_store_url(), tenant, as_json)
