"""Operations: ``amber migrate``, ``serve``, ``worker``, ``jobs``, ``reindex``, ``backup``, ``restore``,
``audit``, ``prune``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import click

from ..errors import AmberError
from ..keys import validate_part
from ..transfer import jsonable
from . import Context, emit, pass_ctx, run_async
from .options import embedder_from_environ
from .inspect import _table, _when

__all__ = ["migrate", "serve", "worker", "jobs", "reindex", "backup", "restore", "audit", "prune"]


@click.command()
@pass_ctx
def migrate(ctx: Context) -> None:
    """Apply pending schema migrations (opening a store migrates it; safe with many workers at once)."""

    async def run() -> dict[str, Any]:
        async with await ctx.open() as store:
            return jsonable(dict(await store.describe()))

    data = run_async(run())
    emit(ctx, data, lambda d: click.echo(
        f"{d.get('backend', '?')} store at {d.get('url', ctx.store_url)} is up to date"
        + (f" (schema version {d['schema_version']})" if "schema_version" in d else "")))


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8750, show_default=True, type=click.IntRange(0, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64), envvar="WEB_CONCURRENCY",
              help="Worker processes (env WEB_CONCURRENCY). Needs a multi-process store (SQLite file, PostgreSQL).")
@click.option("--admin-key", envvar="AMBER_ADMIN_KEY", default=None,
              help="Admin API key for /v1/admin (env AMBER_ADMIN_KEY). Without it tenants and keys cannot be managed.")
@click.option("--max-body", default=8 * 1_048_576, show_default=True, type=click.IntRange(1024),
              help="Largest accepted request body in bytes (imports included).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--openapi", "print_openapi", is_flag=True, help="Print the OpenAPI document and exit.")
@pass_ctx
def serve(ctx: Context, host: str, port: int, workers: int, admin_key: str | None, max_body: int,
          log_level: str, print_openapi: bool) -> None:
    """Run the REST server (extra [server]). Logs are JSON lines on stderr."""
    if print_openapi:
        import json

        from ..server import create_app

        click.echo(json.dumps(create_app("memory://", admin_key="x" * 16).openapi(), indent=2))
        return
    try:
        import uvicorn
    except ImportError as exc:
        raise click.ClickException("'uvicorn' is not installed; run: pip install 'amber-memory[server]'") from exc
    if workers > 1 and ctx.store_url.startswith("memory:"):
        raise click.ClickException(
            f"{workers} workers cannot share a memory:// store: each process would have its own, and "
            "conversations would vanish between requests. Use a SQLite file or PostgreSQL (see `amber doctor`).")
    # Workers are separate processes: the factory reads its settings from the environment.
    os.environ["AMBER_STORE"] = ctx.store_url
    os.environ["AMBER_SERVER_MAX_BODY"] = str(max_body)
    if admin_key:
        os.environ["AMBER_ADMIN_KEY"] = admin_key
    uvicorn.run("amber.server:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level=log_level, access_log=False, log_config=None)


@click.command()
@click.option("--once", is_flag=True, help="Process what is pending and exit.")
@click.option("--batch", default=64, show_default=True, type=click.IntRange(1, 1000),
              help="Jobs claimed per round.")
@click.option("--embedder", default=None, help="Embedder spec (none, minilm, openai:<model>).")
@click.option("--extractor", type=click.Choice(["rules", "model"]), default="rules", show_default=True,
              help="How facts are extracted: rules (no model), or a model given by --model-config.")
@click.option("--model-config", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSON file: the AutoGen component config of the ChatCompletionClient the model extractor "
                   "calls (what client.dump_component() gives).")
@click.option("--governance-interval", default=60.0, show_default=True, type=click.FloatRange(0.1),
              help="Seconds between governance rounds: chain the audit trail, enforce stored retention policies.")
@pass_ctx
def worker(ctx: Context, once: bool, batch: int, embedder: str | None, extractor: str, model_config: str | None,
           governance_interval: float) -> None:
    """Run the learning worker: extract facts and embeddings from new messages; periodically chain
    the audit trail and enforce the stored retention policies."""
    from ..governance.retention import housekeeping, run_housekeeping

    try:
        from ..learn import Learner  # type: ignore[attr-defined]
    except ImportError as exc:
        raise click.ClickException(f"the learning worker is not available: {exc}") from exc
    extract = _extractor(extractor, model_config)  # before the store opens: a bad config changes nothing

    async def run() -> int:
        emb = embedder_from_environ(embedder, os.environ)
        async with await ctx.open() as store:
            learner = Learner(store, embedder=emb, batch_size=batch, extractor=extract)
            if once:
                total = 0
                while True:
                    n = await learner.run_once(limit=batch)
                    total += n
                    if n == 0:
                        await housekeeping(store)
                        return total
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.add_signal_handler(sig, stop.set)
                except (NotImplementedError, RuntimeError):  # pragma: no cover - non-POSIX
                    pass
            await asyncio.gather(learner.run_forever(stop), run_housekeeping(store, stop, governance_interval))
            return 0

    n = run_async(run())
    if once:
        emit(ctx, {"processed": n}, lambda d: click.echo(f"processed {d['processed']} jobs"))


@click.group()
def jobs() -> None:
    """The learning queue's dead jobs: those parked after their last failed attempt (`amber worker`
    gives up after 5). List them, fix the cause, then requeue them."""


def _queue_scope(click_ctx: click.Context, tenant: str | None, as_json: bool) -> tuple[Context, str | None]:
    """The command's context (``--json`` given here counts as the global one) and the tenant it acts on:
    its own ``--tenant``, else the global ``--tenant`` / ``AMBER_TENANT`` when given, else every tenant --
    one worker serves the whole queue, so an unscoped queue command does too."""
    ctx: Context = click_ctx.find_object(Context)
    if as_json:
        ctx = Context(ctx.store_url, ctx.tenant, True)
    if tenant is not None:
        try:
            return ctx, validate_part("tenant", tenant)
        except AmberError as exc:
            raise click.BadParameter(exc.message, param_hint="--tenant") from exc
    root = click_ctx.find_root()
    if root.get_parameter_source("tenant") in (click.core.ParameterSource.COMMANDLINE,
                                               click.core.ParameterSource.ENVIRONMENT):
        return ctx, ctx.tenant
    return ctx, None


def _scope_name(tenant: str | None) -> str:
    return "every tenant" if tenant is None else f"tenant {tenant!r}"


_TENANT_HELP = "Only this tenant (default: the global --tenant or AMBER_TENANT if given, else every tenant)."


@jobs.command("dead")
@click.option("--tenant", default=None, help=_TENANT_HELP)
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output (as the global --json).")
@click.pass_context
def jobs_dead(click_ctx: click.Context, tenant: str | None, limit: int, as_json: bool) -> None:
    """List dead learn jobs, the longest dead first: id, session, message, attempts, when it died and
    the last error."""
    ctx, scope = _queue_scope(click_ctx, tenant, as_json)

    async def run() -> list[dict[str, Any]]:
        async with await ctx.open() as store:
            return jsonable(await store.list_dead_learn_jobs(tenant=scope, limit=limit))

    data = run_async(run())
    # Message ids and seqs are in --json: a table as wide as a terminal keeps the job ids whole.
    emit(ctx, data, lambda rows: _table(
        f"dead learn jobs of {_scope_name(scope)}", ["id", "session", "attempts", "died", "error"],
        [(r["id"], r["key"], r["attempts"], _when(r["died_at"]), r["last_error"]) for r in rows]))


@jobs.command("requeue")
@click.argument("job_ids", nargs=-1, metavar="[JOB_ID]...")
@click.option("--all", "all_jobs", is_flag=True, help="Requeue every dead job (of the tenant, if given).")
@click.option("--tenant", default=None, help=_TENANT_HELP)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output (as the global --json).")
@click.pass_context
def jobs_requeue(click_ctx: click.Context, job_ids: tuple[str, ...], all_jobs: bool, tenant: str | None,
                 as_json: bool) -> None:
    """Make dead jobs pending again with their attempts reset, so the worker retries them (audited as
    `learn.requeue`). Ids that are not dead jobs (of the tenant) are skipped and counted."""
    if not job_ids and not all_jobs:
        raise click.UsageError("name the JOB_IDs to requeue (see `amber jobs dead`), or pass --all to "
                               "requeue every dead job")
    if job_ids and all_jobs:
        raise click.UsageError("give JOB_IDs or --all, not both")
    ctx, scope = _queue_scope(click_ctx, tenant, as_json)

    async def run() -> dict[str, Any]:
        async with await ctx.open() as store:
            n = await store.requeue_dead_learn_jobs(None if all_jobs else list(job_ids), tenant=scope)
        skipped = 0 if all_jobs else len(set(job_ids)) - n
        return {"requeued": n, "skipped": skipped, "tenant": scope}

    data = run_async(run())

    def render(d: dict[str, Any]) -> None:
        click.echo(f"requeued {d['requeued']} dead job(s) of {_scope_name(d['tenant'])}")
        if d["skipped"]:
            click.echo(f"skipped {d['skipped']} id(s) that are not dead jobs of {_scope_name(d['tenant'])}",
                       err=True)

    emit(ctx, data, render)


def _extractor(kind: str, model_config: str | None) -> Any:
    """The worker's extractor: None (the learner's rules) or a ModelExtractor over the configured client."""
    if kind == "rules":
        if model_config:
            raise click.UsageError("--model-config is for --extractor model")
        return None
    if not model_config:
        raise click.UsageError("--extractor model needs --model-config FILE (a ChatCompletionClient component config)")
    from autogen_core.models import ChatCompletionClient

    from ..learn import ModelExtractor

    try:
        config = json.loads(Path(model_config).read_text(encoding="utf-8"))
        client = ChatCompletionClient.load_component(config)
    except Exception as exc:  # JSON, validation and import errors of the provider: one clear message
        raise click.ClickException(f"cannot load the model client from {model_config}: {exc}") from exc
    return ModelExtractor(client)


@click.command()
@click.option("--embedder", required=True, help="Embedder spec to re-embed with (e.g. minilm).")
@click.option("--user", default=None, help="Only this user.")
@pass_ctx
def reindex(ctx: Context, embedder: str, user: str | None) -> None:
    """Re-embed messages and facts after changing the embedder."""
    try:
        from ..learn import reindex as reindex_impl  # type: ignore[attr-defined]
    except ImportError as exc:
        raise click.ClickException(f"reindex is not available yet: {exc}") from exc

    last = [0.0]

    def progress(counts: dict[str, int]) -> None:
        # On stderr, at most once a second: stdout carries only the result (JSON with --json).
        now = time.monotonic()
        if now - last[0] >= 1.0:
            last[0] = now
            click.echo(f"reindexing: {counts['users']} users, {counts['messages']} messages, "
                       f"{counts['facts']} facts embedded", err=True)

    async def run() -> Any:
        async with await ctx.open() as store:
            return await reindex_impl(store, ctx.tenant, embedder_from_environ(embedder, os.environ), user=user,
                                      progress=progress)

    emit(ctx, jsonable(run_async(run())))


@click.command()
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, writable=True))
@pass_ctx
def backup(ctx: Context, output: str) -> None:
    """Back up the tenant as a JSONL export (restore with `amber restore`)."""
    from .transfer import export

    click.get_current_context().invoke(export, output=output, user=None, thread=None)


@click.command()
@click.argument("source", type=click.Path(exists=True, dir_okay=False))
@pass_ctx
def restore(ctx: Context, source: str) -> None:
    """Restore a backup; never resurrects users, sessions or facts erased after the backup was taken."""
    from ..transfer import restore_jsonl

    async def run() -> dict[str, Any]:
        lines = Path(source).read_text(encoding="utf-8").splitlines()
        async with await ctx.open() as store:
            return (await restore_jsonl(store, ctx.tenant, lines)).as_dict()

    data = run_async(run())

    def render(d: dict[str, Any]) -> None:
        counts = dict(d["counts"])
        withheld = counts.pop("withheld_erased", 0)
        click.echo(f"restored {', '.join(f'{v} {k}' for k, v in sorted(counts.items())) or 'nothing'}; "
                   f"withheld {withheld} records erased after the backup")
        for w in d["warnings"]:
            click.echo(f"warning: {w}", err=True)

    emit(ctx, data, render)


@click.group(invoke_without_command=True)
@click.option("--user", default=None)
@click.option("--operation", default=None, help="e.g. message.append, message.read, state.put, user.delete")
@click.option("--after", "after_id", default=0, type=click.IntRange(0), help="Only entries with id > this.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10_000))
@click.pass_context
def audit(click_ctx: click.Context, user: str | None, operation: str | None, after_id: int, limit: int) -> None:
    """List the audit trail (who did what to which records: ids and hashes, never content);
    `amber audit verify` checks its hash chain."""
    if click_ctx.invoked_subcommand is not None:
        return
    ctx: Context = click_ctx.obj

    async def run() -> list[dict[str, Any]]:
        async with await ctx.open() as store:
            return jsonable(await store.list_audit(ctx.tenant, user=user, operation=operation, limit=limit,
                                                   after_id=after_id))

    data = run_async(run())
    emit(ctx, data, lambda rows: _table(
        f"audit of tenant {ctx.tenant!r}", ["id", "at", "actor", "operation", "user", "thread", "count", "chain"],
        [(r["id"], _when(r["at"]), r["actor"], r["operation"], r["user"], r["thread"], r["count"],
          r.get("chain_seq") or "") for r in rows]))


@audit.command("verify")
@click.option("--expect-head", default=None, metavar="POSITION:HASH",
              help="A chain head recorded earlier (outside the database); the chain must still pass through it.")
@click.option("--no-chain", is_flag=True, help="Do not chain pending entries first (read-only check).")
@pass_ctx
def audit_verify(ctx: Context, expect_head: str | None, no_chain: bool) -> None:
    """Verify the tenant's audit hash chain: detects a changed, removed or reordered entry and says
    where. Exit status 1 if the chain is broken. Keep the printed head outside the database and pass
    it as --expect-head next time to also detect a rewritten tail."""
    from ..governance.audit import parse_head, verify_audit

    head = parse_head(expect_head) if expect_head else None

    async def run() -> dict[str, Any]:
        async with await ctx.open() as store:
            return (await verify_audit(store, ctx.tenant, chain=not no_chain, expect_head=head)).as_dict()

    data = run_async(run())

    def render(d: dict[str, Any]) -> None:
        state = "OK" if d["ok"] else "BROKEN"
        click.echo(f"audit chain of tenant {d['tenant']!r}: {state}; {d['entries']} entries, "
                   f"{d['chained']} chained, {d['unchained']} not yet chained")
        click.echo(f"head: {d['head']['position']}:{d['head']['hash']}")
        for p in d["problems"]:
            click.echo(f"  {p['kind']} at position {p['position']}: {p['detail']}", err=True)

    emit(ctx, data, render)
    if not data["ok"]:
        raise SystemExit(1)


@click.command()
@click.option("--messages", "--transcripts", "messages", default=None, metavar="TTL",
              help="Delete messages older than TTL (e.g. 30d, 12h, 2w).")
@click.option("--facts", default=None, metavar="TTL", help="Delete facts older than TTL.")
@click.option("--states", "--state", "states", default=None, metavar="TTL", help="Delete state blobs not updated for TTL.")
@click.option("--save", is_flag=True, help="Store these TTLs as the tenant's retention policy (enforced by every "
                                            "`amber worker` too) instead of pruning once.")
@click.option("--clear", "clear", is_flag=True, help="Remove the tenant's stored retention policy.")
@click.option("--all-tenants", is_flag=True, help="Apply the stored policy of every tenant it names.")
@click.option("--show", is_flag=True, help="Print the stored retention policy.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_ctx
def prune(ctx: Context, messages: str | None, facts: str | None, states: str | None, save: bool, clear: bool,
          all_tenants: bool, show: bool, yes: bool) -> None:
    """Retention: delete what is older than its time-to-live (audited: one `retention.prune` receipt
    per user). Without TTL options, applies the tenant's stored policy (set it with --save)."""
    from ..governance.retention import (
        KINDS, enforce_retention, load_policy, parse_duration, prune_tenant, set_tenant_ttl)

    given = {"messages": messages, "facts": facts, "states": states}
    ttls = {k: v for k, v in given.items() if v is not None}
    if save and not ttls:
        raise click.UsageError("--save needs at least one of --messages, --facts, --states")
    if (save or clear or show) and all_tenants:
        raise click.UsageError("--all-tenants only applies stored policies")
    prunes = not (save or clear or show)
    if prunes and not yes and not ctx.json:
        scope = "every tenant with a stored policy" if all_tenants else f"tenant {ctx.tenant!r}"
        click.confirm(f"Permanently delete expired records of {scope}?", abort=True)
    elif prunes and not yes:
        raise click.UsageError("--json needs --yes for prune (no prompt in scripts)")

    async def run() -> dict[str, Any]:
        async with await ctx.open() as store:
            if show:
                return (await load_policy(store)).as_data()
            if clear:
                return (await set_tenant_ttl(store, ctx.tenant, {k: None for k in KINDS})).as_data()
            if save:
                return (await set_tenant_ttl(store, ctx.tenant, ttls)).as_data()
            if ttls:
                receipt = await prune_tenant(store, ctx.tenant, {k: parse_duration(v) for k, v in ttls.items()})
                receipts = [receipt] if receipt else []
            else:
                receipts = await enforce_retention(store, tenant=None if all_tenants else ctx.tenant)
            return {"receipts": jsonable(receipts)}

    data = run_async(run())

    def render(d: dict[str, Any]) -> None:
        if "receipts" not in d:
            click.echo(json.dumps(d, indent=2))
            return
        if not d["receipts"]:
            click.echo("nothing to prune: no TTL given and no stored policy applies")
        for r in d["receipts"]:
            counts = ", ".join(f"{v} {k}" for k, v in sorted(r["counts"].items()))
            click.echo(f"pruned tenant {r['tenant']!r} at {r['at']}: {counts}")

    emit(ctx, data, render)
