"""``amber.open_store`` and the SQLite backend under bad input and contention: every failure is one of
Amber's own errors, and nothing stored before it is lost. Real files in tmp_path, real processes."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import textwrap
from pathlib import Path

import pytest

import amber
from amber import (
    InvalidInput,
    InvalidSessionKey,
    InvalidStoreURL,
    MessageTooLarge,
    NewMessage,
    SessionKey,
    StoreLimits,
    StoreUnavailable,
)
from amber.store.sqlite_schema import MIGRATIONS, SCHEMA_VERSION


def _url(path: Path) -> str:
    return f"sqlite:///{path}"


@pytest.mark.parametrize("url", ["mongodb://localhost/x", "amber.db", "", "sqlite://host/x.db", "sqlite:///",
                                 "sqlite:///dir/", "sqlite:///:memory:"])
async def test_bad_urls_are_invalid_store_url(url: str) -> None:
    with pytest.raises(InvalidStoreURL):
        await amber.open_store(url)


async def test_unknown_scheme_names_the_known_ones() -> None:
    with pytest.raises(InvalidStoreURL, match="sqlite"):
        await amber.open_store("mongodb://localhost/x")


async def test_bad_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidStoreURL, match="synchronous"):
        await amber.open_store(_url(tmp_path / "a.db") + "?synchronous=off")
    with pytest.raises(InvalidStoreURL, match="unknown"):
        await amber.open_store(_url(tmp_path / "a.db") + "?journal=memory")
    with pytest.raises(InvalidStoreURL):
        await amber.open_store(_url(tmp_path / "a.db"), lock_timeout="soon")


async def test_relative_url_is_relative_to_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    async with await amber.open_store("sqlite:///rel/amber.db") as store:
        info = await store.describe()
    assert Path(info["path"]) == tmp_path / "rel" / "amber.db"
    assert (tmp_path / "rel" / "amber.db").is_file()


async def test_path_under_a_regular_file_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("I am a file")
    target = blocker / "sub" / "amber.db"
    with pytest.raises(StoreUnavailable) as err:
        await amber.open_store(_url(target))
    assert str(target) in str(err.value) and isinstance(err.value.__cause__, OSError)
    assert blocker.read_text() == "I am a file"  # untouched


async def test_path_that_is_a_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match="directory"):
        await amber.open_store(_url(tmp_path))


async def test_a_file_that_is_not_sqlite_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are my notes, not a database" * 100)
    with pytest.raises(StoreUnavailable) as err:
        await amber.open_store(_url(path))
    assert isinstance(err.value.__cause__, sqlite3.DatabaseError)
    assert path.read_bytes() == b"these are my notes, not a database" * 100


async def test_bad_messages_are_refused_and_nothing_stored_is_lost(tmp_path: Path) -> None:
    url = _url(tmp_path / "safe.db")
    key = SessionKey("acme", "u-1", "claim-1")
    async with await amber.open_store(url, limits=StoreLimits(max_message_bytes=2000)) as store:
        await store.append(key, [NewMessage("user", "policy P-1"), NewMessage("assistant", "noted")])
        await store.put_state(key, "team", {"turn": 1})
        with pytest.raises(MessageTooLarge, match="2000"):
            await store.append_one(key, NewMessage("user", "x" * 2001))
        with pytest.raises(InvalidInput, match="Unicode"):
            await store.append_one(key, NewMessage("user", "broken \udcff text"))
        with pytest.raises(InvalidInput):
            await store.append(key, [NewMessage("user", "fine"), NewMessage("user", "meta", metadata={"m": "\ud800"})])
        with pytest.raises(InvalidInput):
            await store.put_state(key, "team", {"bad": "\udfff"})
        with pytest.raises(MessageTooLarge):
            await store.put_state(key, "team", {"big": "x" * (store.limits.max_state_bytes + 1)})
    with pytest.raises(InvalidSessionKey):
        SessionKey("acme", "u/1", "claim-1")
    with pytest.raises(InvalidSessionKey):
        SessionKey("acme", "", "claim-1")
    with pytest.raises(InvalidSessionKey):
        SessionKey("acme", "u-1", "x" * 129)
    with pytest.raises(InvalidSessionKey):
        SessionKey.parse("a/b/c/d")
    async with await amber.open_store(url) as again:  # a fresh handle: the earlier data is intact
        assert [m.content for m in await again.read_since(key)] == ["policy P-1", "noted"]
        state = await again.get_state(key, "team")
        assert state is not None and state.version == 1 and dict(state.data) == {"turn": 1}
        assert [e.operation for e in await again.list_audit("acme")] == ["message.append", "state.put"]


async def test_a_lock_held_by_another_process_is_waited_out_not_reported(tmp_path: Path) -> None:
    """A foreign connection holds the write lock longer than one busy_timeout slice: the append
    waits and succeeds; the caller never sees "database is locked"."""
    path = tmp_path / "held.db"
    key = SessionKey("t", "u", "held")
    async with await amber.open_store(_url(path), lock_timeout=30) as store:
        await store.append_one(key, NewMessage("user", "before"))
        blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        blocker.execute("BEGIN IMMEDIATE")
        pending = asyncio.ensure_future(store.append_one(key, NewMessage("user", "during")))
        await asyncio.sleep(2.5)  # longer than the 2 s busy_timeout slice: the retry loop must carry on
        assert not pending.done()
        blocker.execute("COMMIT")
        blocker.close()
        stored = await asyncio.wait_for(pending, timeout=30)
        assert stored.seq == 2
        assert [m.content for m in await store.read_since(key)] == ["before", "during"]


async def test_a_lock_held_past_lock_timeout_is_store_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "stuck.db"
    key = SessionKey("t", "u", "stuck")
    async with await amber.open_store(_url(path), lock_timeout=0.3) as store:
        await store.append_one(key, NewMessage("user", "kept"))
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreUnavailable, match="lock_timeout") as err:
                await store.append_one(key, NewMessage("user", "refused"))
            assert isinstance(err.value.__cause__, sqlite3.OperationalError)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert [m.content for m in await store.read_since(key)] == ["kept"]
        assert (await store.append_one(key, NewMessage("user", "later"))).seq == 2  # writer still alive


async def test_closed_store_refuses_work_and_close_is_idempotent(tmp_path: Path) -> None:
    store = await amber.open_store(_url(tmp_path / "c.db"))
    await store.close()
    await store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.read_window(SessionKey("t", "u", "x"))


async def test_describe_reports_durability(tmp_path: Path) -> None:
    async with await amber.open_store(_url(tmp_path / "d.db")) as store:
        await store.append_one(SessionKey("t", "u", "x"), NewMessage("user", "hi"))
        info = await store.describe()
    assert info["journal_mode"] == "wal" and info["synchronous"] == "FULL" and info["durable"] is True
    assert info["schema_version"] == SCHEMA_VERSION and info["file_size_bytes"] > 0
    assert info["path"] == str(tmp_path / "d.db")
    async with await amber.open_store(_url(tmp_path / "d.db") + "?synchronous=normal") as fast:
        info = await fast.describe()
    assert info["synchronous"] == "NORMAL" and info["durable"] is False


OPENER = textwrap.dedent(
    """
    import asyncio, json, os, sys
    import amber

    async def main():
        while not os.path.exists(sys.argv[2]):
            await asyncio.sleep(0.002)
        store = await amber.open_store(sys.argv[1])
        info = await store.describe()
        await store.append_one(amber.SessionKey("t", "u", "boot"), amber.NewMessage("user", f"pid {os.getpid()}"))
        await store.close()
        print(json.dumps({"applied": info["migrations_applied_by_this_open"], "version": info["schema_version"]}))

    asyncio.run(main())
    """
)


@pytest.mark.slow
async def test_eight_processes_opening_a_new_file_migrate_exactly_once(tmp_path: Path) -> None:
    path = tmp_path / "fresh" / "amber.db"
    go = tmp_path / "go"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(amber.__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    procs = [
        await asyncio.create_subprocess_exec(sys.executable, "-c", OPENER, _url(path), str(go),
                                             stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
        for _ in range(8)
    ]
    await asyncio.sleep(0.5)
    go.touch()
    outs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), timeout=120)
    reports = []
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err.decode()
        reports.append(json.loads(out.decode().strip().splitlines()[-1]))
    all_versions = [v for v, _, _ in MIGRATIONS]
    assert sorted(tuple(r["applied"]) for r in reports) == [()] * 7 + [tuple(all_versions)]
    assert all(r["version"] == SCHEMA_VERSION for r in reports)
    conn = sqlite3.connect(path)
    try:
        assert [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")] == all_versions
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 8
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
