"""Why did my agent forget? Diagnose the deployment mistakes that lose memory, each with its fix.

:func:`diagnose` returns :class:`Finding` records (data, so the CLI, the server and a web inspector can
all show them). It never writes: in particular it checks for pending migrations *before* opening the
store, because opening a store applies them.

Failure modes checked:

* ``ephemeral_location``: the SQLite file lives in a temporary directory, on tmpfs, or on a
  container's overlay root filesystem without a volume: it vanishes with the container or reboot.
* ``memory_multiprocess``: ``memory://`` with several worker processes: each has its own memory.
* ``sqlite_file_per_worker``: a relative SQLite path resolves against each process's working
  directory, so workers started from different directories each write their own file.
* ``unsafe_durability``: SQLite ``synchronous`` OFF/NORMAL or ``journal_mode`` OFF/MEMORY;
  PostgreSQL ``synchronous_commit`` off/local or ``fsync`` off: acknowledged writes can be lost.
* ``unreachable``: the backend (or the Redis cache) does not answer.
* ``pending_migrations``: the schema is older than this Amber.
* ``random_session_keys``: sessions that look keyed per request (many one-turn sessions for one
  user, uuid-looking thread ids): every request starts an empty conversation.

The library never reads ``os.environ``: callers pass the environment to inspect (the CLI passes its own).
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from .errors import AmberError

__all__ = ["Finding", "Report", "diagnose", "deployment_workers", "random_key_suspects", "looks_random_thread"]

Severity = Literal["problem", "warning", "info"]

_UUIDISH = re.compile(r"^(?:[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}|[0-9a-f]{24,})$", re.I)
_TEMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/user")
_VOLATILE_FS = {"tmpfs", "ramfs"}
_CONTAINER_LAYER_FS = {"overlay", "overlayfs", "aufs"}
# libpq URL parameters we pass through to the diagnostic connection; Amber's own (cache=, schema=...) are dropped.
_LIBPQ = {"options", "sslmode", "sslrootcert", "sslcert", "sslkey", "application_name", "target_session_attrs",
          "connect_timeout", "passfile", "service", "host", "port", "user", "password", "dbname", "gssencmode"}


@dataclass(frozen=True, slots=True)
class Finding:
    code: str
    severity: Severity
    title: str
    detail: str
    fix: str = ""


@dataclass
class Report:
    store_url: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(f.severity == "problem" for f in self.findings)

    def codes(self, severity: Severity | None = None) -> set[str]:
        return {f.code for f in self.findings if severity is None or f.severity == severity}

    def as_dict(self) -> dict[str, Any]:
        return {"store": self.store_url, "ok": self.ok, "findings": [asdict(f) for f in self.findings]}


def deployment_workers(env: Mapping[str, str], workers: int | None = None) -> int:
    """How many server processes the environment asks for (WEB_CONCURRENCY, GUNICORN_CMD_ARGS, UVICORN_WORKERS)."""
    counts = [workers or 1]
    for name in ("WEB_CONCURRENCY", "UVICORN_WORKERS"):
        try:
            counts.append(int(env.get(name, "") or 1))
        except ValueError:
            pass
    m = re.search(r"(?:--workers[= ]|-w ?)(\d+)", env.get("GUNICORN_CMD_ARGS", ""))
    if m:
        counts.append(int(m.group(1)))
    return max(counts)


async def diagnose(
    store_url: str,
    *,
    tenant: str = "default",
    env: Mapping[str, str] | None = None,
    workers: int | None = None,
    cwd: str | None = None,
    scan_processes: bool = True,
    mounts_file: str = "/proc/mounts",
    proc_dir: str = "/proc",
) -> Report:
    """Inspect a store URL (and the deployment around it) and return findings with fixes."""
    from .store import redact_url

    env = env or {}
    cwd = cwd or os.getcwd()
    report = Report(redact_url(store_url))
    add = report.findings.append
    n_workers = deployment_workers(env, workers)
    scheme = store_url.split("://", 1)[0].lower().split("+", 1)[0] if "://" in store_url else ""
    can_open = True

    if scheme == "memory":
        if n_workers > 1:
            add(Finding("memory_multiprocess", "problem", "in-memory store with several worker processes",
                        f"{n_workers} workers each hold their own memory:// store: a conversation written by one "
                        "worker is invisible to the next request served by another, and all are lost on restart.",
                        "Use a shared durable store: sqlite:////absolute/path/amber.db on a volume, or postgresql://..."))
        else:
            add(Finding("memory_not_durable", "warning", "in-memory store",
                        "memory:// lives in this process only; everything is lost when it exits.",
                        "Fine for tests. In production use sqlite:////absolute/path/amber.db or postgresql://..."))
    elif scheme == "sqlite":
        can_open = _check_sqlite(store_url, report, cwd=cwd, workers=n_workers, scan=scan_processes,
                                 mounts_file=mounts_file, proc_dir=proc_dir)
    elif scheme in ("postgresql", "postgres"):
        can_open = await asyncio.to_thread(_check_postgres, store_url, report)
    cache = (parse_qs(urlsplit(store_url).query).get("cache") or [None])[0]
    if cache:
        can_open = await _check_redis(cache, report) and can_open

    if can_open:
        await _check_open_store(store_url, tenant, report)
    return report


# -- SQLite -------------------------------------------------------------------------------------------


def _sqlite_path(url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    return path, {k.lower(): v[-1] for k, v in parse_qs(parts.query).items()}


def _mount_of(path: str, mounts_file: str) -> tuple[str, str]:
    """(mount point, fs type) of the filesystem holding ``path``: the longest matching mount point."""
    best = ("/", "")
    try:
        lines = Path(mounts_file).read_text().splitlines()
    except OSError:
        return best
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(best[0]):
            best = (point, parts[2])
    return best


def _open_files_named(name: str, proc_dir: str) -> dict[str, set[int]]:
    """Real paths of files called ``name`` that any process we can see has open -> their pids."""
    found: dict[str, set[int]] = defaultdict(set)
    try:
        pids = [p for p in os.listdir(proc_dir) if p.isdigit()]
    except OSError:
        return found
    for pid in pids:
        fd_dir = os.path.join(proc_dir, pid, "fd")
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(os.path.join(fd_dir, fd))
            except OSError:
                continue
            if os.path.basename(target) == name:
                found[target].add(int(pid))
    return found


def _check_sqlite(url: str, report: Report, *, cwd: str, workers: int, scan: bool, mounts_file: str,
                  proc_dir: str) -> bool:
    add = report.findings.append
    path, options = _sqlite_path(url)
    if not path:
        add(Finding("invalid_url", "problem", "SQLite URL names no file", url,
                    "Use sqlite:////absolute/path/amber.db"))
        return False
    relative = not os.path.isabs(path)
    resolved = os.path.realpath(os.path.join(cwd, path))

    # -- each worker with its own file
    others: dict[str, set[int]] = {}
    if scan:
        others = {p: pids for p, pids in _open_files_named(os.path.basename(resolved), proc_dir).items()
                  if p != resolved}
    if relative and (workers > 1 or others):
        where = "; ".join(f"{p} (pid {', '.join(map(str, sorted(pids)))})" for p, pids in sorted(others.items()))
        add(Finding("sqlite_file_per_worker", "problem", "each process writes its own SQLite file",
                    f"the relative path {path!r} resolves against each process's working directory (here: "
                    f"{resolved})" + (f"; other processes have different files of that name open: {where}"
                                      if others else f"; {workers} workers are configured"),
                    "Use one absolute path on shared storage: sqlite:////var/lib/amber/amber.db (four slashes)."))
    elif relative:
        add(Finding("relative_sqlite_path", "warning", "relative SQLite path",
                    f"{path!r} resolves to {resolved} only when started from {cwd}; started elsewhere, the agent "
                    "finds an empty store.", "Use an absolute path: sqlite:////absolute/path/amber.db"))

    # -- ephemeral location
    temp_roots = {os.path.realpath(d) for d in (*_TEMP_DIRS, tempfile.gettempdir())}
    point, fstype = _mount_of(resolved, mounts_file)
    if any(resolved == r or resolved.startswith(r.rstrip("/") + "/") for r in temp_roots):
        add(Finding("ephemeral_location", "problem", "store in a temporary directory",
                    f"{resolved} is under a temporary directory that is cleared on reboot or by tmp cleaners.",
                    "Move it to persistent storage, e.g. sqlite:////var/lib/amber/amber.db."))
    elif fstype in _VOLATILE_FS:
        add(Finding("ephemeral_location", "problem", f"store on {fstype} (memory-backed)",
                    f"{resolved} is on a {fstype} mounted at {point}: it is lost at reboot.",
                    "Move it to a disk-backed volume."))
    elif fstype in _CONTAINER_LAYER_FS and point == "/":
        add(Finding("ephemeral_location", "problem", "store in the container's writable layer",
                    f"{resolved} is on the {fstype} root filesystem with no volume mounted at its directory: it "
                    "is lost when the container is replaced (every deploy).",
                    "Mount a volume (docker -v amber-data:/var/lib/amber, a Kubernetes PersistentVolumeClaim) and "
                    "point the URL at it."))

    # -- durability settings in the URL (the opened store reports its effective ones too)
    sync = options.get("synchronous", "").lower()
    if sync in ("off", "normal", "0", "1"):
        add(_unsafe_sqlite(f"synchronous={sync.upper()}"))
    journal = options.get("journal_mode", "").lower()
    if journal in ("off", "memory"):
        add(_unsafe_sqlite(f"journal_mode={journal.upper()}"))

    # -- pending migrations, checked read-only before anything opens (and so migrates) the file
    if not os.path.exists(resolved):
        add(Finding("store_missing", "warning", "no database file yet",
                    f"{resolved} does not exist. If your agents have been running, they are writing somewhere else "
                    "(another working directory, another container, another URL).",
                    "Point every process at the same absolute URL; `amber doctor` from each one to compare."))
        return False
    if os.path.exists(resolved):
        try:
            from .store.sqlite_schema import SCHEMA_VERSION
        except ImportError:  # pragma: no cover - SQLite backend missing
            return True
        try:
            conn = sqlite3.connect(f"file:{resolved}?mode=ro", uri=True, timeout=5)
            try:
                tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                versions = ({r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
                            if "schema_migrations" in tables else set())
            finally:
                conn.close()
        except sqlite3.DatabaseError as exc:
            add(Finding("unreachable", "problem", "SQLite file cannot be read",
                        f"{resolved}: {exc}", "Check the file is an Amber SQLite database and readable by this user."))
            return False
        missing = sorted(set(range(1, SCHEMA_VERSION + 1)) - versions)
        if missing:
            add(Finding("pending_migrations", "problem", "schema migrations pending",
                        f"{resolved} is at schema version {max(versions) if versions else 0}; this Amber needs "
                        f"{SCHEMA_VERSION} (missing {missing}).",
                        "Run `amber migrate` once (safe while workers run) before starting the new version."))
            return False
    return True


def _unsafe_sqlite(setting: str) -> Finding:
    return Finding("unsafe_durability", "problem", f"SQLite {setting}",
                   f"with {setting} an acknowledged append can be lost on a crash or power cut.",
                   "Drop the option: Amber defaults to journal_mode=WAL, synchronous=FULL.")


# -- PostgreSQL -----------------------------------------------------------------------------------------


def _libpq_url(url: str) -> str:
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items() if k in _LIBPQ}
    query.setdefault("connect_timeout", "3")
    scheme = parts.scheme.split("+", 1)[0]
    return parts._replace(scheme="postgresql" if scheme == "postgres" else scheme, query=urlencode(query, quote_via=quote)).geturl()


def _check_postgres(url: str, report: Report) -> bool:
    add = report.findings.append
    try:
        import psycopg
    except ImportError:
        add(Finding("missing_driver", "problem", "psycopg is not installed",
                    "the postgresql:// store needs the psycopg driver.", "pip install 'amber-memory[postgres]'"))
        return False
    from .store import redact_url

    try:
        conn = psycopg.connect(_libpq_url(url), autocommit=True)
    except psycopg.Error as exc:
        add(Finding("unreachable", "problem", "PostgreSQL is unreachable",
                    f"{redact_url(url)}: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}",
                    "Check host, port, credentials and network policy; `pg_isready -h HOST -p PORT`."))
        return False
    try:
        sc = conn.execute("SHOW synchronous_commit").fetchone()[0]
        fsync = conn.execute("SHOW fsync").fetchone()[0]
        if sc in ("off", "local"):
            add(Finding("unsafe_durability", "problem", f"PostgreSQL synchronous_commit={sc}",
                        "commits are acknowledged before they are durable: a crash loses the last acknowledged "
                        "appends.", "Set synchronous_commit=on (ALTER ROLE/DATABASE ... SET synchronous_commit = on, "
                                    "or remove it from the connection options)."))
        if fsync == "off":
            add(Finding("unsafe_durability", "problem", "PostgreSQL fsync=off",
                        "the server never forces writes to disk: a crash can corrupt or lose data.",
                        "Set fsync=on in postgresql.conf."))
        schema = (parse_qs(urlsplit(url).query).get("schema") or ["amber"])[0]
        ledger = conn.execute("SELECT to_regclass(%s)", (f"{schema}.schema_migrations",)).fetchone()[0]
        try:
            from .store.postgres_schema import CORE
        except ImportError:  # pragma: no cover
            return True
        latest = max(m.version for m in CORE)
        applied: set[int] = set()
        if ledger is not None:
            applied = {r[0] for r in conn.execute(
                f'SELECT version FROM "{schema}".schema_migrations WHERE track = %s', ("core",))}
        missing = sorted(set(m.version for m in CORE) - applied)
        if missing:
            add(Finding("pending_migrations", "problem", "schema migrations pending",
                        f"schema {schema!r} is at version {max(applied) if applied else 0}; this Amber needs "
                        f"{latest} (missing {missing}).",
                        "Run `amber migrate` once before starting the new version (safe while workers run)."))
            return False
    except psycopg.Error as exc:
        add(Finding("unreachable", "problem", "PostgreSQL refused the diagnostic queries", str(exc).strip(),
                    "Check the role may connect and read the Amber schema."))
        return False
    finally:
        conn.close()
    # The backend refuses (or waits out) unsafe sessions; opening it would only repeat the finding slowly.
    return "unsafe_durability" not in report.codes()


async def _check_redis(url: str, report: Report) -> bool:
    try:
        import redis.asyncio as aioredis
    except ImportError:
        report.findings.append(Finding("missing_driver", "problem", "redis is not installed",
                                       "the store URL asks for a Redis cache.", "pip install 'amber-memory[redis]'"))
        return False
    from .store import redact_url

    client = aioredis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    try:
        await client.ping()
        return True
    except Exception as exc:  # any redis/OS error means the same thing here: it does not answer
        report.findings.append(Finding("unreachable", "problem", "Redis cache is unreachable",
                                       f"{redact_url(url)}: {exc}",
                                       "Start Redis or fix the cache= URL; Amber refuses to run with a dead cache."))
        return False
    finally:
        await client.aclose()


# -- the opened store ---------------------------------------------------------------------------------


async def _check_open_store(url: str, tenant: str, report: Report) -> None:
    from .store import open_store

    add = report.findings.append
    try:
        store = await open_store(url)
    except AmberError as exc:
        code = "unreachable" if exc.status == 503 else exc.code
        add(Finding(code, "problem", "the store cannot be opened", exc.message,
                    "Fix the error above; `amber doctor` again to confirm."))
        return
    except ImportError as exc:
        add(Finding("missing_backend", "problem", "the store's backend is not installed", str(exc),
                    "Install the extra for this URL scheme."))
        return
    try:
        info = dict(await store.describe())
        add(Finding("store", "info", f"{info.get('backend', type(store).__name__)} store",
                    f"{type(store).__module__}.{type(store).__name__} at "
                    f"{info.get('path') or info.get('url') or report.store_url}; "
                    + ", ".join(f"{k}={v}" for k, v in sorted(info.items())
                                if k in ("durable", "multi_process", "journal_mode", "synchronous", "schema_version"))))
        sync = str(info.get("synchronous", "")).upper()
        if info.get("backend") == "sqlite" and sync and sync != "FULL" and "unsafe_durability" not in report.codes():
            add(_unsafe_sqlite(f"synchronous={sync}"))
        await _check_session_keys(store, tenant, report)
    finally:
        await store.close()


def random_key_suspects(sessions: Any) -> dict[str, str]:
    """Users whose sessions look keyed per request -> why. ``sessions``: SessionInfo records (one
    tenant). The heuristic ``amber doctor`` and the web inspector share: many one-turn sessions for one
    user, or several uuid-looking thread ids that are mostly one turn."""
    by_user: dict[str, list[Any]] = defaultdict(list)
    for s in sessions:
        by_user[s.key.user].append(s)
    suspects: dict[str, str] = {}
    for user, items in by_user.items():
        short = [s for s in items if s.message_count <= 2]  # one turn: the user's message and a reply
        uuidish = [s for s in items if looks_random_thread(s.key.thread)]
        if len(items) >= 5 and len(short) / len(items) >= 0.8:
            suspects[user] = (f"{len(short)} of {len(items)} sessions hold one turn or less"
                              + (f", {len(uuidish)} with uuid-like thread ids" if uuidish else ""))
        elif len(uuidish) >= 3 and len(short) >= len(items) / 2:
            suspects[user] = f"{len(uuidish)} uuid-like thread ids, mostly one-turn sessions"
    return suspects


def looks_random_thread(thread: str) -> bool:
    """A thread id that looks generated per request (a uuid or a long hex token)."""
    return bool(_UUIDISH.match(thread))


async def _check_session_keys(store: Any, tenant: str, report: Report, *, sample: int = 2000) -> None:
    sessions = await store.list_sessions(tenant, limit=sample)
    suspicious = [f"{user}: {why}" for user, why in random_key_suspects(sessions).items()]
    if suspicious:
        add = report.findings.append
        add(Finding("random_session_keys", "problem", "session keys look random per request",
                    "conversations never continue: " + "; ".join(sorted(suspicious)[:5])
                    + (f" (+{len(suspicious) - 5} more users)" if len(suspicious) > 5 else ""),
                    "Derive the thread from your domain (ticket, claim or conversation id) and reuse it on every "
                    "request: SessionKey(tenant, user, 'claim-7788'), not uuid4()."))
