"""`amber doctor` against real misconfigured setups: SQLite files in temporary and memory-backed
directories, processes started from different working directories, unsafe durability settings on a
real SQLite file and a real PostgreSQL session, dead ports, an older schema, and per-request keys."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

import amber
from amber import NewMessage, SessionKey
from amber.doctor import diagnose
from conftest import POSTGRES_URL

AMBER = os.path.join(os.path.dirname(sys.executable), "amber")
sqlite_backend = pytest.importorskip("amber.store.sqlite", reason="the SQLite backend has not landed yet")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def durable_dir():
    """A directory on persistent storage (not /tmp), removed afterwards. Under the user's home, not
    the checkout: CI may clone the repository into a temporary directory."""
    d = Path.home() / ".cache" / "amber-tests" / f"doctor-{uuid.uuid4().hex[:8]}"
    d.mkdir(parents=True)
    yield d
    shutil.rmtree(d, ignore_errors=True)


async def make_store(url: str, turns: dict[SessionKey, int] | None = None) -> None:
    async with await amber.open_store(url) as store:
        for key, n in (turns or {}).items():
            for i in range(n):
                await store.append(key, [NewMessage("user", f"q{i}"), NewMessage("assistant", f"a{i}")])


async def test_healthy_absolute_store_has_no_problem(durable_dir: Path) -> None:
    url = f"sqlite:///{durable_dir / 'amber.db'}"
    await make_store(url, {SessionKey("default", "u", "claim-1"): 6})
    report = await diagnose(url, env={}, cwd=str(durable_dir))
    assert report.ok, report.as_dict()
    assert "store" in report.codes("info")
    info = next(f for f in report.findings if f.code == "store")
    assert "SQLiteStore" in info.detail and str(durable_dir / "amber.db") in info.detail


async def test_store_in_temporary_directory(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'amber.db'}"  # pytest's tmp_path is under the system temp dir
    await make_store(url)
    report = await diagnose(url, env={})
    assert "ephemeral_location" in report.codes("problem") and not report.ok


async def test_store_on_tmpfs(tmp_path: Path) -> None:
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm on this system")
    d = Path("/dev/shm") / f"amber-doctor-{uuid.uuid4().hex[:8]}"
    d.mkdir()
    try:
        url = f"sqlite:///{d / 'amber.db'}"
        await make_store(url)
        report = await diagnose(url, env={})
        assert "ephemeral_location" in report.codes("problem")
    finally:
        shutil.rmtree(d, ignore_errors=True)


async def test_overlay_root_without_volume_is_flagged(durable_dir: Path, tmp_path: Path) -> None:
    # This machine's root is not an overlay, so the mount table a container would show is written out:
    # the same file format /proc/mounts has, with the real store file on "/".
    url = f"sqlite:///{durable_dir / 'amber.db'}"
    await make_store(url)
    mounts = tmp_path / "mounts"
    mounts.write_text("overlay / overlay rw,relatime,lowerdir=/l,upperdir=/u,workdir=/w 0 0\n"
                      "proc /proc proc rw 0 0\n")
    report = await diagnose(url, env={}, mounts_file=str(mounts))
    assert "ephemeral_location" in report.codes("problem")
    mounts.write_text(mounts.read_text() + f"/dev/vdb {durable_dir} ext4 rw 0 0\n")  # a volume at its directory
    assert "ephemeral_location" not in (await diagnose(url, env={}, mounts_file=str(mounts))).codes()


def test_memory_store_with_several_workers_exits_non_zero() -> None:
    env = {**os.environ, "WEB_CONCURRENCY": "4", "AMBER_STORE": "memory://"}
    r = subprocess.run([AMBER, "--json", "doctor"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    data = json.loads(r.stdout)
    assert any(f["code"] == "memory_multiprocess" and f["fix"] for f in data["findings"])
    env["WEB_CONCURRENCY"] = "1"
    r = subprocess.run([AMBER, "--json", "doctor"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "memory_not_durable" in r.stdout
    r = subprocess.run([AMBER, "--json", "doctor", "--strict"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1


# A file name no other process on the machine has open, so the scan sees only this test's workers.
WORKER_DB = f"amber-{uuid.uuid4().hex[:8]}.db"
HOLDER = textwrap.dedent(f"""
    import asyncio, sys, amber
    async def main():
        store = await amber.open_store("sqlite:///{WORKER_DB}")
        await store.append_one(amber.SessionKey("default", "u", "t"), amber.NewMessage("user", "hi"))
        print("ready", flush=True)
        await asyncio.sleep(120)
    asyncio.run(main())
""")


async def test_each_worker_with_its_own_sqlite_file(durable_dir: Path) -> None:
    procs = []
    try:
        for name in ("worker-a", "worker-b"):  # two workers, same relative URL, different working dirs
            cwd = durable_dir / name
            cwd.mkdir()
            p = subprocess.Popen([sys.executable, "-c", HOLDER], cwd=cwd, stdout=subprocess.PIPE, text=True)
            procs.append(p)
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        report = await diagnose(f"sqlite:///{WORKER_DB}", env={}, cwd=str(durable_dir / "worker-a"))
        finding = next(f for f in report.findings if f.code == "sqlite_file_per_worker")
        assert finding.severity == "problem" and str(durable_dir / "worker-b" / WORKER_DB) in finding.detail
        assert str(procs[1].pid) in finding.detail
    finally:
        for p in procs:
            p.kill()
            p.wait()
    # one process, relative path, nobody else: only a warning
    quiet = await diagnose(f"sqlite:///{WORKER_DB}", env={}, cwd=str(durable_dir / "worker-a"))
    assert "relative_sqlite_path" in quiet.codes("warning") and "sqlite_file_per_worker" not in quiet.codes()
    assert "sqlite_file_per_worker" in (
        await diagnose(f"sqlite:///{WORKER_DB}", env={"WEB_CONCURRENCY": "2"}, cwd=str(durable_dir / "worker-a"))).codes()


async def test_sqlite_synchronous_normal_is_unsafe(durable_dir: Path) -> None:
    url = f"sqlite:///{durable_dir / 'amber.db'}?synchronous=normal"
    await make_store(url, {SessionKey("default", "u", "t"): 1})
    report = await diagnose(url, env={})
    assert "unsafe_durability" in report.codes("problem")
    assert sum(f.code == "unsafe_durability" for f in report.findings) == 1


async def test_postgres_synchronous_commit_off_is_unsafe() -> None:
    url = POSTGRES_URL + ("&" if "?" in POSTGRES_URL else "?") + "options=-c%20synchronous_commit%3Doff"
    report = await diagnose(url, env={})
    if any(f.title == "PostgreSQL is unreachable" for f in report.findings):
        from conftest import unreachable

        unreachable("PostgreSQL", RuntimeError(str(report.as_dict())))
    finding = next(f for f in report.findings if f.code == "unsafe_durability")
    assert "synchronous_commit=off" in finding.title


async def test_unreachable_backends(durable_dir: Path) -> None:
    port = free_port()
    report = await diagnose(f"postgresql://postgres@127.0.0.1:{port}/x", env={})
    assert "unreachable" in report.codes("problem") and not report.ok
    url = f"sqlite:///{durable_dir / 'amber.db'}?cache=redis://127.0.0.1:{free_port()}/0"
    await make_store(f"sqlite:///{durable_dir / 'amber.db'}")
    report = await diagnose(url, env={})
    assert any(f.code == "unreachable" and "Redis" in f.title for f in report.findings)


async def test_pending_migrations_found_without_migrating(durable_dir: Path) -> None:
    path = durable_dir / "amber.db"
    await make_store(f"sqlite:///{path}")
    from amber.store.sqlite_schema import SCHEMA_VERSION

    with sqlite3.connect(path) as conn:  # what a file written by an older Amber looks like
        conn.execute("DELETE FROM schema_migrations WHERE version = ?", (SCHEMA_VERSION,))
    report = await diagnose(f"sqlite:///{path}", env={})
    finding = next(f for f in report.findings if f.code == "pending_migrations")
    assert finding.severity == "problem" and "amber migrate" in finding.fix
    with sqlite3.connect(path) as conn:  # doctor only looked
        assert SCHEMA_VERSION not in {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}


async def test_random_per_request_session_keys(durable_dir: Path) -> None:
    url = f"sqlite:///{durable_dir / 'amber.db'}"
    turns = {SessionKey("acme", "u-42", str(uuid.uuid4())): 1 for _ in range(8)}
    turns[SessionKey("acme", "u-7", "claim-7788")] = 9  # a healthy user: one long conversation
    await make_store(url, turns)
    report = await diagnose(url, tenant="acme", env={})
    finding = next(f for f in report.findings if f.code == "random_session_keys")
    assert "u-42" in finding.detail and "u-7" not in finding.detail and "uuid" in finding.detail
    assert (await diagnose(url, tenant="other", env={})).ok


def test_cli_json_and_exit_codes(durable_dir: Path, tmp_path: Path) -> None:
    good = f"sqlite:///{durable_dir / 'amber.db'}"
    asyncio.run(make_store(good))
    r = subprocess.run([AMBER, "--store", good, "--json", "doctor"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["ok"] is True
    bad = f"sqlite:///{tmp_path / 'amber.db'}"
    asyncio.run(make_store(bad))
    r = subprocess.run([AMBER, "--store", bad, "doctor"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "ephemeral_location" in r.stdout and "fix:" in r.stdout


async def test_postgres_healthy_and_unmigrated_schema() -> None:
    psycopg = pytest.importorskip("psycopg")
    try:  # the shared database may hold a schema an older checkout migrated: bring it up to date first
        await make_store(POSTGRES_URL)
    except amber.StoreUnavailable:
        pass  # reported as unreachable just below
    report = await diagnose(POSTGRES_URL, env={})
    if any(f.title == "PostgreSQL is unreachable" for f in report.findings):
        from conftest import unreachable

        unreachable("PostgreSQL", RuntimeError(str(report.as_dict())))
    assert report.ok, report.as_dict()
    schema = f"amber_doctor_{uuid.uuid4().hex[:8]}"  # a schema no Amber has migrated yet
    sep = "&" if "?" in POSTGRES_URL else "?"
    fresh = await diagnose(f"{POSTGRES_URL}{sep}schema={schema}", env={})
    assert "pending_migrations" in fresh.codes("problem")
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:  # doctor created nothing
        assert conn.execute("SELECT to_regnamespace(%s)", (schema,)).fetchone()[0] is None
