"""Many real OS processes on one SQLite file: concurrent writers, turn-taking writers, SIGKILL mid-stream.

Each worker is a fresh ``python -c`` process importing Amber and opening the file by URL, as a
deployment with several workers would. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

import amber
from amber import SessionKey

KEY = SessionKey("t-proc", "u-1", "shared-thread")

WORKER = textwrap.dedent(
    """
    import asyncio, json, os, sys, time
    import amber

    url, worker, workers, count, mode, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
    key = amber.SessionKey("t-proc", "u-1", "shared-thread")

    async def main():
        store = await amber.open_store(url)
        errors = []
        try:
            while not os.path.exists(go):          # start together, so the writers really contend
                await asyncio.sleep(0.005)
            if mode == "concurrent":
                async def task(t):
                    for i in range(t, count, 4):
                        await store.append_one(key, amber.NewMessage("user", f"w{worker}-{i}", idempotency_key=f"w{worker}-{i}"))
                await asyncio.gather(*(task(t) for t in range(4)))
            else:                                   # alternate: worker w writes seq n when (n - 1) % workers == w
                for i in range(count):
                    target = i * workers + worker
                    while True:
                        last = await store.read_window(key, last=1)
                        if (last[0].seq if last else 0) == target:
                            break
                        await asyncio.sleep(0.001)
                    await store.append_one(key, amber.NewMessage("user", f"w{worker}-{i}", idempotency_key=f"w{worker}-{i}"))
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            await store.close()
        print(json.dumps({"worker": worker, "errors": errors}), flush=True)

    asyncio.run(main())
    """
)

KILLED_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    import amber

    url, name = sys.argv[1], sys.argv[2]
    key = amber.SessionKey("t-kill", "u-1", "shared-thread")

    async def main():
        store = await amber.open_store(url)
        out = sys.stdout

        async def task(t):
            i = t
            while True:
                idem = f"{name}-{i}"
                await store.append_one(key, amber.NewMessage("user", "x" * (i % 300) + idem, idempotency_key=idem))
                out.write(idem + "\\n")             # reported only after append() returned: acknowledged
                out.flush()
                i += 4

        await asyncio.gather(*(task(t) for t in range(4)))

    asyncio.run(main())
    """
)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(Path(amber.__file__).resolve().parents[1])
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


async def _run_workers(url: str, tmp_path: Path, workers: int, count: int, mode: str) -> None:
    go = tmp_path / f"go-{mode}-{workers}"
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", WORKER, url, str(w), str(workers), str(count), mode, str(go),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env(),
        )
        for w in range(workers)
    ]
    await asyncio.sleep(0.5)
    go.touch()
    results = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), timeout=240)
    for p, (out, err) in zip(procs, results):
        text = out.decode() + err.decode()
        assert "locked" not in text.lower(), text
        assert p.returncode == 0, text
        report = json.loads(out.decode().strip().splitlines()[-1])
        assert report["errors"] == [], report


@pytest.mark.slow
@pytest.mark.parametrize("workers,count", [(2, 120), (8, 30)])
@pytest.mark.parametrize("mode", ["concurrent", "alternate"])
async def test_worker_processes_share_one_session(tmp_path: Path, workers: int, count: int, mode: str) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    await _run_workers(url, tmp_path, workers, count, mode)

    async with await amber.open_store(url) as store:
        msgs = await store.read_since(KEY)
    assert [m.seq for m in msgs] == list(range(1, workers * count + 1))  # gap-free, nothing lost
    contents = [m.content for m in msgs]
    assert Counter(contents) == Counter(f"w{w}-{i}" for w in range(workers) for i in range(count))  # no dupes
    for w in range(workers):  # each writer's own order is kept
        mine = [int(c.split("-")[1]) for c in contents if c.startswith(f"w{w}-")]
        assert mine == list(range(count))
    if mode == "alternate":  # strict turn-taking: seq n was written by worker (n - 1) % workers
        assert contents == [f"w{(n % workers)}-{n // workers}" for n in range(workers * count)]


@pytest.mark.slow
async def test_sigkill_mid_stream_never_loses_an_acknowledged_append(tmp_path: Path) -> None:
    """50 SIGKILLs (10 rounds of 5 concurrent writer processes, each killed at a random point after
    a random number of acknowledged appends). Every acknowledged message must be there exactly once."""
    path = tmp_path / "killed.db"
    url = f"sqlite:///{path}"
    rng = random.Random(7)
    acked: list[str] = []
    kills = 0
    for round_ in range(10):
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable, "-c", KILLED_WRITER, url, f"r{round_}p{p}",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env(),
            )
            for p in range(5)
        ]

        async def kill_after(proc: asyncio.subprocess.Process, acks: int) -> list[str]:
            assert proc.stdout is not None
            seen: list[str] = []
            while len(seen) < acks:
                line = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
                if not line:
                    err = (await proc.stderr.read()).decode() if proc.stderr else ""
                    raise AssertionError(f"writer died before being killed: {err}")
                seen.append(line.decode().strip())
            await asyncio.sleep(rng.uniform(0, 0.02))  # land anywhere: mid-transaction, mid-fsync, idle
            proc.send_signal(signal.SIGKILL)
            rest, err = await proc.communicate()  # lines written before death were acknowledged too
            seen.extend(x for x in rest.decode().splitlines() if x.strip())
            assert proc.returncode == -signal.SIGKILL, err.decode()
            assert "locked" not in err.decode().lower()
            return seen

        results = await asyncio.gather(*(kill_after(p, rng.randint(1, 40)) for p in procs))
        kills += len(procs)
        for seen in results:
            acked.extend(seen)

    assert kills >= 50
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = Counter(r[0] for r in conn.execute(
            "SELECT idempotency_key FROM messages WHERE tenant_id = 't-kill'"))
        seqs = [r[0] for r in conn.execute("SELECT seq FROM messages WHERE tenant_id = 't-kill' ORDER BY seq")]
    finally:
        conn.close()
    missing = [a for a in acked if stored[a] != 1]
    assert not missing, f"{len(missing)} acknowledged appends missing or duplicated, e.g. {missing[:5]}"
    assert max(stored.values()) == 1
    assert seqs == list(range(1, len(seqs) + 1))  # still gap-free after 50 crashes
    async with await amber.open_store(url) as store:  # and the store opens and works afterwards
        again = await store.append_one(SessionKey("t-kill", "u-1", "shared-thread"), amber.NewMessage("user", "after"))
        assert again.seq == len(seqs) + 1
